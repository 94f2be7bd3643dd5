/**
 * Two throttles for the pre-copy phase of a live migration (the orchestrator
 * wires them in; this module is pure and has no I/O of its own):
 *
 * - {@link RateLimiter}: an optional bandwidth cap on pre-copy transfers, like
 *   QEMU's `max-bandwidth`. A virtual-time (GCRA) limiter: each byte moved
 *   pushes a "due" time forward at the cap; `consume` sleeps until the clock
 *   reaches it. Idle time earns credit for at most {@link RATE_LIMIT_BURST_MS}
 *   worth of bytes (a single larger chunk is charged in full), so the average
 *   rate since the first `consume` never exceeds the cap.
 * - {@link AutoConverge}: the dirty-rate throttle of QEMU's auto-converge
 *   (`migration/ram.c` `migration_trigger_throttle` / `mig_throttle_guest_down`):
 *   when the bytes dirtied during a pre-copy iteration exceed a share
 *   (`throttle-trigger-threshold`, 50%) of the bytes transferred in it, a
 *   counter goes up; when it reaches 2 the throttle starts at
 *   `cpu-throttle-initial` (20%) or grows by `cpu-throttle-increment` (10%),
 *   up to `max-cpu-throttle` (99%), and the counter restarts at 0.
 *   {@link throttleDelayMs} turns a percent into a pause for a workload.
 */
import { InvalidArgumentError } from '../errors.js';

/** A monotonic clock (ms) and a way to wait on it; injectable for tests. */
export interface ThrottleClock {
  /** Current time in ms (monotonic). */
  now(): number;
  /** Resolves after about `ms` milliseconds. */
  sleep(ms: number): Promise<void>;
}

/** The default clock: `performance.now()` and `setTimeout` (rounded up to whole ms, so never early). */
export const systemClock: ThrottleClock = {
  now: () => performance.now(),
  sleep: (ms) => new Promise<void>((resolve) => setTimeout(resolve, Math.max(1, Math.ceil(ms)))),
};

/** The most a {@link RateLimiter} lets through ahead of the cap after idling, in ms worth of bytes. */
export const RATE_LIMIT_BURST_MS = 10;

function nonNegative(value: number | bigint, what: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError(`${what} must be a finite number ≥ 0, got ${String(value)}`);
  return n;
}

/**
 * An optional bandwidth cap for pre-copy transfers (QEMU's `max-bandwidth`).
 *
 * Call {@link RateLimiter.consume} after each chunk is moved; it sleeps as long
 * as needed so that the bytes accounted since the first call, divided by the
 * time since then, stay at or below the cap. Concurrent callers share one
 * budget (the due time is advanced before any wait).
 *
 * @example
 * ```ts
 * const limiter = new RateLimiter(100 * 1e6); // 100 MB/s
 * for (const chunk of chunks) { await send(chunk); await limiter.consume(chunk.length); }
 * ```
 */
export class RateLimiter {
  /** Whether a cap is in force (`false` for `undefined` or `Infinity`: {@link consume} never sleeps). */
  readonly limited: boolean;
  /** The cap in bytes per second (`Infinity` when not {@link limited}). */
  readonly bytesPerSecond: number;
  readonly #clock: ThrottleClock;
  readonly #msPerByte: number;
  readonly #burstMs: number;
  /** Clock time by which every byte accounted so far has been paid for at the cap; undefined before the first call. */
  #due: number | undefined;
  #sleptMs = 0;
  #bytes = 0;

  /**
   * @param bytesPerSecond - The cap; `undefined` or `Infinity` for none.
   * @param clock - Time source and sleep; defaults to {@link systemClock}.
   * @throws {@link InvalidArgumentError} (EINVAL) when the cap is ≤ 0 or NaN.
   */
  constructor(bytesPerSecond: number | undefined, clock: ThrottleClock = systemClock) {
    if (bytesPerSecond !== undefined && (typeof bytesPerSecond !== 'number' || Number.isNaN(bytesPerSecond) || bytesPerSecond <= 0)) {
      throw new InvalidArgumentError(`rate limit must be a number of bytes per second > 0, got ${String(bytesPerSecond)}`);
    }
    this.bytesPerSecond = bytesPerSecond ?? Infinity;
    this.limited = Number.isFinite(this.bytesPerSecond);
    this.#clock = clock;
    this.#msPerByte = this.limited ? 1000 / this.bytesPerSecond : 0;
    this.#burstMs = RATE_LIMIT_BURST_MS;
  }

  /** Time slept in total (ms), as measured on the clock. */
  get sleptMs(): number {
    return this.#sleptMs;
  }

  /** Bytes accounted in total. */
  get bytes(): number {
    return this.#bytes;
  }

  /**
   * Accounts `bytes` just moved; resolves after sleeping as long as needed so
   * the average since the window start (the first call) stays at or below the
   * cap. Resolves at once when not {@link limited}.
   *
   * @throws {@link InvalidArgumentError} (EINVAL) when `bytes` is negative or not finite.
   */
  async consume(bytes: number | bigint): Promise<void> {
    const n = nonNegative(bytes, 'bytes');
    this.#bytes += n;
    if (!this.limited) return;
    const start = this.#clock.now();
    // Idle time earns at most burstMs of credit: the due time never lags the clock by more.
    const base = this.#due === undefined ? start : Math.max(this.#due, start - this.#burstMs);
    this.#due = base + n * this.#msPerByte;
    const wait = this.#due - start;
    if (wait <= 0) return;
    await this.#clock.sleep(wait);
    this.#sleptMs += Math.max(0, this.#clock.now() - start);
  }
}

/** Options of {@link AutoConverge}; defaults are QEMU's. */
export interface AutoConvergeOptions {
  /** Throttle percent at the first trigger (QEMU `cpu-throttle-initial`, 1..99; default 20). */
  initialPercent?: number;
  /** Percent added at each later trigger (QEMU `cpu-throttle-increment`, 1..99; default 10). */
  incrementPercent?: number;
  /** Highest throttle percent (QEMU `max-cpu-throttle`, 1..99, ≥ initial; default 99). */
  maxPercent?: number;
  /**
   * An iteration is "high" when dirtied bytes exceed this share of the bytes
   * transferred in it (QEMU `throttle-trigger-threshold` / 100, in (0, 1]; default 0.5).
   */
  triggerRatio?: number;
  /**
   * Whether a low iteration resets the count of high ones, so a trigger needs
   * 2 high iterations in a row (default `true`). QEMU itself (`ram.c`) only
   * resets the count when it triggers, so 2 high iterations since the last
   * trigger suffice there: pass `false` for that behaviour.
   */
  consecutive?: boolean;
}

/** QEMU's auto-converge defaults. */
export const AUTO_CONVERGE_DEFAULTS = {
  initialPercent: 20,
  incrementPercent: 10,
  maxPercent: 99,
  triggerRatio: 0.5,
  consecutive: true,
} as const;

/** High iterations that trigger a throttle step (QEMU `dirty_rate_high_cnt >= 2`). */
export const AUTO_CONVERGE_TRIGGER_COUNT = 2;

function percentOption(value: number, name: string): number {
  if (!Number.isInteger(value) || value < 1 || value > 99) throw new InvalidArgumentError(`${name} must be an integer in 1..99, got ${String(value)}`);
  return value;
}

/**
 * Dirty-rate throttling when pre-copy does not converge, after QEMU's
 * auto-converge. Feed it each pre-copy iteration's dirtied and transferred
 * bytes; it answers the guest throttle percent to apply (0 = none).
 *
 * The rule: an iteration is high when `dirtied > transferred × triggerRatio`.
 * Each high iteration bumps a counter (a low one resets it, unless
 * `consecutive: false`); at 2 the counter restarts and the percent becomes
 * `initialPercent` if there was no throttle, else `min(percent + incrementPercent, maxPercent)`.
 */
export class AutoConverge {
  readonly #initial: number;
  readonly #increment: number;
  readonly #max: number;
  readonly #ratio: number;
  readonly #consecutive: boolean;
  #percent = 0;
  #changes = 0;
  #high = 0;

  /**
   * @param options - Thresholds; see {@link AutoConvergeOptions}.
   * @throws {@link InvalidArgumentError} (EINVAL) when a percent is outside 1..99 or
   *   not an integer, `initialPercent > maxPercent`, or `triggerRatio` is outside (0, 1].
   */
  constructor(options: AutoConvergeOptions = {}) {
    const d = AUTO_CONVERGE_DEFAULTS;
    this.#initial = percentOption(options.initialPercent ?? d.initialPercent, 'initialPercent');
    this.#increment = percentOption(options.incrementPercent ?? d.incrementPercent, 'incrementPercent');
    this.#max = percentOption(options.maxPercent ?? d.maxPercent, 'maxPercent');
    if (this.#initial > this.#max) {
      throw new InvalidArgumentError(`initialPercent (${this.#initial}) must not exceed maxPercent (${this.#max})`);
    }
    const ratio = options.triggerRatio ?? d.triggerRatio;
    if (typeof ratio !== 'number' || !(ratio > 0 && ratio <= 1)) {
      throw new InvalidArgumentError(`triggerRatio must be in (0, 1], got ${String(ratio)}`);
    }
    this.#ratio = ratio;
    this.#consecutive = options.consecutive ?? d.consecutive;
  }

  /** The throttle percent now in force (0 = none). */
  get percent(): number {
    return this.#percent;
  }

  /** How many times {@link percent} has changed. */
  get changes(): number {
    return this.#changes;
  }

  /** High iterations counted toward the next trigger (0 or 1). */
  get highCount(): number {
    return this.#high;
  }

  /**
   * Called after each pre-copy iteration.
   *
   * @param dirtiedBytes - Bytes the guest dirtied during the iteration.
   * @param transferredBytes - Bytes transferred during the iteration.
   * @returns The throttle percent now in force (0 = none).
   * @throws {@link InvalidArgumentError} (EINVAL) when a count is negative or not finite.
   */
  observe(dirtiedBytes: number | bigint, transferredBytes: number | bigint): number {
    const dirtied = nonNegative(dirtiedBytes, 'dirtiedBytes');
    const transferred = nonNegative(transferredBytes, 'transferredBytes');
    if (dirtied > transferred * this.#ratio) {
      this.#high += 1;
      if (this.#high >= AUTO_CONVERGE_TRIGGER_COUNT) {
        this.#high = 0;
        const next = this.#percent === 0 ? this.#initial : Math.min(this.#percent + this.#increment, this.#max);
        if (next !== this.#percent) {
          this.#percent = next;
          this.#changes += 1;
        }
      }
    } else if (this.#consecutive) {
      this.#high = 0;
    }
    return this.#percent;
  }
}

/** The largest throttle percent {@link throttleDelayMs} honours (QEMU's `CPU_THROTTLE_PCT_MAX`). */
export const THROTTLE_PERCENT_MAX = 99;

/**
 * The pause a throttled workload takes after `workMs` of work so that it runs
 * only `(100 − percent)%` of the time: `percent / (100 − percent) × workMs`.
 * A percent ≤ 0 gives 0; a percent ≥ 99 is treated as 99 (99 × `workMs`).
 *
 * @throws {@link InvalidArgumentError} (EINVAL) when `percent` is NaN or `workMs` is negative or not finite.
 */
export function throttleDelayMs(percent: number, workMs: number): number {
  if (Number.isNaN(percent)) throw new InvalidArgumentError('percent must be a number, got NaN');
  const work = nonNegative(workMs, 'workMs');
  if (percent <= 0 || work === 0) return 0;
  const p = Math.min(percent, THROTTLE_PERCENT_MAX);
  return (p / (100 - p)) * work;
}
