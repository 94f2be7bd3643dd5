/**
 * The clocks a migration obeys while it works, not only between its phases:
 * the whole migration's time limit (from the start), the caller's abort
 * signal, and — while the source is stopped — the downtime deadline. Each
 * trips an {@link Abort} at once (a timer), which every awaited step of the
 * migration races ({@link Limits.race}); the copy loops also check the clocks
 * synchronously before each chunk ({@link Limits.check}), so a busy loop whose
 * timers run late still stops within one chunk of the expiry.
 */

/** A deliberate abort (budget, convergence, time limit, signal), as opposed to a failure. */
export class Abort extends Error {
  /** Tripped by the downtime deadline. */
  readonly deadline: boolean;

  constructor(message: string, deadline = false) {
    super(message);
    this.name = 'Abort';
    this.deadline = deadline;
  }
}

const now = (): number => performance.now();

/** What a {@link Limits} watches. */
export interface LimitsOptions {
  /** When the migration started (performance.now() clock). */
  started: number;
  /** The whole migration's limit (ms). */
  timeoutMs: number;
  signal?: AbortSignal | undefined;
}

/** The time limit, the signal and the downtime deadline of one migration. */
export class Limits {
  readonly #started: number;
  readonly #timeoutMs: number;
  readonly #signal: AbortSignal | undefined;
  readonly #onSignal = (): void => this.trip(this.#signalAbort());
  #tripped: Abort | undefined;
  #waiters: Array<(error: Abort) => void> = [];
  #timer: NodeJS.Timeout | undefined;
  #deadline: { at: number; reason: () => string; timer: NodeJS.Timeout } | undefined;
  /** Whether the time limit and signal still apply (false after the commit was sent). */
  #armed = true;

  constructor(o: LimitsOptions) {
    this.#started = o.started;
    this.#timeoutMs = o.timeoutMs;
    this.#signal = o.signal;
    this.#timer = setTimeout(() => this.trip(this.#timeoutAbort()), Math.max(0, o.started + o.timeoutMs - now()));
    if (o.signal?.aborted) this.trip(this.#signalAbort());
    else o.signal?.addEventListener('abort', this.#onSignal, { once: true });
  }

  /** The abort that tripped, if one did. */
  get tripped(): Abort | undefined {
    return this.#tripped;
  }

  /**
   * Throws the abort that tripped, or trips one now when a clock expired
   * (its timer may not have run yet).
   * @throws {Abort}
   */
  check(): void {
    if (this.#tripped === undefined && this.#armed) {
      if (this.#signal?.aborted) this.trip(this.#signalAbort());
      else if (now() - this.#started > this.#timeoutMs) this.trip(this.#timeoutAbort());
    }
    if (this.#tripped === undefined && this.#deadline !== undefined && now() >= this.#deadline.at) this.trip(new Abort(this.#deadline.reason(), true));
    if (this.#tripped) throw this.#tripped;
  }

  /**
   * `work`'s result, or the abort when one trips first (`work` then goes on
   * unobserved: its rejection is swallowed).
   * @throws {Abort}
   */
  async race<T>(work: Promise<T>): Promise<T> {
    work.catch(() => undefined); // first: `work` may outlive a check that throws
    this.check();
    let waiter: ((error: Abort) => void) | undefined;
    const tripped = new Promise<never>((_resolve, reject) => {
      waiter = reject;
      this.#waiters.push(reject);
    });
    tripped.catch(() => undefined);
    try {
      return await Promise.race([work, tripped]);
    } finally {
      this.#waiters = this.#waiters.filter((w) => w !== waiter);
    }
  }

  /** Arms the downtime deadline: at `at` (performance.now() clock) the migration aborts with `reason()`. */
  armDeadline(at: number, reason: () => string): void {
    this.disarmDeadline();
    this.#deadline = { at, reason, timer: setTimeout(() => this.trip(new Abort(reason(), true)), Math.max(0, at - now())) };
  }

  /** Ms left before the downtime deadline (Infinity when none is armed). */
  deadlineLeftMs(): number {
    return this.#deadline === undefined ? Number.POSITIVE_INFINITY : this.#deadline.at - now();
  }

  /** Ends the downtime deadline (the destination runs): an abort it tripped that no step has seen yet is forgotten. */
  disarmDeadline(): void {
    if (this.#deadline) clearTimeout(this.#deadline.timer);
    this.#deadline = undefined;
    if (this.#tripped?.deadline === true) this.#tripped = undefined;
  }

  /** From the commit on nothing may abort: the time limit, the signal and the deadline stop applying. */
  disarm(): void {
    this.#armed = false;
    this.disarmDeadline();
    clearTimeout(this.#timer);
    this.#signal?.removeEventListener('abort', this.#onSignal);
  }

  /** Trips `error` (the first one wins): pending races reject with it. */
  trip(error: Abort): void {
    if (this.#tripped !== undefined || (!this.#armed && this.#deadline === undefined)) return;
    this.#tripped = error;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w(error);
  }

  /** Releases the timers and the signal listener. */
  dispose(): void {
    this.disarm();
  }

  #timeoutAbort(): Abort {
    const elapsed = now() - this.#started;
    return new Abort(`timed out after ${elapsed.toFixed(0)} ms (limit ${this.#timeoutMs} ms)`);
  }

  #signalAbort(): Abort {
    const reason: unknown = this.#signal?.reason;
    return new Abort(`interrupted (${reason instanceof Error ? reason.message : String(reason ?? 'aborted')})`);
  }
}
