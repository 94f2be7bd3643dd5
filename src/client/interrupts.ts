/**
 * Interrupts of a vfio-user device, client side: one nonblocking eventfd per
 * vector, installed with DEVICE_SET_IRQS (DATA_EVENTFD | ACTION_TRIGGER,
 * batched by the server's `max_msg_fds`), watched with a native poller, and
 * surfaced three ways: an `'interrupt'` event, an async iterator per vector
 * and `waitFor(vector, timeoutMs)`.
 *
 * An eventfd counts the signals since it was last read, so interrupts that
 * arrive faster than they are consumed coalesce into one larger count; the
 * iterators' queues are bounded the same way (past `queueLimit` entries the
 * count is added to the newest entry). Memory never grows with the interrupt
 * rate.
 *
 * Nothing is lost to ordering: signals that arrive while a vector has no
 * iterator and no `waitFor` pending (typically an interrupt the device raised
 * inside the register write that caused it, read by the poller before the
 * caller got to `vector()`) are added to that vector's backlog — one `bigint`,
 * so memory stays bounded — and the next iterator created yields the backlog
 * first. An iterator may therefore be created after the doorbell it waits for.
 *
 * While enabled, the pollers keep the Node event loop alive: call
 * {@link Interrupts.disable} (or close the client, which tears everything
 * down too).
 */
import { EventEmitter } from 'node:events';
import { ConnectionClosedError, InvalidArgumentError, StateError, TimeoutError } from '../errors.js';
import { IrqSetFlags } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import type { VfioUserClient } from './client.js';
import { EventFdWatch } from './eventfd-watch.js';

/** One delivery: `count` signals of `vector` of IRQ `index` since the previous one. */
export interface InterruptEvent {
  index: number;
  vector: number;
  count: bigint;
}

/** Options of {@link Interrupts.enable}. */
export interface InterruptsOptions {
  /** First vector (default 0). */
  start?: number;
  /** Vectors to enable (default: all from `start`, per DEVICE_GET_IRQ_INFO). */
  vectors?: number;
  /** Entries an iterator queues before coalescing into the newest (default 64). */
  queueLimit?: number;
}

/** Events of {@link Interrupts}. */
export interface InterruptsEvents {
  interrupt: [InterruptEvent];
  /** Everything was torn down (disable, or the connection closed: then its reason). */
  close: [Error | undefined];
}

interface Waiter {
  resolve: (count: bigint) => void;
  reject: (error: Error) => void;
}

/** A bounded, coalescing queue of counts, consumed as an async iterator. */
class VectorQueue implements AsyncIterableIterator<bigint> {
  readonly #items: bigint[] = [];
  readonly #limit: number;
  readonly #waiters: Array<(r: IteratorResult<bigint>) => void> = [];
  readonly #onReturn: (q: VectorQueue) => void;
  #done = false;

  constructor(limit: number, onReturn: (q: VectorQueue) => void) {
    this.#limit = limit;
    this.#onReturn = onReturn;
  }

  push(count: bigint): void {
    if (this.#done) return;
    const waiter = this.#waiters.shift();
    if (waiter) return waiter({ value: count, done: false });
    if (this.#items.length < this.#limit) this.#items.push(count);
    else this.#items[this.#items.length - 1] = (this.#items[this.#items.length - 1] ?? 0n) + count;
  }

  /** Ends iteration after what is queued. */
  end(): void {
    this.#done = true;
    for (const w of this.#waiters.splice(0)) w({ value: undefined, done: true });
  }

  next(): Promise<IteratorResult<bigint>> {
    const item = this.#items.shift();
    if (item !== undefined) return Promise.resolve({ value: item, done: false });
    if (this.#done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  return(): Promise<IteratorResult<bigint>> {
    this.#items.length = 0;
    this.end();
    this.#onReturn(this);
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<bigint> {
    return this;
  }
}

interface VectorState {
  watch: EventFdWatch;
  total: bigint;
  /** Signals delivered while no iterator or waiter was there to take them; handed to the next iterator. */
  backlog: bigint;
  queues: Set<VectorQueue>;
  waiters: Set<Waiter>;
}

/** The eventfds of a range of vectors of one IRQ index, installed in one client session. */
export class Interrupts extends EventEmitter<InterruptsEvents> {
  readonly client: VfioUserClient;
  /** IRQ index (IrqIndex: INTX, MSI, MSIX, ERR, REQ). */
  readonly index: number;
  /** First vector. */
  readonly start: number;
  /** Number of vectors, from {@link start}. */
  readonly count: number;
  /** Vectors the index has (DEVICE_GET_IRQ_INFO). */
  readonly indexCount: number;
  readonly #vectors: VectorState[] = [];
  readonly #queueLimit: number;
  #closed = false;
  #disabling: Promise<void> | undefined;

  private constructor(client: VfioUserClient, index: number, start: number, count: number, indexCount: number, queueLimit: number) {
    super();
    this.client = client;
    this.index = index;
    this.start = start;
    this.count = count;
    this.indexCount = indexCount;
    this.#queueLimit = queueLimit;
    try {
      for (let i = 0; i < count; i++) this.#vectors.push(this.#watch(start + i));
    } catch (error) {
      this.#teardown(undefined);
      throw error;
    }
  }

  /**
   * Creates one eventfd per vector of `[start, start + vectors)`, starts
   * watching them and installs them with SET_IRQS DATA_EVENTFD|ACTION_TRIGGER.
   * Everything is torn down when the client's connection closes.
   * @throws {InvalidArgumentError} EINVAL for a range outside the index's vectors.
   * @throws {RemoteError} the server's errno (EINVAL) for DEVICE_GET_IRQ_INFO or SET_IRQS; nothing stays open then.
   * @throws {SystemError} EMFILE when out of fds.
   */
  static async enable(client: VfioUserClient, index: number, options: InterruptsOptions = {}): Promise<Interrupts> {
    const info = await client.irqInfo(index);
    const start = options.start ?? 0;
    const count = options.vectors ?? info.count - start;
    const queueLimit = options.queueLimit ?? 64;
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 1 || start + count > info.count) {
      throw new InvalidArgumentError(`Interrupts.enable: vectors [${start}, ${start + count}) outside the ${info.count} of IRQ index ${index}`);
    }
    if (!Number.isInteger(queueLimit) || queueLimit < 1) throw new InvalidArgumentError(`Interrupts.enable: queueLimit ${queueLimit} must be a positive integer`);
    const irq = new Interrupts(client, index, start, count, info.count, queueLimit);
    try {
      await client.setIrqs({ flags: IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, index, start, count }, irq.fds);
    } catch (error) {
      irq.#teardown(undefined);
      throw error;
    }
    void client.closed.then((reason) => irq.#teardown(new ConnectionClosedError('Interrupts: the connection to the server is closed', reason ? { cause: reason } : {})));
    return irq;
  }

  /** Whether everything was torn down. */
  get closed(): boolean {
    return this.#closed;
  }

  /** The eventfds, vector `start + i` at `i` (owned by this object; empty once closed). */
  get fds(): readonly number[] {
    return this.#closed ? [] : this.#vectors.map((v) => v.watch.fd);
  }

  /** Signals seen so far on `vector`. @throws {InvalidArgumentError} EINVAL for a vector outside the range. */
  total(vector: number): bigint {
    return this.#state(vector, 'total', false).total;
  }

  /**
   * The counts delivered on `vector`, as an async iterator; it ends when the
   * interrupts are disabled or the connection closes (after what it had
   * queued). Several iterators each get every count delivered while they
   * exist. A new iterator first yields, as one count, the signals that no
   * iterator or `waitFor` received so far (the vector's backlog, which it then
   * consumes): created after the write that raised an interrupt, it still sees
   * that interrupt. The 'interrupt' event does not consume signals.
   * @throws {InvalidArgumentError} EINVAL for a vector outside the range; {@link StateError} EBADF once closed.
   */
  vector(vector: number): AsyncIterableIterator<bigint> {
    const state = this.#state(vector, 'vector');
    const queue = new VectorQueue(this.#queueLimit, (q) => state.queues.delete(q));
    state.queues.add(queue);
    if (state.backlog > 0n) {
      queue.push(state.backlog);
      state.backlog = 0n;
    }
    return queue;
  }

  /** Signals of `vector` no iterator or waiter has taken yet (see {@link vector}). @throws {InvalidArgumentError} EINVAL for a vector outside the range. */
  backlog(vector: number): bigint {
    return this.#state(vector, 'backlog', false).backlog;
  }

  /**
   * Resolves with the count of the next delivery on `vector` (arm it before
   * causing the interrupt: unlike {@link vector}, it does not take the backlog).
   * @param timeoutMs - 0 waits forever.
   * @throws {TimeoutError} ETIMEDOUT; {@link ConnectionClosedError} ENOTCONN or {@link StateError} when torn down first.
   */
  waitFor(vector: number, timeoutMs = 5000): Promise<bigint> {
    let state: VectorState;
    try {
      state = this.#state(vector, 'waitFor');
    } catch (error) {
      return Promise.reject(error as Error);
    }
    return new Promise((resolve, reject) => {
      const timer = timeoutMs > 0 ? setTimeout(() => {
        state.waiters.delete(waiter);
        reject(new TimeoutError(`Interrupts.waitFor: no interrupt on IRQ ${this.index} vector ${vector} within ${timeoutMs} ms`));
      }, timeoutMs) : undefined;
      const waiter: Waiter = {
        resolve: (n) => {
          clearTimeout(timer);
          resolve(n);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      state.waiters.add(waiter);
    });
  }

  /**
   * Asks the server to signal `vector` itself (SET_IRQS TRIGGER|NONE): a loopback test.
   * @throws {RemoteError} the server's errno; {@link InvalidArgumentError} for a vector outside the range.
   */
  async trigger(vector: number): Promise<void> {
    this.#state(vector, 'trigger');
    await this.client.setIrqs({ flags: IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, index: this.index, start: vector, count: 1 });
  }

  /** SET_IRQS MASK|NONE of `vector` (libvfio-user: only the device's irq-state callback sees it). @throws {RemoteError} the server's errno. */
  async mask(vector: number): Promise<void> {
    this.#state(vector, 'mask');
    await this.client.setIrqs({ flags: IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_MASK, index: this.index, start: vector, count: 1 });
  }

  /** SET_IRQS UNMASK|NONE of `vector`; a pending interrupt may fire. @throws {RemoteError} the server's errno. */
  async unmask(vector: number): Promise<void> {
    this.#state(vector, 'unmask');
    await this.client.setIrqs({ flags: IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_UNMASK, index: this.index, start: vector, count: 1 });
  }

  /**
   * Uninstalls the eventfds from the server, then stops the pollers, closes
   * the eventfds, ends the iterators and rejects waiters. The whole index is
   * disabled with TRIGGER|NONE count 0; a sub-range with TRIGGER|EVENTFD and
   * no fds (libvfio-user then closes `[start, count)`, not `[start,
   * start + count)`: its `irqs_disable` bug). Idempotent; a closed connection
   * is not an error.
   * @throws {RemoteError} the server's errno (local teardown happens anyway).
   */
  disable(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#disabling ??= this.#disable();
    return this.#disabling;
  }

  async #disable(): Promise<void> {
    const whole = this.start === 0 && this.count === this.indexCount;
    const set = whole
      ? { flags: IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, index: this.index, start: 0, count: 0 }
      : { flags: IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, index: this.index, start: this.start, count: this.count };
    try {
      await this.client.setIrqs(set);
    } catch (error) {
      if (!(error instanceof ConnectionClosedError)) throw error;
    } finally {
      this.#teardown(undefined);
    }
  }

  #watch(vector: number): VectorState {
    const state = { total: 0n, backlog: 0n, queues: new Set(), waiters: new Set() } as Omit<VectorState, 'watch'> as VectorState;
    state.watch = new EventFdWatch((count) => this.#deliver(state, vector, count));
    return state;
  }

  #deliver(state: VectorState, vector: number, count: bigint): void {
    state.total += count;
    if (state.queues.size === 0 && state.waiters.size === 0) state.backlog += count;
    for (const q of state.queues) q.push(count);
    const waiters = [...state.waiters];
    state.waiters.clear();
    for (const w of waiters) w.resolve(count);
    this.emit('interrupt', { index: this.index, vector, count });
  }

  #state(vector: number, site: string, open = true): VectorState {
    const state = Number.isInteger(vector) ? this.#vectors[vector - this.start] : undefined;
    if (!state) throw new InvalidArgumentError(`Interrupts.${site}: vector ${vector} outside [${this.start}, ${this.start + this.count})`);
    if (open && this.#closed) throw new StateError(`Interrupts.${site}: interrupts of IRQ index ${this.index} are disabled`, { errno: Errno.EBADF });
    return state;
  }

  /** Stops pollers before closing their fds (libuv aborts on a watched fd closed under it). */
  #teardown(reason: Error | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    const error = reason ?? new StateError(`Interrupts: IRQ index ${this.index} was disabled`, { errno: Errno.EBADF });
    for (const v of this.#vectors) {
      v.watch.close();
      for (const q of v.queues) q.end();
      v.queues.clear();
      for (const w of v.waiters) w.reject(error);
      v.waiters.clear();
    }
    this.emit('close', reason);
  }
}
