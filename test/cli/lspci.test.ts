/**
 * `vfio-user lspci`: the header decode with probed BAR sizes, every capability
 * with -v, --json, and --dump decoded by the real `lspci -F` (skipped with a
 * reason when pciutils is not installed), whose capability lines must match ours.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createDmaEngineDevice } from '../../src/devices/dma-engine.js';
import { createGpioDevice } from '../../src/devices/gpio.js';
import { parseLspciDump } from '../../src/pci/lspci.js';
import { createRichDevice, runCli, serve, type Served } from './support.js';

function le32(value: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, value >>> 0, true);
  return b;
}

function lspciVersion(): string | undefined {
  try {
    return execFileSync('lspci', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}
const noLspci = lspciVersion() === undefined ? 'lspci not installed (apt-get install pciutils)' : false;

describe('vfio-user lspci', () => {
  let rich: Served;
  before(() => {
    rich = serve(createRichDevice());
  });
  after(() => rich.close());

  it('decodes the header with BAR and ROM sizes from the sizing probe', async () => {
    const r = await runCli(['lspci', rich.path]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.deepEqual(lines.slice(0, 11), [
      '00:00.0 Ethernet controller [0200]: Device [1af4:10f0] (rev 02)',
      '\tSubsystem: Device [1af4:1100]',
      '\tControl: I/O- Mem- BusMaster- SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx-',
      '\tStatus: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-',
      '\tInterrupt: pin A routed to IRQ 0',
      '\tRegion 0: Memory at <unassigned> (32-bit, non-prefetchable) [disabled] [size=4K]',
      '\tRegion 1: I/O ports at <unassigned> [disabled] [size=256]',
      '\tRegion 2: Memory at <unassigned> (64-bit, prefetchable) [disabled] [size=64K]',
      '\tRegion 4: Memory at <unassigned> (32-bit, non-prefetchable) [disabled] [size=8K]',
      '\tExpansion ROM at <unassigned> [disabled] [size=2K]',
      '\tCapabilities: [40] Power Management version 3',
    ]);
    assert.ok(lines.every((l) => !l.startsWith('\t\t')), 'no capability details without -v');
  });

  it('shows programmed addresses, and restores every BAR, the ROM BAR and Command after probing', async () => {
    const device = createRichDevice();
    const served = serve(device);
    try {
      const config = device.config;
      config.write(0x10, le32(0xfeed0000)); // BAR0
      config.write(0x14, le32(0xc001)); // BAR1, I/O
      config.write(0x30, le32(0xfee00001)); // ROM at 0xfee00000, enabled
      config.write(0x04, Uint8Array.of(0x03, 0x00)); // I/O + memory decode
      const programmed = config.dump();
      let atDisconnect: Uint8Array | undefined;
      const reset = config.reset.bind(config);
      config.reset = () => {
        atDisconnect ??= config.dump();
        reset();
      };
      const r = await runCli(['lspci', served.path]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /\tControl: I\/O\+ Mem\+ BusMaster- /);
      assert.match(r.stdout, /\tRegion 0: Memory at feed0000 \(32-bit, non-prefetchable\) \[size=4K\]\n/);
      assert.match(r.stdout, /\tRegion 1: I\/O ports at c000 \[size=256\]\n/);
      assert.match(r.stdout, /\tExpansion ROM at fee00000 \[size=2K\]\n/);
      for (let i = 0; i < 100 && atDisconnect === undefined; i++) await new Promise((resolve) => setTimeout(resolve, 10));
      assert.ok(atDisconnect, 'the session ended');
      assert.deepEqual(atDisconnect.subarray(0, 0x40), programmed.subarray(0, 0x40), 'header as it was before the probe');
    } finally {
      await served.close();
    }
  });

  it('-v decodes every capability', async () => {
    const r = await runCli(['lspci', '-v', rich.path]);
    assert.equal(r.code, 0, r.stderr);
    const out = r.stdout;
    for (const expected of [
      '\tCapabilities: [40] Power Management version 3\n\t\tFlags: PMEClk- DSI- D1- D2- AuxCurrent=0mA PME(D0-,D1-,D2-,D3hot-,D3cold-)\n\t\tStatus: D0 NoSoftRst+ PME-Enable- DSel=0 DScale=0 PME-\n',
      '\tCapabilities: [48] MSI: Enable- Count=1/4 Maskable+ 64bit+\n\t\tAddress: 0000000000000000  Data: 0000\n\t\tMasking: 00000000  Pending: 00000000\n',
      '\tCapabilities: [60] MSI-X: Enable- Count=8 Masked-\n\t\tVector table: BAR=4 offset=00000000\n\t\tPBA: BAR=4 offset=00001000\n',
      '\tCapabilities: [6c] Express (v2) Endpoint, MSI 00\n\t\tDevCap: MaxPayload 128 bytes',
      '\t\tLnkSta: Speed 2.5GT/s, Width x1\n',
      '\tCapabilities: [a8] Vendor Specific Information: Len=07 <?>\n\t\tData: de ad be ef\n',
      '\tCapabilities: [100 v1] Device Serial Number 01-23-45-67-89-ab-cd-ef\n',
      '\tCapabilities: [10c v1] Vendor Specific Information: ID=1234 Rev=2 Len=010 <?>\n\t\tData: 5a 5a 5a 5a 5a 5a 5a 5a\n',
    ]) {
      assert.ok(out.includes(expected), `missing:\n${expected}\nin:\n${out}`);
    }
  });

  it('--json has ids, BARs, ROM and capabilities', async () => {
    const r = await runCli(['lspci', '--json', rich.path]);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as {
      configSize: number;
      vendorId: number;
      deviceId: number;
      classCode: number;
      revision: number;
      subsystemVendorId: number;
      subsystemId: number;
      interruptPin: number;
      bars: Array<{ index: number; kind: string; bits64: boolean; prefetchable: boolean; size: number }>;
      rom: { size: number; enabled: boolean } | null;
      capabilities: Array<{ offset: number; id: number; extended: boolean; title: string }>;
    };
    assert.deepEqual([j.configSize, j.vendorId, j.deviceId, j.classCode, j.revision, j.subsystemVendorId, j.subsystemId, j.interruptPin], [4096, 0x1af4, 0x10f0, 0x020000, 2, 0x1af4, 0x1100, 1]);
    assert.deepEqual(
      j.bars.map((b) => [b.index, b.kind, b.bits64, b.prefetchable, b.size]),
      [
        [0, 'memory', false, false, 4096],
        [1, 'io', false, false, 256],
        [2, 'memory', true, true, 0x10000],
        [4, 'memory', false, false, 0x2000],
      ],
    );
    assert.deepEqual(j.rom && [j.rom.size, j.rom.enabled], [2048, false]);
    assert.deepEqual(
      j.capabilities.map((c) => [c.offset, c.id, c.extended]),
      [
        [0x40, 0x01, false],
        [0x48, 0x05, false],
        [0x60, 0x11, false],
        [0x6c, 0x10, false],
        [0xa8, 0x09, false],
        [0x100, 0x0003, true],
        [0x10c, 0x000b, true],
      ],
    );
  });

  it('--dump prints 4096 bytes for PCI Express, 256 otherwise, in the lspci -x format', async () => {
    const gpio = serve(createGpioDevice().device);
    try {
      const [express, conventional] = await Promise.all([runCli(['lspci', '--dump', rich.path]), runCli(['lspci', '--dump', gpio.path])]);
      assert.equal(express.code, 0, express.stderr);
      assert.equal(conventional.code, 0, conventional.stderr);
      const [e] = parseLspciDump(express.stdout);
      const [c] = parseLspciDump(conventional.stdout);
      assert.equal(e?.bytes.length, 4096);
      assert.equal(c?.bytes.length, 256);
      assert.equal(express.stdout.split('\n')[0], '00:00.0 0200: 1af4:10f0 (rev 02)');
      assert.match(express.stdout, /^00: f4 1a f0 10 /m);
      assert.ok(express.stdout.endsWith('\n\n'));
    } finally {
      await gpio.close();
    }
  });

  it('the real `lspci -F` decodes --dump like we do', { skip: noLspci }, async () => {
    const dma = serve(createDmaEngineDevice().device);
    try {
      for (const path of [rich.path, dma.path]) {
        const dump = await runCli(['lspci', '--dump', path]); // one client at a time: a second one would get EBUSY
        const ours = await runCli(['lspci', '-v', path]);
        const file = join(rich.dir, 'dump.txt');
        writeFileSync(file, dump.stdout);
        const theirs = execFileSync('lspci', ['-F', file, '-nn', '-vv'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
        const capLines = (text: string): string[] => text.split('\n').filter((l) => l.startsWith('\tCapabilities: '));
        assert.ok(capLines(theirs).length >= 4, `lspci -F printed:\n${theirs}`);
        assert.deepEqual(capLines(ours.stdout), capLines(theirs), 'capability titles as lspci prints them');
        const header = (text: string): string[] => text.split('\n').filter((l) => /^\t(Control|Status|Interrupt):/.test(l));
        assert.deepEqual(header(ours.stdout), header(theirs));
        const title = ours.stdout.split('\n')[0] ?? '';
        const ids = /\[[0-9a-f]{4}\]: .*\[([0-9a-f]{4}:[0-9a-f]{4})\]/.exec(title)?.[1];
        assert.ok(ids !== undefined && theirs.split('\n')[0]?.includes(`[${ids}]`), `ours: ${title} / lspci: ${theirs.split('\n')[0]}`);
      }
    } finally {
      await dma.close();
    }
  });

  it('fails cleanly on a device that refuses config space reads', async () => {
    const r = await runCli(['lspci', join(rich.dir, 'nothing.sock')]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.split('\n').filter(Boolean).length, 1);
  });
});
