/**
 * The lspci decode against pciutils 3.9.0 itself, without needing it installed:
 * test/fixtures/pci/*.dump are config spaces (QEMU 10.2 q35 devices read through
 * qtest by grab-qemu-config.py: virtio-rng, virtio-net with AER, an e1000e with
 * BARs, MSI and bus mastering programmed, an NVMe; a PCIe root port; our own
 * "rich" test device; chains.dump: that device with its capability lists
 * broken in the ways lspci reports; more-caps.dump: with rarer capabilities
 * chained in), and *.lspci*.txt are what `lspci -F DUMP -i pci.ids
 * -O hwdb.disable=1` printed for them in each mode. Our decode of the same
 * bytes must print the same text. Also: pci.ids parsing and name formats, and
 * the structured (JSON) fields of AER and virtio capabilities.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, describe, it } from 'node:test';
import { parseLspciDump } from '../../src/pci/lspci.js';
import { capabilityLines, decodeCapabilities } from '../../src/cli/pci-caps.js';
import { barsFromConfig, lspciLines, lspciReport, romFromConfig, type DecodeStyle } from '../../src/cli/pci-decode.js';
import { formatClass, formatDevice, formatSubsystem, loadPciIds, NO_PCI_IDS, PciIds, type NumericMode } from '../../src/cli/pci-ids.js';
import { CliError } from '../../src/cli/common.js';

const FIXTURES = new URL('../../../test/fixtures/pci/', import.meta.url);
const fixture = (name: string): string => readFileSync(new URL(name, FIXTURES), 'utf8');
const IDS = new PciIds(fixture('pci.ids'), 'fixture');

/** Our text for every device of a dump, as `lspci -F` lays it out (BARs and ROM from the registers, as a dump has no sizes). */
function decodeDump(dump: string, verbosity: number, numeric: NumericMode, ids = IDS): string {
  const style: DecodeStyle = { verbosity, numeric, ids };
  return parseLspciDump(dump)
    .map((d) => [...lspciLines(d.bytes, d.slot, barsFromConfig(d.bytes), romFromConfig(d.bytes), style), ...(verbosity > 0 ? [''] : [])].join('\n') + '\n')
    .join('');
}

const MODES: Array<[string, number, NumericMode]> = [
  ['', 0, 0],
  ['-n', 0, 1],
  ['-nn', 0, 2],
  ['-v', 1, 0],
  ['-vv', 2, 0],
  ['-vvnn', 2, 2],
];

describe('lspci decode = pciutils 3.9.0 on the same bytes', () => {
  for (const name of ['qemu-q35', 'rich']) {
    for (const [suffix, verbosity, numeric] of MODES) {
      it(`${name} lspci ${suffix || '(one line)'}`, () => {
        const expected = fixture(`${name}.lspci${suffix}.txt`);
        assert.equal(decodeDump(fixture(`${name}.dump`), verbosity, numeric), expected);
      });
    }
  }

  const lists = [
    ['chains', 'broken lists (a loop, id 0xff, a Null capability, an extended loop)'],
    ['more-caps', 'Slot ID, Debug port, Hot-plug, an unknown id; ARI, ATS, LTR, Power Budgeting, an unknown extended id'],
  ] as const;
  for (const [name, what] of lists) {
    for (const [suffix, verbosity] of [['-v', 1], ['-vv', 2]] as const) {
      it(`${what}: lspci ${suffix}`, () => {
        assert.equal(decodeDump(fixture(`${name}.dump`), verbosity, 0), fixture(`${name}.lspci${suffix}.txt`));
      });
    }
  }

  it("a root port's capabilities: Express (slot, root, v2 registers), MSI-X, Subsystem, AER (root registers), ACS", () => {
    const [port] = parseLspciDump(fixture('qemu-root-port.dump'));
    assert.ok(port);
    const theirs = fixture('qemu-root-port.lspci-vv.txt').split('\n');
    const first = theirs.findIndex((l) => l.startsWith('\tCapabilities: '));
    assert.ok(first > 0);
    const subsystem = (sv: number, sd: number): string => formatSubsystem(IDS, 0x1b36, 0x000c, sv, sd, 0);
    const ours = capabilityLines(decodeCapabilities(port.bytes, { slot: port.slot, subsystem }), 2);
    assert.deepEqual(ours, theirs.slice(first).filter((l) => l !== ''));
  });

  it('no Subsystem line when the subsystem vendor is 0 or ffff; prog-if only when verbose', () => {
    const [rich] = parseLspciDump(fixture('rich.dump'));
    assert.ok(rich);
    for (const sv of [0x0000, 0xffff]) {
      const b = rich.bytes.slice();
      b[0x2c] = sv & 0xff;
      b[0x2d] = sv >> 8;
      const lines = lspciLines(b, '00:00.0', [], undefined, { verbosity: 2, numeric: 0, ids: IDS });
      assert.ok(!lines.some((l) => l.startsWith('\tSubsystem:')), lines.join('\n'));
    }
    const nvme = parseLspciDump(fixture('qemu-q35.dump')).find((d) => d.slot === '03:00.0');
    assert.ok(nvme);
    assert.equal(lspciLines(nvme.bytes, '03:00.0', [], undefined, { verbosity: 0, numeric: 0, ids: IDS })[0], '03:00.0 Non-Volatile memory controller: Red Hat, Inc. QEMU NVM Express Controller (rev 02)');
    assert.match(lspciLines(nvme.bytes, '03:00.0', [], undefined, { verbosity: 1, numeric: 0, ids: IDS })[0] ?? '', / \(prog-if 02 \[NVM Express\]\)$/);
  });

  it('BAR sizes from the probe are shown, in lspci units', () => {
    const [rich] = parseLspciDump(fixture('rich.dump'));
    assert.ok(rich);
    const bars = [
      { index: 0, kind: 'memory' as const, bits64: false, prefetchable: false, address: 0xfeed0000n, size: 4096n },
      { index: 2, kind: 'memory' as const, bits64: true, prefetchable: true, address: 0x8_0000_0000n, size: 1n << 40n },
      { index: 1, kind: 'io' as const, bits64: false, prefetchable: false, address: 0n, size: 256n },
    ];
    const lines = lspciLines(rich.bytes, '00:00.0', bars, { address: 0, enabled: false, size: 2048 }, { verbosity: 2, numeric: 0, ids: IDS });
    assert.ok(lines.includes('\tRegion 0: Memory at feed0000 (32-bit, non-prefetchable) [disabled] [size=4K]'), lines.join('\n'));
    assert.ok(lines.includes('\tRegion 2: Memory at 800000000 (64-bit, prefetchable) [disabled] [size=1T]'));
    assert.ok(lines.includes('\tRegion 1: I/O ports at <unassigned> [disabled] [size=256]'));
    assert.ok(lines.includes('\tExpansion ROM at <unassigned> [disabled] [size=2K]'));
  });
});

describe('lspci --json fields', () => {
  const q35 = parseLspciDump(fixture('qemu-q35.dump'));
  const net = q35.find((d) => d.slot === '01:00.0');
  assert.ok(net);

  it('ids, names, class, BARs and capability list', () => {
    const r = lspciReport(net.bytes, net.slot, barsFromConfig(net.bytes), undefined, IDS);
    assert.deepEqual([r.vendor, r.device], [{ id: 0x1af4, name: 'Red Hat, Inc.' }, { id: 0x1041, name: 'Virtio 1.0 network device' }]);
    assert.deepEqual(r.subsystem, { vendorId: 0x1af4, vendorName: 'Red Hat, Inc.', id: 0x1100, name: 'QEMU virtual machine' });
    assert.deepEqual(r.class, { code: 0x020000, base: 2, subclass: 0, progIf: 0, baseName: 'Network controller', subclassName: 'Ethernet controller', progIfName: null });
    assert.equal(r.command.busMaster, true);
    assert.equal(r.command.io, false);
    assert.deepEqual(r.bars.map((b) => [b.index, b.type, b.bits, b.prefetchable, b.address]), [[1, 'memory', 32, false, 0xfe200000n], [4, 'memory', 64, true, 0xfe400000n]]);
    assert.deepEqual(r.capabilities.map((c) => [c.offset, c.name]), [
      [0xdc, 'MSI-X'], [0xc8, 'Vendor Specific Information'], [0xb4, 'Vendor Specific Information'], [0xa4, 'Vendor Specific Information'],
      [0x94, 'Vendor Specific Information'], [0x84, 'Vendor Specific Information'], [0x7c, 'Power Management'], [0x40, 'PCI Express'], [0x100, 'Advanced Error Reporting'],
    ]);
    assert.ok(r.capabilities.every((c) => !('details' in c) && !('title' in c)), 'fields, not text lines');
  });

  it('virtio capabilities: cfg_type, bar, offset, length, notify multiplier', () => {
    const virtio = lspciReport(net.bytes, net.slot, [], undefined, NO_PCI_IDS).capabilities.filter((c) => c.id === 0x09).map((c) => c.fields['virtio']);
    assert.deepEqual(virtio, [
      { cfgType: 5, cfgTypeName: 'PciCfg', bar: 0, id: 0, offset: 0, length: 0 },
      { cfgType: 2, cfgTypeName: 'Notify', bar: 4, id: 0, offset: 0x3000, length: 0x1000, notifyOffMultiplier: 4 },
      { cfgType: 4, cfgTypeName: 'DeviceCfg', bar: 4, id: 0, offset: 0x2000, length: 0x1000 },
      { cfgType: 3, cfgTypeName: 'ISR', bar: 4, id: 0, offset: 0x1000, length: 0x1000 },
      { cfgType: 1, cfgTypeName: 'CommonCfg', bar: 4, id: 0, offset: 0, length: 0x1000 },
    ]);
  });

  it('AER: status, mask and severity bits by name, raw registers, header log', () => {
    const aer = lspciReport(net.bytes, net.slot, [], undefined, NO_PCI_IDS).capabilities.find((c) => c.extended && c.id === 1);
    assert.ok(aer);
    const f = aer.fields as { uncorrectable: { mask: Record<string, boolean>; severity: Record<string, boolean>; raw: { mask: number } }; correctable: { mask: Record<string, boolean> }; headerLog: number[]; capabilities: Record<string, boolean> };
    assert.equal(f.uncorrectable.mask['UnsupReq'], true);
    assert.equal(f.uncorrectable.mask['DLP'], false);
    assert.equal(f.uncorrectable.raw.mask, 0x00500000);
    assert.deepEqual(Object.entries(f.uncorrectable.severity).filter(([, v]) => v).map(([k]) => k), ['DLP', 'SDES', 'FCP', 'RxOF', 'MalfTLP']);
    assert.deepEqual(Object.entries(f.correctable.mask).filter(([, v]) => v).map(([k]) => k), ['RxErr', 'AdvNonFatalErr']);
    assert.deepEqual(f.headerLog, [0, 0, 0, 0]);
    assert.equal(f.capabilities['ECRCGenCap'], true);
  });

  it('a non-virtio vendor capability keeps its bytes as data', () => {
    const [rich] = parseLspciDump(fixture('rich.dump'));
    assert.ok(rich);
    const vendor = lspciReport(rich.bytes, '00:00.0', [], undefined, NO_PCI_IDS).capabilities.filter((c) => c.name === 'Vendor Specific Information');
    assert.deepEqual(vendor.map((c) => c.fields), [
      { length: 7, data: 'de ad be ef' },
      { vsecId: 0x1234, vsecRevision: 2, length: 0x10, data: '5a 5a 5a 5a 5a 5a 5a 5a' },
    ]);
  });
});

describe('pci.ids', () => {
  const TEXT = [
    '# comment',
    '1234  Acme',
    '\t5678  Widget',
    '\t\tabcd 0001  Widget Pro',
    '\tzzzz  malformed, skipped',
    '1af4  Red Hat, Inc.',
    'C 02  Network controller',
    '\t00  Ethernet controller',
    '\t\t01  Imaginary prog-if',
    'C 0c  Serial bus controller',
    'S 1234',
    '\t4321  Generic board',
    'X 99  unknown block, skipped',
    '\t1111  skipped too',
  ].join('\n');
  const ids = new PciIds(TEXT);

  it('parses vendors, devices, subsystems (per device, generic, same ids), classes and prog-ifs', () => {
    assert.equal(ids.vendor(0x1234), 'Acme');
    assert.equal(ids.device(0x1234, 0x5678), 'Widget');
    assert.equal(ids.subsystem(0x1234, 0x5678, 0xabcd, 0x0001), 'Widget Pro');
    assert.equal(ids.subsystem(0x1af4, 0x1000, 0x1234, 0x4321), 'Generic board');
    assert.equal(ids.subsystem(0x1234, 0x5678, 0x1234, 0x5678), 'Widget', 'subsystem = device');
    assert.equal(ids.subsystem(0x1234, 0x5678, 0x1234, 0x0002), undefined);
    assert.equal(ids.subClass(0x0200), 'Ethernet controller');
    assert.equal(ids.progIf(0x0200, 0x01), 'Imaginary prog-if');
    assert.equal(ids.baseClass(0x0c), 'Serial bus controller');
    assert.equal(ids.vendor(0x9999), undefined);
    assert.equal(ids.size, 9);
  });

  it("formats names like pciutils' pci_lookup_name in each mode", () => {
    assert.deepEqual([0, 1, 2].map((m) => formatDevice(ids, 0x1234, 0x5678, m as NumericMode)), ['Acme Widget', '1234:5678', 'Acme Widget [1234:5678]']);
    assert.deepEqual([0, 1, 2].map((m) => formatDevice(ids, 0x1af4, 0x10f0, m as NumericMode)), ['Red Hat, Inc. Device 10f0', '1af4:10f0', 'Red Hat, Inc. Device [1af4:10f0]']);
    assert.deepEqual([0, 1, 2].map((m) => formatDevice(ids, 0x4242, 0x0001, m as NumericMode)), ['Device 4242:0001', '4242:0001', 'Device [4242:0001]']);
    assert.deepEqual([0, 1, 2].map((m) => formatClass(ids, 0x0200, m as NumericMode)), ['Ethernet controller', '0200', 'Ethernet controller [0200]']);
    assert.deepEqual([0, 1, 2].map((m) => formatClass(ids, 0x0c80, m as NumericMode)), ['Serial bus controller [0c80]', '0c80', 'Serial bus controller [0c80]'], 'base class only: number shown');
    assert.deepEqual([0, 1, 2].map((m) => formatClass(ids, 0x0880, m as NumericMode)), ['Class 0880', '0880', 'Class [0880]']);
    assert.equal(formatSubsystem(ids, 0x1234, 0x5678, 0xabcd, 0x0001, 0), 'Device abcd:0001', 'unknown subsystem vendor');
    assert.equal(formatSubsystem(ids, 0x1234, 0x5678, 0x1234, 0x0002, 2), 'Acme Device [1234:0002]');
  });

  describe('loadPciIds', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-pci-ids-'));
    after(() => rmSync(dir, { recursive: true, force: true }));

    it('reads -i FILE, then $VFIO_USER_PCI_IDS (plain or .gz); an unreadable named file is an error naming it', () => {
      const plain = join(dir, 'pci.ids');
      const gz = join(dir, 'pci.ids.gz');
      writeFileSync(plain, TEXT);
      writeFileSync(gz, gzipSync(Buffer.from(TEXT.replace('Acme', 'Gzipped Acme'))));
      assert.equal(loadPciIds(plain, {}).vendor(0x1234), 'Acme');
      assert.equal(loadPciIds(undefined, { VFIO_USER_PCI_IDS: gz }).vendor(0x1234), 'Gzipped Acme');
      assert.equal(loadPciIds(plain, { VFIO_USER_PCI_IDS: gz }).source, plain, '-i wins');
      const missing = join(dir, 'nope.ids');
      assert.throws(() => loadPciIds(missing, {}), (e: unknown) => e instanceof CliError && e.message.includes(missing) && e.message.includes('ENOENT'));
      assert.throws(() => loadPciIds(undefined, { VFIO_USER_PCI_IDS: dir }), (e: unknown) => e instanceof CliError && e.message.includes('EISDIR'));
    });
  });
});
