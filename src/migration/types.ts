/** What a device author declares to make a device migratable. */
import type { MigrationState } from '../protocol/constants.js';

/** A result that may be produced synchronously or asynchronously. */
type MaybePromise<T> = T | Promise<T>;

/** The device-author half of migration v2. */
export interface MigrationDefinition {
  /** Offer RUNNING_P2P / PRE_COPY_P2P (default false). */
  p2p?: boolean;
  /** Offer PRE_COPY: live pre-copy of state while the device runs (default false). */
  preCopy?: boolean;
  /** The device model named in the stream (a destination refuses another one). */
  deviceType: string;
  /** The layout version of what `save` produces; a destination refuses newer ones. */
  stateVersion: number;
  /** Older layouts `load` still understands. */
  acceptStateVersions?: readonly number[];
  /**
   * The device's state (config space is carried by the library): at the start
   * of a pre-copy (the initial data) and at STOP_COPY (the final data). Return
   * a buffer the library may keep until it has been read (a copy of live state).
   */
  save(): MaybePromise<Uint8Array>;
  /**
   * During PRE_COPY: what changed since the last `save`/`saveDelta`, or
   * undefined/empty when nothing did. Without it, pre-copy sends only the
   * initial state. (STOP_COPY calls `save()` again; after a pre-copy the device
   * may return only what is left to send.)
   */
  saveDelta?(): MaybePromise<Uint8Array | undefined>;
  /** Restores state: a `'full'` record, then `'delta'` records, in stream order (a later full replaces everything). Throw to refuse bad data. */
  load(kind: 'full' | 'delta', payload: Uint8Array): MaybePromise<void>;
  /**
   * Called for every arc before it is committed (e.g. RUNNING → STOP: stop DMA
   * and interrupts; STOP → RUNNING: resume). Throwing fails the arc: the device
   * stays in the last state reached (a {@link MigrationFatalError} puts it in ERROR).
   */
  transition?(from: MigrationState, to: MigrationState): MaybePromise<void>;
  /** Bytes STOP_COPY will produce (MIG_DATA_SIZE); default: the size of the last save, or 0. */
  stopCopySize?(): number;
  /**
   * The device's estimate, in nanoseconds, of how long the direct arc
   * `from → to` takes (its `transition` hook plus the stream work: a save for
   * arcs that open a saving stream). Used for arcs that have not run yet: the
   * arc latency extension reports it and the deadline extension plans with it.
   * Return undefined (or nothing) when unknown. Measured latencies win once the arc has run.
   */
  estimateArcNs?(from: MigrationState, to: MigrationState): number | undefined;
}

/** Thrown by a transition hook when the device cannot be left in any valid state: it goes to ERROR. */
export class MigrationFatalError extends Error {
  /** The errno the failed SET is answered with (default EIO). */
  readonly errno: number;
  constructor(message: string, options?: ErrorOptions & { errno?: number }) {
    super(message, options);
    this.name = 'MigrationFatalError';
    this.errno = options?.errno ?? 5;
  }
}
