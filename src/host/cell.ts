/**
 * Instance cells: each device instance of a host runs in its own worker
 * thread, so a device that throws, spins or leaks only takes its own cell
 * down. The host's main thread binds the instance's socket
 * ({@link bindInstanceSocket}) and keeps it across restarts (clients that
 * connect meanwhile wait in the backlog); the cell's worker builds the device
 * and serves it on a dup of that socket (`cell-worker.ts`).
 *
 * Isolation:
 * - a memory cap (`resourceLimits`): a leaking device's worker dies with
 *   ERR_WORKER_OUT_OF_MEMORY, the process lives on;
 * - a watchdog: the worker beats a shared counter from its event loop; no
 *   beat for `watchdogMs` → the worker is terminated (which also interrupts
 *   a spinning JS loop). It is armed once the worker has loaded its modules
 *   (until then `loadTimeoutMs` bounds the load): Node leaks the files its
 *   module loader has open in a worker terminated mid-load;
 * - an uncaught exception or unhandled rejection ends only the worker.
 * When a worker ends, however it ends, the native addon closes every fd it
 * still owned (client connections, eventfds, memfds, its listening dup) and
 * its mappings are unmapped: the client sees EOF, nothing leaks.
 */
import { EventEmitter } from 'node:events';
import { lstatSync, unlinkSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { StateError, VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { silentLogger, type Logger } from '../log.js';
import { native } from '../native/addon.js';
import { bindListening } from '../transport/unix-listener.js';
import type { CellReply, CellRequest, CellSpec, CellStatus, CellToMain, CellWorkerData } from './cell-protocol.js';
import type { InstanceClient } from './types.js';

export type { CellSpec, CellStatus } from './cell-protocol.js';

/** Default {@link CellOptions.watchdogMs}. */
export const DEFAULT_WATCHDOG_MS = 5000;
/** Default {@link CellOptions.memoryLimitMb}. */
export const DEFAULT_MEMORY_LIMIT_MB = 256;

/** Options of {@link InstanceCell.start}. */
export interface CellOptions {
  /** A worker whose event loop does not beat for this long once loaded is terminated (default 5000 ms). */
  watchdogMs?: number;
  /** How often the worker beats (default a quarter of `watchdogMs`, at least 10 ms). */
  heartbeatMs?: number;
  /** The worker's V8 old-generation heap cap in MiB (default 256). Device memory (regions) is not counted. */
  memoryLimitMb?: number;
  /** How long loading the library and the parent module in the worker may take (default 60 s). */
  loadTimeoutMs?: number;
  /** How long building and serving the device may take once loaded (default 30 s). */
  startTimeoutMs?: number;
  /** How long a stop may take (session close, device reset, dispose) before the worker is terminated (default 10 s). */
  stopTimeoutMs?: number;
  /** Only peers with one of these uids are served (SO_PEERCRED). */
  allowedUids?: readonly number[];
  /** Where the cell's lifecycle (start, stop, death) is logged. */
  logger?: Logger;
}

/** Events of an {@link InstanceCell}. */
export interface CellEvents {
  /** The worker died unexpectedly (threw, stalled past the watchdog, ran out of memory): one line why. */
  exit: [reason: string];
  /** A client's session started (its credentials), or ended and the device was reset (`undefined`). */
  client: [client: InstanceClient | undefined];
}

/** What a worker's death is reported as. */
function reasonOf(error: unknown): string {
  const e = error as { code?: unknown; message?: unknown; name?: unknown } | null;
  const message = String(e?.message ?? error).split('\n')[0] ?? '';
  if (e?.code === 'ERR_WORKER_OUT_OF_MEMORY') return `out of memory (ERR_WORKER_OUT_OF_MEMORY): ${message}`;
  return `uncaught ${typeof e?.name === 'string' ? e.name : 'exception'}: ${message}`;
}

/** A promise settled from outside (the first settlement wins; a rejection nobody awaits is not unhandled). */
interface Milestone {
  promise: Promise<void>;
  resolve(): void;
  reject(error: Error): void;
}

function milestone(): Milestone {
  let resolve!: () => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/** `promise`, or ETIMEDOUT with `message` after `ms`. */
async function within(promise: Promise<void>, ms: number, message: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new VfioUserError(message, { errno: Errno.ETIMEDOUT })), ms)));
  try {
    await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

function positive(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v <= 0) throw new VfioUserError(`cell option ${name}: ${v} is not a positive integer`, { errno: Errno.EINVAL });
  return v;
}

/** One device instance served by its own worker thread. */
export class InstanceCell extends EventEmitter<CellEvents> {
  /** What this cell serves (start another cell with it to restart the instance on the same socket). */
  readonly spec: CellSpec;
  readonly #worker: Worker;
  readonly #logger: Logger;
  readonly #pending = new Map<number, { resolve(reply: CellReply): void; reject(error: Error): void }>();
  readonly #exited: Promise<void>;
  #nextId = 1;
  #watchdog: NodeJS.Timeout | undefined;
  /** Why the worker died or is being ended; undefined while it runs. */
  #ending: string | undefined;
  /** Whether the worker's end is ours (stop, terminate, failed start): no 'exit' event then. */
  #expected = false;
  #ready = false;
  /** A stop() is in progress or done: the worker's end is expected. */
  #stopping = false;

  private constructor(spec: CellSpec, options: CellOptions) {
    super();
    this.spec = spec;
    this.#logger = (options.logger ?? silentLogger()).child({ uuid: spec.uuid, socket: spec.socket });
    const watchdogMs = positive('watchdogMs', options.watchdogMs, DEFAULT_WATCHDOG_MS);
    const heartbeatMs = positive('heartbeatMs', options.heartbeatMs, Math.max(10, Math.floor(watchdogMs / 4)));
    const heartbeat = new SharedArrayBuffer(4);
    const data: CellWorkerData = { spec, heartbeat, heartbeatMs, ...(options.allowedUids ? { allowedUids: [...options.allowedUids] } : {}) };
    this.#worker = new Worker(new URL('./cell-worker.js', import.meta.url), {
      workerData: data,
      resourceLimits: { maxOldGenerationSizeMb: positive('memoryLimitMb', options.memoryLimitMb, DEFAULT_MEMORY_LIMIT_MB) },
      name: `cell ${spec.uuid}`,
    });
    this.#worker.on('message', (m: CellToMain) => this.#onMessage(m));
    this.#worker.on('error', (error) => this.#end(reasonOf(error)));
    this.#exited = new Promise((resolve) => this.#worker.once('exit', (code) => resolve(this.#onExit(code))));
    this.#loaded = milestone();
    this.#served = milestone();
    // Armed once the modules are loaded: a worker terminated while Node's module loader still has files open
    // leaks those fds (Node closes them only on GC, which a terminated worker never runs).
    void this.#loaded.promise.then(
      () => this.#startWatchdog(new Int32Array(heartbeat), watchdogMs, heartbeatMs),
      () => undefined,
    );
  }

  /**
   * Starts a worker that builds the instance's device (the parent module's
   * type, attributes in order) and serves it on `spec.listenFd`.
   * @returns once the device is served.
   * Two phases: loading the library and the parent module (`loadTimeoutMs`, no watchdog: see the
   * constructor), then building and serving (`startTimeoutMs`, watchdog armed).
   * @throws {VfioUserError} the build's errno (ENOENT unknown type, EINVAL bad attribute, an `apply`'s or
   *   `create`'s own errno) with its one-line message; ETIMEDOUT if the worker stalled past the watchdog or
   *   did not finish a phase in time; ENOMEM if it ran out of memory; EIO if it threw otherwise;
   *   EINVAL for a bad option. When it throws, the worker has ended and none of its fds is left open
   *   (except, after a load timeout, files Node's module loader had open: a parent module whose import never ends).
   */
  static async start(spec: CellSpec, options: CellOptions = {}): Promise<InstanceCell> {
    const loadTimeoutMs = positive('loadTimeoutMs', options.loadTimeoutMs, 60_000);
    const startTimeoutMs = positive('startTimeoutMs', options.startTimeoutMs, 30_000);
    const stopTimeoutMs = positive('stopTimeoutMs', options.stopTimeoutMs, 10_000);
    const cell = new InstanceCell(spec, options);
    cell.#stopTimeoutMs = stopTimeoutMs;
    try {
      await within(cell.#loaded.promise, loadTimeoutMs, `${spec.uuid}: parent module ${spec.parentModule} not loaded within ${loadTimeoutMs} ms`);
      await within(cell.#served.promise, startTimeoutMs, `${spec.uuid}: not served within ${startTimeoutMs} ms`);
    } catch (error) {
      cell.#expected = true;
      await cell.#kill(String((error as Error).message));
      throw error;
    }
    cell.#logger.info({ threadId: cell.#worker.threadId }, 'instance cell serving');
    return cell;
  }

  #stopTimeoutMs = 10_000;
  readonly #loaded: Milestone;
  readonly #served: Milestone;

  /** The worker's thread id (for logs). */
  get threadId(): number {
    return this.#worker.threadId;
  }

  /** Whether the worker is serving (false once it stopped, died or is being ended). */
  get alive(): boolean {
    return this.#ready && this.#ending === undefined;
  }

  /** Why the worker ended ("stopped", "terminated", or the unexpected death's reason), undefined while it runs. */
  get endReason(): string | undefined {
    return this.#ending;
  }

  /**
   * The connected client (pid/uid/gid, since when) and the device's migration state.
   * @throws {StateError} ENODEV if the cell is not running (stopped, died, or died while answering).
   */
  async status(): Promise<CellStatus> {
    const reply = await this.#request({ op: 'status' });
    return reply.ok && reply.status ? reply.status : {};
  }

  /**
   * Stops serving and ends the worker: the session is closed (the device reset with LOST_CONNECTION, as
   * when a client goes away), the instance disposed. The socket file and the host's listening fd stay.
   * A stop that takes longer than `stopTimeoutMs` terminates the worker (its fds are closed all the same); a
   * worker that dies during the stop (its reset hook threw or stalled) is stopped too: no 'exit' event then.
   * @throws {VfioUserError} EBUSY while a client is connected and `force` is not set (the cell keeps serving),
   *   or while another stop is in progress.
   * @throws {StateError} ENODEV if the cell is not running.
   */
  async stop(options: { force?: boolean } = {}): Promise<void> {
    if (this.#stopping) throw new VfioUserError(`instance ${this.spec.uuid} is already stopping`, { errno: Errno.EBUSY });
    if (!this.alive) throw new StateError(`instance ${this.spec.uuid} is not running`, { errno: Errno.ENODEV });
    this.#stopping = true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), this.#stopTimeoutMs)));
    try {
      const outcome = await Promise.race([this.#request({ op: 'stop', force: options.force ?? false }), timeout]);
      if (outcome === 'timeout') this.#logger.warn({ timeoutMs: this.#stopTimeoutMs }, 'instance stop timed out; terminating its worker');
      else if (outcome.ok && outcome.warning) this.#logger.warn({ reason: outcome.warning }, 'instance stopped with a problem');
    } catch (error) {
      if (this.alive) {
        this.#stopping = false; // refused (EBUSY): still serving
        throw error;
      }
      this.#logger.warn({ reason: this.#ending }, 'instance cell died while stopping');
    } finally {
      clearTimeout(timer);
    }
    this.#expected = true;
    await this.#kill('stopped');
    this.#logger.info({}, 'instance cell stopped');
  }

  /** Ends the worker at once, whatever it is doing (no 'exit' event); its fds are closed. Idempotent. */
  async terminate(): Promise<void> {
    this.#expected = true;
    await this.#kill('terminated');
  }

  async #request(request: { op: 'status' } | { op: 'stop'; force: boolean }): Promise<CellReply> {
    if (!this.alive) throw new StateError(`instance ${this.spec.uuid} is not running`, { errno: Errno.ENODEV });
    const id = this.#nextId++;
    const reply = await new Promise<CellReply>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ ...request, id } as CellRequest);
    });
    if (!reply.ok) throw new VfioUserError(`instance ${this.spec.uuid}: ${reply.message}`, { errno: reply.errno });
    return reply;
  }

  #onMessage(m: CellToMain): void {
    if (m.type === 'loaded') {
      this.#loaded.resolve();
    } else if (m.type === 'ready') {
      this.#ready = true;
      this.#served.resolve();
    } else if (m.type === 'client') {
      this.emit('client', m.client);
    } else if (m.type === 'failed') {
      const error = new VfioUserError(m.message, { errno: m.errno });
      this.#loaded.reject(error);
      this.#served.reject(error);
    } else {
      const waiter = this.#pending.get(m.id);
      this.#pending.delete(m.id);
      waiter?.resolve(m.reply);
    }
  }

  /** Ends the worker for `reason` (first reason wins) and waits until it is gone. */
  async #kill(reason: string): Promise<void> {
    this.#end(reason);
    await this.#worker.terminate();
    await this.#exited;
  }

  /** Records why the worker ends and fails whatever waits on it. */
  #end(reason: string): void {
    if (this.#ending !== undefined) return;
    this.#ending = reason;
    clearInterval(this.#watchdog);
    const errno = reason.startsWith('out of memory') ? Errno.ENOMEM : reason.startsWith('stalled') ? Errno.ETIMEDOUT : Errno.EIO;
    const error = new VfioUserError(`${this.spec.uuid}: ${reason}`, { errno });
    this.#loaded.reject(error);
    this.#served.reject(error);
    for (const waiter of this.#pending.values()) waiter.reject(new StateError(`instance ${this.spec.uuid}: ${reason}`, { errno: Errno.ENODEV }));
    this.#pending.clear();
  }

  #onExit(code: number): void {
    this.#end(`worker exited with code ${code}`);
    const reason = this.#ending ?? '';
    if (this.#expected || this.#stopping) return;
    this.#logger.error({ reason, code }, 'instance cell died');
    if (this.#ready) this.emit('exit', reason);
  }

  #startWatchdog(beats: Int32Array, watchdogMs: number, everyMs: number): void {
    if (this.#ending !== undefined) return;
    let seen = Atomics.load(beats, 0);
    let lastBeat = Date.now();
    this.#watchdog = setInterval(() => {
      const now = Date.now();
      const count = Atomics.load(beats, 0);
      if (count !== seen) {
        seen = count;
        lastBeat = now;
      } else if (now - lastBeat >= watchdogMs) {
        const reason = `stalled: no heartbeat for ${now - lastBeat} ms (watchdog ${watchdogMs} ms)`;
        this.#logger.error({ watchdogMs }, 'instance cell stalled; terminating its worker');
        this.#end(reason);
        void this.#worker.terminate();
      }
    }, everyMs);
    this.#watchdog.unref();
  }
}

/** A listening socket bound by the host's main thread for one instance. */
export interface InstanceSocket {
  readonly path: string;
  /** The listening fd: pass it as {@link CellSpec.listenFd}; keep it open across restarts. */
  readonly fd: number;
  /** Closes the fd and removes the socket file (if it is still the one bound here). Idempotent. */
  close(): void;
}

/**
 * Binds and listens on an instance's socket path (mode 0600, no window with a wider mode; a stale socket
 * left by a dead host replaced, a live one refused). Main thread only (it sets the umask around bind).
 * @throws {SystemError} EADDRINUSE if another process serves `path`; EACCES, ENOENT, ENAMETOOLONG (over 107 bytes) from bind.
 */
export function bindInstanceSocket(path: string): InstanceSocket {
  const fd = bindListening(path, { mode: 0o600, backlog: 16 });
  const bound = lstatSync(path, { throwIfNoEntry: false });
  let closed = false;
  return {
    path,
    fd,
    close(): void {
      if (closed) return;
      closed = true;
      native.close(fd);
      const now = lstatSync(path, { throwIfNoEntry: false });
      if (bound && now && now.ino === bound.ino && now.dev === bound.dev) {
        try {
          unlinkSync(path);
        } catch {
          // already gone
        }
      }
    },
  };
}
