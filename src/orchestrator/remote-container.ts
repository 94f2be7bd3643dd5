/**
 * A container's destination on another host: several devices of one VM and
 * their shared guest memory behind one migration channel (channel.ts,
 * `channelVersion` 2) to a receiver that prepared a session per device on one
 * guest memory (`MigrationReceiver`, `vfio-user migrate-listen` with several
 * `--socket NAME=PATH`). One TCP connection carries the guest pages once and
 * each device's stream in DEVICE_DATA frames tagged with its index; the
 * receiver commits all the devices or none, and a lost commit reply is
 * resolved as for one device (`resolveCommit`, docs/protocol-extensions.md §7.1).
 */
import type { ArcLatency } from '../protocol/migration-extensions.js';
import type { ChannelReply } from './channel-socket.js';
import type { ContainerDestination, DeviceDescription, DeviceDestination } from './destination.js';
import type { LedgerEntry } from './ledger.js';
import { RemoteDestination, type RemoteDestinationOptions } from './remote.js';

/** Options of {@link RemoteContainerDestination.connect}: a remote destination's, with the devices' names required. */
export interface RemoteContainerOptions extends Omit<RemoteDestinationOptions, 'devices'> {
  /** The container's devices by name, in the source's order (1..32, unique; `A-Z a-z 0-9 . _ : -`). */
  devices: readonly string[];
}

/** One device of a remote container: its requests and stream tagged with its index. */
class RemoteDevice implements DeviceDestination {
  readonly name: string;
  readonly #link: RemoteDestination;
  readonly #index: number;

  constructor(link: RemoteDestination, index: number) {
    this.#link = link;
    this.#index = index;
    this.name = link.deviceNames[index] as string;
  }

  get maxTransferSize(): number {
    return this.#link.maxTransferSizeOf(this.#index);
  }

  describe(): Promise<DeviceDescription> {
    return this.#link.describe(this.#index);
  }

  migrationState(): Promise<number> {
    return this.#link.migrationState(this.#index);
  }

  setMigrationState(state: number): Promise<void> {
    return this.#link.setMigrationState(state, this.#index);
  }

  arcLatencies(): Promise<ArcLatency[]> {
    return this.#link.arcLatencies(this.#index);
  }

  writeDeviceData(data: Uint8Array): Promise<void> {
    return this.#link.writeDeviceData(data, this.#index);
  }
}

/** A {@link ContainerDestination} behind a migration channel. */
export class RemoteContainerDestination implements ContainerDestination {
  /** The channel (its per-device requests, `message` after the commit, `ping`). */
  readonly link: RemoteDestination;
  readonly devices: readonly DeviceDestination[];
  /** `writeMemory` copies the bytes before it returns. */
  readonly copiesMemory = true;

  private constructor(link: RemoteDestination) {
    this.link = link;
    this.devices = link.deviceNames.map((_n, i) => new RemoteDevice(link, i));
  }

  /**
   * Connects to a receiver and offers it the container: `options.memory` and the named devices.
   * @throws {InvalidArgumentError} EINVAL for a bad address or device names; a connect error (ECONNREFUSED…);
   *   {@link MigrationChannelError} with the receiver's errno when it refuses: EBUSY (another migration),
   *   EINVAL (it has no destination for a device name, or not as many), EPROTO (an older receiver: one device per migration).
   */
  static async connect(url: string, options: RemoteContainerOptions): Promise<RemoteContainerDestination> {
    return new RemoteContainerDestination(await RemoteDestination.connect(url, options));
  }

  get address(): string {
    return this.link.address;
  }

  get migrationId(): string {
    return this.link.migrationId;
  }

  writeMemory(gpa: bigint, data: Uint8Array): Promise<void> {
    return this.link.writeMemory(gpa, data);
  }

  writeZeroes(gpa: bigint, length: number): Promise<void> {
    return this.link.writeZeroes(gpa, length);
  }

  /** Resolves when the receiver applied everything sent so far (memory and every device's stream). */
  flush(): Promise<void> {
    return this.link.flush();
  }

  writeVmState(data: Uint8Array): Promise<void> {
    return this.link.writeVmState(data);
  }

  /** Every destination device reset to RUNNING by the receiver, the channel closed. Never throws. */
  abandon(): Promise<void> {
    return this.link.abandon();
  }

  /** The commit of the whole container: the receiver keeps every device (see {@link RemoteDestination.complete}). */
  complete(): Promise<void> {
    return this.link.complete();
  }

  resolveCommit(): Promise<LedgerEntry> {
    return this.link.resolveCommit();
  }

  /** An application message to the receiver after the commit. @throws as {@link RemoteDestination.message}. */
  message(head: unknown, body?: Uint8Array, timeoutMs?: number): Promise<ChannelReply> {
    return this.link.message(head, body, timeoutMs);
  }

  /** Ends the channel (an uncommitted migration is abandoned by the receiver). Idempotent. */
  close(): void {
    this.link.close();
  }
}
