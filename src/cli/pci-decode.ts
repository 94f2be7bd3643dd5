/**
 * An lspci-style decode of config-space bytes for `vfio-user lspci`, following
 * pciutils 3.9: the one-line title (class and device names from `pci.ids`,
 * numbers with `-n`, both with `-nn`), then at `-v` the Subsystem (when not 0),
 * Flags, BARs (with the sizes our probe found), ROM and capability titles, and
 * at `-vv` Control/Status/Latency/Interrupt and each capability's registers.
 * The same decode feeds `--json` as structured fields.
 */
import { PciHeader } from '../pci/registers.js';
import { capabilityLines, decodeCapabilities, type CapabilityReport } from './pci-caps.js';
import { flagFields, flagText, u16, u32, u8, x, type BitNames } from './pci-bytes.js';
import { formatClass, formatDevice, formatSubsystem, type NumericMode, type PciIds } from './pci-ids.js';

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

/** How to print: verbosity (0 = one line, `-v` = 1, `-vv` = 2, `-vvv` = 3), names mode and the names. */
export interface DecodeStyle {
  verbosity: number;
  numeric: NumericMode;
  ids: PciIds;
}

const COMMAND: BitNames = [
  ['I/O', 0x1], ['Mem', 0x2], ['BusMaster', 0x4], ['SpecCycle', 0x8], ['MemWINV', 0x10], ['VGASnoop', 0x20],
  ['ParErr', 0x40], ['Stepping', 0x80], ['SERR', 0x100], ['FastB2B', 0x200], ['DisINTx', 0x400],
];
const STATUS_1: BitNames = [['Cap', 0x10], ['66MHz', 0x20], ['UDF', 0x40], ['FastB2B', 0x80], ['ParErr', 0x100]];
const STATUS_2: BitNames = [['>TAbort', 0x800], ['<TAbort', 0x1000], ['<MAbort', 0x2000], ['>SERR', 0x4000], ['<PERR', 0x8000], ['INTx', 0x8]];
const DEVSEL = ['fast', 'medium', 'slow', '??'];
/** The same bits under JSON-friendly names. */
const COMMAND_JSON: BitNames = [
  ['io', 0x1], ['memory', 0x2], ['busMaster', 0x4], ['specialCycles', 0x8], ['memoryWriteInvalidate', 0x10], ['vgaPaletteSnoop', 0x20],
  ['parityErrorResponse', 0x40], ['stepping', 0x80], ['serr', 0x100], ['fastBackToBack', 0x200], ['intxDisable', 0x400],
];
const STATUS_JSON: BitNames = [
  ['interrupt', 0x8], ['capabilities', 0x10], ['mhz66', 0x20], ['udf', 0x40], ['fastBackToBack', 0x80], ['masterDataParityError', 0x100],
  ['signaledTargetAbort', 0x800], ['receivedTargetAbort', 0x1000], ['receivedMasterAbort', 0x2000], ['signaledSystemError', 0x4000], ['detectedParityError', 0x8000],
];

/** The class code (base, sub-class, prog-if) of config bytes. */
const classCode = (b: Uint8Array): number => u32(b, PciHeader.REVISION_ID) >>> 8;

/** lspci's ` [size=4K]`: the largest binary unit that divides the size (up to T). */
export function lspciSize(size: bigint | number): string {
  let n = BigInt(size);
  let unit = 0;
  while (unit < 4 && n % 1024n === 0n && n !== 0n) {
    n /= 1024n;
    unit++;
  }
  return `${n}${['', 'K', 'M', 'G', 'T'][unit]}`;
}

/**
 * The BARs as `lspci -F` sees them in a dump: from the registers alone (no sizes),
 * skipping a BAR whose register is 0 and the upper half of a 64-bit BAR.
 */
export function barsFromConfig(b: Uint8Array): BarProbe[] {
  const bars: BarProbe[] = [];
  for (let i = 0; i < 6; i++) {
    const low = u32(b, PciHeader.BASE_ADDRESS_0 + 4 * i);
    const io = (low & 1) !== 0;
    const bits64 = !io && (low & 6) === 4 && i < 5;
    const high = bits64 ? BigInt(u32(b, PciHeader.BASE_ADDRESS_0 + 4 * (i + 1))) << 32n : 0n;
    if (low !== 0) bars.push({ index: i, kind: io ? 'io' : 'memory', bits64, prefetchable: !io && (low & 8) !== 0, address: high | BigInt((low & (io ? ~3 : ~0xf)) >>> 0), size: 0n });
    if (bits64) i++;
  }
  return bars;
}

/** The expansion ROM as `lspci -F` sees it in a dump: shown when its register is not 0, size unknown. */
export function romFromConfig(b: Uint8Array): RomProbe | undefined {
  const reg = u32(b, PciHeader.ROM_ADDRESS);
  return reg === 0 ? undefined : { address: (reg & 0xfffff800) >>> 0, enabled: (reg & 1) !== 0, size: 0 };
}

/** The first line: `00:00.0 Ethernet controller: Red Hat, Inc. Device 10f0 (rev 02)` (by style). */
export function titleLine(b: Uint8Array, slot: string, style: DecodeStyle): string {
  const cls = classCode(b);
  const rev = u8(b, PciHeader.REVISION_ID);
  let line = `${slot} ${formatClass(style.ids, cls >>> 8, style.numeric)}: ${formatDevice(style.ids, u16(b, PciHeader.VENDOR_ID), u16(b, PciHeader.DEVICE_ID), style.numeric)}`;
  if (rev !== 0) line += ` (rev ${x(rev, 2)})`;
  const progIf = cls & 0xff;
  const progIfName = style.ids.progIf(cls >>> 8, progIf);
  if (style.verbosity > 0 && (progIf !== 0 || progIfName !== undefined)) line += ` (prog-if ${x(progIf, 2)}${progIfName === undefined ? '' : ` [${progIfName}]`})`;
  return line;
}

function flagsLine(b: Uint8Array): string {
  const cmd = u16(b, PciHeader.COMMAND);
  const st = u16(b, PciHeader.STATUS);
  const parts: string[] = [];
  if (cmd & 0x4) parts.push('bus master');
  if (cmd & 0x20) parts.push('VGA palette snoop');
  if (cmd & 0x80) parts.push('stepping');
  if (cmd & 0x200) parts.push('fast Back2Back');
  if (st & 0x20) parts.push('66MHz');
  if (st & 0x40) parts.push('user-definable features');
  parts.push(`${DEVSEL[(st >> 9) & 3]} devsel`);
  if (cmd & 0x4) parts.push(`latency ${u8(b, PciHeader.LATENCY_TIMER)}`);
  const irq = u8(b, PciHeader.INTERRUPT_LINE);
  if (irq !== 0) parts.push(`IRQ ${irq}`);
  return `Flags: ${parts.join(', ')}`;
}

function latencyLine(b: Uint8Array): string {
  const minGnt = u8(b, PciHeader.MIN_GNT);
  const maxLat = u8(b, PciHeader.MAX_LAT);
  const cacheLine = u8(b, PciHeader.CACHE_LINE_SIZE);
  let line = `Latency: ${u8(b, PciHeader.LATENCY_TIMER)}`;
  if (minGnt || maxLat) line += ` (${[minGnt ? `${minGnt * 250}ns min` : '', maxLat ? `${maxLat * 250}ns max` : ''].filter(Boolean).join(', ')})`;
  if (cacheLine) line += `, Cache Line Size: ${cacheLine * 4} bytes`;
  return line;
}

function controlStatusLines(b: Uint8Array): string[] {
  const cmd = u16(b, PciHeader.COMMAND);
  const st = u16(b, PciHeader.STATUS);
  const lines = [`Control: ${flagText(cmd, COMMAND)}`, `Status: ${flagText(st, STATUS_1)} DEVSEL=${DEVSEL[(st >> 9) & 3]} ${flagText(st, STATUS_2)}`];
  if (cmd & 0x4) lines.push(latencyLine(b));
  const pin = u8(b, PciHeader.INTERRUPT_PIN);
  const irq = u8(b, PciHeader.INTERRUPT_LINE);
  if (pin !== 0 || irq !== 0) lines.push(`Interrupt: pin ${pin === 0 ? '?' : String.fromCharCode(0x40 + pin)} routed to IRQ ${irq}`);
  return lines;
}

function barLine(bar: BarProbe, cmd: number, verbosity: number): string {
  const region = verbosity > 1 ? `Region ${bar.index}: ` : '';
  const size = bar.size === 0n ? '' : ` [size=${lspciSize(bar.size)}]`;
  if (bar.kind === 'io') {
    const at = bar.address !== 0n || cmd & 1 ? x(bar.address, 4) : '<unassigned>';
    return `${region}I/O ports at ${at}${cmd & 1 ? '' : ' [disabled]'}${size}`;
  }
  const at = bar.address === 0n ? '<unassigned>' : x(bar.address, 8);
  const kind = `${bar.bits64 ? '64-bit' : '32-bit'}, ${bar.prefetchable ? '' : 'non-'}prefetchable`;
  return `${region}Memory at ${at} (${kind})${cmd & 2 ? '' : ' [disabled]'}${size}`;
}

function romLine(rom: RomProbe, cmd: number): string {
  const at = rom.address === 0 ? '<unassigned>' : x(rom.address, 8);
  const state = !rom.enabled ? ' [disabled]' : cmd & 2 ? '' : ' [disabled by cmd]';
  return `Expansion ROM at ${at}${state}${rom.size === 0 ? '' : ` [size=${lspciSize(rom.size)}]`}`;
}

/**
 * The lines after the title at `style.verbosity` ≥ 1 (none at 0), tab-indented as lspci's.
 * @param bars - the implemented BARs, from the sizing probe.
 * @param slot - the function's `bus:dev.fn` (lspci's decode depends on it in one place).
 */
export function detailLines(b: Uint8Array, bars: readonly BarProbe[], rom: RomProbe | undefined, style: DecodeStyle, slot = '00:00.0'): string[] {
  if (style.verbosity < 1) return [];
  const cmd = u16(b, PciHeader.COMMAND);
  const lines: string[] = [];
  const [vendor, device, sv, sd] = [u16(b, PciHeader.VENDOR_ID), u16(b, PciHeader.DEVICE_ID), u16(b, PciHeader.SUBSYSTEM_VENDOR_ID), u16(b, PciHeader.SUBSYSTEM_ID)];
  if (sv !== 0 && sv !== 0xffff) lines.push(`Subsystem: ${formatSubsystem(style.ids, vendor, device, sv, sd, style.numeric)}`);
  lines.push(...(style.verbosity > 1 ? controlStatusLines(b) : [flagsLine(b)]));
  const bist = u8(b, PciHeader.BIST);
  if (bist & 0x80) lines.push(bist & 0x40 ? 'BIST is running' : `BIST result: ${x(bist & 0xf, 2)}`);
  for (const bar of bars) lines.push(barLine(bar, cmd, style.verbosity));
  if (rom) lines.push(romLine(rom, cmd));
  return [...lines.map((l) => `\t${l}`), ...capabilityLines(decodeCapabilities(b, { bars, slot, subsystem: (s1, s2) => formatSubsystem(style.ids, vendor, device, s1, s2, style.numeric) }), style.verbosity)];
}

/** Everything lspci prints for one device, one line per entry (no trailing blank line). */
export function lspciLines(b: Uint8Array, slot: string, bars: readonly BarProbe[], rom: RomProbe | undefined, style: DecodeStyle): string[] {
  return [titleLine(b, slot, style), ...detailLines(b, bars, rom, style, slot)];
}

/** `lspci --json`: ids with their names, class, header registers, BARs, ROM and capabilities as fields. */
export interface LspciReport {
  slot: string;
  configSize: number;
  /** The `pci.ids` the names came from (`null`: none found). */
  pciIds: string | null;
  vendor: { id: number; name: string | null };
  device: { id: number; name: string | null };
  /** `null` when the subsystem vendor is 0 (or 0xffff). */
  subsystem: { vendorId: number; vendorName: string | null; id: number; name: string | null } | null;
  class: { code: number; base: number; subclass: number; progIf: number; baseName: string | null; subclassName: string | null; progIfName: string | null };
  revision: number;
  headerType: number;
  command: Record<string, boolean | number>;
  status: Record<string, boolean | number | string>;
  interrupt: { pin: string | null; line: number };
  bars: Array<{ index: number; type: 'memory' | 'io'; bits: 32 | 64 | null; prefetchable: boolean; address: bigint; size: bigint; enabled: boolean }>;
  rom: { address: number; size: number; enabled: boolean } | null;
  capabilities: Array<Omit<CapabilityReport, 'title' | 'brief' | 'details'>>;
}

/** Builds the `--json` report from the same decode as the text. */
export function lspciReport(b: Uint8Array, slot: string, bars: readonly BarProbe[], rom: RomProbe | undefined, ids: PciIds): LspciReport {
  const [vendor, device, sv, sd] = [u16(b, PciHeader.VENDOR_ID), u16(b, PciHeader.DEVICE_ID), u16(b, PciHeader.SUBSYSTEM_VENDOR_ID), u16(b, PciHeader.SUBSYSTEM_ID)];
  const cls = classCode(b);
  const cmd = u16(b, PciHeader.COMMAND);
  const st = u16(b, PciHeader.STATUS);
  const pin = u8(b, PciHeader.INTERRUPT_PIN);
  return {
    slot,
    configSize: b.length,
    pciIds: ids.source ?? null,
    vendor: { id: vendor, name: ids.vendor(vendor) ?? null },
    device: { id: device, name: ids.device(vendor, device) ?? null },
    subsystem: sv === 0 || sv === 0xffff ? null : { vendorId: sv, vendorName: ids.vendor(sv) ?? null, id: sd, name: ids.subsystem(vendor, device, sv, sd) ?? null },
    class: {
      code: cls,
      base: cls >>> 16,
      subclass: (cls >>> 8) & 0xff,
      progIf: cls & 0xff,
      baseName: ids.baseClass(cls >>> 16) ?? null,
      subclassName: ids.subClass(cls >>> 8) ?? null,
      progIfName: ids.progIf(cls >>> 8, cls & 0xff) ?? null,
    },
    revision: u8(b, PciHeader.REVISION_ID),
    headerType: u8(b, PciHeader.HEADER_TYPE),
    command: { raw: cmd, ...flagFields(cmd, COMMAND_JSON) },
    status: { raw: st, ...flagFields(st, STATUS_JSON), devsel: DEVSEL[(st >> 9) & 3] ?? '??' },
    interrupt: { pin: pin >= 1 && pin <= 4 ? String.fromCharCode(0x40 + pin) : null, line: u8(b, PciHeader.INTERRUPT_LINE) },
    bars: bars.map((bar) => ({
      index: bar.index,
      type: bar.kind,
      bits: bar.kind === 'io' ? null : bar.bits64 ? 64 : 32,
      prefetchable: bar.prefetchable,
      address: bar.address,
      size: bar.size,
      enabled: (cmd & (bar.kind === 'io' ? 1 : 2)) !== 0,
    })),
    rom: rom ? { address: rom.address, size: rom.size, enabled: rom.enabled && (cmd & 2) !== 0 } : null,
    capabilities: decodeCapabilities(b, { bars, slot }).map(({ offset, id, extended, version, name, fields }) => ({ offset, id, extended, ...(version === undefined ? {} : { version }), name, fields })),
  };
}
