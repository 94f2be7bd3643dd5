/**
 * The terminal progress bar of `vfio-user migrate` (`cli-progress`, on
 * stderr), fed by the orchestrator's progress events (`MigrateOptions.onProgress`):
 * phase and step, bytes migrated out of what is known to be left, the rate,
 * the last dirty-page count and, while the source is stopped, the downtime so
 * far against the budget. The orchestrator reports during every step; the bar
 * redraws at most {@link REDRAW_FPS} times a second. Only on a TTY; elsewhere
 * (pipes, tests) it prints nothing. The library itself never draws.
 */
import cliProgress from 'cli-progress';
import type { Progress } from '../orchestrator/types.js';

/** Redraws per second at most. */
export const REDRAW_FPS = 10;

/** A progress sink for `MigrateOptions.onProgress`. */
export interface MigrationProgressBar {
  /** Undefined when nothing is to be shown (not a TTY), so it can be passed straight to `migrate()`. */
  readonly onProgress: ((p: Progress) => void) | undefined;
  /** Ends the bar (leaves the last line). Idempotent. */
  stop(): void;
}

/** Options of {@link createProgressBar}. */
export interface ProgressBarOptions {
  /** Guest memory size in bytes (what the first pre-copy round copies). */
  memoryBytes: number;
  /** Where to draw (default `process.stderr`); nothing is drawn unless it is a TTY. */
  stream?: NodeJS.WriteStream;
}

const MB = 1e6;

/** The bar's fields for one progress event. */
export interface BarFields {
  /** `phase/step`, and the device a container's step works on (`switchover/device-data dma`). */
  label: string;
  /** Bytes migrated so far, and the total known now (migrated + left). */
  moved: number;
  total: number;
  /** e.g. `812.4 MB/s`. */
  rate: string;
  /** e.g. `dirty 120 pages`, or `stopped 12.3/300 ms` once the source is stopped. */
  detail: string;
}

/** The bar's fields for `p` (a guest of `memoryBytes`). */
export function barFields(p: Progress, memoryBytes: number): BarFields {
  const moved = Number(p.bytes.precopyMemory + p.bytes.precopyDevice + p.bytes.stopCopyMemory + p.bytes.stopCopyDevice);
  const ended = p.phase === 'done' || p.phase === 'abort';
  let left = Math.max(0, p.stepTotalBytes - p.stepBytes);
  if (p.step === 'full-copy' || (p.step === 'setup' && p.iteration === 0)) left = Math.max(left, memoryBytes - Number(p.bytes.precopyMemory));
  else if (Number.isFinite(Number(p.remainingBytes))) left = Math.max(left, Number(p.remainingBytes));
  const total = ended ? moved : moved + left;
  const stopped = p.stoppedMs > 0 && !ended;
  return {
    label: `${p.phase}/${p.step}${p.device === undefined ? '' : ` ${p.device}`}`,
    moved,
    total,
    rate: `${(p.bytesPerSecond / MB).toFixed(1)} MB/s`,
    detail: stopped ? `stopped ${p.stoppedMs.toFixed(1)}/${p.budgetMs} ms` : `dirty ${p.dirtyPages} pages`,
  };
}

/** A bar on `stream` when it is a TTY, else a no-op. */
export function createProgressBar(options: ProgressBarOptions): MigrationProgressBar {
  const stream = options.stream ?? process.stderr;
  if (!stream.isTTY) return { onProgress: undefined, stop: () => undefined };
  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: 'migrate {label} [{bar}] {movedMB}/{totalMB} MB | {rate} | {detail}',
      hideCursor: true,
      clearOnComplete: false,
      fps: REDRAW_FPS,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  let stopped = false;
  return {
    onProgress: (p) => {
      if (stopped) return;
      const f = barFields(p, options.memoryBytes);
      const payload = { label: f.label.padEnd(22), rate: f.rate, detail: f.detail, movedMB: (f.moved / MB).toFixed(1), totalMB: (f.total / MB).toFixed(1) };
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
