/**
 * A terminal progress bar for {@link migrate} (`cli-progress`, on stderr):
 * phase, bytes moved, the dirty rate of the last pre-copy round and an ETA.
 * Only on a TTY; elsewhere (pipes, tests) it prints nothing.
 *
 * The orchestrator reports what is left, not what moved, so "moved" here is
 * reconstructed: the first round copies all of guest memory, every later round
 * about as much as the previous round's estimate of what was left.
 */
import cliProgress from 'cli-progress';
import type { Progress } from './types.js';

/** A progress sink for `MigrateOptions.onProgress`. */
export interface MigrationProgressBar {
  /** Undefined when nothing is to be shown (not a TTY), so it can be passed straight to `migrate()`. */
  readonly onProgress: ((p: Progress) => void) | undefined;
  /** Ends the bar (leaves the last line). Idempotent. */
  stop(): void;
}

/** Options of {@link createProgressBar}. */
export interface ProgressBarOptions {
  /** Guest memory size in bytes (the first pre-copy round's copy). */
  memoryBytes: number;
  /** Where to draw (default `process.stderr`); nothing is drawn unless it is a TTY. */
  stream?: NodeJS.WriteStream;
}

const MB = 1e6;

/** Formats bytes per ms as MB/s. */
const rate = (bytesPerMs: number): string => (Number.isFinite(bytesPerMs) ? `${((bytesPerMs * 1000) / MB).toFixed(1)} MB/s` : '-');

/** The bar's payload for one progress report (exported for tests). */
export interface BarFields {
  phase: string;
  moved: number;
  total: number;
  dirtyRate: string;
  eta: string;
}

/** Accumulates progress reports into the bar's fields. */
export class ProgressModel {
  readonly #memoryBytes: number;
  #moved = 0;
  #lastRemaining = 0;
  #lastElapsed = 0;
  #lastIteration = -1;

  constructor(memoryBytes: number) {
    this.#memoryBytes = memoryBytes;
  }

  update(p: Progress): BarFields {
    const remaining = Number(p.remainingBytes);
    if (p.phase === 'precopy' && p.iteration !== this.#lastIteration) {
      // iteration 1 is the first report: it follows the full copy and one dirty round.
      this.#moved += this.#lastIteration < 0 ? this.#memoryBytes : this.#lastRemaining;
      this.#lastIteration = p.iteration;
    } else if (p.phase === 'done') {
      this.#moved += this.#lastRemaining;
    }
    const interval = p.elapsedMs - this.#lastElapsed;
    const dirtyRate = p.phase === 'precopy' && interval > 0 ? rate(remaining / interval) : '-';
    const etaMs = p.phase === 'done' || p.phase === 'abort' ? 0 : remaining / Math.max(p.memoryBandwidth, 1e-9) + (Number.isFinite(p.projectedDowntimeMs) ? p.projectedDowntimeMs : 0);
    this.#lastRemaining = remaining;
    this.#lastElapsed = p.elapsedMs;
    const remainingAfter = p.phase === 'done' || p.phase === 'abort' ? 0 : remaining;
    return { phase: p.phase, moved: this.#moved, total: this.#moved + remainingAfter, dirtyRate, eta: `${etaMs.toFixed(0)} ms` };
  }
}

/** A bar on `stream` when it is a TTY, else a no-op. */
export function createProgressBar(options: ProgressBarOptions): MigrationProgressBar {
  const stream = options.stream ?? process.stderr;
  if (!stream.isTTY) return { onProgress: undefined, stop: () => undefined };
  const model = new ProgressModel(options.memoryBytes);
  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: 'migrate {phase} [{bar}] {movedMB}/{totalMB} MB | dirty {dirtyRate} | ETA {eta}',
      hideCursor: true,
      clearOnComplete: false,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  let stopped = false;
  return {
    onProgress: (p) => {
      if (stopped) return;
      const f = model.update(p);
      const payload = { phase: f.phase.padEnd(10), dirtyRate: f.dirtyRate, eta: f.eta, movedMB: (f.moved / MB).toFixed(1), totalMB: (f.total / MB).toFixed(1) };
      if (!started) {
        bar.start(Math.max(f.total, 1), f.moved, payload);
        started = true;
      } else {
        bar.setTotal(Math.max(f.total, 1));
        bar.update(f.moved, payload);
      }
    },
    stop: () => {
      if (stopped) return;
      stopped = true;
      if (started) bar.stop();
    },
  };
}
