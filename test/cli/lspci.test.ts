/**
 * `vfio-user lspci` end to end: one line by default, -v / -vv with probed BAR
 * sizes, -n / -nn, names from a pci.ids (-i, $VFIO_USER_PCI_IDS), --json as
 * fields, --dump; and, when VFIO_USER_LSPCI names the real lspci, its decode of
 * our --dump matching ours line for line (BAR lines aside: a dump has no sizes).
 * The decode itself is checked against pciutils' output on fixed bytes in
 * pci-decode.test.ts.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createDmaEngineDevice } from '../../src/devices/dma-engine.js';
import { createGpioDevice } from '../../src/devices/gpio.js';
import { parseLspciDump } from '../../src/pci/lspci.js';
import { createRichDevice, runCli, serve, type Served } from './support.js';

function le32(value: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, value >>> 0, true);
  return b;
}

/** The real lspci, for the optional comparison: VFIO_USER_LSPCI names the binary (e.g. /usr/bin/lspci). */
const LSPCI = process.env['VFIO_USER_LSPCI'];
const noLspci = LSPCI ? false : 'set VFIO_USER_LSPCI=/path/to/lspci (pciutils) to compare with the real lspci';
/** runCli with more environment (the child is spawned within the call, so the change is undone at once). */
function runCliWithEnv(args: readonly string[], env: Record<string, string>): ReturnType<typeof runCli> {
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    return runCli(args);
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

const PCI_IDS = fileURLToPath(new URL('../../../test/fixtures/pci/pci.ids', import.meta.url));

describe('vfio-user lspci', () => {
  let rich: Served;
  before(() => {
    rich = serve(createRichDevice());
  });
  after(() => rich.close());

  it('prints one line by default, numbers with -n, both with -nn, names from -i FILE', async () => {
    const [names, n, nn, env] = [
      await runCli(['lspci', '-i', PCI_IDS, rich.path]),
      await runCli(['lspci', '-n', rich.path]),
      await runCli(['lspci', '-nn', '--pci-ids', PCI_IDS, rich.path]),
      await runCliWithEnv(['lspci', rich.path], { VFIO_USER_PCI_IDS: PCI_IDS }),
    ];
    for (const r of [names, n, nn, env]) assert.equal(r.code, 0, r.stderr);
    assert.equal(names.stdout, '00:00.0 Ethernet controller: Red Hat, Inc. Device 10f0 (rev 02)\n');
    assert.equal(n.stdout, '00:00.0 0200: 1af4:10f0 (rev 02)\n');
    assert.equal(nn.stdout, '00:00.0 Ethernet controller [0200]: Red Hat, Inc. Device [1af4:10f0] (rev 02)\n');
    assert.equal(env.stdout, names.stdout, '$VFIO_USER_PCI_IDS');
  });

  it('-v: Subsystem, Flags, BARs with their probed sizes, ROM and capability titles', async () => {
    const r = await runCli(['lspci', '-v', '-i', PCI_IDS, rich.path]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.split('\n'), [
      '00:00.0 Ethernet controller: Red Hat, Inc. Device 10f0 (rev 02)',
      '\tSubsystem: Red Hat, Inc. Device 1100',
      '\tFlags: fast devsel',
      '\tMemory at <unassigned> (32-bit, non-prefetchable) [disabled] [size=4K]',
      '\tI/O ports at <unassigned> [disabled] [size=256]',
      '\tMemory at <unassigned> (64-bit, prefetchable) [disabled] [size=64K]',
      '\tMemory at <unassigned> (32-bit, non-prefetchable) [disabled] [size=8K]',
      '\tExpansion ROM at <unassigned> [disabled] [size=2K]',
      '\tCapabilities: [40] Power Management version 3',
      '\tCapabilities: [48] MSI: Enable- Count=1/4 Maskable+ 64bit+',
      '\tCapabilities: [60] MSI-X: Enable- Count=8 Masked-',
      '\tCapabilities: [6c] Express Endpoint, MSI 00',
      '\tCapabilities: [a8] Vendor Specific Information: Len=07 <?>',
      '\tCapabilities: [100] Device Serial Number 01-23-45-67-89-ab-cd-ef',
      '\tCapabilities: [10c] Vendor Specific Information: ID=1234 Rev=2 Len=010 <?>',
      '',
      '',
    ]);
  });

  it('-vv: Control, Status, Interrupt, Region N and every capability register; no Subsystem line when it is 0', async () => {
    const dma = serve(createDmaEngineDevice().device);
    try {
      const r = await runCli(['lspci', '-vv', '-nn', '-i', PCI_IDS, rich.path]);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.split('\n');
      assert.deepEqual(lines.slice(0, 11), [
        '00:00.0 Ethernet controller [0200]: Red Hat, Inc. Device [1af4:10f0] (rev 02)',
        '\tSubsystem: Red Hat, Inc. Device [1af4:1100]',
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
      for (const expected of [
        '\tCapabilities: [48] MSI: Enable- Count=1/4 Maskable+ 64bit+\n\t\tAddress: 0000000000000000  Data: 0000\n\t\tMasking: 00000000  Pending: 00000000\n',
        '\tCapabilities: [6c] Express (v2) Endpoint, MSI 00\n\t\tDevCap:\tMaxPayload 128 bytes, PhantFunc 0, Latency L0s <64ns, L1 <1us\n',
        '\t\tLnkSta:\tSpeed 2.5GT/s, Width x1\n',
        '\tCapabilities: [100 v1] Device Serial Number 01-23-45-67-89-ab-cd-ef\n',
      ]) {
        assert.ok(r.stdout.includes(expected), `missing:\n${expected}\nin:\n${r.stdout}`);
      }
      const plain = await runCli(['lspci', '-vv', dma.path]);
      assert.equal(plain.code, 0, plain.stderr);
      assert.match(plain.stdout, /^00:00\.0 .*\n\tControl: /, 'subsystem 0000: no Subsystem line');
    } finally {
      await dma.close();
    }
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
      const r = await runCli(['lspci', '-vv', served.path]);
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

  it('--json has ids with names, class, header registers, BARs, ROM and capabilities as fields', async () => {
    const r = await runCli(['lspci', '--json', '-i', PCI_IDS, rich.path]);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as {
      configSize: number;
      pciIds: string;
      vendor: { id: number; name: string | null };
      device: { id: number; name: string | null };
      subsystem: { vendorId: number; id: number; name: string | null };
      class: { code: number; subclassName: string };
      revision: number;
      command: Record<string, unknown>;
      interrupt: { pin: string };
      bars: Array<{ index: number; type: string; bits: number | null; prefetchable: boolean; size: number; address: number; enabled: boolean }>;
      rom: { size: number; enabled: boolean } | null;
      capabilities: Array<{ offset: number; id: number; extended: boolean; name: string; fields: Record<string, unknown> }>;
    };
    assert.deepEqual([j.configSize, j.pciIds, j.vendor, j.device, j.revision], [4096, PCI_IDS, { id: 0x1af4, name: 'Red Hat, Inc.' }, { id: 0x10f0, name: null }, 2]);
    assert.deepEqual([j.subsystem.vendorId, j.subsystem.id, j.class.code, j.class.subclassName, j.interrupt.pin], [0x1af4, 0x1100, 0x020000, 'Ethernet controller', 'A']);
    assert.equal(j.command['memory'], false);
    assert.deepEqual(
      j.bars.map((b) => [b.index, b.type, b.bits, b.prefetchable, b.size, b.address, b.enabled]),
      [
        [0, 'memory', 32, false, 4096, 0, false],
        [1, 'io', null, false, 256, 0, false],
        [2, 'memory', 64, true, 0x10000, 0, false],
        [4, 'memory', 32, false, 0x2000, 0, false],
      ],
    );
    assert.deepEqual(j.rom && [j.rom.size, j.rom.enabled], [2048, false]);
    assert.deepEqual(
      j.capabilities.map((c) => [c.offset, c.id, c.extended, c.name]),
      [
        [0x40, 0x01, false, 'Power Management'],
        [0x48, 0x05, false, 'MSI'],
        [0x60, 0x11, false, 'MSI-X'],
        [0x6c, 0x10, false, 'PCI Express'],
        [0xa8, 0x09, false, 'Vendor Specific Information'],
        [0x100, 0x0003, true, 'Device Serial Number'],
        [0x10c, 0x000b, true, 'Vendor Specific Information'],
      ],
    );
    assert.deepEqual(j.capabilities[2]?.fields, { enable: false, count: 8, masked: false, table: { bar: 4, offset: 0 }, pba: { bar: 4, offset: 0x1000 } });
    assert.equal((j.capabilities[3]?.fields['link'] as { width: number }).width, 1);
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

  it('the real lspci (VFIO_USER_LSPCI) decodes our --dump as we decode the device', { skip: noLspci }, async () => {
    const dma = serve(createDmaEngineDevice().device);
    const gpio = serve(createGpioDevice().device);
    // lspci -F has no BAR sizes: it lists a BAR only when its register is not 0 and prints no [size=]
    const notBar = (l: string): boolean => !/^\t(Region \d+: )?(Memory at|I\/O ports at|Expansion ROM at) /.test(l);
    try {
      for (const path of [rich.path, dma.path, gpio.path]) {
        const dump = await runCli(['lspci', '--dump', path]);
        const file = join(rich.dir, 'dump.txt');
        writeFileSync(file, dump.stdout);
        for (const mode of [[], ['-v'], ['-vv', '-nn']]) {
          const ours = await runCli(['lspci', ...mode, '-i', PCI_IDS, path]); // one client at a time: a second one would get EBUSY
          assert.equal(ours.code, 0, ours.stderr);
          const theirs = execFileSync(LSPCI ?? 'lspci', ['-F', file, '-i', PCI_IDS, '-O', 'hwdb.disable=1', ...mode], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
          // ... and so does not know a memory BAR exists when its register is 0, and then omits AtomicOpsCap (pciutils shows it for endpoints with one)
          const knowsMemoryBar = /^\t(Region \d+: )?Memory at /m.test(theirs);
          const comparable = (l: string): boolean => notBar(l) && (knowsMemoryBar || !l.startsWith('\t\t\t AtomicOpsCap:'));
          assert.deepEqual(ours.stdout.split('\n').filter(comparable), theirs.split('\n').filter(comparable), `lspci ${mode.join(' ')} on ${path}`);
          const bars = (text: string): string[] => text.split('\n').filter((l) => !notBar(l));
          for (const line of bars(theirs)) assert.ok(bars(ours.stdout).some((l) => l === line || l.startsWith(`${line} [size=`)), `${line} in:\n${ours.stdout}`);
        }
      }
    } finally {
      await dma.close();
      await gpio.close();
    }
  });

  it('-i with a file that cannot be read: one line naming it, before connecting', async () => {
    const missing = join(rich.dir, 'no-such.ids');
    const r = await runCli(['lspci', '-i', missing, join(rich.dir, 'nothing.sock')]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, `vfio-user: pci.ids ${missing}: ENOENT: no such file or directory, open '${missing}'\n`);
  });

  it('fails cleanly on a device that refuses config space reads', async () => {
    const r = await runCli(['lspci', join(rich.dir, 'nothing.sock')]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.split('\n').filter(Boolean).length, 1);
  });
});
