/**
 * A container: one guest I/O address space shared by several device
 * connections — the kernel's VFIO container (docs/containers.md), in the
 * client library. Guest memory is mapped once into the container, which
 * DMA_MAPs it into every attached device; devices join by isolation group
 * (all members at once, as `VFIO_GROUP_SET_CONTAINER`), and one that joins
 * later receives the mappings already there. Dirty pages are merged across
 * the devices' DMA logs and the client's own writes.
 *
 * Errnos follow the kernel's: EEXIST for an IOVA range that overlaps a
 * mapping (type1 MAP_DMA), EINVAL for a group that cannot be attached as
 * given (a member missing, a device already in a container — SET_CONTAINER),
 * EPERM for a group that is not viable, ENOENT for an unknown mapping,
 * EINVAL for dirty pages asked while not logging (DIRTY_PAGES GET_BITMAP).
 *
 * Operations run one at a time, in call order.
 */
import { InvalidArgumentError, StateError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import type { IsolationGroupView } from '../protocol/isolation-group.js';
import type { VfioUserClient } from './client.js';
import { collectDeviceDirty, pagesToBitmap, startDeviceLogging, stopDeviceLogging, type DeviceLogging } from './container-dirty.js';
import { GUEST_PAGE_SIZE, type GuestMemory, type GuestMemoryAttachment, type GuestMemoryMode } from './guest-memory.js';

/** Options of {@link Container.map}. */
export interface ContainerMapOptions {
  /** Where the devices see the memory (page aligned). */
  iova: bigint;
  /** First byte of the memory to map (page aligned, default 0). */
  offset?: bigint;
  /** Bytes to map (page aligned, default: from `offset` to the end). */
  size?: bigint;
  /** `'fd'` (default: the servers mmap the memfd) or `'message'` (DMA_READ/DMA_WRITE). */
  mode?: GuestMemoryMode;
  /** The devices may write (default true). */
  writable?: boolean;
}

/** One mapping of the container: the same range of one memory, at the same IOVA, in every attached device. */
export interface ContainerMapping {
  readonly memory: GuestMemory;
  readonly iova: bigint;
  readonly offset: bigint;
  readonly size: bigint;
  readonly mode: GuestMemoryMode;
  readonly writable: boolean;
}

/** An attached device: its connection, its group and its DMA logging. */
interface Device {
  client: VfioUserClient;
  /** The group id, or undefined for a device without the extension (its own group). */
  group: string | undefined;
  /** The member it is (the group's `self`). */
  self: string | undefined;
  logging: DeviceLogging | undefined;
}

/** A mapping and where it is mapped; `view` is what callers hold. */
interface MappingRecord extends ContainerMapping {
  readonly view: ContainerMapping;
  readonly attachments: Map<VfioUserClient, GuestMemoryAttachment>;
}

const PAGE = BigInt(GUEST_PAGE_SIZE);
/** Which container each connection is in: a device sits in at most one. */
const owners = new WeakMap<VfioUserClient, Container>();

const hex = (n: bigint): string => `0x${n.toString(16)}`;

/** One guest address space for several vfio-user devices. */
export class Container {
  readonly #devices = new Map<VfioUserClient, Device>();
  #mappings: MappingRecord[] = [];
  #logging = false;
  /** Dirty pages taken from devices before they left or a mapping went away, per memory. */
  readonly #pending = new Map<GuestMemory, Set<number>>();
  #serial: Promise<unknown> = Promise.resolve();

  /** The attached connections, in attach order. */
  get devices(): readonly VfioUserClient[] {
    return [...this.#devices.keys()];
  }

  /** The mappings, by IOVA. */
  get mappings(): readonly ContainerMapping[] {
    return this.#mappings.map((m) => m.view);
  }

  /** Whether dirty logging runs ({@link startDirtyLogging}). */
  get logging(): boolean {
    return this.#logging;
  }

  /**
   * Attaches one device: {@link attachGroup} with that device alone (it must be its group's only member).
   * @throws as {@link attachGroup}.
   */
  attach(client: VfioUserClient): Promise<void> {
    return this.attachGroup([client]);
  }

  /**
   * Attaches every member of one or more isolation groups: each connection's
   * group is read (`client.isolationGroup()`; a server without the extension
   * is a group of one), every member of every group involved must be among
   * `clients` or already attached here (a member hot-added into a group this
   * container holds joins alone), and every group must be viable. Then the container's mappings
   * are DMA_MAPped into each new device (and its DMA logging started while the
   * container logs). All or nothing: on any failure the new devices are
   * unmapped again and none is attached.
   * @throws {InvalidArgumentError} EINVAL for an empty list, a connection given twice or already in a container,
   *   or a group member missing from `clients` (the message names them by UUID and socket).
   * @throws {StateError} EPERM when a group is not viable (a member is not active).
   * @throws {RemoteError} the server's errno for the group GET or a DMA_MAP (EINVAL, ENOSPC, …); {@link ProtocolError} EPROTO.
   */
  attachGroup(clients: readonly VfioUserClient[]): Promise<void> {
    return this.#queue(() => this.#attachGroup(clients));
  }

  /**
   * Detaches `client` and the other attached members of its group (as
   * `VFIO_GROUP_UNSET_CONTAINER`): their mappings are DMA_UNMAPped, their DMA
   * logging stopped (the pages they logged are kept for {@link takeDirty}).
   * @returns the connections detached.
   * @throws {InvalidArgumentError} ENOENT when `client` is not attached here.
   * @throws {RemoteError} the first errno a server answered (every device is detached from the container anyway).
   */
  detach(client: VfioUserClient): Promise<VfioUserClient[]> {
    return this.#queue(() => this.#detach(client));
  }

  /**
   * Maps `[offset, offset + size)` of `memory` at `iova` into every attached
   * device, and into every device attached later. All or nothing: if one
   * device refuses, the others are unmapped again and the error is thrown.
   * @throws {InvalidArgumentError} EINVAL for misaligned or out-of-range bounds, EEXIST when the IOVA range overlaps a mapping.
   * @throws {StateError} EBADF for a disposed memory.
   * @throws {RemoteError} the first server's errno (EINVAL, ENOSPC, EACCES, …).
   */
  map(memory: GuestMemory, options: ContainerMapOptions): Promise<ContainerMapping> {
    return this.#queue(() => this.#map(memory, options));
  }

  /**
   * DMA_UNMAPs `mapping` from every device (while logging, the pages the
   * devices logged in it are kept for {@link takeDirty} first).
   * @throws {InvalidArgumentError} ENOENT when it is not a mapping of this container.
   * @throws {RemoteError} the first errno a server answered: the mapping then stays, with the devices that still have it.
   */
  unmap(mapping: ContainerMapping): Promise<void> {
    return this.#queue(() => this.#unmap(mapping));
  }

  /**
   * Starts DMA logging on every attached device that offers it (4 KiB pages,
   * all of guest memory) and on devices attached later; clears the memories'
   * own dirty pages (a full copy is expected to follow). Idempotent.
   * @throws {RemoteError} the server's errno when a device fails to start (the others are stopped again).
   */
  startDirtyLogging(): Promise<void> {
    return this.#queue(() => this.#startLogging());
  }

  /**
   * Stops DMA logging everywhere and forgets pages not taken. Idempotent.
   * @throws {RemoteError} the first errno a server answered (every device is still tried).
   */
  stopDirtyLogging(): Promise<void> {
    return this.#queue(() => this.#stopLogging());
  }

  /**
   * The pages of `memory` written since the last take: the union of every
   * device's DMA_LOGGING_REPORT over the memory's mappings (a device that
   * cannot log counts every page it may write) and the memory's own
   * `takeDirty()`; cleared by the take.
   * @param memory - may be left out when the container maps exactly one memory.
   * @returns sorted 4 KiB page numbers relative to the memory (as `GuestMemory.takeDirty()`).
   * @throws {StateError} EINVAL while not logging. @throws {InvalidArgumentError} EINVAL when `memory` is needed or not mapped here.
   * @throws {RemoteError} the server's errno for DMA_LOGGING_REPORT.
   */
  takeDirty(memory?: GuestMemory): Promise<number[]> {
    return this.#queue(() => this.#takeDirty(memory));
  }

  /**
   * {@link takeDirty} as a vfio bitmap of the whole memory (page p = bit p % 8 of byte p >> 3).
   * @throws as {@link takeDirty}.
   */
  async takeDirtyBitmap(memory?: GuestMemory): Promise<Uint8Array> {
    const target = this.#memoryFor(memory);
    return pagesToBitmap(await this.takeDirty(target), Number(target.size / PAGE));
  }

  /**
   * Detaches every device and forgets the mappings (stopping logging first).
   * @throws {RemoteError} the first errno a server answered.
   */
  close(): Promise<void> {
    return this.#queue(async () => {
      let first: unknown;
      const note = (e: unknown): void => void (first ??= e);
      await this.#stopLogging().catch(note);
      for (const client of [...this.#devices.keys()]) if (this.#devices.has(client)) await this.#detach(client).catch(note);
      this.#mappings = [];
      this.#pending.clear();
      if (first !== undefined) throw first;
    });
  }

  #queue<T>(op: () => Promise<T>): Promise<T> {
    const run = this.#serial.then(op);
    this.#serial = run.catch(() => undefined);
    return run;
  }

  async #attachGroup(clients: readonly VfioUserClient[]): Promise<void> {
    checkNewClients(clients, this);
    for (const client of clients) owners.set(client, this); // reserved: no other container takes them meanwhile
    const added: Device[] = [];
    try {
      const views = await Promise.all(clients.map((c) => c.isolationGroup()));
      checkGroups(views, [...this.#devices.values()]);
      for (const [i, client] of clients.entries()) {
        const device: Device = { client, group: views[i]?.group, self: views[i]?.self, logging: undefined };
        added.push(device);
        for (const record of this.#mappings) record.attachments.set(client, await record.memory.attach(client, optionsOf(record)));
        if (this.#logging) device.logging = await startDeviceLogging(client);
      }
    } catch (error) {
      await Promise.allSettled(added.map((d) => this.#release(d)));
      for (const client of clients) owners.delete(client);
      throw error;
    }
    for (const device of added) this.#adopt(device);
  }

  /** Takes `device` in; it leaves on its own when its connection closes. */
  #adopt(device: Device): void {
    this.#devices.set(device.client, device);
    owners.set(device.client, this);
    void device.client.closed.then(() => {
      if (this.#devices.get(device.client) !== device) return;
      this.#devices.delete(device.client);
      owners.delete(device.client);
      for (const record of this.#mappings) {
        // What it logged and nobody took is gone with it: count every page it could write.
        if (this.#logging && record.writable && record.attachments.has(device.client)) addAllPages(record, this.#pendingOf(record.memory));
        record.attachments.delete(device.client);
      }
    });
  }

  /** Unmaps every mapping from `device` and stops its logging. @throws the first error. */
  async #release(device: Device): Promise<void> {
    const results = await Promise.allSettled(this.#mappings.map(async (record) => {
      const attachment = record.attachments.get(device.client);
      if (!attachment) return;
      await attachment.detach();
      record.attachments.delete(device.client);
    }));
    if (device.logging) await stopDeviceLogging(device.client, device.logging);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  async #detach(client: VfioUserClient): Promise<VfioUserClient[]> {
    const device = this.#devices.get(client);
    if (!device) throw new InvalidArgumentError('Container.detach: the connection is not attached to this container', { errno: Errno.ENOENT });
    const leaving = [...this.#devices.values()].filter((d) => d === device || (device.group !== undefined && d.group === device.group));
    let first: unknown;
    for (const d of leaving) {
      if (this.#logging) await this.#keepDirty(d).catch((e: unknown) => void (first ??= e));
      await this.#release(d).catch((e: unknown) => void (first ??= e));
      this.#devices.delete(d.client);
      owners.delete(d.client);
    }
    if (first !== undefined) throw first;
    return leaving.map((d) => d.client);
  }

  async #map(memory: GuestMemory, options: ContainerMapOptions): Promise<ContainerMapping> {
    const record = this.#checkedRecord(memory, options);
    const devices = [...this.#devices.keys()];
    const results = await Promise.allSettled(devices.map((c) => memory.attach(c, optionsOf(record))));
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') record.attachments.set(devices[i] as VfioUserClient, r.value);
    });
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      await Promise.allSettled([...record.attachments.values()].map((a) => a.detach()));
      throw failed.reason;
    }
    this.#mappings = [...this.#mappings, record].sort((a, b) => (a.iova < b.iova ? -1 : 1));
    return record.view;
  }

  #checkedRecord(memory: GuestMemory, options: ContainerMapOptions): MappingRecord {
    if (memory.disposed) throw new StateError('Container.map: the memory is disposed', { errno: Errno.EBADF });
    const { iova } = options;
    const offset = options.offset ?? 0n;
    const size = options.size ?? memory.size - offset;
    if (iova < 0n || iova % PAGE !== 0n || offset < 0n || offset % PAGE !== 0n || size <= 0n || size % PAGE !== 0n || offset + size > memory.size) {
      throw new InvalidArgumentError(`Container.map: iova ${hex(iova)}, offset ${hex(offset)}, size ${hex(size)} must be page aligned and inside the ${memory.size}-byte memory`);
    }
    const clash = this.#mappings.find((m) => iova < m.iova + m.size && m.iova < iova + size);
    if (clash) throw new InvalidArgumentError(`Container.map: IOVA ${hex(iova)}+${hex(size)} overlaps the mapping at ${hex(clash.iova)}+${hex(clash.size)}`, { errno: Errno.EEXIST });
    const view: ContainerMapping = Object.freeze({ memory, iova, offset, size, mode: options.mode ?? 'fd', writable: options.writable ?? true });
    return { ...view, view, attachments: new Map() };
  }

  async #unmap(mapping: ContainerMapping): Promise<void> {
    const record = this.#mappings.find((m) => m.view === mapping);
    if (!record) throw new InvalidArgumentError(`Container.unmap: no mapping at ${hex(mapping.iova)} in this container`, { errno: Errno.ENOENT });
    if (this.#logging) {
      const pages = this.#pendingOf(record.memory);
      for (const d of this.#devices.values()) if (d.logging && record.attachments.has(d.client)) await collectDeviceDirty(d.client, d.logging, record, pages);
    }
    const entries = [...record.attachments.entries()];
    const results = await Promise.allSettled(entries.map(([, a]) => a.detach()));
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') record.attachments.delete((entries[i] as [VfioUserClient, GuestMemoryAttachment])[0]);
    });
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    this.#mappings = this.#mappings.filter((m) => m !== record);
  }

  async #startLogging(): Promise<void> {
    if (this.#logging) return;
    const devices = [...this.#devices.values()];
    const results = await Promise.allSettled(devices.map(async (d) => (d.logging = await startDeviceLogging(d.client))));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      await Promise.allSettled(devices.map((d) => this.#stopDevice(d)));
      throw failed.reason;
    }
    for (const record of this.#mappings) record.memory.takeDirty();
    this.#pending.clear();
    this.#logging = true;
  }

  async #stopLogging(): Promise<void> {
    if (!this.#logging) return;
    this.#logging = false;
    this.#pending.clear();
    const results = await Promise.allSettled([...this.#devices.values()].map((d) => this.#stopDevice(d)));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  async #stopDevice(device: Device): Promise<void> {
    const logging = device.logging;
    device.logging = undefined;
    if (logging) await stopDeviceLogging(device.client, logging);
  }

  async #takeDirty(memory: GuestMemory | undefined): Promise<number[]> {
    if (!this.#logging) throw new StateError('Container.takeDirty: dirty logging is not running (startDirtyLogging first)', { errno: Errno.EINVAL });
    const target = this.#memoryFor(memory);
    const pages = new Set<number>(target.takeDirty());
    for (const p of this.#pending.get(target) ?? []) pages.add(p);
    this.#pending.delete(target);
    for (const record of this.#mappings) {
      if (record.memory !== target) continue;
      for (const d of this.#devices.values()) if (d.logging && record.attachments.has(d.client)) await collectDeviceDirty(d.client, d.logging, record, pages);
    }
    return [...pages].sort((a, b) => a - b);
  }

  /** Moves what `device` logged, for every mapping, into the pending pages (before it leaves). */
  async #keepDirty(device: Device): Promise<void> {
    if (!device.logging) return;
    for (const record of this.#mappings) {
      if (record.attachments.has(device.client)) await collectDeviceDirty(device.client, device.logging, record, this.#pendingOf(record.memory));
    }
  }

  #pendingOf(memory: GuestMemory): Set<number> {
    let pages = this.#pending.get(memory);
    if (!pages) this.#pending.set(memory, (pages = new Set()));
    return pages;
  }

  #memoryFor(memory: GuestMemory | undefined): GuestMemory {
    const mapped = [...new Set(this.#mappings.map((m) => m.memory))];
    if (memory !== undefined) {
      if (!mapped.includes(memory) && !this.#pending.has(memory)) throw new InvalidArgumentError('Container.takeDirty: the memory is not mapped in this container');
      return memory;
    }
    if (mapped.length !== 1) throw new InvalidArgumentError(`Container.takeDirty: ${mapped.length} memories are mapped; name one`);
    return mapped[0] as GuestMemory;
  }
}

/** Adds every memory page of `mapping` to `pages`. */
function addAllPages(mapping: ContainerMapping, pages: Set<number>): void {
  const first = Number(mapping.offset / PAGE);
  for (let p = 0; p < Number(mapping.size / PAGE); p++) pages.add(first + p);
}

function optionsOf(record: MappingRecord): { iova: bigint; offset: bigint; size: bigint; mode: GuestMemoryMode; writable: boolean } {
  return { iova: record.iova, offset: record.offset, size: record.size, mode: record.mode, writable: record.writable };
}

/** @throws {InvalidArgumentError} EINVAL for an empty list, a duplicate, or a connection already in a container. */
function checkNewClients(clients: readonly VfioUserClient[], container: Container): void {
  if (clients.length === 0) throw new InvalidArgumentError('Container.attachGroup: no connection given');
  if (new Set(clients).size !== clients.length) throw new InvalidArgumentError('Container.attachGroup: a connection is given twice');
  for (const client of clients) {
    const owner = owners.get(client);
    if (owner) throw new InvalidArgumentError(`Container.attachGroup: a connection is already attached to ${owner === container ? 'this' : 'another'} container`);
  }
}

/**
 * Every group involved must be viable, and each of its members given or already `attached`.
 * @throws {StateError} EPERM for a non-viable group; {@link InvalidArgumentError} EINVAL naming missing members.
 */
function checkGroups(views: ReadonlyArray<IsolationGroupView | undefined>, attached: readonly Device[]): void {
  const groups = new Map<string, { view: IsolationGroupView; given: Set<string> }>();
  for (const view of views) {
    if (!view) continue;
    const entry = groups.get(view.group);
    const latest = !entry || view.generation > entry.view.generation ? view : entry.view;
    const given = entry?.given ?? new Set(attached.filter((d) => d.group === view.group && d.self !== undefined).map((d) => d.self as string));
    if (view.self !== undefined) given.add(view.self);
    groups.set(view.group, { view: latest, given });
  }
  for (const { view, given } of groups.values()) {
    if (!view.viable) {
      const inactive = view.members.filter((m) => m.state !== 'active').map((m) => `${m.uuid} (${m.state})`);
      throw new StateError(`Container.attachGroup: isolation group ${view.group} is not viable: ${inactive.join(', ') || 'a member is not active'}`, { errno: Errno.EPERM });
    }
    const missing = view.members.filter((m) => !given.has(m.uuid));
    if (missing.length > 0) {
      const names = missing.map((m) => `${m.uuid} (${m.socket})`).join(', ');
      throw new InvalidArgumentError(`Container.attachGroup: isolation group ${view.group} has ${view.members.length} members; attach them all together — missing ${names}`);
    }
  }
}
