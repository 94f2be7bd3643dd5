/**
 * `vfio-user read SOCKET REGION OFFSET [--count N] [--width 1|2|4|8]` and
 * `vfio-user write SOCKET REGION OFFSET VALUE [--width 1|2|4|8]`: register
 * access through REGION_READ / REGION_WRITE. Each value is one access of
 * `width` bytes (reads are pipelined); multi-byte values are little-endian.
 */
import { InvalidArgumentError } from '../../errors.js';
import { BarGate, parseAssignBars } from '../bar-gate.js';
import { hex, parseCount, parseInteger, parseRegion, parseWidth, regionAccessError, regionName, stdio, toJson, withClient, type GlobalOptions, type Output } from '../common.js';

/** Options of `read`. */
export interface ReadOptions {
  count?: string;
  width?: string;
  json?: boolean;
  /** `auto` (default), `always` or `never`: see bar-gate.ts. */
  assignBars?: string;
}

/** Options of `write`. */
export interface WriteOptions {
  width?: string;
  json?: boolean;
  /** `auto` (default), `always` or `never`: see bar-gate.ts. */
  assignBars?: string;
}

/** Reads in flight at once for `read --count`. */
const READ_WINDOW = 64;
/** Largest `--count` (values), so a typo cannot ask for gigabytes. */
const MAX_COUNT = 1 << 20;

/** Little-endian value of `width` bytes. */
export function leValue(bytes: Uint8Array): bigint {
  let v = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i] ?? 0);
  return v;
}

/** `value` as `width` little-endian bytes. @throws {InvalidArgumentError} EINVAL if it does not fit. */
export function leBytes(value: bigint, width: number, what = 'VALUE'): Uint8Array {
  if (value >= 1n << BigInt(8 * width)) throw new InvalidArgumentError(`${what}: 0x${value.toString(16)} does not fit in ${width} byte(s)`);
  const out = new Uint8Array(width);
  for (let i = 0, v = value; i < width; i++, v >>= 8n) out[i] = Number(v & 0xffn);
  return out;
}

/**
 * Issues `count` reads of `width` bytes from `offset`, at most {@link READ_WINDOW}
 * in flight; the first window goes through `gate` (which may set the BARs up
 * and retry it: a refused read did nothing).
 */
export async function readValues(gate: BarGate, region: number, offset: bigint, width: number, count: number): Promise<Uint8Array[]> {
  const client = gate.client;
  const out: Uint8Array[] = new Array<Uint8Array>(count);
  let failed: bigint | undefined;
  const batch = async (base: number): Promise<void> => {
    failed = undefined;
    const reads = Array.from({ length: Math.min(READ_WINDOW, count - base) }, (_, i) => {
      const at = offset + BigInt((base + i) * width);
      return client.regionRead(region, at, width).then(
        (b) => (out[base + i] = b),
        (error: unknown) => {
          failed ??= at;
          throw error;
        },
      );
    });
    await Promise.all(reads);
  };
  try {
    await gate.run(region, offset, Math.min(READ_WINDOW, count) * width, () => batch(0));
    for (let base = READ_WINDOW; base < count; base += READ_WINDOW) await batch(base);
  } catch (error) {
    const at = failed ?? offset;
    throw await regionAccessError(client, `read ${where(region, at)}`, { region, offset: at, length: width, write: false }, error);
  }
  return out;
}

/** One REGION_WRITE of `data` through `gate`. @throws {CliError} naming the site, with the server's errno. */
export async function writeValue(gate: BarGate, region: number, offset: bigint, data: Uint8Array): Promise<void> {
  try {
    await gate.run(region, offset, data.length, () => gate.client.regionWrite(region, offset, data));
  } catch (error) {
    throw await regionAccessError(gate.client, `write ${where(region, offset)}`, { region, offset, length: data.length, write: true }, error);
  }
}

/** The `--json` report of a read. */
export function readReport(region: number, offset: bigint, width: number, values: readonly Uint8Array[]): Record<string, unknown> {
  const data = values.map((b) => Buffer.from(b).toString('hex')).join('');
  return { region, regionName: regionName(region), offset, width, count: values.length, values: values.map((b) => hex(leValue(b), width * 2)), data };
}

/** Formats values: one bare value, or rows of 16 bytes' worth with their offsets. */
export function formatValues(offset: bigint, width: number, values: readonly Uint8Array[]): string[] {
  const digits = width * 2;
  const text = values.map((b) => leValue(b).toString(16).padStart(digits, '0'));
  if (values.length === 1) return [`0x${text[0] ?? ''}`];
  const perRow = Math.max(1, 16 / width);
  const last = offset + BigInt(values.length * width);
  const offsetDigits = Math.max(4, last.toString(16).length);
  const lines: string[] = [];
  for (let i = 0; i < text.length; i += perRow) {
    lines.push(`${hex(offset + BigInt(i * width), offsetDigits)}: ${text.slice(i, i + perRow).join(' ')}`);
  }
  return lines;
}

function where(region: number, offset: bigint): string {
  return `${regionName(region).toLowerCase()} ${hex(offset)}`;
}

/** Runs `read`. */
export async function runRead(socket: string, regionText: string, offsetText: string, options: ReadOptions, global: GlobalOptions, out: Output = stdio): Promise<void> {
  const region = parseRegion(regionText);
  const offset = parseInteger(offsetText, 'OFFSET');
  const width = parseWidth(options.width);
  const count = options.count === undefined ? 1 : parseCount(options.count, '--count', MAX_COUNT);
  const mode = parseAssignBars(options.assignBars);
  const values = await withClient(
    socket,
    global,
    (client) => readValues(new BarGate(client, mode, (t) => out.trace(`note: ${t}`)), region, offset, width, count),
    { out },
  );
  if (!options.json) return formatValues(offset, width, values).forEach((l) => out.line(l));
  out.line(toJson(readReport(region, offset, width, values)));
}

/** Runs `write`. */
export async function runWrite(
  socket: string,
  regionText: string,
  offsetText: string,
  valueText: string,
  options: WriteOptions,
  global: GlobalOptions,
  out: Output = stdio,
): Promise<void> {
  const region = parseRegion(regionText);
  const offset = parseInteger(offsetText, 'OFFSET');
  const width = parseWidth(options.width);
  const value = parseInteger(valueText, 'VALUE');
  const data = leBytes(value, width);
  const mode = parseAssignBars(options.assignBars);
  await withClient(socket, global, (client) => writeValue(new BarGate(client, mode, (t) => out.trace(`note: ${t}`)), region, offset, data), { out });
  const shown = hex(value, width * 2);
  if (options.json) out.line(toJson({ region, regionName: regionName(region), offset, width, value: shown, ok: true }));
  else out.line(`wrote ${shown} to ${regionName(region)}+${hex(offset)} (${width} byte${width === 1 ? '' : 's'})`);
}
