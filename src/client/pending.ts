/**
 * Request correlation for a client: a `Map` keyed by the 16-bit message id,
 * which wraps around and never reuses an id still in flight; per-request
 * timeouts; everything pending rejected when the connection goes away.
 */
import { ConnectionClosedError, TimeoutError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { commandName } from '../protocol/constants.js';
import type { Message } from '../transport/transport.js';

interface Entry {
  cmd: number;
  sentAt: bigint;
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

/** The outstanding requests of one connection. */
export class PendingRequests {
  readonly #entries = new Map<number, Entry>();
  #nextId = 1;
  #closedWith: Error | undefined;

  /** How many requests are waiting for their reply. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Reserves an id and registers the waiter.
   * @throws {ConnectionClosedError} ENOTCONN after {@link closeAll}; EBUSY with 65,536 requests in flight.
   */
  add(cmd: number, timeoutMs: number): { msgId: number; reply: Promise<Message> } {
    if (this.#closedWith) throw this.#closedWith;
    const msgId = this.#allocate();
    let entry!: Entry;
    const reply = new Promise<Message>((resolve, reject) => {
      entry = { cmd, sentAt: process.hrtime.bigint(), resolve, reject, timer: undefined };
    });
    if (timeoutMs > 0 && Number.isFinite(timeoutMs)) {
      entry.timer = setTimeout(() => {
        this.#entries.delete(msgId);
        entry.reject(new TimeoutError(`${commandName(cmd)} (msg ${msgId}): no reply within ${timeoutMs} ms`));
      }, timeoutMs);
    }
    this.#entries.set(msgId, entry);
    return { msgId, reply };
  }

  /** The command and send time of a pending request, if `msgId` is one. */
  peek(msgId: number): { cmd: number; sentAt: bigint } | undefined {
    return this.#entries.get(msgId);
  }

  /** Settles request `msgId` with its reply (true), or reports an unknown id (false). */
  resolve(msgId: number, m: Message): boolean {
    const entry = this.#take(msgId);
    entry?.resolve(m);
    return entry !== undefined;
  }

  /** Fails request `msgId` (a reply that does not fit it, or a send that failed). */
  reject(msgId: number, error: Error): void {
    this.#take(msgId)?.reject(error);
  }

  /** Rejects everything pending and every later {@link add} with `error`. */
  closeAll(error: Error): void {
    this.#closedWith ??= error;
    for (const [id] of this.#entries) this.#take(id)?.reject(error);
  }

  #take(msgId: number): Entry | undefined {
    const entry = this.#entries.get(msgId);
    if (!entry) return undefined;
    this.#entries.delete(msgId);
    clearTimeout(entry.timer);
    return entry;
  }

  #allocate(): number {
    for (let i = 0; i < 0x10000; i++) {
      const id = this.#nextId;
      this.#nextId = (this.#nextId + 1) & 0xffff;
      if (!this.#entries.has(id)) return id;
    }
    throw new ConnectionClosedError('65,536 requests in flight', { errno: Errno.EBUSY });
  }
}
