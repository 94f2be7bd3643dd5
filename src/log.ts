/**
 * Logging: the library logs through an injectable {@link Logger} (pino's shape,
 * so a pino instance can be passed as is). Nothing is printed by default;
 * `VFIO_USER_LOG=<level>` turns on a built-in logger writing one JSON object
 * per line to stderr, in pino's format (numeric `level`, `time`, `pid`,
 * `hostname`, `name`, `msg`), so pino's tools (`pino-pretty`) read it.
 * `VFIO_USER_TRACE=protocol,dma,-pci` enables per-tag tracing (`all` for every
 * tag, `-tag` to exclude one).
 */
import { hostname } from 'node:os';
import { InvalidArgumentError } from './errors.js';

/** The logging calls the library makes (a subset of pino's Logger). */
export interface Logger {
  error(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
}

/** Tags that can be traced with `VFIO_USER_TRACE`. */
export const TraceTag = { PROTOCOL: 'protocol', DMA: 'dma', IRQ: 'irq', PCI: 'pci', SESSION: 'session', MIGRATION: 'migration' } as const;
/** One trace tag. */
export type TraceTag = (typeof TraceTag)[keyof typeof TraceTag];

/** `VFIO_USER_LOG` levels and their numbers (pino's). */
export const LogLevel = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity } as const;
/** One level name. */
export type LogLevel = keyof typeof LogLevel;

/** Options of {@link createJsonLogger}. */
export interface JsonLoggerOptions {
  /** The least severe level written. */
  level: LogLevel;
  /** Receives each line, newline included (default: stderr). */
  write?: (line: string) => void;
  /** The `name` field (default `vfio-user`). */
  name?: string;
}

const silent: Logger = {
  error() {},
  warn() {},
  info() {},
  debug() {},
  child: () => silent,
};

/** Turns what JSON cannot carry into what it can: errors, bigints, cycles. */
function jsonValue(seen: WeakSet<object> | undefined) {
  return function replace(this: unknown, _key: string, value: unknown): unknown {
    if (typeof value === 'bigint') return value.toString();
    if (seen && typeof value === 'object' && value !== null) {
      if (seen.has(value)) return '[Circular]';
      seen.add(value);
    }
    return value instanceof Error ? serializeError(value) : value;
  };
}

/** An error as pino's standard serializer shows it: type, message, stack, own fields, cause. */
function serializeError(error: Error): Record<string, unknown> {
  const out: Record<string, unknown> = { type: error.constructor.name, message: error.message, stack: error.stack };
  for (const [key, value] of Object.entries(error)) out[key] ??= value;
  if (error.cause !== undefined) out.cause = error.cause;
  return out;
}

/** One record as a JSON line; in a record with a cycle, objects seen before become `"[Circular]"`. */
function toLine(record: Record<string, unknown>): string {
  try {
    return `${JSON.stringify(record, jsonValue(undefined))}\n`;
  } catch {
    return `${JSON.stringify(record, jsonValue(new WeakSet()))}\n`;
  }
}

/**
 * A logger writing pino-compatible JSON lines (`{"level":40,"time":…,"pid":…,
 * "hostname":…,"name":"vfio-user",…fields,"msg":…}`). Errors anywhere in the
 * fields are written as `{type, message, stack, …}`, bigints as decimal strings.
 */
export function createJsonLogger(options: JsonLoggerOptions): Logger {
  const threshold = LogLevel[options.level];
  const write = options.write ?? ((line: string) => void process.stderr.write(line));
  const base = { pid: process.pid, hostname: hostname(), name: options.name ?? 'vfio-user' };
  const make = (bindings: Record<string, unknown>): Logger => {
    const at = (level: number) =>
      level < threshold
        ? () => {}
        : (obj: object, msg?: string) =>
            write(toLine({ level, time: Date.now(), ...base, ...bindings, ...obj, ...(msg === undefined ? {} : { msg }) }));
    return {
      error: at(LogLevel.error),
      warn: at(LogLevel.warn),
      info: at(LogLevel.info),
      debug: at(LogLevel.debug),
      child: (more) => make({ ...bindings, ...more }),
    };
  };
  return make({});
}

/**
 * Parses a `VFIO_USER_LOG` value.
 * @throws InvalidArgumentError (`EINVAL`) when it names no level.
 */
export function parseLogLevel(value: string): LogLevel {
  const level = value.trim().toLowerCase();
  if (Object.hasOwn(LogLevel, level)) return level as LogLevel;
  throw new InvalidArgumentError(`VFIO_USER_LOG=${value}: not a level (${Object.keys(LogLevel).join(', ')})`);
}

let defaultLogger: Logger | undefined;

/**
 * The logger used when none is injected: silent unless `VFIO_USER_LOG` (a level:
 * trace, debug, info, warn, error, fatal, silent) or `VFIO_USER_TRACE` (then
 * `debug`) is set, then JSON lines on stderr ({@link createJsonLogger}).
 * @throws InvalidArgumentError (`EINVAL`) when `VFIO_USER_LOG` names no level.
 */
export function getDefaultLogger(): Logger {
  if (defaultLogger) return defaultLogger;
  const level = process.env.VFIO_USER_LOG || (process.env.VFIO_USER_TRACE ? 'debug' : undefined);
  defaultLogger = level ? createJsonLogger({ level: parseLogLevel(level) }) : silent;
  return defaultLogger;
}

/** A logger that drops everything. */
export function silentLogger(): Logger {
  return silent;
}

/**
 * Parses a `VFIO_USER_TRACE` value into the set of enabled tags.
 * @param spec - comma-separated tags; `all` enables every tag; `-tag` removes one.
 */
export function parseTraceSpec(spec: string | undefined): Set<TraceTag> {
  const enabled = new Set<TraceTag>();
  const all = Object.values(TraceTag);
  for (const raw of (spec ?? '').split(',')) {
    const word = raw.trim();
    if (word === 'all') all.forEach((t) => enabled.add(t));
    else if (word.startsWith('-')) enabled.delete(word.slice(1) as TraceTag);
    else if ((all as string[]).includes(word)) enabled.add(word as TraceTag);
  }
  return enabled;
}

const traceTags = parseTraceSpec(process.env.VFIO_USER_TRACE);

/** Whether tracing is on for `tag` (checked before building a trace record). */
export function tracing(tag: TraceTag): boolean {
  return traceTags.has(tag);
}
