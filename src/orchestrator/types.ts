/** Options, progress and report types of the live-migration orchestrator ({@link migrate}). */
import type { VfioUserClient } from '../client/client.js';
import type { GuestMemory } from '../client/guest-memory.js';
import type { MigrationDestination } from './destination.js';
import type { AutoConvergeOptions } from './throttle.js';

/** One side of a migration: the device session and the guest RAM attached to it at `iova`. */
export interface MigrationSide {
  client: VfioUserClient;
  memory: GuestMemory;
  /** Where `memory` is attached for the device (must be equal on both sides). */
  iova: bigint;
}

/** Where a migration is. */
export type MigrationPhase = 'precopy' | 'switchover' | 'commit' | 'abort' | 'done';

/** Reported to `onProgress` after every pre-copy iteration and switch-over step. */
export interface Progress {
  phase: MigrationPhase;
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
  /** The allowed downtime: from the source leaving a running state until the destination runs. */
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
  /** The whole migration's limit (default 60 000 ms); exceeding it aborts. */
  timeoutMs?: number;
  /** Pre-copy iterations before giving up on convergence (default 30). */
  maxPrecopyIterations?: number;
  onProgress?: (p: Progress) => void;
  /** Aborts the migration at its next step (e.g. on SIGTERM): the source runs again, unless the commit was already sent. */
  signal?: AbortSignal;
}

/** One migration state change the orchestrator made, as timed by it. */
export interface ArcTiming {
  side: 'source' | 'destination';
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
  bytes: { precopyMemory: bigint; precopyDevice: bigint; stopCopyMemory: bigint; stopCopyDevice: bigint };
  iterations: number;
  arcs: ArcTiming[];
  /** The destination's address (`local` or `tcp://host:port`). */
  destination: string;
  /** The highest auto-converge throttle applied (percent, 0 = none). */
  throttlePercent: number;
  /** Time the bandwidth cap held transfers back (ms). */
  bandwidthLimitedMs: number;
}
