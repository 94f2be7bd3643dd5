/**
 * Ownership of file descriptors received with a message. Every fd that arrives
 * belongs to exactly one {@link ReceivedFds}; whoever handles the message takes
 * the fds it keeps and the rest are closed by {@link ReceivedFds.closeRemaining}
 * (the dispatcher calls it in `finally`), so an fd can never leak.
 */
import { InvalidArgumentError } from '../errors.js';

/** Closes one fd; must not throw. */
export type FdCloser = (fd: number) => void;

/** The fds that arrived with one message. */
export class ReceivedFds {
  /** A shared, empty instance for the (common) messages that carry no fds. */
  static readonly EMPTY = new ReceivedFds([], () => {});

  readonly #fds: (number | undefined)[];
  readonly #close: FdCloser;

  /**
   * @param fds - the received descriptors, in the order they arrived.
   * @param close - how to close one of them.
   */
  constructor(fds: readonly number[], close: FdCloser) {
    this.#fds = [...fds];
    this.#close = close;
  }

  /** How many fds arrived (taken or not). */
  get count(): number {
    return this.#fds.length;
  }

  /** How many fds are still owned here (not taken, not closed). */
  get remaining(): number {
    let n = 0;
    for (const fd of this.#fds) if (fd !== undefined) n++;
    return n;
  }

  /** Whether fd `index` is still here to be taken. */
  has(index: number): boolean {
    return this.#fds[index] !== undefined;
  }

  /**
   * Takes ownership of fd `index`: the caller must close it.
   * @throws {InvalidArgumentError} EBADF if there is no such fd or it was taken.
   */
  take(index: number): number {
    const fd = this.#fds[index];
    if (fd === undefined) {
      throw new InvalidArgumentError(`received fd #${index} does not exist or was already taken`, {
        errno: 9,
      });
    }
    this.#fds[index] = undefined;
    return fd;
  }

  /** Takes every fd still here, in order. */
  takeAll(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.#fds.length; i++) {
      const fd = this.#fds[i];
      if (fd !== undefined) out.push(fd);
      this.#fds[i] = undefined;
    }
    return out;
  }

  /** Closes every fd that was not taken. Idempotent; never throws. */
  closeRemaining(): void {
    for (let i = 0; i < this.#fds.length; i++) {
      const fd = this.#fds[i];
      if (fd === undefined) continue;
      this.#fds[i] = undefined;
      this.#close(fd);
    }
  }
}
