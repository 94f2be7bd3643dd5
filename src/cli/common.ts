/**
 * What every client command of the CLI shares: the global options (`--trace`,
 * `--timeout`), connecting, parsing REGION / OFFSET / VALUE arguments, naming
 * regions and IRQ indexes, one-line error messages and JSON output.
 */
import { statSync } from 'node:fs';
import { InvalidArgumentError, SystemError, VfioUserError, type VfioUserErrorOptions } from '../errors.js';
import { VfioUserClient } from '../client/client.js';
import type { ClientOptions, TraceEvent } from '../client/core.js';
import { RegionIndex, RegionInfoFlags } from '../protocol/constants.js';
import { native } from '../native/addon.js';
import { createTracePrinter } from './trace.js';
import { parseCount as parseCountValue, parseDuration, parseInteger } from './values.js';

export { parseInteger };

/** Options every command accepts (commander puts them on the root program). */
export interface GlobalOptions {
  /** Print every message on stderr, one decoded line each. */
  trace?: boolean;
  /** Per-request timeout in ms (also bounds connecting): a number from main.ts's argParser, or text in the duration syntax. */
  timeout?: number | string;
}

/** Where a command writes; tests and the demo can swap it. */
export interface Output {
  /** One line on stdout. */
  line(text: string): void;
  /** One trace line (stderr). */
  trace(text: string): void;
}

/** stdout for results, stderr for trace lines. */
export const stdio: Output = {
  line: (text) => void process.stdout.write(`${text}\n`),
  trace: (text) => void process.stderr.write(`${text}\n`),
};

const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * The `--timeout` in milliseconds: already a number when main.ts parsed it, else parsed here
 * (the duration syntax of values.ts: `500ms`, `10s`, plain milliseconds).
 * @throws {InvalidArgumentError} EINVAL for text that is not a duration.
 */
export function parseTimeout(value: number | string | undefined): number {
  if (value === undefined) return DEFAULT_TIMEOUT_MS;
  return typeof value === 'number' ? value : parseDuration(value, '--timeout');
}

/**
 * Connects to `socket` with the global options applied, runs `body`, closes.
 * @param extra - more client options (e.g. a trace hook of the command's own; it runs before the printer).
 * @throws whatever `body` throws; connect failures as {@link describeError} renders them.
 */
export async function withClient<T>(
  socket: string,
  global: GlobalOptions,
  body: (client: VfioUserClient) => Promise<T>,
  extra: { trace?: (event: TraceEvent) => void; out?: Output } = {},
): Promise<T> {
  const timeoutMs = parseTimeout(global.timeout);
  const printer = global.trace ? createTracePrinter((extra.out ?? stdio).trace) : undefined;
  const hooks = [extra.trace, printer].filter((h) => h !== undefined);
  const options: ClientOptions = { timeoutMs, connectTimeoutMs: timeoutMs };
  if (hooks.length > 0) options.trace = (event) => hooks.forEach((h) => h(event));
  let client: VfioUserClient;
  try {
    client = await VfioUserClient.connect(socket, options);
  } catch (error) {
    throw new CliError(`connect ${socket}: ${connectFailure(socket, error)}`, { cause: error });
  }
  try {
    return await body(client);
  } finally {
    client.close();
  }
}

/** A failure of a CLI command whose message is already the whole line to print (errno of its cause, if any). */
export class CliError extends VfioUserError {
  constructor(message: string, options: VfioUserErrorOptions = {}) {
    const cause = options.cause;
    const errno = options.errno ?? (cause instanceof VfioUserError ? cause.errno : undefined);
    super(message, { ...options, ...(errno === undefined ? {} : { errno }) });
    this.name = 'CliError';
  }
}

/** `ENOENT 2`, or the message when the error has no errno. */
export function errorReason(error: unknown): string {
  if (error instanceof SystemError) return `${error.code ?? 'errno'} ${error.errno}`;
  if (error instanceof Error) return error.message;
  return String(error);
}

/**
 * What is wrong with `path` as a server socket, from `stat`: `no such file`, `not a socket (a regular file)`,
 * `not a socket (a directory)`, …; undefined when it is a socket.
 */
export function socketPathProblem(path: string): string | undefined {
  let st;
  try {
    st = statSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return 'no such file (is a server running? vfio-user serve DEVICE --socket PATH creates it)';
    if (code === 'ENOTDIR') return 'no such file (a component of the path is not a directory)';
    if (code === 'EACCES') return 'permission denied (a directory on the path is not searchable)';
    return `cannot stat: ${code ?? String(error)}`;
  }
  if (st.isSocket()) return undefined;
  const kind = st.isDirectory() ? 'a directory' : st.isFIFO() ? 'a FIFO' : st.isFile() ? 'a regular file' : 'a device file';
  return `not a socket (${kind})`;
}

/** Why connecting to `socket` failed, in words: the path's problem, or why a socket refused. */
export function connectFailure(socket: string, error: unknown): string {
  const problem = socketPathProblem(socket);
  if (problem !== undefined) return problem;
  const reason = errorReason(error);
  if (error instanceof SystemError && error.code === 'ECONNREFUSED') return `${reason}: nothing listens on this socket (a stale file left by a server that exited?)`;
  return reason;
}

/** The one line printed for a failure (without the `vfio-user: ` prefix). */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message.split('\n')[0] ?? '';
  return String(error);
}

/** Wraps a failure of `what` so the printed line names the site: `read bar0 0x10: REGION_READ failed: EINVAL 22`. */
export function siteError(what: string, error: unknown): CliError {
  return new CliError(`${what}: ${describeError(error)}`, { cause: error });
}

// ------------------------------------------------------------------ names

const REGION_NAMES = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA'] as const;
const IRQ_NAMES = ['INTX', 'MSI', 'MSIX', 'ERR', 'REQ'] as const;

/** `BAR0`…`BAR5`, `ROM`, `CONFIG`, `VGA`, else `REGION<n>` (a device-specific region). */
export function regionName(index: number): string {
  return REGION_NAMES[index] ?? `REGION${index}`;
}

/** `INTX`, `MSI`, `MSIX`, `ERR`, `REQ`, else `IRQ<n>`. */
export function irqName(index: number): string {
  return IRQ_NAMES[index] ?? `IRQ${index}`;
}

const REGION_WORDS: Readonly<Record<string, number>> = {
  bar0: RegionIndex.BAR0,
  bar1: RegionIndex.BAR1,
  bar2: RegionIndex.BAR2,
  bar3: RegionIndex.BAR3,
  bar4: RegionIndex.BAR4,
  bar5: RegionIndex.BAR5,
  rom: RegionIndex.ROM,
  config: RegionIndex.CONFIG,
  cfg: RegionIndex.CONFIG,
  vga: RegionIndex.VGA,
};

/**
 * Parses a REGION argument: `bar0`…`bar5`, `rom`, `config`, `vga` (any case) or an index.
 * @throws {InvalidArgumentError} EINVAL for anything else.
 */
export function parseRegion(text: string): number {
  const word = REGION_WORDS[text.trim().toLowerCase()];
  if (word !== undefined) return word;
  if (!/^\s*(0x[0-9a-f_]+|[0-9_]+)\s*$/i.test(text)) throw new InvalidArgumentError(`REGION: '${text}' is not a region (bar0..bar5, rom, config, vga or an index)`);
  return Number(parseInteger(text, 'REGION', 0xffff_ffffn));
}

/**
 * The error to print for a refused access of `length` bytes at `offset` of `region`: when the
 * server's REGION_INFO explains the refusal, says why (`BAR1 is not implemented by this device`,
 * `BAR0 is 4K: 0x1000+4 is beyond its end`, `ROM is not writable`); else {@link siteError}.
 * Never throws (a failing REGION_INFO leaves the original error).
 */
export async function regionAccessError(client: VfioUserClient, what: string, access: { region: number; offset: bigint; length: number; write: boolean }, error: unknown): Promise<CliError> {
  const name = regionName(access.region);
  try {
    const { numRegions } = await client.deviceInfo();
    if (access.region >= numRegions) return new CliError(`${what}: this device has no region ${access.region} (it has ${numRegions})`, { cause: error });
    const { info, fd } = await client.regionInfo(access.region);
    if (fd !== undefined) native.close(fd);
    const why =
      info.size === 0n ? `${name} is not implemented by this device`
      : access.offset + BigInt(access.length) > info.size ? `${name} is ${humanSize(info.size)}: ${hex(access.offset)}+${access.length} is beyond its end`
      : (info.flags & (access.write ? RegionInfoFlags.WRITE : RegionInfoFlags.READ)) === 0 ? `${name} is not ${access.write ? 'writable' : 'readable'}`
      : undefined;
    if (why !== undefined) return new CliError(`${what}: ${why}`, { cause: error });
  } catch {
    // The original error says more than a failed REGION_INFO.
  }
  return siteError(what, error);
}

/**
 * Parses an option that must be a positive safe integer (`--count`, `--depth`): values.ts's count syntax.
 * @throws {InvalidArgumentError} EINVAL naming `what` for anything else, 0 or a value above `max`.
 */
export function parseCount(text: string, what: string, max = Number.MAX_SAFE_INTEGER): number {
  return parseCountValue(text, what, { max });
}

/** Parses `--width 1|2|4|8`. */
export function parseWidth(text: string | undefined): 1 | 2 | 4 | 8 {
  if (text === undefined) return 4;
  const n = Number(text);
  if (n === 1 || n === 2 || n === 4 || n === 8) return n;
  throw new InvalidArgumentError(`--width: '${text}' is not 1, 2, 4 or 8`);
}

// ------------------------------------------------------------------ formatting

/** `0x` + lower-case hex, zero-padded to `digits`. */
export function hex(value: number | bigint, digits = 0): string {
  return `0x${value.toString(16).padStart(digits, '0')}`;
}

/** `4K`, `1M`, `64K`, `4096` (bytes when not a whole binary unit). */
export function humanSize(size: bigint | number): string {
  const n = BigInt(size);
  const units = [
    ['G', 1n << 30n],
    ['M', 1n << 20n],
    ['K', 1n << 10n],
  ] as const;
  for (const [suffix, unit] of units) if (n >= unit && n % unit === 0n) return `${n / unit}${suffix}`;
  return n.toString();
}

/** Names of the bits set in `value` from `names` (bit → name); unknown bits as `0x..`. */
export function flagNames(value: number, names: Readonly<Record<string, number>>): string[] {
  const out: string[] = [];
  let rest = value >>> 0;
  for (const [name, bit] of Object.entries(names)) {
    if ((value & bit) === bit && bit !== 0) {
      out.push(name);
      rest &= ~bit >>> 0;
    }
  }
  if (rest !== 0) out.push(hex(rest));
  return out;
}

/** JSON with bigints as numbers when safe, decimal strings otherwise. */
export function toJson(value: unknown): string {
  return JSON.stringify(
    value,
    (_key, v: unknown) => {
      if (typeof v !== 'bigint') return v;
      return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
    },
    2,
  );
}

/** Left-aligned columns, two spaces apart. */
export function table(rows: readonly (readonly string[])[]): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  ').trimEnd());
}
