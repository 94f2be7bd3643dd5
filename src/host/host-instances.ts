/**
 * The running instances of a device host: one record per UUID, each served by
 * an {@link InstanceCell} (its own worker) on `<runDir>/<uuid>.sock`, bound by
 * this thread and kept across restarts so the path never changes. A cell that
 * dies unexpectedly is marked `failed` with its reason and restarted with
 * exponential backoff, at most {@link RestartPolicy.maxRestarts} times within
 * {@link RestartPolicy.windowMs}; then it stays `failed` (its socket still
 * bound, its resources still counted) until stopped.
 *
 * Callers (host.ts) serialize operations per UUID and check availability
 * before {@link InstanceManager.reserve}; this module only runs them.
 */
import { join } from 'node:path';
import { VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import type { Logger } from '../log.js';
import { bindInstanceSocket, InstanceCell, type CellOptions, type InstanceSocket } from './cell.js';
import type { CellStopOutcome } from './cell-protocol.js';
import type { InstanceGroupHooks } from './host-groups.js';
import type { LoadedParent } from './parent-loader.js';
import { InstanceState, type InstanceStatus, type MdevAttr } from './types.js';

/** How dead cells are restarted. */
export interface RestartPolicy {
  /** Restarts allowed within `windowMs` (default 5); beyond, the instance stays failed. */
  maxRestarts: number;
  /** The window restarts are counted in (default 60 s). */
  windowMs: number;
  /** First delay before a restart (default 200 ms), doubled for each recent restart, at most `maxDelayMs`. */
  initialDelayMs: number;
  /** Longest delay (default 10 s). */
  maxDelayMs: number;
}

/** Default {@link RestartPolicy}. */
export const DEFAULT_RESTART_POLICY: RestartPolicy = { maxRestarts: 5, windowMs: 60_000, initialDelayMs: 200, maxDelayMs: 10_000 };

/** One instance (running, starting, or failed and waiting for a restart). */
export interface InstanceRecord {
  readonly uuid: string;
  readonly loaded: LoadedParent;
  readonly typeName: string;
  readonly attrs: MdevAttr[];
  readonly socketPath: string;
  state: InstanceState;
  socket?: InstanceSocket;
  cell?: InstanceCell;
  failure?: string;
  restarts: number;
  /** When each recent restart happened (ms), for the window. */
  restartTimes: number[];
  restartTimer?: NodeJS.Timeout;
  /** During a stop: whether a release request reached the client (undefined until one is made). */
  releaseDelivered?: boolean;
}

/** Options of {@link InstanceManager}. */
export interface InstanceManagerOptions {
  runDir: string;
  logger: Logger;
  cell?: CellOptions;
  restart?: Partial<RestartPolicy>;
  /**
   * Runs `task` under the instance's per-UUID lock (host.ts), so a restart
   * never interleaves with a stop of the same UUID.
   */
  serialize(uuid: string, task: () => Promise<void>): Promise<void>;
  /** The host's isolation groups: told of every change, asked for admissions. */
  groups?: InstanceGroupHooks;
}

/** How {@link InstanceManager.stop} treats a connected client. */
export interface StopOptions {
  /** Close its session at once. */
  force: boolean;
  /** Else: how long it is given to release the device after the first release request (the cell's default: 10 s). */
  timeoutMs?: number;
}

/**
 * What a stop did: the cell's outcome (`idle` for an instance that was not serving), and `delivered`: whether
 * its release requests reached the client (false: it registered no REQ eventfd), absent when none was made.
 */
export type StopOutcome = CellStopOutcome & { delivered?: boolean };

/** The instances of one host (see the module comment). */
export class InstanceManager {
  readonly #records = new Map<string, InstanceRecord>();
  readonly #options: InstanceManagerOptions;
  readonly #policy: RestartPolicy;
  #closing = false;

  /** Nothing is started until {@link InstanceManager.reserve} and {@link InstanceManager.launch}. */
  constructor(options: InstanceManagerOptions) {
    this.#options = options;
    this.#policy = { ...DEFAULT_RESTART_POLICY, ...options.restart };
  }

  /** The socket path of instance `uuid`: `<runDir>/<uuid>.sock`. */
  socketPath(uuid: string): string {
    return join(this.#options.runDir, `${uuid}.sock`);
  }

  /** The record of `uuid` (lower-case), if it runs, starts or failed. */
  get(uuid: string): InstanceRecord | undefined {
    return this.#records.get(uuid);
  }

  /** Every record, in start order. */
  all(): InstanceRecord[] {
    return [...this.#records.values()];
  }

  /** How many records there are. */
  get size(): number {
    return this.#records.size;
  }

  /** Instances of `parentName` by type short name (every state counts: a failed one still holds its resources). */
  activeCounts(parentName: string): Map<string, number> {
    const counts = new Map<string, number>();
    for (const r of this.#records.values()) if (r.loaded.parent.name === parentName) counts.set(r.typeName, (counts.get(r.typeName) ?? 0) + 1);
    return counts;
  }

  /**
   * Records a new instance as `starting` (counted from now on for availability), nothing bound yet.
   * @throws {VfioUserError} EEXIST when the UUID already has a record; EIO while the host is shutting down.
   */
  reserve(uuid: string, loaded: LoadedParent, typeName: string, attrs: MdevAttr[]): InstanceRecord {
    if (this.#closing) throw new VfioUserError('the host is shutting down', { errno: Errno.EIO });
    if (this.#records.has(uuid)) throw new VfioUserError(`${uuid} is already running`, { errno: Errno.EEXIST });
    const record: InstanceRecord = { uuid, loaded, typeName, attrs, socketPath: this.socketPath(uuid), state: InstanceState.STARTING, restarts: 0, restartTimes: [] };
    this.#records.set(uuid, record);
    this.#changed();
    return record;
  }

  /** Forgets a reserved record that never started (a vetoed or failed start). */
  release(record: InstanceRecord): void {
    if (this.#records.get(record.uuid) === record) this.#records.delete(record.uuid);
    record.socket?.close();
    this.#changed();
  }

  #changed(): void {
    this.#options.groups?.changed();
  }

  /**
   * Binds the instance's socket (a stale one replaced) and starts its cell: the device is built, its attributes
   * applied in order, and served. On failure nothing is left: the worker has ended, the socket is closed and removed.
   * @throws {VfioUserError} the cell's errno (EINVAL for a refused attribute, with its index and name; the parent's
   *   own errno; ETIMEDOUT, ENOMEM, EIO); EADDRINUSE when another process serves the path.
   */
  async launch(record: InstanceRecord): Promise<void> {
    record.socket = bindInstanceSocket(record.socketPath);
    try {
      await this.#startCell(record);
    } catch (error) {
      record.socket.close();
      delete record.socket;
      throw error;
    }
    this.#options.logger.info({ event: 'instance-started', uuid: record.uuid, parent: record.loaded.parent.name, mdevType: this.mdevType(record), socket: record.socketPath }, 'instance started');
  }

  async #startCell(record: InstanceRecord): Promise<void> {
    const socket = record.socket as InstanceSocket;
    const groups = this.#options.groups;
    const group = groups?.view(record.uuid);
    const spec = {
      uuid: record.uuid,
      parent: record.loaded.parent.name,
      parentModule: record.loaded.moduleUrl,
      type: record.typeName,
      attrs: record.attrs,
      socket: record.socketPath,
      listenFd: socket.fd,
      ...(group === undefined ? {} : { group }),
    };
    const admit = groups ? { admit: (client: { pid: number; uid: number; gid: number }) => groups.admit(record.uuid, client) } : {};
    const cell = await InstanceCell.start(spec, { ...this.#options.cell, logger: this.#options.logger, ...admit });
    if (this.#closing || this.#records.get(record.uuid) !== record) {
      await cell.terminate(); // stopped or shut down while it started: nothing may outlive that
      throw new VfioUserError(`${record.uuid}: stopped while starting`, { errno: Errno.ECANCELED });
    }
    record.cell = cell;
    record.state = InstanceState.ACTIVE;
    delete record.failure;
    this.#changed();
    this.#watch(record, cell);
  }

  #watch(record: InstanceRecord, cell: InstanceCell): void {
    const { logger, groups } = this.#options;
    const base = { uuid: record.uuid, parent: record.loaded.parent.name };
    cell.on('exit', (reason) => this.#onDeath(record, cell, reason));
    cell.on('client', (client) => {
      if (client) logger.info({ event: 'client-connected', ...base, client: { pid: client.pid, uid: client.uid, gid: client.gid } }, `client connected: pid ${client.pid}, uid ${client.uid}`);
      else {
        logger.info({ event: 'client-disconnected', ...base }, 'client disconnected (device reset)');
        groups?.sessionEnded(record.uuid);
      }
    });
    cell.on('admission-abandoned', () => groups?.sessionEnded(record.uuid));
    // The cell logs each request (audit release-requested); the stop reports whether any reached the client.
    cell.on('release-requested', (_count, delivered) => void (record.releaseDelivered = (record.releaseDelivered ?? false) || delivered));
  }

  /** The type id of a record. */
  mdevType(record: InstanceRecord): string {
    return `${record.loaded.parent.name}-${record.typeName}`;
  }

  /**
   * Stops an instance: a connected client is asked to release the device (its REQ eventfd) until it leaves or
   * `timeoutMs` passes, then forced (or forced at once with `force`); its session is closed (the device reset), its
   * worker ends, its socket file is removed. A failed instance waiting for a restart is just forgotten.
   * The cell logs the audit lines: each request (`release-requested`), then `released` or `forced`.
   * @throws {VfioUserError} EBUSY while another stop of it is in progress (nothing changed).
   */
  async stop(record: InstanceRecord, options: StopOptions): Promise<StopOutcome> {
    clearTimeout(record.restartTimer);
    let outcome: StopOutcome = { release: 'idle', requests: 0, waitedMs: 0 };
    delete record.releaseDelivered;
    if (record.cell?.alive) {
      record.state = InstanceState.STOPPING;
      this.#changed();
      try {
        outcome = await record.cell.stop({ force: options.force, ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }) });
      } catch (error) {
        if (record.cell.alive) {
          record.state = InstanceState.ACTIVE;
          this.#changed();
        }
        if (error instanceof VfioUserError && error.errno === Errno.EBUSY) throw error;
        if (record.cell.alive) throw error;
      }
    }
    this.#records.delete(record.uuid);
    record.socket?.close();
    this.#changed();
    const base = { uuid: record.uuid, parent: record.loaded.parent.name };
    // Whether the requests reached the client: said only when some were made.
    const reached = outcome.requests > 0 ? (outcome.delivered ?? record.releaseDelivered) : undefined;
    const { delivered: _, ...rest } = outcome;
    outcome = reached === undefined ? rest : { ...rest, delivered: reached };
    const { release, requests, waitedMs } = outcome;
    this.#options.logger.info({ event: 'instance-stopped', ...base, force: options.force, release, requests, waitedMs }, 'instance stopped');
    return outcome;
  }

  /**
   * Cuts short every stop that waits for a client to release its instance (host shutdown): those clients are
   * forced off now, and those stops end. Never throws.
   */
  async forceWaitingStops(): Promise<void> {
    const waiting = this.all().filter((r) => r.state === InstanceState.STOPPING && r.cell?.alive);
    await Promise.all(waiting.map((r) => r.cell?.stop({ force: true }).catch(() => undefined)));
  }

  /** Stops everything (host shutdown): clients disconnected, devices reset, sockets removed; no restart afterwards. */
  async closeAll(): Promise<void> {
    this.#closing = true;
    await Promise.all(
      this.all().map(async (record) => {
        try {
          await this.stop(record, { force: true });
        } catch (error) {
          this.#options.logger.error({ event: 'instance-stop-failed', uuid: record.uuid, err: error }, 'instance did not stop cleanly; terminating it');
          await record.cell?.terminate();
          this.#records.delete(record.uuid);
          record.socket?.close();
          this.#changed();
        }
      }),
    );
  }

  /** What `list` shows of a record (client and migration state asked from its cell). */
  async status(record: InstanceRecord, definition: { defined: boolean; start?: InstanceStatus['start'] }): Promise<InstanceStatus> {
    const status: InstanceStatus = {
      uuid: record.uuid,
      parent: record.loaded.parent.name,
      mdevType: this.mdevType(record),
      state: record.state,
      socket: record.socketPath,
      attrs: record.attrs,
      defined: definition.defined,
      restarts: record.restarts,
    };
    if (definition.start !== undefined) status.start = definition.start;
    if (record.failure !== undefined) status.failure = record.failure;
    if (record.state === InstanceState.ACTIVE && record.cell?.alive) {
      try {
        const live = await record.cell.status();
        if (live.client) status.client = live.client;
        if (live.migrationState) status.migrationState = live.migrationState;
      } catch {
        // it died meanwhile: its 'exit' handler marks it failed
      }
    }
    return status;
  }

  #onDeath(record: InstanceRecord, cell: InstanceCell, reason: string): void {
    if (record.cell !== cell || this.#records.get(record.uuid) !== record) return;
    delete record.cell;
    record.state = InstanceState.FAILED;
    record.failure = reason;
    this.#changed();
    this.#options.logger.error({ event: 'instance-failed', uuid: record.uuid, parent: record.loaded.parent.name, reason }, 'instance failed');
    this.#scheduleRestart(record);
  }

  #scheduleRestart(record: InstanceRecord): void {
    if (this.#closing) return;
    const now = Date.now();
    record.restartTimes = record.restartTimes.filter((t) => now - t < this.#policy.windowMs);
    if (record.restartTimes.length >= this.#policy.maxRestarts) {
      this.#options.logger.error(
        { event: 'instance-restart-abandoned', uuid: record.uuid, restarts: record.restartTimes.length, windowMs: this.#policy.windowMs },
        'instance failed too often; left failed until stopped',
      );
      return;
    }
    const delay = Math.min(this.#policy.maxDelayMs, this.#policy.initialDelayMs * 2 ** record.restartTimes.length);
    record.restartTimes.push(now);
    record.restartTimer = setTimeout(() => void this.#options.serialize(record.uuid, () => this.#restart(record)), delay);
    record.restartTimer.unref();
  }

  async #restart(record: InstanceRecord): Promise<void> {
    if (this.#closing || this.#records.get(record.uuid) !== record || record.state !== InstanceState.FAILED) return;
    record.state = InstanceState.STARTING;
    this.#changed();
    try {
      await this.#startCell(record);
    } catch (error) {
      if (this.#records.get(record.uuid) !== record) return;
      record.state = InstanceState.FAILED;
      this.#changed();
      record.failure = `restart failed: ${(error as Error).message.split('\n')[0] ?? ''}`;
      this.#options.logger.error({ event: 'instance-restart-failed', uuid: record.uuid, reason: record.failure }, 'instance restart failed');
      this.#scheduleRestart(record);
      return;
    }
    record.restarts++;
    this.#options.logger.warn({ event: 'instance-restarted', uuid: record.uuid, parent: record.loaded.parent.name, restarts: record.restarts, socket: record.socketPath }, 'instance restarted');
  }
}
