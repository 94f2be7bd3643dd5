/**
 * When to read a socket again right after replying, before going back to the
 * event loop. A peer that waits for each reply and shares a CPU with us (a
 * vCPU thread and its device server pinned together, as in the benchmarks)
 * runs while our reply is being sent — the send wakes it and it preempts us —
 * and has usually written its next request by the time `send` returns: reading
 * at once saves the `epoll_wait` that would only report it, one system call in
 * three per request. A peer on another CPU has not, and the extra read returns
 * EAGAIN: every miss doubles the number of wake-ups that skip the read-ahead
 * (up to {@link MAX_BACKOFF}), so a peer that never answers that fast costs
 * one extra read per {@link MAX_BACKOFF} wake-ups. Pure: no I/O.
 */

/** Most wake-ups skipped after consecutive misses. */
export const MAX_BACKOFF = 1024;

/** The read-ahead policy of one connection. */
export class ReadAhead {
  #backoff = 0;
  #skip = 0;

  /** Whether to read again now (the caller has just sent a reply after draining its socket). */
  shouldTry(): boolean {
    if (this.#skip === 0) return true;
    this.#skip--;
    return false;
  }

  /** The read-ahead found data: read ahead on every wake-up again. */
  hit(): void {
    this.#backoff = 0;
  }

  /** The read-ahead found nothing (EAGAIN): skip it for twice as many wake-ups as last time. */
  miss(): void {
    this.#backoff = Math.min(MAX_BACKOFF, this.#backoff === 0 ? 1 : this.#backoff * 2);
    this.#skip = this.#backoff;
  }
}
