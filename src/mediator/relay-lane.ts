/**
 * A lane keeps one kind of message (client commands, client replies, upstream
 * commands, upstream replies) in order while plugin hooks run: a task that
 * finishes synchronously costs nothing; one that returns a Promise makes the
 * following tasks of the lane wait behind it. The queue is bounded by the
 * caller, which pauses the source's reading while {@link Lane.backlog} is high.
 */

/** Tasks queued behind an asynchronous one beyond which the source is paused. */
export const LANE_HIGH_WATER = 256;

interface LaneTask {
  task: () => void | Promise<void>;
  release: () => void;
}

/** An ordered queue of message handlers. */
export class Lane {
  #busy = false;
  readonly #queue: LaneTask[] = [];
  readonly #onIdle: () => void;
  #closed = false;

  /** @param onIdle - called when a backlog has been worked off (to resume reading). */
  constructor(onIdle: () => void) {
    this.#onIdle = onIdle;
  }

  /** Tasks waiting behind an asynchronous one. */
  get backlog(): number {
    return this.#queue.length;
  }

  /**
   * Runs `task` now if the lane is idle, else after the tasks before it.
   * `release` frees what the task holds (its message's fds) if the lane is
   * closed before the task ran. A task must not throw.
   */
  run(task: () => void | Promise<void>, release: () => void): void {
    if (this.#closed) return release();
    if (this.#busy || this.#queue.length > 0) {
      this.#queue.push({ task, release });
      return;
    }
    this.#exec(task);
  }

  /** Drops the queued tasks (the session ended), releasing each. */
  close(): void {
    this.#closed = true;
    for (const t of this.#queue.splice(0)) t.release();
  }

  #exec(task: () => void | Promise<void>): void {
    const result = task();
    if (result === undefined) return;
    this.#busy = true;
    const done = (): void => {
      this.#busy = false;
      this.#drain();
    };
    result.then(done, done);
  }

  #drain(): void {
    const had = this.#queue.length;
    while (!this.#busy && this.#queue.length > 0 && !this.#closed) this.#exec((this.#queue.shift() as LaneTask).task);
    if (had > 0 && this.#queue.length === 0) this.#onIdle();
  }
}
