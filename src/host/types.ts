/**
 * The device host's vocabulary, modelled on Linux mediated devices (mdev) and
 * mdevctl: a **parent** offers **types**; an **instance** of a type is created
 * by UUID, gets attributes applied in order, and is served on its own socket.
 * A **definition** is the persistent description of an instance
 * (`<config-dir>/<parent>/<uuid>`, mdevctl's JSON), started automatically at
 * host start when its `start` is `auto`.
 *
 * A parent is an ES module (`vfio-user host --parent ./my-parent.js`, or a
 * built-in one such as `memory-pool`) whose default export is a
 * {@link MdevParent}. The host loads it twice: in its main thread for the
 * metadata (types, resources, availability), and in each instance's worker to
 * build the device, so the module must be free of side effects at import.
 */
import type { VfioUserDevice } from '../device/device.js';
import type { DeviceDefinition, MaybePromise } from '../device/types.js';

/** The only device API this host offers (mdev's `device_api`). */
export const DEVICE_API = 'vfio-pci' as const;

/** How a definition starts: with the host (`auto`) or on request (`manual`), as mdevctl's `start`. */
export const StartMode = { AUTO: 'auto', MANUAL: 'manual' } as const;
/** One of {@link StartMode}. */
export type StartMode = (typeof StartMode)[keyof typeof StartMode];

/**
 * One attribute as mdevctl stores it: a single-key object (`{"assign_adapter": "5"}`).
 * Definitions hold an ordered list of these; the same name may appear twice.
 */
export type MdevAttr = Readonly<Record<string, string>>;

/** A definition file's content: exactly mdevctl's JSON (`/etc/mdevctl.d/<parent>/<uuid>`). */
export interface MdevConfig {
  /** The type id, `<parent>-<name>`. */
  mdev_type: string;
  start: StartMode;
  /** Ordered attributes (applied in this order at start). */
  attrs: MdevAttr[];
}

/** What an instance's device is built from: its identity and attributes. */
export interface MdevCreateContext {
  /** The instance's UUID (lower-case, 8-4-4-4-12). */
  uuid: string;
  /** The parent's name. */
  parent: string;
  /** The type's short name (without the `<parent>-` prefix). */
  type: string;
  /** The socket path the instance will be served on. */
  socket: string;
}

/**
 * What {@link MdevType.create} returns: a definition (`createDevice` is called on it), a device, or the
 * device with how to release what it holds and any state its attributes act on ({@link MdevInstanceHandle.state}).
 * The host disposes the device itself after calling `dispose`: `dispose` releases only what the parent added
 * (`VfioUserDevice.dispose()` must not run twice).
 */
export type MdevCreated = DeviceDefinition | VfioUserDevice | { device: VfioUserDevice; dispose?(): MaybePromise<void>; state?: unknown };

/** An attribute a type accepts (mdev: a file under `/sys/bus/mdev/devices/<uuid>/`). */
export interface MdevAttribute {
  /** One line for `types` output and errors. */
  description?: string;
  /**
   * Applies `value` to the freshly created instance (before it is served).
   * Throwing refuses it (an error with an `errno` keeps it, else EINVAL):
   * the host then destroys the instance, as mdevctl removes a device whose
   * attribute write failed.
   */
  apply(instance: MdevInstanceHandle, value: string): MaybePromise<void>;
}

/** What an attribute's `apply` acts on. */
export interface MdevInstanceHandle extends MdevCreateContext {
  /** The device built by {@link MdevType.create}. */
  readonly device: VfioUserDevice;
  /** The `state` that `create` returned with the device (undefined otherwise). */
  readonly state: unknown;
}

/** A type a parent offers (mdev: `mdev_supported_types/<type-id>/`). */
export interface MdevType {
  /** Short name; the type id is `<parent>-<name>` ([A-Za-z0-9_.:+-], 1–64 chars). */
  name: string;
  /** Human-readable name (mdev's optional `name` file). */
  label?: string;
  description?: string;
  /** Resources one instance consumes, by resource name of {@link MdevParent.resources}. */
  cost?: Readonly<Record<string, number>>;
  /** Most instances of this type, whatever the resources (default: no limit beyond resources). */
  maxInstances?: number;
  /** Attributes this type accepts, by name. Any other name is refused (EINVAL). */
  attributes?: Readonly<Record<string, MdevAttribute>>;
  /**
   * Which isolation group an instance of this type belongs to (default `'instance'`: a group of its own).
   * See {@link GroupSharing}.
   */
  group?: GroupSharing;
  /** Builds one instance's device (runs in the instance's worker). */
  create(context: MdevCreateContext): MaybePromise<MdevCreated>;
}

/**
 * How a type's instances share isolation groups (the unit a client owns; see docs/parents.md):
 * - `'instance'`: each instance is its own group, `<parent>/<uuid>` (the default);
 * - `'type'`: every instance of the type is in one group, `<parent>/type:<name>`;
 * - `'parent'`: every instance of every type declaring `'parent'` is in one group, `<parent>/parent`;
 * - `{ attr: NAME }`: instances with the same value of attribute NAME (its last occurrence) share `<parent>/NAME=VALUE`
 *   (the functions of one multi-function card); an instance without it is a group of its own.
 */
export type GroupSharing = 'instance' | 'type' | 'parent' | { readonly attr: string };

/** A parent: a module's default export (mdev: a device registered with `mdev_register_parent`). */
export interface MdevParent {
  /** Parent name ([A-Za-z0-9_.:-], 1–64 chars), e.g. `memory-pool`; also the definitions' sub-directory. */
  name: string;
  /** Capacity of each resource the types consume (e.g. `{ memory: 1 << 30 }`). */
  resources?: Readonly<Record<string, number>>;
  types: readonly MdevType[];
}

/** Where the host keeps its files. */
export interface HostPaths {
  /** Sockets: `<runDir>/control.sock` (0600) and `<runDir>/<uuid>.sock`. The directory is 0700. */
  runDir: string;
  /** Definitions `<configDir>/<parent>/<uuid>`; scripts `<configDir>/scripts.d/{callouts,notifiers}/`. */
  configDir: string;
}

/** An instance's runtime state, as `list` shows it. */
export const InstanceState = {
  /** Its worker is building the device and applying attributes. */
  STARTING: 'starting',
  /** Served on its socket. */
  ACTIVE: 'active',
  /** Being stopped (session closing, device reset, worker exiting). */
  STOPPING: 'stopping',
  /** Its worker died (threw, stalled past the watchdog, ran out of memory); being restarted or left failed. */
  FAILED: 'failed',
} as const;
/** One of {@link InstanceState}. */
export type InstanceState = (typeof InstanceState)[keyof typeof InstanceState];

/** The client connected to an instance (SO_PEERCRED of its socket). */
export interface InstanceClient {
  pid: number;
  uid: number;
  gid: number;
  /** When the session started (ms since the epoch). */
  since: number;
}

/** One running (or failed) instance, as the host reports it. */
export interface InstanceStatus {
  uuid: string;
  parent: string;
  /** Type id `<parent>-<name>`. */
  mdevType: string;
  state: InstanceState;
  socket: string;
  /** Attributes it was started with, in order. */
  attrs: MdevAttr[];
  /** Whether a definition for (parent, uuid) exists. */
  defined: boolean;
  /** `auto`/`manual` from the definition, absent for a transient instance. */
  start?: StartMode;
  client?: InstanceClient;
  /** The device's migration state name (`RUNNING`, `STOP_COPY`, …) when it supports migration. */
  migrationState?: string;
  /** Why the instance failed, when state is `failed`. */
  failure?: string;
  /** Worker restarts so far. */
  restarts: number;
  /** Its isolation group's id (`<parent>/<key>`, see {@link GroupSharing}). */
  group?: string;
}

/** A member's state as a group reports it: `inactive` for one that is defined but not running (or starting, stopping). */
export type GroupMemberState = 'active' | 'inactive' | 'failed';

/** One member of an isolation group. */
export interface GroupMemberView {
  uuid: string;
  /** Its socket path (`<runDir>/<uuid>.sock`, also for a member that is not running). */
  socket: string;
  state: GroupMemberState;
  /** Held for the group's owner: nobody else may attach it (true for every member while the group has an owner). */
  claimed: boolean;
}

/** The credentials of a group's owner (SO_PEERCRED of its first admitted connection). */
export interface GroupOwner {
  pid: number;
  uid: number;
  gid: number;
}

/**
 * An isolation group as the host reports it (`groups`) and serves it to its members' clients
 * (the `x-isolation-group` extension: this JSON, `parent` included).
 */
export interface GroupView {
  /** `<parent>/<key>`. */
  group: string;
  parent: string;
  /** Bumped on every change of the members, their states, viability or owner. */
  generation: number;
  /** Every member (running or only defined) is active: only then may a client attach one. */
  viable: boolean;
  owner: GroupOwner | null;
  /** Sorted by UUID. */
  members: GroupMemberView[];
}
