/** Options, progress and report types of the live-migration orchestrator ({@link migrate}). */
import type { VfioUserClient } from '../client/client.js';
import type { GuestMemory } from '../client/guest-memory.js';
import type { ContainerDestination, MigrationDestination } from './destination.js';
import type { AutoConvergeOptions } from './throttle.js';

/** One side of a migration: the device session and the guest RAM attached to it at `iova`. */
export interface MigrationSide {
  client: VfioUserClient;
  memory: GuestMemory;
  /** Where `memory` is attached for the device (must be equal on both sides). */
  iova: bigint;
}

/** One device of a container on the source: a session whose DMA sees the container's guest memory. */
export interface ContainerDevice {
  /** Its name in reports (default `dev<i>`; unique within the container). */
  name?: string;
  client: VfioUserClient;
}

/**
 * The source (or a local destination) of a container migration: several
 * device sessions sharing one guest RAM, attached at `iova` for every device
 * (one I/O address space, as a VFIO container).
 */
export interface ContainerSide {
  memory: GuestMemory;
  iova: bigint;
  /** At least one; paired with the destination's devices by index. */
  devices: readonly ContainerDevice[];
}

/** Where a migration is. */
export type MigrationPhase = 'precopy' | 'switchover' | 'commit' | 'abort' | 'done';

/**
 * What a migration is doing within its phase: `setup` (logging, states), `full-copy` (the first copy of
 * all guest memory), `dirty-pages` (a pre-copy iteration's pages), `device-data` (the device stream),
 * `estimate` (measuring round trips, the projection), `p2p` (a container's sources entering their P2P
 * states before any stops), `stop-copy` (the source stopped: its last
 * pages and device data), `destination` (VMM state, destination STOP → RUNNING), `commit`,
 * `recover` (after an abort or failure), `done`.
 */
export type MigrationStep = 'setup' | 'full-copy' | 'dirty-pages' | 'device-data' | 'estimate' | 'p2p' | 'stop-copy' | 'destination' | 'commit' | 'recover' | 'done';

/** Bytes migrated, by phase and kind (guest memory counts zero pages, sent as markers, at their size). */
export interface MigrationBytes {
  precopyMemory: bigint;
  precopyDevice: bigint;
  stopCopyMemory: bigint;
  stopCopyDevice: bigint;
}

/**
 * Reported to `onProgress` while a migration works: during every step (at
 * most every 100 ms, from inside the copies) and at every step boundary.
 */
export interface Progress {
  phase: MigrationPhase;
  /** The step within the phase. */
  step: MigrationStep;
  /** In a container of 2+ devices: the device whose data the step moves (`device-data`). */
  device?: string;
  /** Bytes migrated so far. */
  bytes: MigrationBytes;
  /** Of the guest memory bytes, those sent as zero-page markers (not on the wire). */
  zeroBytes: bigint;
  /** Bytes migrated per second over the last second (guest memory, zero pages included, and device data). */
  bytesPerSecond: number;
  /** Dirty 4 KiB pages the last collection returned (0 before the first one). */
  dirtyPages: number;
  /** The step's own progress: bytes done and bytes it will move (0 when unknown). */
  stepBytes: number;
  stepTotalBytes: number;
  /** How long the source has been stopped (0 while it runs). */
  stoppedMs: number;
  /** The downtime budget and the whole migration's limit (ms). */
  budgetMs: number;
  timeLimitMs: number;
  /** Pre-copy iterations done so far (the first full copy counts as iteration 0). */
  iteration: number;
  /** Bytes still to move at the last estimate (dirty guest memory + device data). */
  remainingBytes: bigint;
  /** Measured guest-memory copy bandwidth (bytes per ms). */
  memoryBandwidth: number;
  /** Measured device-data bandwidth (bytes per ms). */
  deviceBandwidth: number;
  /** Projected downtime of a switch-over now (ms). */
  projectedDowntimeMs: number;
  /** Time since `migrate()` started (ms). */
  elapsedMs: number;
}

/** {@link migrate}'s options. */
export interface MigrateOptions {
  source: MigrationSide;
  /** A session and guest memory on this machine, or a {@link MigrationDestination} (e.g. `RemoteDestination` over TCP). */
  destination: MigrationSide | MigrationDestination;
  /**
   * The allowed downtime: from the source leaving a running state until the
   * destination runs. The switch-over starts only when the projection fits
   * with headroom (10 % of the budget and the time to resume the source); once
   * the source is stopped, the migration aborts — the source resumed — as soon
   * as the rest can no longer fit, or at the deadline, whichever comes first.
   */
  downtimeBudgetMs: number;
  /** Pre-copy bandwidth cap (bytes per second) for guest memory and device data; the stop-copy runs uncapped (the budget rules it). */
  bandwidthLimit?: number;
  /**
   * Dirty-rate throttling when pre-copy does not converge (QEMU's auto-converge:
   * when the guest dirties more than half of what an iteration moves, twice in a
   * row, throttle 20%, then +10% each time, at most 99%). Needs {@link throttle}.
   */
  autoConverge?: boolean | AutoConvergeOptions;
  /** The VMM slows its guest (vCPUs) to run only `100 − percent` % of the time; called with 0 when the migration ends. */
  throttle?: (percent: number) => void;
  /** The VMM's own state, captured while the source is stopped and delivered to the destination before it runs. */
  vmState?: () => Uint8Array | Promise<Uint8Array>;
  /** The whole migration's limit (default 60 000 ms): it aborts when it expires, whatever step it is in. */
  timeoutMs?: number;
  /** Pre-copy iterations before giving up on convergence (default 30). */
  maxPrecopyIterations?: number;
  onProgress?: (p: Progress) => void;
  /** Aborts the migration at once, within the step it is in (e.g. on SIGTERM): the source runs again, unless the commit was already sent. */
  signal?: AbortSignal;
}

/** One migration state change the orchestrator made, as timed by it. */
export interface ArcTiming {
  side: 'source' | 'destination';
  /** The device (in a container report's overall `arcs`; absent in a one-device migration's). */
  device?: string;
  from: string;
  to: string;
  ms: number;
}

/** What {@link migrate} did. */
export interface MigrationReport {
  /**
   * `migrated`: the destination runs the device; `aborted`: the orchestrator
   * gave up (budget, convergence, timeout) and the source runs again;
   * `failed`: an error (a side's request failed) ended it, the source was recovered.
   */
  outcome: 'migrated' | 'aborted' | 'failed';
  reason?: string;
  /**
   * How the source was recovered after an abort or failure; `held`: the
   * destination runs but the commit was not confirmed, so the source stays stopped (intact).
   */
  sourceRecovery?: 'running' | 'reset' | 'unrecovered' | 'held';
  /** The phase the migration ended in (`done` when migrated; for an abort, the phase it was aborted from). */
  phase: MigrationPhase;
  /** The destination's migration id (a remote one), for `vfio-user migrate-resolve`. */
  migrationId?: string;
  /** How a commit whose reply was lost was resolved (the receiver's answer). */
  resolution?: string;
  totalMs: number;
  /** Source left a running state → destination RUNNING (or → source running again after an abort in switch-over; 0 if it never stopped). */
  downtimeMs: number;
  /** The projected downtime the switch-over decision was based on (ms). */
  projectedDowntimeMs: number;
  bytes: MigrationBytes;
  /** Of the guest memory bytes, those sent as zero-page markers. */
  zeroBytes: bigint;
  iterations: number;
  arcs: ArcTiming[];
  /** The destination's address (`local` or `tcp://host:port`). */
  destination: string;
  /** The highest auto-converge throttle applied (percent, 0 = none). */
  throttlePercent: number;
  /** Time the bandwidth cap held transfers back (ms). */
  bandwidthLimitedMs: number;
}

/**
 * {@link migrateContainer}'s options: those of {@link migrate} for a
 * container — one guest memory, one downtime budget, one time limit for all
 * its devices.
 */
export interface MigrateContainerOptions extends Omit<MigrateOptions, 'source' | 'destination'> {
  source: ContainerSide;
  /** The container on this machine, or a {@link ContainerDestination} (e.g. over TCP); as many devices as the source. */
  destination: ContainerSide | ContainerDestination;
  /**
   * A container of 2+ devices where a device lacks the P2P migration flag:
   * `refuse` (the default, as QEMU) throws {@link MigrationCompatibilityError} before anything changes;
   * `warn` migrates anyway (the report's `warnings` say so): the P2P devices enter RUNNING_P2P first, then
   * every device stops — a device without P2P may still DMA into a peer that already stopped.
   */
  withoutP2P?: 'refuse' | 'warn';
}

/** A state a device reached, and when (ms since the migration started). */
export interface StateTiming {
  side: 'source' | 'destination';
  state: string;
  atMs: number;
}

/** One device of a container migration report. */
export interface DeviceMigrationReport {
  name: string;
  /** Its device data, by phase (guest memory is the container's: in the overall report). */
  bytes: { precopy: bigint; stopCopy: bigint };
  /** Its state changes, timed. */
  arcs: ArcTiming[];
  /** The states it reached on either side, when (the source starts RUNNING at 0). */
  states: StateTiming[];
  /** Its P2P arcs (source into RUNNING_P2P / PRE_COPY_P2P, destination STOP → RUNNING_P2P), ms; 0 when it had none. */
  p2pMs: number;
  /** How its source was recovered after an abort or failure (as the overall `sourceRecovery`). */
  sourceRecovery?: 'running' | 'reset' | 'unrecovered' | 'held';
}

/** What {@link migrateContainer} did: the container as a whole, and each device. */
export interface ContainerMigrationReport extends MigrationReport {
  devices: DeviceMigrationReport[];
  /**
   * The P2P phases' cost (ms): from the first source SET into a P2P state until every source reached it,
   * plus the destinations' STOP → RUNNING_P2P round; 0 for one device (there is no peer to quiesce).
   */
  p2pMs: number;
  /** What was allowed but is not safe (`withoutP2P: 'warn'`). */
  warnings: string[];
}
