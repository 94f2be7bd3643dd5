/**
 * Progress events of a migration (`MigrateOptions.onProgress`): a snapshot of
 * where the migration is — phase, step, bytes migrated by phase, the rate over
 * the last second, the last dirty-page count, the projection — emitted from
 * inside the copies at most every {@link PROGRESS_INTERVAL_MS} and at every
 * step boundary. Rendering (a terminal bar) is the application's business:
 * the CLI's is src/cli/progress-bar.ts.
 */
import type { Progress } from './types.js';

/** Reports from inside a step come at most this often (ms); step boundaries always report. */
export const PROGRESS_INTERVAL_MS = 100;
/** The rate is measured over this window (ms). */
const RATE_WINDOW_MS = 1000;
/** Rate samples are kept at least this far apart (ms). */
const SAMPLE_SPACING_MS = 20;

const now = (): number => performance.now();

/** Bytes migrated in all, from a progress snapshot. */
export function totalBytes(p: Pick<Progress, 'bytes'>): number {
  return Number(p.bytes.precopyMemory + p.bytes.precopyDevice + p.bytes.stopCopyMemory + p.bytes.stopCopyDevice);
}

/** Turns a migration's state into throttled {@link Progress} events with a measured rate. */
export class ProgressReporter {
  readonly #emit: ((p: Progress) => void) | undefined;
  readonly #snapshot: () => Omit<Progress, 'bytesPerSecond'>;
  #lastEmit = Number.NEGATIVE_INFINITY;
  readonly #samples: Array<{ t: number; bytes: number }> = [];

  /** `snapshot` describes the migration now; nothing is computed when `emit` is undefined. */
  constructor(emit: ((p: Progress) => void) | undefined, snapshot: () => Omit<Progress, 'bytesPerSecond'>) {
    this.#emit = emit;
    this.#snapshot = snapshot;
  }

  /** Reports now when `force` (a step boundary) or when the interval has passed since the last report. */
  report(force = false): void {
    if (this.#emit === undefined) return;
    const t = now();
    if (!force && t - this.#lastEmit < PROGRESS_INTERVAL_MS) return;
    this.#lastEmit = t;
    const p = this.#snapshot();
    this.#emit({ ...p, bytesPerSecond: this.#rate(t, totalBytes(p)) });
  }

  /** Bytes per second over the last {@link RATE_WINDOW_MS}, from the samples taken at each report. */
  #rate(t: number, bytes: number): number {
    const s = this.#samples;
    const last = s.at(-1);
    if (last === undefined || t - last.t >= SAMPLE_SPACING_MS) s.push({ t, bytes });
    while (s.length > 2 && t - (s[1] as { t: number }).t >= RATE_WINDOW_MS) s.shift();
    const first = s[0] as { t: number; bytes: number };
    const ms = t - first.t;
    return ms > 0 ? ((bytes - first.bytes) * 1000) / ms : 0;
  }
}
