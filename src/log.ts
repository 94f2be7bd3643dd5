/**
 * Logging: the library logs through an injectable {@link Logger} (pino's shape,
 * so a pino instance can be passed as is). Nothing is printed by default;
 * `VFIO_USER_LOG=<level>` turns on a pino logger on stderr, and
 * `VFIO_USER_TRACE=protocol,dma,-pci` enables per-tag tracing (`all` for every
 * tag, `-tag` to exclude one).
 */
import { pino } from 'pino';

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

const silent: Logger = {
  error() {},
  warn() {},
  info() {},
  debug() {},
  child: () => silent,
};

let defaultLogger: Logger | undefined;

/**
 * The logger used when none is injected: silent unless `VFIO_USER_LOG` (a pino
 * level) or `VFIO_USER_TRACE` is set, then pino writing JSON lines to stderr.
 */
export function getDefaultLogger(): Logger {
  if (defaultLogger) return defaultLogger;
  const level = process.env.VFIO_USER_LOG ?? (process.env.VFIO_USER_TRACE ? 'debug' : undefined);
  defaultLogger = level ? pino({ name: 'vfio-user', level }, pino.destination(2)) : silent;
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
