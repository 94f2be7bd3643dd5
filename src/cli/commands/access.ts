/**
 * `vfio-user read SOCKET REGION OFFSET [--count N] [--width 1|2|4|8]` and
 * `vfio-user write SOCKET REGION OFFSET VALUE [--width 1|2|4|8]`: register
 * access through REGION_READ / REGION_WRITE. Each value is one access of
 * `width` bytes (reads are pipelined); multi-byte values are little-endian.
 */
import type { VfioUserClient } from '../../client/client.js';
import { InvalidArgumentError } from '../../errors.js';
import { hex, parseCount, parseInteger, parseRegion, parseWidth, regionName, siteError, stdio, toJson, withClient, type GlobalOptions, type Output } from '../common.js';

/** Options of `read`. */
export interface ReadOptions {
  count?: string;
  width?: string;
  json?: boolean;
}

/** Options of `write`. */
export interface WriteOptions {
  width?: string;
  json?: boolean;
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

/** Issues `count` reads of `width` bytes from `offset`, at most {@link READ_WINDOW} in flight. */
async function readValues(client: VfioUserClient, region: number, offset: bigint, width: number, count: number): Promise<Uint8Array[]> {
  const out: Uint8Array[] = new Array<Uint8Array>(count);
  for (let base = 0; base < count; base += READ_WINDOW) {
    const batch = Array.from({ length: Math.min(READ_WINDOW, count - base) }, (_, i) => {
      const at = offset + BigInt((base + i) * width);
      return client.regionRead(region, at, width).then(
        (b) => (out[base + i] = b),
        (error: unknown) => Promise.reject(siteError(`read ${where(region, at)}`, error)),
      );
    });
    await Promise.all(batch);
  }
  return out;
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
  const values = await withClient(
    socket,
    global,
    (client) => readValues(client, region, offset, width, count),
    { out },
  );
  if (!options.json) return formatValues(offset, width, values).forEach((l) => out.line(l));
  const data = values.map((b) => Buffer.from(b).toString('hex')).join('');
  const report = { region, regionName: regionName(region), offset, width, count, values: values.map((b) => hex(leValue(b), width * 2)), data };
  out.line(toJson(report));
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
  await withClient(
    socket,
    global,
    async (client) => {
      try {
        await client.regionWrite(region, offset, data);
      } catch (error) {
        throw siteError(`write ${where(region, offset)}`, error);
      }
    },
    { out },
  );
  const shown = hex(value, width * 2);
  if (options.json) out.line(toJson({ region, regionName: regionName(region), offset, width, value: shown, ok: true }));
  else out.line(`wrote ${shown} to ${regionName(region)}+${hex(offset)} (${width} byte${width === 1 ? '' : 's'})`);
}
