/**
 * The destination of a migration, as the orchestrator drives it: a device
 * session and guest memory on this machine ({@link localDestination}) or
 * behind a migration channel on another host (`RemoteDestination`, remote.ts).
 * The orchestrator only ever sees this interface, so a local and a remote
 * migration take the same steps, and the receiver of a remote migration
 * applies what arrives to a local destination.
 */
import type { VfioUserClient } from '../client/client.js';
import type { GuestMemory } from '../client/guest-memory.js';
import { recoverMigration } from '../client/migration-recovery.js';
import { closeFd } from '../native/addon.js';
import { MigrationState as S, RegionIndex } from '../protocol/constants.js';
import type { ArcLatency, MigrationIdentity } from '../protocol/migration-extensions.js';
import type { LedgerEntry } from './ledger.js';
import { COPY_CHUNK, zeroFill, type MemorySink } from './memory-copy.js';
import type { ContainerSide, MigrationSide } from './types.js';

/** What the compatibility check compares of one side (plain data: it crosses the migration channel as JSON). */
export interface DeviceDescription {
  info: { flags: number; numRegions: number; numIrqs: number };
  /** Size and flags of every region index below `numRegions`; null where the device has none. */
  regions: Array<{ size: bigint; flags: number } | null>;
  /** The MIGRATION feature's flags; null when the device does not migrate (`migrationError` says why). */
  migrationFlags: bigint | null;
  migrationError?: string;
  /** Config-space dword 0 (vendor and device id), hex. */
  pciIds: string;
  /** The device's migration state (RUNNING when it does not migrate). */
  state: number;
  /** The `x-migration-identity` answer, when the server advertises it. */
  identity?: MigrationIdentity;
  /** The guest memory attached for the device. */
  memory: { size: bigint; iova: bigint };
}

/**
 * One destination device as the orchestrator drives it: its description,
 * migration state and stream. `setMigrationState` is also a barrier:
 * everything written before it (guest memory and this device's data) is
 * applied first.
 */
export interface DeviceChannel {
  /** The largest device-data chunk one {@link writeDeviceData} should carry. */
  readonly maxTransferSize: number;
  /** The device and the (shared) guest memory attached for it. */
  describe(): Promise<DeviceDescription>;
  migrationState(): Promise<number>;
  /** SET MIG_DEVICE_STATE; also a barrier: everything written before it is applied first. */
  setMigrationState(state: number): Promise<void>;
  /** The `x-arc-latency` answer ([] without the extension). */
  arcLatencies(): Promise<ArcLatency[]>;
  /** The next piece of the device's migration stream. Errors may surface at the next call or {@link DestinationMemory.flush}. */
  writeDeviceData(data: Uint8Array): Promise<void>;
}

/**
 * The part of a destination that is not per device: the guest memory (one,
 * shared by every device of a container), the VMM state, the end of the
 * migration (abandon, commit) — for all its devices at once.
 */
export interface DestinationMemory {
  /** `local`, or the channel address (`tcp://host:port`). */
  readonly address: string;
  /**
   * Guest memory at `gpa`: bytes the caller will not change or, when
   * {@link copiesMemory}, a view valid only until the call returns. May resolve later (back-pressure).
   */
  writeMemory(gpa: bigint, data: Uint8Array): void | Promise<void>;
  /** `writeMemory` copies the bytes before it returns (the orchestrator then passes views of the source's mapping, no copy of its own). */
  readonly copiesMemory?: boolean;
  /**
   * `[gpa, gpa + length)` is all zero on the source (zero pages are not sent
   * as data). Without it, the orchestrator writes the zeros with {@link writeMemory}.
   */
  writeZeroes?(gpa: bigint, length: number): void | Promise<void>;
  /** Resolves when everything written so far (memory and every device's data) is applied; rejects with the first error among them. */
  flush(): Promise<void>;
  /** The VMM's own state, captured while the source is stopped (delivered before the destination runs). */
  writeVmState(data: Uint8Array): Promise<void>;
  /** After an abort: every destination device reset and RUNNING again, the migration abandoned. Never throws. */
  abandon(): Promise<void>;
  /**
   * After the destination runs: the migration is complete (a remote receiver
   * keeps every device). An error with `commitUnsent: true` means the commit
   * never left (the source is resumed); any other leaves the source held.
   */
  complete(): Promise<void>;
  /** The id the destination records the outcome under (a remote one). */
  readonly migrationId?: string;
  /**
   * After {@link complete} failed with its reply lost: whether the destination
   * committed (`committed`), surely did not (`abandoned`), or cannot be told
   * (`unknown`: the source must stay held). Never throws.
   */
  resolveCommit?(): Promise<LedgerEntry>;
}

/** Where a migration of one device goes; the orchestrator's view of the destination. */
export interface MigrationDestination extends DeviceChannel, DestinationMemory {}

/** One device of a {@link ContainerDestination}. */
export interface DeviceDestination extends DeviceChannel {
  /** The device's name (for reports and errors). */
  readonly name: string;
}

/**
 * Where a container migration goes: one guest memory and N devices, paired
 * with the source's devices by index. `abandon` and `complete` act on all of
 * them (a remote receiver commits or abandons the whole container).
 */
export interface ContainerDestination extends DestinationMemory {
  readonly devices: readonly DeviceDestination[];
}

/**
 * Describes one side for the compatibility check (read-only).
 * @throws {RemoteError} or {@link ConnectionClosedError} when the session fails.
 */
export async function describeSide(side: MigrationSide): Promise<DeviceDescription> {
  const { client } = side;
  const info = await client.deviceInfo();
  const regions: DeviceDescription['regions'] = [];
  for (let i = 0; i < info.numRegions; i++) {
    try {
      const r = await client.regionInfo(i);
      if (r.fd !== undefined) closeFd(r.fd);
      regions.push({ size: r.info.size, flags: r.info.flags });
    } catch {
      regions.push(null); // an index the device does not implement: must be absent on both sides
    }
  }
  const ids = await client.regionRead(RegionIndex.CONFIG, 0n, 4);
  const description: DeviceDescription = {
    info: { flags: info.flags, numRegions: info.numRegions, numIrqs: info.numIrqs },
    regions,
    migrationFlags: null,
    pciIds: Buffer.from(ids).toString('hex'),
    state: S.RUNNING,
    memory: { size: side.memory.size, iova: side.iova },
  };
  try {
    description.migrationFlags = await client.migrationFlags();
  } catch (cause) {
    description.migrationError = (cause as Error).message;
    return description;
  }
  description.state = await client.migrationState();
  if (client.migrationExtensions.identity !== undefined) description.identity = await client.migrationIdentity();
  return description;
}

/**
 * Brings a destination device back to RUNNING after an abandoned migration,
 * its loaded state discarded: {@link recoverMigration}'s route from whatever
 * state it is in (a resuming stream is only abandoned by a reset; STOP, where
 * DEVICE_RESET is refused, goes to RUNNING first), then DEVICE_RESET.
 * Errors are swallowed (a lost session has nothing left to reset).
 */
export async function resetToRunning(client: VfioUserClient): Promise<void> {
  try {
    await recoverMigration(client);
    await client.reset();
  } catch {
    // a lost session: nothing more to do here (the server keeps the state for the next client, docs/migration-faults.md)
  }
}

/** The device part of a destination on this machine: the session of `side`. */
function localDevice(side: MigrationSide): DeviceChannel {
  const { client } = side;
  return {
    get maxTransferSize() {
      return client.maxTransferSize;
    },
    describe: () => describeSide(side),
    migrationState: () => client.migrationState(),
    setMigrationState: (state) => client.setMigrationState(state),
    arcLatencies: async () => (client.migrationExtensions.arcLatency === undefined ? [] : client.arcLatencies()),
    writeDeviceData: (data) => client.migDataWrite(data),
  };
}

/** The memory part of a destination on this machine; `abandon` resets `clients`. */
function localMemory(memory: GuestMemory, clients: readonly VfioUserClient[], options: { onVmState?: (data: Uint8Array) => void }): DestinationMemory {
  return {
    address: 'local',
    writeMemory: (gpa, data) => memory.write(gpa, data),
    copiesMemory: true,
    writeZeroes: (gpa, length) => void zeroFill(memory, gpa, length),
    flush: async () => undefined,
    writeVmState: async (data) => options.onVmState?.(data),
    abandon: async () => void (await Promise.all(clients.map((c) => resetToRunning(c)))),
    complete: async () => undefined,
  };
}

/** A destination on this machine: the device session and guest memory of `side`. */
export function localDestination(side: MigrationSide, options: { onVmState?: (data: Uint8Array) => void } = {}): MigrationDestination {
  const device = localDevice(side);
  return Object.defineProperties(localMemory(side.memory, [side.client], options), Object.getOwnPropertyDescriptors(device)) as MigrationDestination;
}

/** A container destination on this machine: the device sessions of `side`, sharing its guest memory. */
export function localContainerDestination(side: ContainerSide, options: { onVmState?: (data: Uint8Array) => void } = {}): ContainerDestination {
  const { memory, iova } = side;
  const devices = side.devices.map((d, i) => named(localDevice({ client: d.client, memory, iova }), deviceName(d, i)));
  return { ...localMemory(memory, side.devices.map((d) => d.client), options), devices };
}

/** `channel` with a name (its getters kept). */
function named(channel: DeviceChannel, name: string): DeviceDestination {
  return Object.defineProperty(channel, 'name', { value: name, enumerable: true }) as DeviceDestination;
}

/** The name of device `i` of a container in reports: its own, or `dev<i>`. */
export function deviceName(device: { name?: string | undefined }, i: number): string {
  return device.name ?? `dev${i}`;
}

/** The device part of `d` (its methods bound to it; `maxTransferSize` read when asked). */
function deviceChannelOf(d: DeviceChannel): DeviceChannel {
  return {
    get maxTransferSize() {
      return d.maxTransferSize;
    },
    describe: () => d.describe(),
    migrationState: () => d.migrationState(),
    setMigrationState: (state) => d.setMigrationState(state),
    arcLatencies: () => d.arcLatencies(),
    writeDeviceData: (data) => d.writeDeviceData(data),
  };
}

/** The memory-and-end part of `d` (its methods bound to it, its optional members only when it has them). */
function memoryPartOf(d: DestinationMemory): DestinationMemory {
  return {
    address: d.address,
    writeMemory: (gpa, data) => d.writeMemory(gpa, data),
    ...(d.copiesMemory === undefined ? {} : { copiesMemory: d.copiesMemory }),
    ...(d.writeZeroes ? { writeZeroes: (gpa: bigint, length: number) => d.writeZeroes?.(gpa, length) } : {}),
    flush: () => d.flush(),
    writeVmState: (data) => d.writeVmState(data),
    abandon: () => d.abandon(),
    complete: () => d.complete(),
    ...(d.migrationId === undefined ? {} : { migrationId: d.migrationId }),
    ...(d.resolveCommit ? { resolveCommit: () => (d.resolveCommit as () => Promise<LedgerEntry>)() } : {}),
  };
}

/** A one-device destination as a container of one (device `name`). */
export function containerOfOne(d: MigrationDestination, name = 'dev0'): ContainerDestination {
  return { ...memoryPartOf(d), devices: [named(deviceChannelOf(d), name)] };
}

/** Whether `x` is a {@link MigrationSide} (rather than a {@link MigrationDestination}). */
export function isMigrationSide(x: MigrationSide | MigrationDestination): x is MigrationSide {
  return 'client' in x && 'memory' in x;
}

/** `d` as the sink of the memory copy (zero ranges written as zeros when it has no `writeZeroes`). */
export function destinationSink(d: DestinationMemory): MemorySink {
  return {
    copies: d.copiesMemory === true,
    write: (gpa, data) => d.writeMemory(gpa, data),
    zero: d.writeZeroes ? (gpa, length) => d.writeZeroes?.(gpa, length) : async (gpa, length) => {
      const zeros = new Uint8Array(Math.min(length, COPY_CHUNK));
      for (let done = 0; done < length; done += zeros.length) await d.writeMemory(gpa + BigInt(done), zeros.subarray(0, Math.min(zeros.length, length - done)));
    },
  };
}
