/**
 * The CLI's value syntaxes, one per kind, shared by every command:
 *
 * - **sizes** (`--size`, `--large-size`, `--bandwidth`): a number of bytes with an
 *   optional `K`, `M`, `G` or `T` suffix, binary (`4K` = `4KiB` = `4KB` = 4096),
 *   a fraction allowed when the result is whole (`1.5M`); the unit math is the
 *   `bytes` package's (which alone would read `4K` as 4);
 * - **durations** (`--timeout`, `--downtime`, `--time-limit`, …): the `ms`
 *   package's syntax (`300ms`, `5s`, `1.5s`, `2m`, `1h`), a plain number being
 *   milliseconds;
 * - **counts and integers** (`--count`, `--jobs`, `--port`, offsets, values):
 *   decimal, `0x` hex, `0o` octal or `0b` binary, `_` separators allowed.
 *
 * Each syntax has a `parse*` function (a string in, a number out, or an
 * {@link InvalidArgumentError} naming the option) and a commander option
 * builder (`sizeOption`, `durationOption`, `countOption`) whose argParser
 * rejects a bad value while the command line is parsed, before any side effect.
 */
import bytes from 'bytes';
import ms from 'ms';
import { InvalidArgumentError as CommanderInvalidArgument, Option } from 'commander';
import { InvalidArgumentError } from '../errors.js';

/** Bounds a parsed value must respect (inclusive). */
export interface ValueRules {
  /** Smallest value accepted (sizes and counts: default 1; durations: default 1 ms). */
  min?: number;
  /** Largest value accepted (default: the largest safe integer; durations: 2^31 - 1 ms, setTimeout's limit). */
  max?: number;
}

/** Rules of a size. */
export interface SizeRules extends ValueRules {
  /** Only powers of two (BAR sizes). */
  powerOfTwo?: boolean;
  /** A rate: `/s` may follow the size (`200M/s`, `20MB/s`). */
  perSecond?: boolean;
}

/** Rules of an option built by {@link sizeOption}, {@link durationOption} or {@link countOption}. */
export interface OptionRules {
  /** The default, in the option's own syntax (`'64K'`, `'10s'`): parsed now, shown as written in `--help`. */
  default?: string;
}

/** The largest duration a Node timer can wait (`setTimeout` fires at once beyond it). */
export const MAX_DURATION_MS = 2 ** 31 - 1;

const SIZE_EXAMPLES = 'bytes with an optional K, M, G or T suffix, K = 1024: 4096, 4K, 64KiB, 1M';
const DURATION_EXAMPLES = 'e.g. 300ms, 5s, 1.5s, 2m; a plain number is milliseconds';
const COUNT_EXAMPLES = 'decimal or 0x-hex';

/**
 * A value outside its syntax or rules. `reason` follows the text (`'4X'` + ` is not a size …`)
 * or, for a bound, stands alone (`must be at least 1`).
 */
class ValueError extends Error {
  readonly quote: boolean;
  constructor(reason: string, quote = true) {
    super(reason);
    this.quote = quote;
  }
}

function bounded(value: number, rules: ValueRules, show: (n: number) => string, defaults: Required<ValueRules>): number {
  const min = rules.min ?? defaults.min;
  const max = rules.max ?? defaults.max;
  if (value < min) throw new ValueError(`must be at least ${show(min)}`, false);
  if (value > max) throw new ValueError(`must be at most ${show(max)}`, false);
  return value;
}

/** `4096` → `4K`, `1048576` → `1M`, `1000` → `1000` (how limits are shown). */
function showSize(n: number): string {
  if (n >= 1024 && n % 1024 === 0) return (bytes.format(n, { unitSeparator: '' }) ?? String(n)).replace(/B$/, '');
  return String(n);
}

function showDuration(n: number): string {
  return ms(n);
}

function sizeValue(text: string, rules: SizeRules): number {
  const t = rules.perSecond ? text.trim().replace(/\/s$/i, '') : text.trim();
  const m = /^(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?$/i.exec(t);
  if (!m) throw new ValueError(`is not a size (${SIZE_EXAMPLES})`);
  const [, number = '', unit] = m;
  const value = unit ? bytes.parse(`${number}${unit}b`) : Number(number);
  const exact = unit ? Number(number) * (bytes.parse(`1${unit}b`) ?? NaN) : value;
  if (value === null || value !== exact || !Number.isSafeInteger(value)) throw new ValueError('is not a whole number of bytes');
  bounded(value, rules, showSize, { min: 1, max: Number.MAX_SAFE_INTEGER });
  if (rules.powerOfTwo && !Number.isInteger(Math.log2(value))) throw new ValueError('is not a power of two (e.g. 4K, 64K, 1M)');
  return value;
}

function durationValue(text: string, rules: ValueRules): number {
  const t = text.trim();
  // ms() also reads "-5s" and "1e3"; only non-negative decimal amounts are durations here.
  const value = /^\d+(\.\d+)?\s*[a-z]*$/i.test(t) ? (ms(t as ms.StringValue) as number | undefined) : undefined;
  if (value === undefined || !Number.isFinite(value)) throw new ValueError(`is not a duration (${DURATION_EXAMPLES})`);
  return bounded(value, rules, showDuration, { min: 1, max: MAX_DURATION_MS });
}

function integerValue(text: string, max: bigint): bigint {
  const t = text.trim().replace(/_/g, '');
  if (!/^(0x[0-9a-f]+|0o[0-7]+|0b[01]+|\d+)$/i.test(t)) throw new ValueError(`is not a number (${COUNT_EXAMPLES})`);
  const value = BigInt(t.toLowerCase());
  if (value > max) throw new ValueError(`${text.trim()} is larger than 0x${max.toString(16)}`, false);
  return value;
}

function countValue(text: string, rules: ValueRules): number {
  const value = Number(integerValue(text, BigInt(Number.MAX_SAFE_INTEGER)));
  return bounded(value, rules, String, { min: 1, max: Number.MAX_SAFE_INTEGER });
}

/** Runs `parse`, turning its complaint into one line naming `what` (EINVAL). */
function named<T>(what: string, text: string, parse: (t: string) => T): T {
  try {
    return parse(text);
  } catch (error) {
    if (error instanceof ValueError) throw new InvalidArgumentError(`${what}: ${error.quote ? `'${text}' ` : ''}${error.message}`);
    throw error;
  }
}

/**
 * Parses a size: `4096`, `4K`, `4KiB`, `4KB`, `64k`, `1M`, `1.5M`, `2G`, `1T` (binary units).
 * @param what - the option or argument named in the error (`--size`).
 * @throws {InvalidArgumentError} EINVAL for another syntax, a fraction of a byte, or a value outside `rules`.
 */
export function parseSize(text: string, what: string, rules: SizeRules = {}): number {
  return named(what, text, (t) => sizeValue(t, rules));
}

/**
 * Parses a duration into milliseconds: `300ms`, `5s`, `1.5s`, `2m`, `1h`, or plain milliseconds (`250`).
 * @throws {InvalidArgumentError} EINVAL for another syntax, a negative duration or one outside `rules` (default 1 ms … 2^31 - 1 ms).
 */
export function parseDuration(text: string, what: string, rules: ValueRules = {}): number {
  return named(what, text, (t) => durationValue(t, rules));
}

/**
 * Parses a count: a positive integer (decimal, `0x` hex, `0o`, `0b`; `_` separators allowed).
 * @throws {InvalidArgumentError} EINVAL for another syntax or a value outside `rules` (default 1 … 2^53 - 1).
 */
export function parseCount(text: string, what: string, rules: ValueRules = {}): number {
  return named(what, text, (t) => countValue(t, rules));
}

/**
 * Parses a non-negative integer of up to 64 bits (an offset, a register value), same syntax as counts.
 * @param max - largest value accepted (default 2^64 - 1).
 * @throws {InvalidArgumentError} EINVAL for another syntax or a value above `max`.
 */
export function parseInteger(text: string, what: string, max = (1n << 64n) - 1n): bigint {
  return named(what, text, (t) => integerValue(t, max));
}

/** A commander argParser from a value parser: commander prints `option '--x <v>' argument 'y' is invalid. It <reason>.` */
function argParser<T>(parse: (text: string) => T): (text: string) => T {
  return (text) => {
    try {
      return parse(text);
    } catch (error) {
      if (error instanceof ValueError) throw new CommanderInvalidArgument(error.quote ? `It ${error.message}.` : `${error.message.charAt(0).toUpperCase()}${error.message.slice(1)}.`);
      throw error;
    }
  };
}

function option<T>(flags: string, description: string, parse: (text: string) => T, rules: OptionRules): Option {
  const opt = new Option(flags, description).argParser(argParser(parse));
  const what = opt.long ?? flags;
  return rules.default === undefined ? opt : opt.default(named(what, rules.default, parse), rules.default);
}

/**
 * A commander option whose value is a size in bytes (a number when the action runs).
 * @throws {InvalidArgumentError} EINVAL when `rules.default` itself is not a valid size.
 */
export function sizeOption(flags: string, description: string, rules: SizeRules & OptionRules = {}): Option {
  return option(flags, description, (t) => sizeValue(t, rules), rules);
}

/**
 * A commander option whose value is a duration in milliseconds (a number when the action runs).
 * @throws {InvalidArgumentError} EINVAL when `rules.default` itself is not a valid duration.
 */
export function durationOption(flags: string, description: string, rules: ValueRules & OptionRules = {}): Option {
  return option(flags, description, (t) => durationValue(t, rules), rules);
}

/**
 * A commander option whose value is a count (a number when the action runs).
 * @throws {InvalidArgumentError} EINVAL when `rules.default` itself is not a valid count.
 */
export function countOption(flags: string, description: string, rules: ValueRules & OptionRules = {}): Option {
  return option(flags, description, (t) => countValue(t, rules), rules);
}
