/**
 * The operations of a device host, as its control socket carries them and
 * the `vfio-user mdev` CLI calls them. Every operation either succeeds or
 * fails as a whole with one errno and one line (nothing half-created):
 * ENOENT (unknown UUID, parent or type), EEXIST (UUID already defined / active),
 * EINVAL (bad attribute, bad JSON, conflicting options), EBUSY (instance in use,
 * stop refused without force), ENOSPC (no `available_instances` left),
 * ECANCELED (a pre-callout vetoed it), EPERM (control socket: uid not allowed).
 * EBUSY from `stop` now means another stop of the instance is in progress: a connected client is asked to
 * release the instance, then forced off (see {@link StopRequest}).
 */
import type { GroupView, InstanceStatus, MdevAttr, MdevConfig, StartMode } from './types.js';

/** One type of one parent, as `types` reports it (mdev's `mdev_supported_types/<id>/`). */
export interface TypeInfo {
  parent: string;
  /** `<parent>-<name>`. */
  mdevType: string;
  /** The human-readable name (mdev `name`), else the short name. */
  name: string;
  description: string;
  deviceApi: 'vfio-pci';
  availableInstances: number;
  /** Attributes the type accepts, in declaration order. */
  attributes: { name: string; description: string }[];
}

/** One persistent definition (`<config-dir>/<parent>/<uuid>`). */
export interface DefinitionEntry {
  uuid: string;
  parent: string;
  config: MdevConfig;
  /** Whether an instance with this UUID (under this parent) is running. */
  active: boolean;
}

/** Filter of `list` and `types`. */
export interface ListRequest {
  /** `--defined`: definitions instead of running instances. */
  defined?: boolean;
  uuid?: string;
  parent?: string;
}

/** `define`: from parent + type (+ options), or from a config (`--jsonfile`), or promote a running instance (uuid only). */
export interface DefineRequest {
  /** Generated (and returned) when absent. */
  uuid?: string;
  parent?: string;
  /** Type id `<parent>-<name>`. */
  mdevType?: string;
  start?: StartMode;
  attrs?: MdevAttr[];
  /** A config as mdevctl's `--jsonfile` holds it; conflicts with mdevType/attrs given beside it are EINVAL. */
  config?: MdevConfig;
  /** mdevctl's `--force`: a vetoing pre-callout is logged and the action goes on. */
  force?: boolean;
}

/** `start`: a defined instance (uuid [+ parent]) or a transient one (parent + type or config, uuid optional). */
export type StartRequest = DefineRequest;

/**
 * `stop`: a connected client is asked to release the instance (its REQ eventfd, repeated) and given
 * `timeoutMs` to leave, then forced off; `force` closes its session at once.
 */
export interface StopRequest {
  uuid: string;
  /** Close a connected client's session at once (the device reset), and go on despite a vetoing pre-callout (mdevctl's `--force`). Not with `timeoutMs`. */
  force?: boolean;
  /** How long a connected client is given to release the instance before it is forced off, ms (default 10 000; 1 … 2^31 - 1). */
  timeoutMs?: number;
}

/** What `stop` did with the instance's client. */
export type ReleaseOutcome = 'idle' | 'released' | 'forced';

/** `stop`'s result: the instance as it was when stopped (state `stopping`), and what happened to its client. */
export interface StopResult extends InstanceStatus {
  /** `idle`: no client was connected; `released`: it left when asked; `forced`: its session was closed (at the timeout, or at once with `force`). */
  release: ReleaseOutcome;
  /** Release requests signalled to the client. */
  requests: number;
  /** How long the stop waited for the client to leave, ms. */
  waitedMs: number;
  /**
   * Whether the release requests reached the client: false when it registered no request channel (REQ eventfd,
   * IRQ index 4; QEMU 10.2's vfio-user-pci registers none), so it could only be forced. Absent when none was made.
   */
  delivered?: boolean;
}

/** `undefine`: without parent, every parent's definition of that UUID goes (mdevctl). */
export interface UndefineRequest {
  uuid: string;
  parent?: string;
  /** mdevctl's `--force`: a vetoing pre-callout is logged and the action goes on. */
  force?: boolean;
}

/** `modify`: changes a definition (applied at the next start). */
export interface ModifyRequest {
  uuid: string;
  parent?: string;
  mdevType?: string;
  start?: StartMode;
  /** `--addattr NAME --value V [--index I]` (appended without index, else inserted at I). */
  addAttr?: { name: string; value: string; index?: number };
  /** `--delattr [--index I]` (without index: the last one, as mdevctl). */
  delAttr?: { index?: number };
  /** `--jsonfile`: replaces type, start and attrs. */
  config?: MdevConfig;
  /** mdevctl's `--force`: a vetoing pre-callout is logged and the action goes on. */
  force?: boolean;
}

/** What `status` reports about the host itself. */
export interface HostStatus {
  pid: number;
  runDir: string;
  configDir: string;
  controlSocket: string;
  parents: { name: string; module: string }[];
  instances: number;
  startedAt: number;
}

/** The operations a host offers (implemented by `DeviceHost`; proxied by the control client). */
export interface HostApi {
  status(): Promise<HostStatus>;
  types(request?: { parent?: string }): Promise<TypeInfo[]>;
  /** Running instances, or definitions with `defined`. */
  list(request?: ListRequest): Promise<{ instances: InstanceStatus[]; definitions: DefinitionEntry[] }>;
  define(request: DefineRequest): Promise<DefinitionEntry>;
  undefine(request: UndefineRequest): Promise<{ removed: DefinitionEntry[] }>;
  start(request: StartRequest): Promise<InstanceStatus>;
  stop(request: StopRequest): Promise<StopResult>;
  modify(request: ModifyRequest): Promise<DefinitionEntry>;
  /** The isolation groups (every group with a running or defined member), sorted by id. */
  groups(): Promise<GroupView[]>;
}
