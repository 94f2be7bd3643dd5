/**
 * The device host: many mediated-device instances in one service. It loads
 * parents (built-in ones and `--parent` modules), reads the persistent
 * definitions, starts every `auto` one, and serves each instance in its own
 * cell (worker) on `<runDir>/<uuid>.sock`, controlled through
 * `<runDir>/control.sock` (control.ts). It implements {@link HostApi}.
 *
 * Every operation validates the whole request before any side effect
 * (host-requests.ts, host-definitions.ts) and runs inside mdevctl's callout
 * sequence; operations on one UUID run one at a time (two concurrent starts
 * of one UUID: one wins, the other fails EEXIST). A UUID may be defined under
 * several parents but run only once.
 *
 * Structured logs (one JSON line per event with `VFIO_USER_LOG` or an
 * injected logger; `event` names it): `host-started`, `host-stopped`,
 * `instance-started`, `instance-stopped`, `instance-failed`,
 * `instance-start-failed` (a start rolled back: its errno and reason), `instance-restarted`, `instance-restart-failed`,
 * `instance-restart-abandoned`,
 * `client-connected`, `client-disconnected`, `autostart-failed`, `callout-vetoed`, `stale-socket-removed`,
 * `instance-stopping` (a stop with a client connected: its pid, the timeout), `definition-*`, and the store's
 * definition problems; and the audit trail: lines with `audit` one of claim, release, refuse, hot-add-claim,
 * member-failed (groups.ts), release-requested, released, forced (the cell's, during a stop).
 */
import { lstatSync, readdirSync, unlinkSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { getDefaultLogger, type Logger } from '../log.js';
import type { DefinitionEntry, DefineRequest, HostApi, HostStatus, ListRequest, ModifyRequest, StopRequest, StopResult, TypeInfo, UndefineRequest } from './api.js';
import { checkAvailable, typeInfos } from './availability.js';
import type { InvokeOptions } from './callouts.js';
import type { CellOptions } from './cell.js';
import { ControlServer, type ControlLimits } from './control.js';
import { compareBytes, DefinitionStore } from './definitions.js';
import { defineOp, modifyOp, planStart, undefineOp, withCallouts, type HostParts } from './host-definitions.js';
import { HostGroups } from './host-groups.js';
import { InstanceManager, type InstanceRecord, type RestartPolicy } from './host-instances.js';
import { ParentRegistry } from './host-parents.js';
import { checkDefine, checkList, checkModify, checkStop, checkTypes, checkUndefine } from './host-requests.js';
import { BUILTIN_PARENTS, loadParent, type LoadedParent } from './parent-loader.js';
import { controlSocketPath, ensureRunDir } from './paths.js';
import { InstanceState, StartMode, type GroupView, type HostPaths, type InstanceStatus, type MdevConfig } from './types.js';

/** How long a stop waits for a connected client to release the instance before forcing it off. */
export const DEFAULT_RELEASE_TIMEOUT_MS = 10_000;

/** Longest socket path a UNIX socket can bind (sun_path is 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;
/** `/<uuid>.sock` after the run directory. */
const INSTANCE_SOCKET_SUFFIX = 1 + 36 + 5;

/** Options of {@link DeviceHost.start}. */
export interface DeviceHostOptions {
  paths: HostPaths;
  /** Parent modules to load beside the built-in ones: paths, `file:` URLs, package names, or built-in names. */
  parents?: readonly string[];
  /** Load the built-in parents (`memory-pool`, `gpio-bank`; default true). */
  builtinParents?: boolean;
  /** Uids allowed on the control socket beside the host's own and root. */
  allowedUids?: readonly number[];
  /** Where events are logged (default: `VFIO_USER_LOG`'s logger). */
  logger?: Logger;
  /** Each instance's cell: watchdog, memory cap, start/stop timeouts. */
  cell?: CellOptions;
  /** How dead cells are restarted. */
  restart?: Partial<RestartPolicy>;
  /** Timeout of each callout script (default 10 s). */
  calloutTimeoutMs?: number;
  /** Listen on `<runDir>/control.sock` (default true). */
  control?: boolean;
  controlLimits?: Partial<ControlLimits>;
  /** Start the `auto` definitions (default true). */
  autostart?: boolean;
  /** Aborting it (SIGTERM during start-up) stops starting further `auto` definitions; start then resolves as usual. */
  signal?: AbortSignal;
  /** Where relative parent paths resolve from (default: the current directory). */
  cwd?: string;
}

/** The device host (see the module comment). */
export class DeviceHost implements HostApi {
  /** The run and config directories. */
  readonly paths: HostPaths;
  /** `<runDir>/control.sock` (listened on unless `control: false`). */
  readonly controlSocket: string;
  readonly #parts: HostParts;
  readonly #logger: Logger;
  readonly #shutdown = new AbortController();
  readonly #locks = new Map<string, Promise<void>>();
  readonly #quietStore: DefinitionStore;
  readonly #groups: HostGroups;
  readonly #calloutTimeoutMs: number | undefined;
  readonly #startedAt = Date.now();
  #control: ControlServer | undefined;
  #closing: Promise<void> | undefined;

  private constructor(options: DeviceHostOptions, parents: ParentRegistry, logger: Logger) {
    this.paths = options.paths;
    this.controlSocket = controlSocketPath(options.paths.runDir);
    this.#logger = logger;
    this.#calloutTimeoutMs = options.calloutTimeoutMs;
    this.#quietStore = new DefinitionStore(options.paths.configDir);
    this.#groups = new HostGroups({
      logger,
      parents,
      store: this.#quietStore,
      records: () => this.#parts.instances.all(),
      socketPath: (uuid) => this.#parts.instances.socketPath(uuid),
      push: (uuid, view) => void this.#parts.instances.get(uuid)?.cell?.setGroup(view).catch(() => undefined), // a cell that died is restarted with the current view
    });
    const instances = new InstanceManager({
      runDir: options.paths.runDir,
      logger,
      ...(options.cell ? { cell: options.cell } : {}),
      ...(options.restart ? { restart: options.restart } : {}),
      serialize: (uuid, task) => this.#serialize(uuid, task),
      groups: this.#groups,
    });
    this.#parts = {
      configDir: options.paths.configDir,
      store: new DefinitionStore(options.paths.configDir, logger),
      parents,
      instances,
      logger,
      calloutOptions: () => this.#calloutOptions(),
    };
  }

  /**
   * Starts a host: checks the run directory (created 0700), loads the parents, listens on the control socket
   * (a stale one replaced), reads the definitions (problems logged and skipped) and starts every `auto` one
   * (a failure is logged and the next one tried).
   * @throws {VfioUserError} EPERM run directory not ours or group/world-writable; EINVAL run directory path too
   *   long for sockets; ENOENT/EINVAL a parent module that does not load; EEXIST two parents with one name;
   *   EADDRINUSE another host answers on the control socket.
   */
  static async start(options: DeviceHostOptions): Promise<DeviceHost> {
    const logger = options.logger ?? getDefaultLogger();
    const { runDir } = options.paths;
    if (Buffer.byteLength(runDir) + INSTANCE_SOCKET_SUFFIX > MAX_SOCKET_PATH) {
      throw new VfioUserError(`run dir ${runDir}: too long for instance sockets (${MAX_SOCKET_PATH - INSTANCE_SOCKET_SUFFIX} bytes at most)`, { errno: Errno.EINVAL });
    }
    ensureRunDir(runDir);
    const parents = new ParentRegistry(await loadParents(options));
    const host = new DeviceHost(options, parents, logger);
    if (options.control ?? true) {
      host.#control = await ControlServer.listen(host.controlSocket, host, {
        ...(options.allowedUids ? { allowedUids: options.allowedUids } : {}),
        ...(options.controlLimits ? { limits: options.controlLimits } : {}),
        logger,
      });
    }
    host.#groups.reloadDefinitions();
    try {
      if (options.autostart ?? true) await host.#autostart(options.signal);
      await host.#sweepStaleSockets();
    } catch (error) {
      await host.close();
      throw error;
    }
    logger.info({ event: 'host-started', runDir, configDir: options.paths.configDir, parents: parents.all().map((p) => p.parent.name), instances: host.#parts.instances.size }, 'host started');
    return host;
  }

  /** The loaded parents. */
  get parents(): LoadedParent[] {
    return this.#parts.parents.all();
  }

  /** How many instances are running (or starting, or failed and restarting). */
  get instanceCount(): number {
    return this.#parts.instances.size;
  }

  /**
   * Shuts down: stops accepting control requests, kills running callout scripts, forces off the clients that stops
   * are waiting for, stops every instance (clients disconnected, devices reset, sockets removed) and removes the
   * control socket. Idempotent; never throws.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#shutdown.abort(); // running callout scripts are killed (a pre-callout then vetoes)
      await this.#control?.close();
      await this.#parts.instances.forceWaitingStops(); // a stop waiting for its client does not hold the shutdown up
      await Promise.all(this.#locks.values()); // operations in progress finish (a start within the cell's start timeout)
      await this.#parts.instances.closeAll();
      this.#logger.info({ event: 'host-stopped' }, 'host stopped');
    })();
    return this.#closing;
  }

  /** The host itself: pid, paths, parents, instance count. Never fails. */
  async status(): Promise<HostStatus> {
    return {
      pid: process.pid,
      runDir: this.paths.runDir,
      configDir: this.paths.configDir,
      controlSocket: this.controlSocket,
      parents: this.parents.map((p) => ({ name: p.parent.name, module: p.moduleUrl })),
      instances: this.instanceCount,
      startedAt: this.#startedAt,
    };
  }

  /**
   * The types of every parent (or of one; an unknown parent gives none, as mdevctl) with their available instances.
   * @throws {VfioUserError} EINVAL for a malformed request.
   */
  async types(request?: { parent?: string }): Promise<TypeInfo[]> {
    const { parent } = checkTypes(request);
    return this.parents.filter((p) => parent === undefined || p.parent.name === parent).flatMap((p) => typeInfos(p.parent, this.#parts.instances.activeCounts(p.parent.name)));
  }

  /**
   * Running instances (state, socket, client, migration state), or with `defined` the definitions; filtered by UUID
   * and parent; sorted by parent then UUID.
   * @throws {VfioUserError} EINVAL for a malformed request or UUID.
   */
  async list(request?: ListRequest): Promise<{ instances: InstanceStatus[]; definitions: DefinitionEntry[] }> {
    const { defined, uuid, parent } = checkList(request);
    const match = (u: string, p: string): boolean => (uuid === undefined || u === uuid) && (parent === undefined || p === parent);
    if (defined) {
      const definitions = this.#quietStore
        .load()
        .definitions.filter((d) => match(d.uuid, d.parent))
        .map((d) => ({ ...d, active: this.#parts.instances.get(d.uuid)?.loaded.parent.name === d.parent }));
      return { instances: [], definitions };
    }
    const records = this.#parts.instances
      .all()
      .filter((r) => match(r.uuid, r.loaded.parent.name))
      .sort((a, b) => compareBytes(a.loaded.parent.name, b.loaded.parent.name) || compareBytes(a.uuid, b.uuid));
    return { instances: await Promise.all(records.map((r) => this.#statusOf(r))), definitions: [] };
  }

  /**
   * Writes a definition (see {@link defineOp}); a generated UUID is returned in the entry.
   * @throws {VfioUserError} EINVAL bad request, no parent/type, bad attribute name, conflicting options; ENOENT unknown
   *   parent or type; EEXIST already defined under that parent; ECANCELED vetoed by a callout; EACCES/ENOSPC/EIO writing.
   */
  async define(request: DefineRequest): Promise<DefinitionEntry> {
    const checked = checkDefine(request, 'define');
    return this.#serialize(checked.uuid ?? '', () => this.#definitionsChange(defineOp(this.#parts, checked)));
  }

  /**
   * Removes the definition(s) of a UUID (a running instance keeps running).
   * @throws {VfioUserError} EINVAL bad request; ENOENT not defined; ECANCELED vetoed by a callout; EACCES/EIO removing.
   */
  async undefine(request: UndefineRequest): Promise<{ removed: DefinitionEntry[] }> {
    const checked = checkUndefine(request);
    return this.#serialize(checked.uuid, () => this.#definitionsChange(undefineOp(this.#parts, checked)));
  }

  /**
   * Changes a definition (applied at the next start).
   * @throws {VfioUserError} EINVAL bad request, nothing to change, several parents and none given, bad attribute name
   *   or index; ENOENT not defined, unknown type; ECANCELED vetoed by a callout; EACCES/ENOSPC/EIO writing.
   */
  async modify(request: ModifyRequest): Promise<DefinitionEntry> {
    const checked = checkModify(request);
    return this.#serialize(checked.uuid, () => this.#definitionsChange(modifyOp(this.#parts, checked)));
  }

  /**
   * Starts a defined instance (UUID [+ parent]) or a transient one (parent + type or config, UUID generated when
   * absent), served on `<runDir>/<uuid>.sock` once its attributes are applied in order; a failing attribute leaves
   * nothing behind (worker ended, socket removed).
   * @throws {VfioUserError} EINVAL bad request, conflicting options, bad attribute name or value; ENOENT not defined,
   *   unknown parent or type; EEXIST the UUID is already running (under any parent); ENOSPC no available instance
   *   of the type; ECANCELED vetoed by a callout; the device's own errno from create/apply; ETIMEDOUT, ENOMEM, EIO
   *   when its worker stalls, runs out of memory or dies while starting.
   */
  async start(request: DefineRequest): Promise<InstanceStatus> {
    const checked = checkDefine(request, 'start');
    if (checked.uuid === undefined) {
      const plan = planStart(this.#parts, checked); // generates the UUID
      return this.#serialize(plan.uuid, () => this.#startLocked({ ...checked, uuid: plan.uuid }));
    }
    return this.#serialize(checked.uuid, () => this.#startLocked(checked));
  }

  /**
   * Stops a running (or failed) instance: its device reset, its socket removed. A connected client is first asked
   * to release the device (its REQ eventfd, repeated) and given `timeoutMs` (default 10 s) to leave, then forced
   * off (its session closed); with `force`, at once. Both leave an audit line (`released` or `forced`).
   * @returns the instance as it was when stopped (state `stopping`), with what happened to its client
   *   (`release`: idle, released or forced; the release requests made; how long it waited).
   * @throws {VfioUserError} EINVAL bad request (`force` with `timeoutMs`, a timeout that is not a positive
   *   integer); ENOENT not running; EBUSY another stop of it is in progress; ECANCELED vetoed by a callout.
   */
  async stop(request: StopRequest): Promise<StopResult> {
    const { uuid, force, timeoutMs } = checkStop(request);
    const pending = this.#parts.instances.get(uuid);
    if (force && pending?.state === InstanceState.STOPPING && pending.cell?.alive) return this.#forcePending(pending);
    return this.#serialize(uuid, async () => {
      const record = this.#parts.instances.get(uuid);
      if (record === undefined) throw new VfioUserError(`${uuid} is not running`, { errno: Errno.ENOENT });
      const status = await this.#statusOf(record);
      const config: MdevConfig = { mdev_type: status.mdevType, start: StartMode.MANUAL, attrs: record.attrs };
      let outcome: Pick<StopResult, 'release' | 'requests' | 'waitedMs' | 'delivered'> = { release: 'idle', requests: 0, waitedMs: 0 };
      await this.#withCallouts(uuid, record.loaded.parent.name, config, 'stop', force, async () => {
        const client = status.client;
        if (client) {
          const fields = { event: 'instance-stopping', uuid, parent: status.parent, client: { pid: client.pid, uid: client.uid, gid: client.gid }, force, ...(force ? {} : { timeoutMs: timeoutMs ?? DEFAULT_RELEASE_TIMEOUT_MS }) };
          this.#logger.info(fields, force ? `${uuid}: forcing its client, pid ${client.pid}, off` : `${uuid}: asking its client, pid ${client.pid}, to release it`);
        }
        const done = await this.#parts.instances.stop(record, force ? { force } : { force, timeoutMs: timeoutMs ?? DEFAULT_RELEASE_TIMEOUT_MS });
        outcome = { release: done.release, requests: done.requests, waitedMs: done.waitedMs, ...(done.delivered === undefined ? {} : { delivered: done.delivered }) };
      });
      return { ...status, state: InstanceState.STOPPING, ...outcome };
    });
  }

  /**
   * `force` while a stop of the instance waits for its client to release it: the wait is cut short and the client
   * forced off now; both stops report the same outcome.
   */
  async #forcePending(record: InstanceRecord): Promise<StopResult> {
    const status = await this.#statusOf(record);
    this.#logger.info({ event: 'instance-stopping', uuid: record.uuid, parent: status.parent, force: true }, `${record.uuid}: forcing its client off (a stop was waiting for it)`);
    const done = await (record.cell as NonNullable<InstanceRecord['cell']>).stop({ force: true });
    await this.#locks.get(record.uuid); // the pending stop finishes (socket removed, record gone)
    const delivered = done.requests > 0 && done.delivered !== undefined ? { delivered: done.delivered } : {};
    return { ...status, state: InstanceState.STOPPING, release: done.release, requests: done.requests, waitedMs: done.waitedMs, ...delivered };
  }

  /**
   * The isolation groups: every group with a running or defined member, its viability, owner and members
   * (state, claimed), sorted by id. Never fails.
   */
  async groups(): Promise<GroupView[]> {
    return this.#groups.views();
  }

  /** Runs a definition operation, then recounts the groups' members (a definition is one). */
  async #definitionsChange<T>(op: Promise<T>): Promise<T> {
    try {
      return await op;
    } finally {
      this.#groups.reloadDefinitions();
    }
  }

  async #startLocked(checked: ReturnType<typeof checkDefine>): Promise<InstanceStatus> {
    const plan = planStart(this.#parts, checked);
    const { instances } = this.#parts;
    const running = instances.get(plan.uuid);
    if (running) throw new VfioUserError(`Device ${plan.uuid} already exists (running on ${running.loaded.parent.name})`, { errno: Errno.EEXIST });
    const { loaded, typeName } = plan.resolved;
    checkAvailable(loaded.parent, typeName, instances.activeCounts(loaded.parent.name));
    const record = instances.reserve(plan.uuid, loaded, typeName, [...plan.config.attrs]);
    try {
      await this.#withCallouts(plan.uuid, plan.parent, plan.config, 'start', checked.force ?? false, () => instances.launch(record));
    } catch (error) {
      instances.release(record);
      const { code, message } = error as VfioUserError;
      this.#logger.warn({ event: 'instance-start-failed', uuid: plan.uuid, parent: plan.parent, mdevType: plan.config.mdev_type, errno: code, reason: message }, `${plan.uuid}: start failed, nothing left`);
      throw error;
    }
    return this.#statusOf(record);
  }

  #withCallouts(uuid: string, parent: string, config: MdevConfig, action: 'start' | 'stop', force: boolean, run: () => Promise<void>): Promise<void> {
    return withCallouts(this.#parts, { uuid, parent, config, action, force }, run);
  }

  #calloutOptions(): InvokeOptions {
    return { logger: this.#logger, signal: this.#shutdown.signal, ...(this.#calloutTimeoutMs === undefined ? {} : { timeoutMs: this.#calloutTimeoutMs }) };
  }

  async #statusOf(record: InstanceRecord): Promise<InstanceStatus> {
    let config: MdevConfig | undefined;
    let defined = false;
    try {
      config = this.#quietStore.read(record.loaded.parent.name, record.uuid);
      defined = config !== undefined;
    } catch {
      defined = true; // a definition file that no longer parses
    }
    const status = await this.#parts.instances.status(record, config ? { defined, start: config.start } : { defined });
    const group = this.#groups.groupOf(record.uuid);
    return group === undefined ? status : { ...status, group };
  }

  /** Runs `task` after every earlier task of `uuid` settled (the empty key serializes nothing in particular). */
  #serialize<T>(uuid: string, task: () => Promise<T>): Promise<T> {
    if (this.#closing) return Promise.reject(new VfioUserError('the host is shutting down', { errno: Errno.EIO }));
    const previous = this.#locks.get(uuid) ?? Promise.resolve();
    const run = previous.then(task);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.#locks.set(uuid, settled);
    void settled.then(() => {
      if (this.#locks.get(uuid) === settled) this.#locks.delete(uuid);
    });
    return run;
  }

  /** Removes the sockets a killed host left for instances that are not running now (nobody answers on them). */
  async #sweepStaleSockets(): Promise<void> {
    const { runDir } = this.paths;
    for (const name of readdirSync(runDir)) {
      const match = /^([0-9a-f-]{36})\.sock$/.exec(name);
      if (!match || this.#parts.instances.get(match[1] as string)) continue;
      const path = join(runDir, name);
      if (await isStaleSocket(path)) {
        unlinkSync(path);
        this.#logger.info({ event: 'stale-socket-removed', socket: path }, 'stale instance socket removed');
      }
    }
  }

  /** Starts every `auto` definition whose parent is loaded, a few at a time; failures are logged, never fatal. */
  async #autostart(signal: AbortSignal | undefined): Promise<void> {
    const { definitions } = this.#parts.store.load(); // problems are logged by the store, and skipped
    const auto = definitions.filter((d) => d.config.start === StartMode.AUTO);
    const queue = [...auto];
    const worker = async (): Promise<void> => {
      for (let d = queue.shift(); d !== undefined; d = queue.shift()) {
        if (this.#closing || signal?.aborted) return;
        if (!this.#parts.parents.find(d.parent)) {
          this.#logger.warn({ event: 'autostart-failed', uuid: d.uuid, parent: d.parent, reason: 'parent not loaded' }, `auto definition ${d.parent}/${d.uuid}: parent not loaded; skipped`);
          continue;
        }
        try {
          await this.start({ uuid: d.uuid, parent: d.parent });
        } catch (error) {
          this.#logger.error({ event: 'autostart-failed', uuid: d.uuid, parent: d.parent, reason: (error as Error).message, errno: (error as VfioUserError).code }, `auto definition ${d.parent}/${d.uuid} did not start`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(4, queue.length) }, worker));
  }
}

/** Whether `path` is a socket file nobody listens on (never throws). */
function isStaleSocket(path: string): Promise<boolean> {
  if (!lstatSync(path, { throwIfNoEntry: false })?.isSocket()) return Promise.resolve(false);
  return new Promise((resolve) => {
    const probe = createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(false);
    });
    probe.once('error', (error: NodeJS.ErrnoException) => resolve(error.code === 'ECONNREFUSED'));
  });
}

/** The built-in parents (unless disabled) and the requested ones, a built-in named twice loaded once. */
async function loadParents(options: DeviceHostOptions): Promise<LoadedParent[]> {
  const specs = [...((options.builtinParents ?? true) ? Object.keys(BUILTIN_PARENTS) : []), ...(options.parents ?? [])];
  const unique = specs.filter((spec, i) => !Object.hasOwn(BUILTIN_PARENTS, spec) || specs.indexOf(spec) === i);
  const loaded: LoadedParent[] = [];
  for (const spec of unique) loaded.push(await loadParent(spec, options.cwd === undefined ? {} : { cwd: options.cwd }));
  return loaded;
}
