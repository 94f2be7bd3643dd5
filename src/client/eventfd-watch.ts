/**
 * One eventfd a client hands to its server (a notification channel: the
 * device request IRQ, the isolation group's change notifier), watched here
 * with the native poller, and the listeners that share it. A server keeps one
 * such fd per channel and replaces it on a new registration, so a client
 * registers one and fans its signals out: the first listener installs it, the
 * last one to leave uninstalls it, and the connection closing tears it down.
 *
 * While installed, the poller keeps the Node event loop alive (as
 * {@link Interrupts} do): dispose of the listeners, or close the client.
 */
import { ConnectionClosedError } from '../errors.js';
import { createEventFd, native } from '../native/addon.js';
import type { NativePoller } from '../native/types.js';
import type { Logger } from '../log.js';
import type { ClientCore } from './core.js';

/** How a channel's eventfd is installed in and removed from the server. */
export interface EventFdChannel {
  /** Sends `fd` to the server (which keeps a duplicate). */
  install(fd: number): Promise<void>;
  /** Tells the server to stop signalling (and close its copy). */
  uninstall(): Promise<void>;
}

/**
 * An eventfd and its native poller; `onSignal` gets the counts read.
 * @throws {SystemError} from eventfd(2) (EMFILE, ENFILE) or the poller's start (the fd is then closed).
 */
export class EventFdWatch {
  readonly fd: number;
  readonly #poller: NativePoller;
  #closed = false;

  constructor(onSignal: (count: bigint) => void) {
    this.fd = createEventFd();
    try {
      const poller = new native.Poller(this.fd, (status) => {
        if (status < 0) return poller.stop(); // libuv: stop polling after an error
        const value = native.eventfdRead(this.fd);
        if (typeof value === 'bigint') onSignal(value);
      });
      poller.start(native.constants.UV_READABLE);
      this.#poller = poller;
    } catch (error) {
      native.close(this.fd);
      throw error;
    }
  }

  /** Stops the poller before closing the fd (libuv aborts on a watched fd closed under it). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#poller.close();
    native.close(this.fd);
  }
}

/**
 * The listeners of one notification channel of one client. `add()` installs
 * the eventfd on first use; the returned disposer removes the listener and,
 * for the last one, uninstalls and closes it.
 */
export class SharedEventFd {
  readonly #channel: EventFdChannel;
  readonly #listeners = new Set<(count: bigint) => void>();
  #watch: EventFdWatch | undefined;
  /** Installation queued, in progress or done (undefined: not installed, or being uninstalled). */
  #installed: Promise<void> | undefined;
  /** Installs and uninstalls run one after the other, in call order (the server sees them in that order). */
  #serial: Promise<unknown> = Promise.resolve();
  readonly #logger: Logger;
  #total = 0n;
  #closed = false;

  /** @param logger - where a listener's exception is reported (it does not stop the others). */
  constructor(client: ClientCore, channel: EventFdChannel, logger: Logger) {
    this.#channel = channel;
    this.#logger = logger;
    void client.closed.then(() => this.#teardown());
  }

  /** Whether the connection closed (nothing can be added any more). */
  get closed(): boolean {
    return this.#closed;
  }

  /** Signals received since the channel was created (an eventfd coalesces: one read may bring several). */
  get total(): bigint {
    return this.#total;
  }

  /** Listeners registered. */
  get size(): number {
    return this.#listeners.size;
  }

  /**
   * Adds `listener`, installing the eventfd first if it is the first one.
   * @returns the disposer (idempotent; the last one uninstalls, a closed connection is not an error).
   * @throws {ConnectionClosedError} ENOTCONN once the connection closed; whatever `install` throws (nothing stays open then).
   */
  async add(listener: (count: bigint) => void): Promise<() => Promise<void>> {
    if (this.#closed) throw new ConnectionClosedError('the connection to the server is closed');
    this.#listeners.add(listener);
    const installing = (this.#installed ??= this.#queue(() => this.#install()));
    try {
      await installing;
    } catch (error) {
      this.#listeners.delete(listener);
      if (this.#installed === installing) this.#installed = undefined;
      throw error;
    }
    let disposed = false;
    return async () => {
      if (disposed) return;
      disposed = true;
      this.#listeners.delete(listener);
      if (this.#listeners.size > 0 || this.#installed === undefined) return;
      this.#installed = undefined;
      await this.#queue(() => this.#uninstall());
    };
  }

  #queue(op: () => Promise<void>): Promise<void> {
    const run = this.#serial.then(op);
    this.#serial = run.catch(() => undefined);
    return run;
  }

  async #install(): Promise<void> {
    if (this.#closed) throw new ConnectionClosedError('the connection to the server is closed');
    const watch = new EventFdWatch((count) => this.#deliver(count));
    this.#watch = watch;
    try {
      await this.#channel.install(watch.fd);
    } catch (error) {
      this.#closeWatch();
      throw error;
    }
    if (this.#closed) this.#closeWatch();
  }

  async #uninstall(): Promise<void> {
    if (!this.#watch) return;
    try {
      if (!this.#closed) await this.#channel.uninstall();
    } catch (error) {
      if (!(error instanceof ConnectionClosedError)) throw error;
    } finally {
      this.#closeWatch();
    }
  }

  #deliver(count: bigint): void {
    this.#total += count;
    for (const listener of [...this.#listeners]) {
      try {
        listener(count);
      } catch (err) {
        this.#logger.error({ err }, 'notification listener failed');
      }
    }
  }

  #closeWatch(): void {
    this.#watch?.close();
    this.#watch = undefined;
  }

  #teardown(): void {
    this.#closed = true;
    this.#listeners.clear();
    this.#closeWatch();
  }
}
