/**
 * Capability decoders for `vfio-user lspci`, worded as pciutils 3.9 prints
 * them: Power Management, MSI, MSI-X, PCI Express, vendor-specific (virtio's
 * `virtio_pci_cap` when the device is a virtio one, as lspci decides), and the
 * extended Advanced Error Reporting, Device Serial Number and Vendor-Specific
 * ones. Each gives its `lspci -v` title, its `-vv` lines and JSON fields.
 */
import { CapabilityId, ExtCapabilityId, PciHeader, PciStatus } from '../pci/registers.js';
import { flagFields, flagText, pm, u16, u32, u8, x, type BitNames } from './pci-bytes.js';
import { decodeMoreExtended, decodeMoreStandard, type SubsystemNamer } from './pci-caps-more.js';
import { decodeExpress, type ExpressContext } from './pci-express.js';

/** What decoding needs besides the capability's bytes. */
interface DecodeContext extends ExpressContext {
  subsystem: SubsystemNamer;
}

/** One decoded capability (before its position is added). */
export interface Decoded {
  /** Short name for JSON (`Power Management`, `MSI-X`, `Advanced Error Reporting`, …). */
  name: string;
  /** The text after `Capabilities: [40] ` at `-vv`. */
  title: string;
  /** The title at `-v` when it differs (lspci adds the version of Express only at `-vv`). */
  brief?: string;
  /** The `-vv` lines, without their two leading tabs. */
  details: string[];
  /** Decoded registers. */
  fields: Record<string, unknown>;
}

/** A capability with its position, as `lspci --json` reports it. */
export interface CapabilityReport extends Decoded {
  offset: number;
  id: number;
  extended: boolean;
  /** Capability version (extended capabilities only). */
  version?: number;
}

/** Virtio structure types of `virtio_pci_cap.cfg_type` (virtio 1.x §4.1.4). */
export const VirtioCfgType = { COMMON: 1, NOTIFY: 2, ISR: 3, DEVICE: 4, PCI: 5, SHARED_MEMORY: 8, VENDOR: 9 } as const;
const VIRTIO_LSPCI_NAMES: Readonly<Record<number, string>> = { 1: 'CommonCfg', 2: 'Notify', 3: 'ISR', 4: 'DeviceCfg' };
const VIRTIO_NAMES: Readonly<Record<number, string>> = { ...VIRTIO_LSPCI_NAMES, 5: 'PciCfg', 8: 'SharedMemory', 9: 'Vendor' };
/** Ids lspci knows that registers.ts does not name: PCI-X (it allows extended capabilities) and AER. */
const CAP_PCIX = 0x07;
const EXT_AER = 0x0001;
/** C's `%#02x`: `0` or `0x` + hex. */
const alt = (v: number): string => (v === 0 ? '0' : `0x${v.toString(16)}`);
/** Red Hat's vendor id; its devices 0x1000–0x107f are virtio devices. */
const VIRTIO_VENDOR = 0x1af4;

function decodePm(b: Uint8Array, at: number): Decoded {
  const pmc = u16(b, at + 2);
  const csr = u16(b, at + 4);
  const aux = [0, 55, 100, 160, 220, 270, 320, 375][(pmc >> 6) & 7] ?? 0;
  const pmeBits: BitNames = [['D0', 0x800], ['D1', 0x1000], ['D2', 0x2000], ['D3hot', 0x4000], ['D3cold', 0x8000]];
  const pme = pmeBits.map(([n, m]) => `${n}${pm((pmc & m) !== 0)}`).join(',');
  const flags: BitNames = [['PMEClk', 0x8], ['DSI', 0x20], ['D1', 0x200], ['D2', 0x400]];
  const details = [
    `Flags: ${flagText(pmc, flags)} AuxCurrent=${aux}mA PME(${pme})`,
    `Status: D${csr & 3} NoSoftRst${pm((csr & 8) !== 0)} PME-Enable${pm((csr & 0x100) !== 0)} DSel=${(csr >> 9) & 0xf} DScale=${(csr >> 13) & 3} PME${pm((csr & 0x8000) !== 0)}`,
  ];
  const bridge = u8(b, at + 6);
  if (bridge !== 0) details.push(`Bridge: PM${pm((bridge & 0x80) !== 0)} B3${pm((bridge & 0x40) === 0)}`);
  return {
    name: 'Power Management',
    title: `Power Management version ${pmc & 7}`,
    details,
    fields: {
      version: pmc & 7,
      ...flagFields(pmc, flags),
      auxCurrentMa: aux,
      pmeFrom: flagFields(pmc, pmeBits),
      powerState: `D${csr & 3}`,
      noSoftReset: (csr & 8) !== 0,
      pmeEnable: (csr & 0x100) !== 0,
      pmeStatus: (csr & 0x8000) !== 0,
    },
  };
}

function decodeMsi(b: Uint8Array, at: number): Decoded {
  const ctl = u16(b, at + 2);
  const is64 = (ctl & 0x80) !== 0;
  const maskable = (ctl & 0x100) !== 0;
  const address = is64 ? (BigInt(u32(b, at + 8)) << 32n) | BigInt(u32(b, at + 4)) : BigInt(u32(b, at + 4));
  const dataAt = at + (is64 ? 12 : 8);
  const data = u16(b, dataAt);
  const details = [`Address: ${x(address, is64 ? 16 : 8)}  Data: ${x(data, 4)}`];
  const fields: Record<string, unknown> = {
    enable: (ctl & 1) !== 0,
    count: 1 << ((ctl >> 4) & 7),
    maxCount: 1 << ((ctl >> 1) & 7),
    maskable,
    bits64: is64,
    address,
    data,
  };
  if (maskable) {
    details.push(`Masking: ${x(u32(b, dataAt + 4), 8)}  Pending: ${x(u32(b, dataAt + 8), 8)}`);
    Object.assign(fields, { mask: u32(b, dataAt + 4), pending: u32(b, dataAt + 8) });
  }
  return { name: 'MSI', title: `MSI: Enable${pm((ctl & 1) !== 0)} Count=${fields['count']}/${fields['maxCount']} Maskable${pm(maskable)} 64bit${pm(is64)}`, details, fields };
}

function decodeMsix(b: Uint8Array, at: number): Decoded {
  const ctl = u16(b, at + 2);
  const table = u32(b, at + 4);
  const pba = u32(b, at + 8);
  const where = (v: number): { bar: number; offset: number } => ({ bar: v & 7, offset: (v & ~7) >>> 0 });
  return {
    name: 'MSI-X',
    title: `MSI-X: Enable${pm((ctl & 0x8000) !== 0)} Count=${(ctl & 0x7ff) + 1} Masked${pm((ctl & 0x4000) !== 0)}`,
    details: [`Vector table: BAR=${table & 7} offset=${x((table & ~7) >>> 0, 8)}`, `PBA: BAR=${pba & 7} offset=${x((pba & ~7) >>> 0, 8)}`],
    fields: { enable: (ctl & 0x8000) !== 0, count: (ctl & 0x7ff) + 1, masked: (ctl & 0x4000) !== 0, table: where(table), pba: where(pba) },
  };
}

function hexData(b: Uint8Array, from: number, to: number): string {
  return Array.from(b.subarray(from, Math.max(from, Math.min(b.length, to))), (v) => x(v, 2)).join(' ');
}

function isVirtio(b: Uint8Array): boolean {
  const device = u16(b, PciHeader.DEVICE_ID);
  return u16(b, PciHeader.VENDOR_ID) === VIRTIO_VENDOR && device >= 0x1000 && device <= 0x107f;
}

/** `virtio_pci_cap`: cfg_type, bar, id, offset, length (and the notify multiplier). */
function decodeVirtio(b: Uint8Array, at: number, len: number): Decoded {
  const type = u8(b, at + 3);
  const fields: Record<string, unknown> = {
    length: len,
    virtio: { cfgType: type, cfgTypeName: VIRTIO_NAMES[type] ?? null, bar: u8(b, at + 4), id: u8(b, at + 5), offset: u32(b, at + 8), length: u32(b, at + 12) },
  };
  let line = `BAR=${u8(b, at + 4)} offset=${x(u32(b, at + 8), 8)} size=${x(u32(b, at + 12), 8)}`;
  if (type === VirtioCfgType.NOTIFY && len >= 20) {
    line += ` multiplier=${x(u32(b, at + 16), 8)}`;
    Object.assign(fields['virtio'] as object, { notifyOffMultiplier: u32(b, at + 16) });
  }
  return { name: 'Vendor Specific Information', title: `Vendor Specific Information: VirtIO: ${VIRTIO_LSPCI_NAMES[type] ?? '<unknown>'}`, details: [line], fields };
}

function decodeVendor(b: Uint8Array, at: number): Decoded {
  const len = u8(b, at + 2);
  if (isVirtio(b) && len >= 16 && at + len <= b.length) return decodeVirtio(b, at, len);
  return { name: 'Vendor Specific Information', title: `Vendor Specific Information: Len=${x(len, 2)} <?>`, details: [], fields: { length: len, data: hexData(b, at + 3, at + len) } };
}

function decodeStandard(b: Uint8Array, at: number, id: number, context: DecodeContext): Decoded {
  switch (id) {
    case CapabilityId.PM:
      return decodePm(b, at);
    case CapabilityId.MSI:
      return decodeMsi(b, at);
    case CapabilityId.MSIX:
      return decodeMsix(b, at);
    case CapabilityId.EXPRESS:
      return decodeExpress(b, at, context);
    case CapabilityId.VENDOR:
      return decodeVendor(b, at);
    case 0x00:
      return { name: 'Null', title: 'Null', details: [], fields: {} };
    default:
      return decodeMoreStandard(b, at, id, context.subsystem) ?? { name: 'Unknown', title: `Capability ID ${alt(id)} [${x(u16(b, at + 2), 4)}]`, details: [], fields: {} };
  }
}

// ------------------------------------------------------------------ extended

const UNCORRECTABLE: BitNames = [
  ['DLP', 0x10], ['SDES', 0x20], ['TLP', 0x1000], ['FCP', 0x2000], ['CmpltTO', 0x4000], ['CmpltAbrt', 0x8000],
  ['UnxCmplt', 0x10000], ['RxOF', 0x20000], ['MalfTLP', 0x40000], ['ECRC', 0x80000], ['UnsupReq', 0x100000], ['ACSViol', 0x200000],
];
const CORRECTABLE: BitNames = [['RxErr', 0x1], ['BadTLP', 0x40], ['BadDLLP', 0x80], ['Rollover', 0x100], ['Timeout', 0x1000], ['AdvNonFatalErr', 0x2000]];
const AER_CAP_1: BitNames = [['ECRCGenCap', 0x20], ['ECRCGenEn', 0x40], ['ECRCChkCap', 0x80], ['ECRCChkEn', 0x100]];
const AER_CAP_2: BitNames = [['MultHdrRecCap', 0x200], ['MultHdrRecEn', 0x400], ['TLPPfxPres', 0x800], ['HdrLogCap', 0x1000]];
const ROOT_CMD: BitNames = [['CERptEn', 1], ['NFERptEn', 2], ['FERptEn', 4]];
const ROOT_STA_1: BitNames = [['CERcvd', 1], ['MultCERcvd', 2], ['UERcvd', 4], ['MultUERcvd', 8]];
const ROOT_STA_2: BitNames = [['FirstFatal', 0x10], ['NonFatalMsg', 0x20], ['FatalMsg', 0x40]];

/** Advanced Error Reporting (extended id 0x0001); the root registers for a root port or event collector. */
function decodeAer(b: Uint8Array, at: number, expressType: number | undefined): Decoded {
  const r = (off: number): number => u32(b, at + off);
  const cap = r(24);
  const headerLog = [r(28), r(32), r(36), r(40)];
  const details = [
    `UESta:\t${flagText(r(4), UNCORRECTABLE)}`,
    `UEMsk:\t${flagText(r(8), UNCORRECTABLE)}`,
    `UESvrt:\t${flagText(r(12), UNCORRECTABLE)}`,
    `CESta:\t${flagText(r(16), CORRECTABLE)}`,
    `CEMsk:\t${flagText(r(20), CORRECTABLE)}`,
    `AERCap:\tFirst Error Pointer: ${x(cap & 0x1f, 2)}, ${flagText(cap, AER_CAP_1)}`,
    `\t${flagText(cap, AER_CAP_2)}`,
    `HeaderLog: ${headerLog.map((v) => x(v, 8)).join(' ')}`,
  ];
  const fields: Record<string, unknown> = {
    uncorrectable: { status: flagFields(r(4), UNCORRECTABLE), mask: flagFields(r(8), UNCORRECTABLE), severity: flagFields(r(12), UNCORRECTABLE), raw: { status: r(4), mask: r(8), severity: r(12) } },
    correctable: { status: flagFields(r(16), CORRECTABLE), mask: flagFields(r(20), CORRECTABLE), raw: { status: r(16), mask: r(20) } },
    firstErrorPointer: cap & 0x1f,
    capabilities: flagFields(cap, [...AER_CAP_1, ...AER_CAP_2]),
    headerLog,
  };
  if (expressType === 0x4 || expressType === 0xa) {
    const sta = r(48);
    details.push(
      `RootCmd: ${flagText(r(44), ROOT_CMD)}`,
      `RootSta: ${flagText(sta, ROOT_STA_1)}`,
      `\t ${flagText(sta, ROOT_STA_2)} IntMsg ${(sta >>> 27) & 0x1f}`,
      `ErrorSrc: ERR_COR: ${x(u16(b, at + 52), 4)} ERR_FATAL/NONFATAL: ${x(u16(b, at + 54), 4)}`,
    );
    fields['root'] = { command: flagFields(r(44), ROOT_CMD), status: flagFields(sta, [...ROOT_STA_1, ...ROOT_STA_2]), interruptMessage: (sta >>> 27) & 0x1f, correctableSource: u16(b, at + 52), uncorrectableSource: u16(b, at + 54) };
  }
  return { name: 'Advanced Error Reporting', title: 'Advanced Error Reporting', details, fields };
}

function decodeExtended(b: Uint8Array, at: number, id: number, expressType: number | undefined): Decoded {
  if (id === EXT_AER) return decodeAer(b, at, expressType);
  if (id === 0x0000) return { name: 'Null', title: 'Null', details: [], fields: {} };
  if (id === ExtCapabilityId.DSN) {
    const lo = u32(b, at + 4);
    const hi = u32(b, at + 8);
    const serial = [hi >>> 24, (hi >>> 16) & 0xff, (hi >>> 8) & 0xff, hi & 0xff, lo >>> 24, (lo >>> 16) & 0xff, (lo >>> 8) & 0xff, lo & 0xff]
      .map((v) => x(v, 2))
      .join('-');
    return { name: 'Device Serial Number', title: `Device Serial Number ${serial}`, details: [], fields: { serialNumber: serial } };
  }
  if (id === ExtCapabilityId.VENDOR) {
    const h = u32(b, at + 4);
    const len = h >>> 20;
    return {
      name: 'Vendor Specific Information',
      title: `Vendor Specific Information: ID=${x(h & 0xffff, 4)} Rev=${(h >>> 16) & 0xf} Len=${x(len, 3)} <?>`,
      details: [],
      fields: { vsecId: h & 0xffff, vsecRevision: (h >>> 16) & 0xf, length: len, data: hexData(b, at + 8, at + len) },
    };
  }
  return decodeMoreExtended(b, at, id) ?? { name: 'Unknown', title: `Extended Capability ID ${alt(id)}`, details: [], fields: {} };
}

/** A memory BAR is implemented: its register has address or type bits, or the probe sized it. */
function hasMemoryBar(b: Uint8Array, sized: readonly { kind: string; size: bigint }[]): boolean {
  for (let i = 0; i < 6; i++) {
    const reg = u32(b, PciHeader.BASE_ADDRESS_0 + 4 * i);
    if (reg !== 0 && (reg & 1) === 0) return true;
  }
  return sized.some((bar) => bar.kind === 'memory' && bar.size !== 0n);
}

/** What ends a capability list early, as lspci says it (after `[40] `). */
const ChainEnd = { LOOPED: '<chain looped>', BROKEN: '<chain broken>', DENIED: '<access denied>' } as const;

function chainEnd(offset: number, id: number, extended: boolean, title: string, version?: number): CapabilityReport {
  return { offset, id, extended, ...(version === undefined ? {} : { version }), name: title.slice(1, -1), title, details: [], fields: {} };
}

/** The standard list as lspci walks it: from the pointer at 0x34, to a zero pointer, a loop, id 0xff or the end of the bytes. */
function walkStandard(b: Uint8Array, context: DecodeContext): CapabilityReport[] {
  const out: CapabilityReport[] = [];
  if ((u16(b, PciHeader.STATUS) & PciStatus.CAP_LIST) === 0) return out;
  const seen = new Set<number>();
  for (let at = u8(b, PciHeader.CAPABILITY_LIST) & ~3; at !== 0; at = u8(b, at + 1) & ~3) {
    const id = u8(b, at);
    if (at + 4 > b.length) return [...out, chainEnd(at, id, false, ChainEnd.DENIED)];
    if (seen.has(at)) return [...out, chainEnd(at, id, false, ChainEnd.LOOPED)];
    if (id === 0xff) return [...out, chainEnd(at, id, false, ChainEnd.BROKEN)];
    seen.add(at);
    out.push({ offset: at, id, extended: false, ...decodeStandard(b, at, id, context) });
  }
  return out;
}

/** The extended list as lspci walks it: from 0x100, to an all-0 or all-1 header, a loop, or the end of the bytes. */
function walkExtended(b: Uint8Array, expressType: number | undefined): CapabilityReport[] {
  const out: CapabilityReport[] = [];
  const seen = new Set<number>();
  let at = 0x100;
  do {
    if (at + 4 > b.length) break;
    const header = u32(b, at);
    if (header === 0 || header === 0xffffffff) break;
    const [id, version] = [header & 0xffff, (header >>> 16) & 0xf];
    if (seen.has(at)) return [...out, chainEnd(at, id, true, ChainEnd.LOOPED, version)];
    seen.add(at);
    out.push({ offset: at, id, extended: true, version, ...decodeExtended(b, at, id, expressType) });
    at = (header >>> 20) & ~3;
  } while (at !== 0);
  return out;
}

/**
 * Decodes every capability in list order, as lspci walks the lists. Extended
 * capabilities only follow a PCI Express (or PCI-X) capability in a 4096-byte
 * space, as lspci has it.
 * @param options.bars - BARs the sizing probe found (their sizes tell lspci a memory BAR exists).
 * @param options.slot - the function's `bus:dev.fn` (an endpoint other than device 0 function 0 has no LnkCap2/LnkCtl2).
 * @param options.subsystem - names subsystem ids for the Subsystem capability (default: numbers).
 */
export function decodeCapabilities(b: Uint8Array, options: { bars?: readonly { kind: string; size: bigint }[]; slot?: string; subsystem?: SubsystemNamer } = {}): CapabilityReport[] {
  const subsystem = options.subsystem ?? ((sv: number, sd: number): string => `Device ${x(sv, 4)}:${x(sd, 4)}`);
  const context: DecodeContext = { hasMemoryBar: hasMemoryBar(b, options.bars ?? []), functionZero: (options.slot ?? '00:00.0').endsWith(':00.0'), subsystem };
  const std = walkStandard(b, context);
  const express = std.find((c) => c.id === CapabilityId.EXPRESS && c.fields['type'] !== undefined);
  if (express === undefined && !std.some((c) => c.id === CAP_PCIX)) return std;
  return [...std, ...walkExtended(b, express === undefined ? undefined : (u16(b, express.offset + 2) >> 4) & 0xf)];
}

/** `\tCapabilities: [40] …` lines at verbosity 1 (titles) or 2+ (titles with versions, then details). */
export function capabilityLines(caps: readonly CapabilityReport[], verbosity: number): string[] {
  const lines: string[] = [];
  for (const c of caps) {
    const where = c.extended ? `${x(c.offset, 3)}${verbosity > 1 ? ` v${c.version ?? 0}` : ''}` : x(c.offset, 2);
    lines.push(`\tCapabilities: [${where}] ${verbosity > 1 ? c.title : (c.brief ?? c.title)}`);
    if (verbosity > 1) lines.push(...c.details.map((d) => `\t\t${d}`));
  }
  return lines;
}
