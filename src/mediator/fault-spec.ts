/**
 * The fault-injection rule syntax (docs/fault-injection.md):
 *
 * ```text
 * TARGET:KIND[=V][:p=P][:after=N][:count=N][:on=request|reply][:state=MIGSTATE]
 * ```
 *
 * TARGET is a command name as `commandName` prints it (case-insensitive:
 * `REGION_READ`, `dma_map`, `DEVICE_FEATURE`), several joined by `,`, or `*`
 * (every command but VERSION, both directions). DMA_READ and DMA_WRITE are the
 * upstream device's commands to the client. KIND is one of `delay=DURATION`,
 * `error=ERRNO`, `drop`, `corrupt[=BYTES]`, `disconnect`.
 */
import { InvalidArgumentError } from '../errors.js';
import { Command, MigrationState } from '../protocol/constants.js';
import { Errno, MAX_ERRNO } from '../protocol/errno.js';

/** What a rule does to a message it hits. */
export const FaultKind = { DELAY: 'delay', ERROR: 'error', DROP: 'drop', CORRUPT: 'corrupt', DISCONNECT: 'disconnect' } as const;
/** One of {@link FaultKind}. */
export type FaultKind = (typeof FaultKind)[keyof typeof FaultKind];

/** Where a rule acts: on the command on its way to its receiver, or on the receiver's reply on its way back. */
export const FaultPhase = { REQUEST: 'request', REPLY: 'reply' } as const;
/** One of {@link FaultPhase}. */
export type FaultPhase = (typeof FaultPhase)[keyof typeof FaultPhase];

/** The fault itself, with its parameter. */
export type Fault =
  /** Hold the message this long (later messages in the same direction wait behind it: order is kept). */
  | { readonly kind: 'delay'; readonly ms: number }
  /** Answer with an error reply carrying `errno` (request: the receiver never sees the command; reply: replaces it). */
  | { readonly kind: 'error'; readonly errno: number }
  /** Swallow the message: nobody answers (the sender's timeout applies). */
  | { readonly kind: 'drop' }
  /** Flip `bytes` distinct random bytes of the payload (never the header). */
  | { readonly kind: 'corrupt'; readonly bytes: number }
  /** Close the session (both sides), as a crashed peer would. */
  | { readonly kind: 'disconnect' };

/** One parsed rule (see {@link parseFaultSpec}). */
export interface FaultRule {
  /** The spec as written (names the rule in stats and logs). */
  readonly spec: string;
  /** Command numbers the rule applies to; `'*'` = every command except VERSION. */
  readonly commands: readonly number[] | '*';
  readonly fault: Fault;
  /** Probability of injecting once a message is eligible (0..1, default 1). */
  readonly probability: number;
  /** Matching messages passed over before the rule may inject (default 0). */
  readonly after: number;
  /** Most injections (default unlimited). */
  readonly count: number;
  /** Request (default) or reply. */
  readonly on: FaultPhase;
  /** Only while the device is in this migration state (`MigrationState` value), if set. */
  readonly state: MigrationState | undefined;
}

/** Largest `corrupt=` byte count (a message's largest data transfer). */
export const MAX_CORRUPT_BYTES = 1 << 20;
/** Longest delay (a Node timer's limit). */
export const MAX_DELAY_MS = 2 ** 31 - 1;

const OPTION_NAMES = ['p', 'after', 'count', 'on', 'state'] as const;
type OptionName = (typeof OPTION_NAMES)[number];

function fail(spec: string, what: string): never {
  throw new InvalidArgumentError(`fault '${spec}': ${what}`);
}

function lookup<T>(table: Record<string, T>, name: string): T | undefined {
  const key = name.toUpperCase();
  return Object.prototype.hasOwnProperty.call(table, key) ? table[key] : undefined;
}

function parseTarget(spec: string, text: string): readonly number[] | '*' {
  if (text.trim() === '*') return '*';
  const commands: number[] = [];
  for (const part of text.split(',')) {
    const name = part.trim();
    const cmd = name === '' ? undefined : lookup<number>(Command, name);
    if (cmd === undefined) {
      fail(spec, `target '${part}' is not a command (one of ${Object.keys(Command).join(', ')}, or *)`);
    }
    if (!commands.includes(cmd)) commands.push(cmd);
  }
  return commands;
}

/** Milliseconds per unit of a delay. */
const DURATION_UNITS_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;

function parseDelay(spec: string, text: string | undefined): number {
  if (text === undefined) fail(spec, "delay needs a duration (delay=50ms)");
  const t = text.trim();
  // The CLI's duration syntax (a decimal amount, then ms / s / m / h; none = milliseconds), read here without the
  // CLI's `ms` package: the library itself depends on node-gyp-build only.
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/i.exec(t);
  const value = m ? Number(m[1]) * DURATION_UNITS_MS[(m[2] ?? 'ms').toLowerCase() as keyof typeof DURATION_UNITS_MS] : undefined;
  if (value === undefined || !Number.isFinite(value)) fail(spec, `delay '${text}' is not a duration (e.g. 300ms, 5s, 1.5s; a plain number is milliseconds)`);
  if (value > MAX_DELAY_MS) fail(spec, `delay '${text}' is longer than ${MAX_DELAY_MS} ms`);
  return value;
}

function parseErrno(spec: string, text: string | undefined): number {
  if (text === undefined) fail(spec, 'error needs an errno (error=EIO or error=5)');
  const t = text.trim();
  const n = /^\d+$/.test(t) ? Number(t) : lookup<number>(Errno, t);
  if (n === undefined) fail(spec, `error '${text}' is not an errno name (${Object.keys(Errno).join(', ')}) or number`);
  if (n < 1 || n > MAX_ERRNO) fail(spec, `error ${t} is outside 1..${MAX_ERRNO}`);
  return n;
}

function parseInteger(spec: string, name: string, text: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const t = text.trim();
  if (!/^\d+$/.test(t)) fail(spec, `${name} '${text}' is not a whole number`);
  const n = Number(t);
  if (n < min || n > max) fail(spec, `${name} ${t} is outside ${min}..${max}`);
  return n;
}

function parseFault(spec: string, text: string): Fault {
  const eq = text.indexOf('=');
  const kind = (eq < 0 ? text : text.slice(0, eq)).trim().toLowerCase();
  const value = eq < 0 ? undefined : text.slice(eq + 1);
  const noValue = (): void => {
    if (value !== undefined) fail(spec, `${kind} takes no value (got '${value}')`);
  };
  switch (kind) {
    case FaultKind.DELAY:
      return { kind, ms: parseDelay(spec, value) };
    case FaultKind.ERROR:
      return { kind, errno: parseErrno(spec, value) };
    case FaultKind.CORRUPT:
      return { kind, bytes: value === undefined ? 1 : parseInteger(spec, 'corrupt', value, 1, MAX_CORRUPT_BYTES) };
    case FaultKind.DROP:
    case FaultKind.DISCONNECT:
      noValue();
      return { kind };
    default:
      return fail(spec, `'${text}' is not a fault (delay=DURATION, error=ERRNO, drop, corrupt[=BYTES], disconnect)`);
  }
}

function parseProbability(spec: string, text: string): number {
  const t = text.trim();
  const p = /^(\d+(\.\d*)?|\.\d+)$/.test(t) ? Number(t) : NaN;
  if (!(p >= 0 && p <= 1)) fail(spec, `p '${text}' is not a probability between 0 and 1`);
  return p;
}

function parsePhase(spec: string, text: string): FaultPhase {
  const t = text.trim().toLowerCase();
  if (t !== FaultPhase.REQUEST && t !== FaultPhase.REPLY) fail(spec, `on '${text}' is not request or reply`);
  return t;
}

function parseState(spec: string, text: string): MigrationState {
  const state = lookup<MigrationState>(MigrationState, text.trim());
  if (state === undefined) fail(spec, `state '${text}' is not a migration state (${Object.keys(MigrationState).join(', ')})`);
  return state;
}

/** Splits the `name=value` options after the fault, refusing unknown and repeated ones. */
function parseOptions(spec: string, parts: readonly string[]): Map<OptionName, string> {
  const options = new Map<OptionName, string>();
  for (const part of parts) {
    const eq = part.indexOf('=');
    const name = (eq < 0 ? part : part.slice(0, eq)).trim().toLowerCase() as OptionName;
    if (!OPTION_NAMES.includes(name)) fail(spec, `unknown option '${part}' (p=, after=, count=, on=, state=)`);
    if (eq < 0) fail(spec, `${name} needs a value (${name}=…)`);
    if (options.has(name)) fail(spec, `${name} given twice`);
    options.set(name, part.slice(eq + 1));
  }
  return options;
}

/**
 * Parses one fault rule, `TARGET:KIND[=V][:p=P][:after=N][:count=N][:on=request|reply][:state=MIGSTATE]`
 * (e.g. `REGION_READ:delay=50ms:p=0.1`, `DMA_MAP,DMA_UNMAP:error=EBUSY:after=2:count=1`,
 * `*:disconnect:on=reply:state=STOP_COPY`).
 * @throws {InvalidArgumentError} EINVAL naming the part that is wrong: an unknown command, fault, errno,
 * option or migration state, a malformed or out-of-range value, an option given twice.
 */
export function parseFaultSpec(spec: string): FaultRule {
  if (typeof spec !== 'string' || spec.trim() === '') throw new InvalidArgumentError('fault: empty spec (TARGET:KIND[=V][:p=P][:after=N][:count=N][:on=request|reply][:state=MIGSTATE])');
  const [target = '', fault, ...rest] = spec.split(':');
  if (fault === undefined || fault.trim() === '') fail(spec, 'no fault after the target (TARGET:KIND, e.g. REGION_READ:delay=50ms)');
  const options = parseOptions(spec, rest);
  const get = (name: OptionName): string | undefined => options.get(name);
  const p = get('p');
  const after = get('after');
  const count = get('count');
  const on = get('on');
  const state = get('state');
  return {
    spec,
    commands: parseTarget(spec, target),
    fault: parseFault(spec, fault),
    probability: p === undefined ? 1 : parseProbability(spec, p),
    after: after === undefined ? 0 : parseInteger(spec, 'after', after, 0),
    count: count === undefined ? Infinity : parseInteger(spec, 'count', count, 1),
    on: on === undefined ? FaultPhase.REQUEST : parsePhase(spec, on),
    state: state === undefined ? undefined : parseState(spec, state),
  };
}
