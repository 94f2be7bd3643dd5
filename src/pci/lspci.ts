/**
 * The hex dump format of `lspci -x` / `-xxx` / `-xxxx`, which `lspci -F file`
 * reads back (pciutils `lib/dump.c`): per device a line starting with the slot
 * (`00:00.0 ` or `0000:00:00.0 `), then lines `00: xx xx …` of 16 bytes each,
 * then a blank line. `lspci` shows extended capabilities only when the dump
 * has all 4096 bytes.
 */
import { InvalidArgumentError, ProtocolError } from '../errors.js';
import { CAPABILITIES_START, EXT_CAPABILITIES_START, PciHeader, PciStatus } from './registers.js';

/** Options of {@link formatLspciDump}. */
export interface LspciDumpOptions {
  /** `bus:dev.fn` or `domain:bus:dev.fn` in hex. Default `'00:00.0'`. */
  slot?: string;
  /** Text after the slot. Default like `lspci -n`: `0580: 4e58:0001 (rev 01)`. */
  description?: string;
}

/** One device read back from a dump. */
export interface LspciDevice {
  readonly slot: string;
  readonly description: string;
  /** Config bytes up to the highest offset present; bytes not in the dump read 0xff. */
  readonly bytes: Uint8Array;
}

/** Capability positions found by walking the lists in config bytes. */
export interface CapabilityWalk {
  /** Standard capabilities in list order. */
  readonly capabilities: ReadonlyArray<{ readonly offset: number; readonly id: number }>;
  /** Extended capabilities in list order (empty for a 256-byte space). */
  readonly extended: ReadonlyArray<{ readonly offset: number; readonly id: number; readonly version: number }>;
}

const SLOT = /^(?:[0-9a-f]{4,6}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i;
const SLOT_LINE = /^((?:[0-9a-f]{4,6}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) (.*)$/i;
const HEX_LINE = /^([0-9a-f]{2,8}): ((?:[0-9a-f]{2} )*[0-9a-f]{2})$/i;
const MAX_DUMP = 4096;

function hex(n: number, width: number): string {
  return n.toString(16).padStart(width, '0');
}

function u16(b: Uint8Array, at: number): number {
  return (b[at] ?? 0) | ((b[at + 1] ?? 0) << 8);
}

function u32(b: Uint8Array, at: number): number {
  return (u16(b, at) | (u16(b, at + 2) << 16)) >>> 0;
}

function defaultDescription(b: Uint8Array): string {
  const rev = b[PciHeader.REVISION_ID] ?? 0;
  const cls = u16(b, PciHeader.CLASS_PROG + 1);
  const ids = `${hex(u16(b, PciHeader.VENDOR_ID), 4)}:${hex(u16(b, PciHeader.DEVICE_ID), 4)}`;
  return `${hex(cls, 4)}: ${ids}${rev === 0 ? '' : ` (rev ${hex(rev, 2)})`}`;
}

/**
 * Formats config bytes the way `lspci -xxx` (256 bytes) or `-xxxx` (4096) does.
 * @param bytes - config bytes; a multiple of 16, at most 4096 (e.g. {@link ConfigSpace.dump}).
 * @param options - slot and description for the first line.
 * @returns the text, ending with a blank line; feed it to `lspci -F`.
 * @throws {InvalidArgumentError} EINVAL for a bad length or slot.
 */
export function formatLspciDump(bytes: Uint8Array, options: LspciDumpOptions = {}): string {
  const slot = options.slot ?? '00:00.0';
  if (!SLOT.test(slot)) throw new InvalidArgumentError(`formatLspciDump: bad slot ${slot}`);
  if (bytes.length === 0 || bytes.length % 16 !== 0 || bytes.length > MAX_DUMP) {
    throw new InvalidArgumentError(`formatLspciDump: ${bytes.length} bytes is not a multiple of 16 up to 4096`);
  }
  const lines = [`${slot} ${options.description ?? defaultDescription(bytes)}`];
  for (let at = 0; at < bytes.length; at += 16) {
    const row = Array.from(bytes.subarray(at, at + 16), (b) => hex(b, 2)).join(' ');
    lines.push(`${hex(at, 2)}: ${row}`);
  }
  return `${lines.join('\n')}\n\n`;
}

function appendRow(bytes: Uint8Array, at: number, row: string, line: number): number {
  let end = at;
  for (const byte of row.split(' ')) {
    if (end >= MAX_DUMP) throw new ProtocolError(`lspci dump line ${line}: past 4096 bytes`);
    bytes[end++] = parseInt(byte, 16);
  }
  return end;
}

/**
 * Reads a dump in the format `lspci -F` accepts, following pciutils' rules.
 * @param text - dump text (one or more devices).
 * @returns the devices in order.
 * @throws {ProtocolError} EINVAL for a malformed line or bytes past 4096.
 */
export function parseLspciDump(text: string): LspciDevice[] {
  const devices: Array<{ slot: string; description: string; bytes: Uint8Array; length: number }> = [];
  let current: (typeof devices)[number] | undefined;
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    const slot = SLOT_LINE.exec(line);
    if (slot !== null) {
      current = { slot: slot[1] ?? '', description: slot[2] ?? '', bytes: new Uint8Array(MAX_DUMP).fill(0xff), length: 0 };
      devices.push(current);
    } else if (line === '') {
      current = undefined;
    } else if (current !== undefined) {
      const row = HEX_LINE.exec(line);
      if (row === null) throw new ProtocolError(`lspci dump line ${i + 1}: malformed`);
      const end = appendRow(current.bytes, parseInt(row[1] ?? '', 16), row[2] ?? '', i + 1);
      current.length = Math.max(current.length, end);
    }
  });
  return devices.map((d) => ({ slot: d.slot, description: d.description, bytes: d.bytes.slice(0, d.length) }));
}

/**
 * Walks the standard and extended capability lists in config bytes, as lspci
 * does (stops at a zero pointer, a loop, or the end of the bytes).
 * @param bytes - config bytes (at least the 64-byte header).
 * @returns capability offsets and ids in list order.
 */
export function walkCapabilities(bytes: Uint8Array): CapabilityWalk {
  const capabilities: Array<{ offset: number; id: number }> = [];
  const seen = new Set<number>();
  let at = u16(bytes, PciHeader.STATUS) & PciStatus.CAP_LIST ? (bytes[PciHeader.CAPABILITY_LIST] ?? 0) & ~3 : 0;
  while (at >= CAPABILITIES_START && at + 2 <= bytes.length && !seen.has(at)) {
    seen.add(at);
    capabilities.push({ offset: at, id: bytes[at] ?? 0 });
    at = (bytes[at + 1] ?? 0) & ~3;
  }
  const extended: Array<{ offset: number; id: number; version: number }> = [];
  at = EXT_CAPABILITIES_START;
  while (at >= EXT_CAPABILITIES_START && at + 4 <= bytes.length && !seen.has(at)) {
    const header = u32(bytes, at);
    if (header === 0 || header === 0xffffffff) break;
    seen.add(at);
    extended.push({ offset: at, id: header & 0xffff, version: (header >>> 16) & 0xf });
    at = (header >>> 20) & ~3;
  }
  return { capabilities, extended };
}
