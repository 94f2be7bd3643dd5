/**
 * The `lspci -F` dump format, and the real `lspci` decoding our config spaces
 * (optional: VFIO_USER_LSPCI names the lspci binary; skipped without it).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { InvalidArgumentError, ProtocolError } from '../../src/errors.js';
import { ConfigSpace, formatLspciDump, parseLspciDump, walkCapabilities, type ConfigSpaceOptions } from '../../src/pci/index.js';
import { EXPRESS, MEM64_ROM, MSI4, MSIX8, PLAIN } from './support/devices.js';
import { u16le, u32le } from './support/expected-config.js';

const FIXTURE = new URL('../../../test/fixtures/pci/plain.lspci', import.meta.url);

describe('lspci dump format', () => {
  it('formats a 256-byte space exactly like the hand-written fixture', () => {
    assert.equal(formatLspciDump(new ConfigSpace(PLAIN).dump()), readFileSync(FIXTURE, 'utf8'));
  });

  it('parses what it formats (256 and 4096 bytes, several devices, CRLF)', () => {
    const a = new ConfigSpace(PLAIN).dump();
    const b = new ConfigSpace(EXPRESS).dump();
    const text = formatLspciDump(a) + formatLspciDump(b, { slot: '0000:01:00.1', description: 'x' }).replace(/\n/g, '\r\n');
    const devices = parseLspciDump(text);
    assert.deepEqual(
      devices.map((d) => [d.slot, d.description, d.bytes.length]),
      [
        ['00:00.0', '0580: 4e58:0001 (rev 01)', 256],
        ['0000:01:00.1', 'x', 4096],
      ],
    );
    assert.deepEqual(devices[0]?.bytes, a);
    assert.deepEqual(devices[1]?.bytes, b);
    assert.equal(formatLspciDump(b).split('\n')[17], '100: 03 00 c1 10 ef cd ab 89 67 45 23 01 0b 00 01 00');
  });

  it('rejects bad input', () => {
    assert.throws(() => formatLspciDump(new Uint8Array(10)), InvalidArgumentError);
    assert.throws(() => formatLspciDump(new Uint8Array(8192)), InvalidArgumentError);
    assert.throws(() => formatLspciDump(new Uint8Array(256), { slot: '0:0.0' }), InvalidArgumentError);
    assert.throws(() => parseLspciDump('00:00.0 x\n00: 0g\n'), ProtocolError);
    assert.throws(() => parseLspciDump('00:00.0 x\nff0: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00\n'), ProtocolError);
  });

  it('walks the capability lists', () => {
    const walk = walkCapabilities(new ConfigSpace(EXPRESS).dump());
    assert.deepEqual(walk.capabilities, [
      { offset: 0x40, id: 0x01 },
      { offset: 0x48, id: 0x10 },
      { offset: 0x84, id: 0x09 },
    ]);
    assert.deepEqual(walk.extended, [
      { offset: 0x100, id: 0x0003, version: 1 },
      { offset: 0x10c, id: 0x000b, version: 1 },
    ]);
    assert.deepEqual(walkCapabilities(new ConfigSpace(PLAIN).dump()), { capabilities: [], extended: [] });
  });
});

// ------------------------------------------------------------------ real lspci

/** The real lspci (pciutils), named by VFIO_USER_LSPCI. */
const LSPCI = process.env['VFIO_USER_LSPCI'] || undefined;
function lspciVersion(): string | undefined {
  if (LSPCI === undefined) return undefined;
  try {
    return execFileSync(LSPCI, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}
const VERSION = lspciVersion();
const skip = LSPCI === undefined ? 'set VFIO_USER_LSPCI=/path/to/lspci (pciutils) to decode our dumps with the real lspci' : VERSION === undefined ? `VFIO_USER_LSPCI=${LSPCI} does not run` : false;
const dir = mkdtempSync(join(tmpdir(), 'vfio-user-lspci-'));
after(() => rmSync(dir, { recursive: true, force: true }));

let files = 0;
/** Runs the real `lspci -F` on the config space's dump. */
function lspci(bytes: Uint8Array, ...args: string[]): string {
  const file = join(dir, `dump-${files++}`);
  writeFileSync(file, formatLspciDump(bytes));
  return execFileSync(LSPCI ?? 'lspci', ['-F', file, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

/** Sizes and assigns every BAR as firmware does, from `base` upward; returns [index, size] per BAR found. */
function assignBars(cs: ConfigSpace, base: number): Array<[number, number]> {
  const found: Array<[number, number]> = [];
  for (let i = 0; i < 6; i++) {
    const at = 0x10 + 4 * i;
    cs.write(at, u32le(0xffffffff));
    const mask = new DataView(cs.read(at, 4).buffer).getUint32(0, true);
    if (mask === 0) continue;
    const io = (mask & 1) === 1;
    const size = (~(mask & (io ? ~3 : ~0xf)) + 1) >>> 0;
    found.push([i, size]);
    cs.write(at, u32le(io ? 0xc000 : base));
    if (!io) base += Math.max(size, 0x100000);
    if ((mask & 6) === 4) {
      cs.write(at + 4, u32le(0)); // upper half of a 64-bit BAR
      i++;
    }
  }
  return found;
}

function includesAll(text: string, expected: ReadonlyArray<string | RegExp>): void {
  for (const e of expected) {
    if (typeof e === 'string') assert.ok(text.includes(e), `missing ${JSON.stringify(e)} in:\n${text}`);
    else assert.match(text, e);
  }
}

describe(`real lspci -F (${VERSION ?? 'absent'})`, () => {
  it('identity, class and subsystem (-nn)', { skip }, () => {
    const out = lspci(new ConfigSpace(PLAIN).dump(), '-vvv', '-nn');
    includesAll(out, [/^00:00\.0 .*\[0580\]: .*\[4e58:0001\] \(rev 01\)/, /Subsystem: .*\[4e58:0010\]/, 'Interrupt: pin A']);
  });

  it('BAR sizing probes show each size mask with its type', { skip }, () => {
    const probed = (o: ConfigSpaceOptions) => {
      const cs = new ConfigSpace(o);
      for (let at = 0x10; at < 0x28; at += 4) cs.write(at, u32le(0xffffffff));
      cs.write(0x30, u32le(0xfffffffe));
      return lspci(cs.dump(), '-vv');
    };
    includesAll(probed(PLAIN), ['Region 0: Memory at fffff000 (32-bit, non-prefetchable) [disabled]', 'Region 1: I/O ports at ffffff00 [disabled]']);
    includesAll(probed(MEM64_ROM), [
      'Region 0: Memory at fffffffffff00000 (64-bit, prefetchable) [disabled]',
      'Region 2: Memory at fffffff0 (32-bit, non-prefetchable) [disabled]',
      'Expansion ROM at ffff0000 [disabled]',
    ]);
    includesAll(probed(MSIX8), ['Region 2: Memory at ffffc000 (32-bit, non-prefetchable)']);
    includesAll(probed({ vendorId: 1, deviceId: 1, bars: [{ size: 16, type: 'mem32', prefetchable: true }, { size: 4, type: 'io' }] }), [
      'Region 0: Memory at fffffff0 (32-bit, prefetchable)',
      'Region 1: I/O ports at fffffffc',
    ]);
  });

  it('assigned BARs, ROM, Command and Status as a driver left them', { skip }, () => {
    const cs = new ConfigSpace(MEM64_ROM);
    assert.deepEqual(assignBars(cs, 0xfe000000), [
      [0, 0x100000],
      [2, 16],
    ]);
    cs.write(0x30, u32le(0xfeb00001));
    cs.write(0x04, u16le(0x0506));
    cs.signalStatus(0x2000);
    includesAll(lspci(cs.dump(), '-vv'), [
      'Control: I/O- Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR+ FastB2B- DisINTx+',
      /Status: Cap\+ .*<MAbort\+/,
      'Region 0: Memory at fe000000 (64-bit, prefetchable)\n',
      'Region 2: Memory at fe100000 (32-bit, non-prefetchable)\n',
      'Expansion ROM at feb00000\n',
    ]);
  });

  it('Power Management and MSI (power-on, then enabled with masks and pending)', { skip }, () => {
    const cs = new ConfigSpace(MSI4);
    includesAll(lspci(cs.dump(), '-vvv'), [
      'Capabilities: [40] Power Management version 3',
      'Status: D0 NoSoftRst+ PME-Enable- DSel=0 DScale=0 PME-',
      'Capabilities: [48] MSI: Enable- Count=1/4 Maskable+ 64bit+',
      'Address: 0000000000000000  Data: 0000',
      'Masking: 00000000  Pending: 00000000',
    ]);
    cs.write(0x44, u16le(3));
    cs.write(0x4c, u32le(0xfee00000));
    cs.write(0x54, u16le(0x4021));
    cs.write(0x58, u32le(0xf));
    cs.msi?.setPending(1, true);
    cs.write(0x4a, u16le(0x21));
    includesAll(lspci(cs.dump(), '-vvv'), [
      'Status: D3 NoSoftRst+',
      'MSI: Enable+ Count=4/4 Maskable+ 64bit+',
      'Address: 00000000fee00000  Data: 4021',
      'Masking: 0000000f  Pending: 00000002',
    ]);
  });

  it('MSI-X', { skip }, () => {
    const cs = new ConfigSpace(MSIX8);
    includesAll(lspci(cs.dump(), '-vvv'), [
      'Capabilities: [48] MSI-X: Enable- Count=8 Masked-',
      'Vector table: BAR=2 offset=00000000',
      'PBA: BAR=2 offset=00000800',
    ]);
    cs.write(0x4b, Uint8Array.of(0xc0));
    includesAll(lspci(cs.dump(), '-vvv'), ['MSI-X: Enable+ Count=8 Masked+']);
  });

  it('PCI Express endpoint, vendor capability, DSN and VSEC (-xxxx)', { skip }, () => {
    const out = lspci(new ConfigSpace(EXPRESS).dump(), '-vvv');
    includesAll(out, [
      'Capabilities: [48] Express (v2) Endpoint',
      'DevCap:\tMaxPayload 128 bytes',
      'MaxPayload 128 bytes, MaxReadReq 512 bytes',
      'LnkCap:\tPort #0, Speed 2.5GT/s, Width x1',
      'LnkSta:\tSpeed 2.5GT/s, Width x1',
      'Capabilities: [84] Vendor Specific Information: Len=06 <?>',
      'Capabilities: [100 v1] Device Serial Number 01-23-45-67-89-ab-cd-ef',
      'Capabilities: [10c v1] Vendor Specific Information: ID=1234 Rev=1 Len=010 <?>',
    ]);
  });

  it('other port types', { skip }, () => {
    const port = (portType: 'legacy-endpoint' | 'rc-integrated') =>
      lspci(new ConfigSpace({ vendorId: 1, deviceId: 1, pm: false, express: { portType } }).dump(), '-vv');
    includesAll(port('legacy-endpoint'), ['Express (v2) Legacy Endpoint', 'LnkCap:']);
    const rc = port('rc-integrated');
    includesAll(rc, ['Express (v2) Root Complex Integrated Endpoint']);
    assert.ok(!rc.includes('LnkCap:'), 'an RC integrated endpoint has no link');
  });

  it('extended capabilities appear only with all 4096 bytes', { skip }, () => {
    const bytes = new ConfigSpace(EXPRESS).dump();
    assert.ok(!lspci(bytes.subarray(0, 256), '-vvv').includes('[100'));
  });

  it('lspci -xxx / -xxxx print back exactly our bytes', { skip }, () => {
    for (const [options, flag] of [
      [MSIX8, '-xxx'],
      [EXPRESS, '-xxxx'],
    ] as const) {
      const cs = new ConfigSpace(options);
      cs.write(0x04, u16le(0x0406));
      const bytes = cs.dump();
      const [device] = parseLspciDump(lspci(bytes, flag));
      assert.deepEqual(device?.bytes, bytes);
    }
  });
});
