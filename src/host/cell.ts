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
 *
 * Isolation groups and hot-unplug (the host's main thread decides, the cell carries it out):
 * - admission: every client is admitted by the {@link CellAdmission} hook (its verdict's errno answers
 *   the client's VERSION on a refusal);
 * - the group: {@link InstanceCell.setGroup} pushes the view its clients read with `x-isolation-group`;
 * - stop with a client connected: release requests (REQ eventfd) until it leaves or a timeout, then forced.
 */
import { EventEmitter } from 'node:events';
import { lstatSync, unlinkSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { StateError, VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { silentLogger, type Logger } from '../log.js';
import { native } from '../native/addon.js';
import { bindListening } from '../transport/unix-listener.js';
import { checkIsolationGroupView, type IsolationGroupView } from '../protocol/isolation-group.js';
import { DEFAULT_ADMIT_TIMEOUT_MS } from '../server/server.js';
import { CellAdmissions, type CellAdmission } from './cell-admission.js';
import type { CellPeer, CellReply, CellRequest, CellSpec, CellStatus, CellStopOutcome, CellToMain, CellWorkerData } from './cell-protocol.js';
import type { InstanceClient } from './types.js';

export type { AdmitVerdict, CellPeer, CellRelease, CellSpec, CellStatus, CellStopOutcome } from './cell-protocol.js';
export type { CellAdmission } from './cell-admission.js';

/** Options of {@link InstanceCell.stop}. */
export interface CellStopOptions {
  /** Close a connected client's session at once, without asking it first. */
  force?: boolean;
  /** How long a connected client is given to release the device (default 10 000 ms; 0: asked once, then forced). */
  timeoutMs?: number;
  /** Time between release requests (default max(100, timeoutMs / 10) ms). */
  intervalMs?: number;
}

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
  /** Admits each client (none: every client is admitted); replaced with {@link InstanceCell.setAdmission}. */
  admit?: CellAdmission;
  /** How long a client waits for the admission verdict before it is refused with EAGAIN (default 5000 ms). */
  admitTimeoutMs?: number;
}

/** Events of an {@link InstanceCell}. */
export interface CellEvents {
  /** The worker died unexpectedly (threw, stalled past the watchdog, ran out of memory): one line why. */
  exit: [reason: string];
  /** A client's session started (its credentials), or ended and the device was reset (`undefined`). */
  client: [client: InstanceClient | undefined];
  /**
   * A client the admission hook admitted never got a session: the worker stopped waiting for the verdict
   * (admitTimeoutMs, a stop). Whatever the hook reserved for it (a group's ownership) is to be released.
   */
  'admission-abandoned': [client: CellPeer];
  /** A stop asked the client to release the device, the `count`th time; `delivered`: its REQ eventfd was signalled. */
  'release-requested': [count: number, delivered: boolean];
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
  readonly #admissions: CellAdmissions;
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
    if (spec.group !== undefined) checkIsolationGroupView(spec.group);
    this.#admissions = new CellAdmissions(
      {
        logger: this.#logger,
        answer: (id, verdict) => {
          if (this.#ending === undefined) this.#worker.postMessage({ op: 'admit-verdict', id, verdict } satisfies CellRequest);
        },
        abandoned: (client) => this.emit('admission-abandoned', client),
      },
      options.admit,
    );
    const admitTimeoutMs = positive('admitTimeoutMs', options.admitTimeoutMs, DEFAULT_ADMIT_TIMEOUT_MS);
    const data: CellWorkerData = { spec, heartbeat, heartbeatMs, admitTimeoutMs, ...(options.allowedUids ? { allowedUids: [...options.allowedUids] } : {}) };
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
   * Replaces the admission hook (undefined: every client is admitted). Clients already waiting for a
   * verdict get the hook that was set when they connected.
   */
  setAdmission(admit: CellAdmission | undefined): void {
    this.#admissions.hook = admit;
  }

  /**
   * Updates the isolation group the instance's clients read (`x-isolation-group`); a client that registered
   * for notifications is signalled when `generation` changed. The extension is offered to clients that
   * connect once the cell has a group.
   * @throws {InvalidArgumentError} EINVAL for a malformed view (nothing sent).
   * @throws {StateError} ENODEV if the cell is not running.
   */
  async setGroup(view: IsolationGroupView): Promise<void> {
    checkIsolationGroupView(view);
    await this.#request({ op: 'group', group: view });
  }

  /**
   * Stops serving and ends the worker: the session is closed (the device reset with LOST_CONNECTION, as
   * when a client goes away), the instance disposed. The socket file and the host's listening fd stay.
   * With a client connected and not `force`: it is asked to release the device (its REQ eventfd, IRQ index 4,
   * signalled at once and every `intervalMs`, logged with the count) until it leaves or `timeoutMs` passed, then
   * its session is closed (forced). No new client is accepted meanwhile (they wait in the socket's backlog).
   * A stop that takes longer than `timeoutMs` + `stopTimeoutMs` terminates the worker (its fds are closed all the
   * same); a worker that dies during the stop (its reset hook threw or stalled) is stopped too: no 'exit' event then.
   * A `force` stop while another stop waits for the client to release cuts that wait short: both resolve with
   * the same outcome (`forced`).
   * @returns what happened to the client: `idle` (none), `released` (it left when asked), `forced`.
   * @throws {VfioUserError} EBUSY while another stop is in progress (unless `force`); EINVAL for a bad option.
   * @throws {StateError} ENODEV if the cell is not running.
   */
  async stop(options: CellStopOptions = {}): Promise<CellStopOutcome> {
    const timeoutMs = options.timeoutMs ?? 10_000;
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 0) throw new VfioUserError(`stop timeoutMs: ${timeoutMs} is not a non-negative integer`, { errno: Errno.EINVAL });
    const intervalMs = positive('intervalMs', options.intervalMs, Math.max(100, Math.floor(timeoutMs / 10)));
    const force = options.force ?? false;
    if (this.#stopping) {
      if (!force || this.#stopped === undefined) throw new VfioUserError(`instance ${this.spec.uuid} is already stopping`, { errno: Errno.EBUSY });
      // A forced stop during a release wait cuts it short: the stop in progress ends 'forced' at once, for both callers.
      this.#forceRequested = true;
      await this.#request({ op: 'stop', force: true }).catch(() => undefined); // a worker already gone: the stop in progress handles it
      return this.#stopped;
    }
    if (!this.alive) throw new StateError(`instance ${this.spec.uuid} is not running`, { errno: Errno.ENODEV });
    this.#stopping = true;
    this.#forceRequested = force;
    this.#stopped = this.#stop(force, timeoutMs, intervalMs);
    this.#stopped.catch(() => undefined); // awaited below; an escalating caller awaits it too
    try {
      return await this.#stopped;
    } catch (error) {
      this.#stopped = undefined;
      throw error;
    }
  }

  #stopped: Promise<CellStopOutcome> | undefined;
  /** The stop in progress was forced (from the start, or cut short by a forced stop). */
  #forceRequested = false;

  async #stop(force: boolean, timeoutMs: number, intervalMs: number): Promise<CellStopOutcome> {
    const limitMs = this.#stopTimeoutMs + (force ? 0 : timeoutMs);
    let outcome: CellStopOutcome = { release: 'forced', requests: 0, delivered: false, waitedMs: 0 };
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), limitMs)));
    try {
      const reply = await Promise.race([this.#request({ op: 'stop', force, timeoutMs, intervalMs }), timeout]);
      if (reply === 'timeout') this.#logger.warn({ timeoutMs: limitMs }, 'instance stop timed out; terminating its worker');
      else {
        if (reply.ok && reply.warning) this.#logger.warn({ reason: reply.warning }, 'instance stopped with a problem');
        if (reply.ok && reply.release) outcome = { release: reply.release, requests: reply.requests ?? 0, delivered: reply.delivered ?? false, waitedMs: reply.waitedMs ?? 0 };
      }
    } catch (error) {
      if (this.alive) {
        this.#stopping = false; // refused: still serving
        throw error;
      }
      this.#logger.warn({ reason: this.#ending }, 'instance cell died while stopping');
    } finally {
      clearTimeout(timer);
    }
    this.#expected = true;
    await this.#kill('stopped');
    this.#logAudit(outcome, this.#forceRequested);
    return outcome;
  }

  /** The audit line of a stop: how a connected client was let go. */
  #logAudit(outcome: CellStopOutcome, force: boolean): void {
    const { release, requests, delivered, waitedMs } = outcome;
    if (release === 'idle') return this.#logger.info({}, 'instance cell stopped');
    if (release === 'released') return this.#logger.info({ event: 'audit', audit: 'released', requests, waitedMs }, 'instance cell stopped: the client released the device');
    const why = force
      ? 'forced by request'
      : requests === 0
        ? 'the stop timed out'
        : delivered
          ? 'the client did not release the device in time'
          : 'no REQ channel registered by the client';
    this.#logger.warn({ event: 'audit', audit: 'forced', requests, delivered, waitedMs, reason: why }, 'instance cell stopped: client session forced closed');
  }

  /** Ends the worker at once, whatever it is doing (no 'exit' event); its fds are closed. Idempotent. */
  async terminate(): Promise<void> {
    this.#expected = true;
    await this.#kill('terminated');
  }

  async #request(request: DistributiveOmit<Exclude<CellRequest, { op: 'admit-verdict' }>, 'id'>): Promise<CellReply> {
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
    } else if (m.type === 'admit') {
      this.#admissions.ask(m.id, m.client);
    } else if (m.type === 'admit-cancel') {
      this.#admissions.cancel(m.id);
    } else if (m.type === 'release-requested') {
      this.#releaseRequested(m.count, m.delivered);
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

  #releaseRequested(count: number, delivered: boolean): void {
    if (delivered || count > 1) this.#logger.info({ event: 'audit', audit: 'release-requested', count, delivered }, 'asked the client to release the device');
    else this.#logger.warn({ event: 'audit', audit: 'release-requested', count, delivered }, 'no REQ channel registered by the client: forcing at the timeout');
    this.emit('release-requested', count, delivered);
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

/** `Omit` applied to each member of a union. */
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

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
