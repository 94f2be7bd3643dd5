/**
 * An lspci-style decode of config-space bytes for `vfio-user lspci`: the type-0
 * header (ids, class, Command/Status, BARs with their probed sizes, ROM,
 * interrupt pin) and, verbosely, each capability. The wording follows pciutils'
 * `lspci -nn -vv` so the two can be compared line by line.
 */
import { walkCapabilities } from '../pci/lspci.js';
import { CapabilityId, ExtCapabilityId, PciHeader } from '../pci/registers.js';
import { humanSize } from './common.js';

/** A BAR as the sizing probe found it. */
export interface BarProbe {
  index: number;
  kind: 'memory' | 'io';
  bits64: boolean;
  prefetchable: boolean;
  /** Address bits currently programmed. */
  address: bigint;
  size: bigint;
}

/** The expansion ROM BAR as the sizing probe found it. */
export interface RomProbe {
  address: number;
  enabled: boolean;
  size: number;
}

const u8 = (b: Uint8Array, at: number): number => b[at] ?? 0;
const u16 = (b: Uint8Array, at: number): number => u8(b, at) | (u8(b, at + 1) << 8);
const u32 = (b: Uint8Array, at: number): number => (u16(b, at) | (u16(b, at + 2) << 16)) >>> 0;
const x = (n: number | bigint, width: number): string => n.toString(16).padStart(width, '0');
const pm = (on: boolean): string => (on ? '+' : '-');

const CLASS_NAMES: Readonly<Record<number, string>> = {
  0x00: 'Unclassified device',
  0x01: 'Mass storage controller',
  0x02: 'Network controller',
  0x03: 'Display controller',
  0x04: 'Multimedia controller',
  0x05: 'Memory controller',
  0x06: 'Bridge',
  0x07: 'Communication controller',
  0x08: 'Generic system peripheral',
  0x09: 'Input device controller',
  0x0a: 'Docking station',
  0x0b: 'Processor',
  0x0c: 'Serial bus controller',
  0x0d: 'Wireless controller',
  0x0e: 'Intelligent controller',
  0x0f: 'Satellite communications controller',
  0x10: 'Encryption controller',
  0x11: 'Signal processing controller',
  0x12: 'Processing accelerators',
  0x13: 'Non-Essential Instrumentation',
  0xff: 'Unassigned class',
};

const SUBCLASS_NAMES: Readonly<Record<number, string>> = {
  0x0000: 'Non-VGA unclassified device',
  0x0108: 'Non-Volatile memory controller',
  0x0200: 'Ethernet controller',
  0x0300: 'VGA compatible controller',
  0x0500: 'RAM memory',
  0x0580: 'Memory controller',
  0x0880: 'System peripheral',
  0x0c03: 'USB controller',
};

/** `System peripheral`, else the base class name, else `Class xxxx`. */
export function className(classCode: number): string {
  const sub = (classCode >>> 8) & 0xffff;
  return SUBCLASS_NAMES[sub] ?? CLASS_NAMES[classCode >>> 16] ?? `Class ${x(sub, 4)}`;
}


/** The first line: `00:00.0 System peripheral [0880]: Device [1234:5a02] (rev 01)`. */
export function titleLine(b: Uint8Array, slot: string): string {
  const classCode = u32(b, PciHeader.REVISION_ID) >>> 8;
  const rev = u8(b, PciHeader.REVISION_ID);
  const progIf = classCode & 0xff;
  const ids = `${x(u16(b, PciHeader.VENDOR_ID), 4)}:${x(u16(b, PciHeader.DEVICE_ID), 4)}`;
  return `${slot} ${className(classCode)} [${x(classCode >>> 8, 4)}]: Device [${ids}]${rev ? ` (rev ${x(rev, 2)})` : ''}${progIf ? ` (prog-if ${x(progIf, 2)})` : ''}`;
}

function controlLine(cmd: number): string {
  const names = ['I/O', 'Mem', 'BusMaster', 'SpecCycle', 'MemWINV', 'VGASnoop', 'ParErr', 'Stepping', 'SERR', 'FastB2B', 'DisINTx'];
  return `Control: ${names.map((n, i) => `${n}${pm((cmd & (1 << i)) !== 0)}`).join(' ')}`;
}

function statusLine(st: number): string {
  const devsel = ['fast', 'medium', 'slow', '??'][(st >> 9) & 3] ?? '??';
  const f = (bit: number): string => pm((st & bit) !== 0);
  return (
    `Status: Cap${f(0x10)} 66MHz${f(0x20)} UDF${f(0x40)} FastB2B${f(0x80)} ParErr${f(0x100)} DEVSEL=${devsel} ` +
    `>TAbort${f(0x800)} <TAbort${f(0x1000)} <MAbort${f(0x2000)} >SERR${f(0x4000)} <PERR${f(0x8000)} INTx${f(0x08)}`
  );
}

function barLine(bar: BarProbe, cmd: number): string {
  const at = bar.address === 0n ? '<unassigned>' : x(bar.address, bar.kind === 'io' ? 4 : 8);
  const disabled = (bar.kind === 'io' ? cmd & 1 : cmd & 2) === 0 ? ' [disabled]' : '';
  const size = `[size=${humanSize(bar.size)}]`;
  if (bar.kind === 'io') return `Region ${bar.index}: I/O ports at ${at}${disabled} ${size}`;
  const kind = `${bar.bits64 ? '64-bit' : '32-bit'}, ${bar.prefetchable ? 'prefetchable' : 'non-prefetchable'}`;
  return `Region ${bar.index}: Memory at ${at} (${kind})${disabled} ${size}`;
}

/**
 * The header lines after the title (indented with a tab, as lspci does).
 * @param bars - the implemented BARs, from the sizing probe.
 */
export function headerLines(b: Uint8Array, bars: readonly BarProbe[], rom: RomProbe | undefined): string[] {
  const cmd = u16(b, PciHeader.COMMAND);
  const lines = [
    `Subsystem: Device [${x(u16(b, PciHeader.SUBSYSTEM_VENDOR_ID), 4)}:${x(u16(b, PciHeader.SUBSYSTEM_ID), 4)}]`,
    controlLine(cmd),
    statusLine(u16(b, PciHeader.STATUS)),
  ];
  const pin = u8(b, PciHeader.INTERRUPT_PIN);
  if (pin !== 0) lines.push(`Interrupt: pin ${pin <= 4 ? String.fromCharCode(0x40 + pin) : '?'} routed to IRQ ${u8(b, PciHeader.INTERRUPT_LINE)}`);
  for (const bar of bars) lines.push(barLine(bar, cmd));
  if (rom) {
    const at = rom.address === 0 ? '<unassigned>' : x(rom.address, 8);
    lines.push(`Expansion ROM at ${at}${rom.enabled ? '' : ' [disabled]'} [size=${humanSize(rom.size)}]`);
  }
  return lines.map((l) => `\t${l}`);
}

// ------------------------------------------------------------------ capabilities

const EXPRESS_TYPES: Readonly<Record<number, string>> = {
  0x0: 'Endpoint',
  0x1: 'Legacy Endpoint',
  0x4: 'Root Port (Slot-)',
  0x5: 'Upstream Port',
  0x6: 'Downstream Port (Slot-)',
  0x7: 'PCI-Express to PCI/PCI-X Bridge',
  0x8: 'PCI/PCI-X to PCI-Express Bridge',
  0x9: 'Root Complex Integrated Endpoint',
  0xa: 'Root Complex Event Collector',
};

function linkSpeed(code: number): string {
  return ['unknown', '2.5GT/s', '5GT/s', '8GT/s', '16GT/s', '32GT/s', '64GT/s'][code] ?? 'unknown';
}

/** A capability: its title (after `Capabilities: [40] `) and its verbose lines. */
interface Decoded {
  title: string;
  details: string[];
}

function decodePm(b: Uint8Array, at: number): Decoded {
  const pmc = u16(b, at + 2);
  const csr = u16(b, at + 4);
  const aux = [0, 55, 100, 160, 220, 270, 320, 375][(pmc >> 6) & 7] ?? 0;
  const pme = ['D0', 'D1', 'D2', 'D3hot', 'D3cold'].map((d, i) => `${d}${pm((pmc & (1 << (11 + i))) !== 0)}`).join(',');
  return {
    title: `Power Management version ${pmc & 7}`,
    details: [
      `Flags: PMEClk${pm((pmc & 8) !== 0)} DSI${pm((pmc & 0x20) !== 0)} D1${pm((pmc & 0x200) !== 0)} D2${pm((pmc & 0x400) !== 0)} AuxCurrent=${aux}mA PME(${pme})`,
      `Status: D${csr & 3} NoSoftRst${pm((csr & 8) !== 0)} PME-Enable${pm((csr & 0x100) !== 0)} DSel=${(csr >> 9) & 0xf} DScale=${(csr >> 13) & 3} PME${pm((csr & 0x8000) !== 0)}`,
    ],
  };
}

function decodeMsi(b: Uint8Array, at: number): Decoded {
  const ctl = u16(b, at + 2);
  const is64 = (ctl & 0x80) !== 0;
  const maskable = (ctl & 0x100) !== 0;
  const address = is64 ? (BigInt(u32(b, at + 8)) << 32n) | BigInt(u32(b, at + 4)) : BigInt(u32(b, at + 4));
  const dataAt = at + (is64 ? 12 : 8);
  const details = [`Address: ${x(address, is64 ? 16 : 8)}  Data: ${x(u16(b, dataAt), 4)}`];
  if (maskable) details.push(`Masking: ${x(u32(b, dataAt + 4), 8)}  Pending: ${x(u32(b, dataAt + 8), 8)}`);
  return {
    title: `MSI: Enable${pm((ctl & 1) !== 0)} Count=${1 << ((ctl >> 4) & 7)}/${1 << ((ctl >> 1) & 7)} Maskable${pm(maskable)} 64bit${pm(is64)}`,
    details,
  };
}

function decodeMsix(b: Uint8Array, at: number): Decoded {
  const ctl = u16(b, at + 2);
  const table = u32(b, at + 4);
  const pba = u32(b, at + 8);
  return {
    title: `MSI-X: Enable${pm((ctl & 0x8000) !== 0)} Count=${(ctl & 0x7ff) + 1} Masked${pm((ctl & 0x4000) !== 0)}`,
    details: [`Vector table: BAR=${table & 7} offset=${x((table & ~7) >>> 0, 8)}`, `PBA: BAR=${pba & 7} offset=${x((pba & ~7) >>> 0, 8)}`],
  };
}

function decodeExpress(b: Uint8Array, at: number): Decoded {
  const flags = u16(b, at + 2);
  const devcap = u32(b, at + 4);
  const devctl = u16(b, at + 8);
  const lnkcap = u32(b, at + 12);
  const lnksta = u16(b, at + 18);
  const type = (flags >> 4) & 0xf;
  const details = [
    `DevCap: MaxPayload ${128 << (devcap & 7)} bytes, PhantFunc ${(devcap >> 3) & 3}, ExtTag${pm((devcap & 0x20) !== 0)} RBE${pm((devcap & 0x8000) !== 0)}`,
    `DevCtl: CorrErr${pm((devctl & 1) !== 0)} NonFatalErr${pm((devctl & 2) !== 0)} FatalErr${pm((devctl & 4) !== 0)} UnsupReq${pm((devctl & 8) !== 0)} RlxdOrd${pm((devctl & 0x10) !== 0)} NoSnoop${pm((devctl & 0x800) !== 0)}`,
    `\tMaxPayload ${128 << ((devctl >> 5) & 7)} bytes, MaxReadReq ${128 << ((devctl >> 12) & 7)} bytes`,
  ];
  if (type !== 0x9) {
    details.push(`LnkCap: Port #${lnkcap >>> 24}, Speed ${linkSpeed(lnkcap & 0xf)}, Width x${(lnkcap >> 4) & 0x3f}`);
    details.push(`LnkSta: Speed ${linkSpeed(lnksta & 0xf)}, Width x${(lnksta >> 4) & 0x3f}`);
  }
  return { title: `Express (v${flags & 0xf}) ${EXPRESS_TYPES[type] ?? `Unknown type ${type}`}, MSI ${x((flags >> 9) & 0x1f, 2)}`, details };
}

function hexBytes(b: Uint8Array, from: number, to: number): string[] {
  const lines: string[] = [];
  for (let at = from; at < to; at += 16) {
    lines.push(Array.from(b.subarray(at, Math.min(to, at + 16)), (v) => x(v, 2)).join(' '));
  }
  return lines;
}

function decodeVendor(b: Uint8Array, at: number): Decoded {
  const len = u8(b, at + 2);
  return { title: `Vendor Specific Information: Len=${x(len, 2)} <?>`, details: len > 3 ? hexBytes(b, at + 3, at + len).map((l) => `Data: ${l}`) : [] };
}

function decodeStandard(b: Uint8Array, at: number, id: number): Decoded {
  switch (id) {
    case CapabilityId.PM:
      return decodePm(b, at);
    case CapabilityId.MSI:
      return decodeMsi(b, at);
    case CapabilityId.MSIX:
      return decodeMsix(b, at);
    case CapabilityId.EXPRESS:
      return decodeExpress(b, at);
    case CapabilityId.VENDOR:
      return decodeVendor(b, at);
    default:
      return { title: `Capability ID ${x(id, 2)} <?>`, details: [] };
  }
}

function decodeExtended(b: Uint8Array, at: number, id: number): Decoded {
  if (id === ExtCapabilityId.DSN) {
    const lo = u32(b, at + 4);
    const hi = u32(b, at + 8);
    const serial = [hi >>> 24, (hi >>> 16) & 0xff, (hi >>> 8) & 0xff, hi & 0xff, lo >>> 24, (lo >>> 16) & 0xff, (lo >>> 8) & 0xff, lo & 0xff];
    return { title: `Device Serial Number ${serial.map((v) => x(v, 2)).join('-')}`, details: [] };
  }
  if (id === ExtCapabilityId.VENDOR) {
    const h = u32(b, at + 4);
    const len = h >>> 20;
    const details = len > 8 ? hexBytes(b, at + 8, Math.min(b.length, at + len)).map((l) => `Data: ${l}`) : [];
    return { title: `Vendor Specific Information: ID=${x(h & 0xffff, 4)} Rev=${(h >>> 16) & 0xf} Len=${x(len, 3)} <?>`, details };
  }
  return { title: `Extended Capability ID ${x(id, 4)} <?>`, details: [] };
}

/** Capability names and positions, for `--json`. */
export interface CapabilityReport {
  offset: number;
  id: number;
  extended: boolean;
  version?: number;
  title: string;
  details: string[];
}

/** Decodes every capability in list order. */
export function decodeCapabilities(b: Uint8Array): CapabilityReport[] {
  const walk = walkCapabilities(b);
  return [
    ...walk.capabilities.map((c) => ({ offset: c.offset, id: c.id, extended: false, ...decodeStandard(b, c.offset, c.id) })),
    ...walk.extended.map((c) => ({ offset: c.offset, id: c.id, extended: true, version: c.version, ...decodeExtended(b, c.offset, c.id) })),
  ];
}

/** `\tCapabilities: [40] …` lines, with the details (two tabs) when `verbose`. */
export function capabilityLines(caps: readonly CapabilityReport[], verbose: boolean): string[] {
  const lines: string[] = [];
  for (const c of caps) {
    const where = c.extended ? `${x(c.offset, 3)} v${c.version ?? 0}` : x(c.offset, 2);
    lines.push(`\tCapabilities: [${where}] ${c.title}`);
    if (verbose) lines.push(...c.details.map((d) => `\t\t${d}`));
  }
  return lines;
}
