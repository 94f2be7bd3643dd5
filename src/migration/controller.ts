/**
 * A device's migration v2 state: SETs walked one arc at a time along the
 * kernel's path (each arc runs the device's hook and commits), the saving
 * stream (PRE_COPY initial state and deltas, STOP_COPY final state, config
 * space) and the resuming stream (validated as it arrives, applied record by
 * record, checked complete on RESUMING → STOP). Survives client disconnects.
 */
import { ProtocolError, StateError } from '../errors.js';
import { MigrationState } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import type { ConfigSpace } from '../pci/config-space.js';
import { StreamSource } from './stream.js';
import { StreamReader } from './stream-reader.js';
import { StreamFlag, type StreamIdentity, type StreamRecord } from './stream-format.js';
import { StreamEffect, arcStreamEffect, migrationFlagsOf, nextHop, stateName, type MigrationCapabilities } from './state-machine.js';
import { MigrationFatalError, type MigrationDefinition } from './types.js';

/** Latency of one arc, measured. */
export interface ArcTiming {
  from: number;
  to: number;
  ms: number;
}

/** The migration side of one device. */
export class MigrationController {
  readonly caps: MigrationCapabilities;
  readonly identity: StreamIdentity;
  readonly #def: MigrationDefinition;
  readonly #config: ConfigSpace;
  #state: number = MigrationState.RUNNING;
  #source: StreamSource | undefined;
  #reader: StreamReader | undefined;
  #loadedFull = false;
  #lastSaveBytes = 0;
  readonly #timings = new Map<string, number>();

  constructor(def: MigrationDefinition, config: ConfigSpace, pci: { vendorId: number; deviceId: number }) {
    this.#def = def;
    this.#config = config;
    this.caps = { p2p: def.p2p ?? false, preCopy: def.preCopy ?? false };
    this.identity = { deviceType: def.deviceType, pciVendor: pci.vendorId, pciDevice: pci.deviceId, stateVersion: def.stateVersion };
  }

  /** The current state (MigrationState). */
  get state(): number {
    return this.#state;
  }

  /** VFIO_DEVICE_FEATURE_MIGRATION flags. */
  get flags(): bigint {
    return migrationFlagsOf(this.caps);
  }

  /** The last measured latency of each arc ("from>to" → ms). */
  get arcLatencies(): ReadonlyMap<string, number> {
    return this.#timings;
  }

  /**
   * Moves to `target` one arc at a time. On failure the device stays in the
   * last state reached (ERROR for a fatal hook error) and the error is thrown.
   * @throws {ProtocolError} EINVAL for a target the kernel's rules refuse; the hook's error otherwise.
   */
  async setState(target: number): Promise<ArcTiming[]> {
    const timings: ArcTiming[] = [];
    while (this.#state !== target) {
      const from = this.#state;
      const to = nextHop(from, target, this.caps);
      const t0 = performance.now();
      try {
        await this.#def.transition?.(from as never, to as never);
        await this.#applyStreamEffect(from, to);
      } catch (error) {
        if (error instanceof MigrationFatalError) this.#enterError();
        throw error;
      }
      this.#state = to;
      const ms = performance.now() - t0;
      this.#timings.set(`${from}>${to}`, ms);
      timings.push({ from, to, ms });
    }
    return timings;
  }

  /**
   * MIG_DATA_READ: up to `max` bytes of the saving stream. Empty means "nothing
   * right now" in PRE_COPY and end of stream in STOP_COPY.
   * @throws {ProtocolError} EINVAL when no saving stream is open.
   */
  async read(max: number): Promise<Uint8Array> {
    const source = this.#source;
    if (!source) throw new ProtocolError(`MIG_DATA_READ: no saving stream in ${stateName(this.#state)}`);
    if (source.pendingBytes === 0 && !source.ended && this.#def.saveDelta) {
      const delta = await this.#def.saveDelta();
      if (delta && delta.length > 0) source.record('delta', delta);
    }
    return source.read(max);
  }

  /**
   * MIG_DATA_WRITE: feeds the resuming stream; complete records are loaded as they arrive.
   * @throws {ProtocolError} EINVAL for a foreign, newer, corrupted or malformed stream (the device then goes to ERROR).
   */
  async write(data: Uint8Array): Promise<void> {
    const reader = this.#reader;
    if (!reader) throw new ProtocolError(`MIG_DATA_WRITE: no resuming stream in ${stateName(this.#state)}`);
    let records: StreamRecord[];
    try {
      records = reader.push(data);
      for (const r of records) await this.#load(r);
    } catch (error) {
      this.#enterError();
      throw error;
    }
  }

  /** Pre-copy counters: bytes of initial state and of deltas still queued. */
  precopyInfo(): { initialBytes: bigint; dirtyBytes: bigint } {
    const s = this.#source;
    return { initialBytes: BigInt(s?.pendingInitialBytes ?? 0), dirtyBytes: BigInt(s?.pendingDirtyBytes ?? 0) };
  }

  /** MIG_DATA_SIZE: the device's estimate of the STOP_COPY data. */
  stopCopySize(): bigint {
    return BigInt(this.#def.stopCopySize?.() ?? this.#lastSaveBytes);
  }

  /** DEVICE_RESET: ERROR (or any state) back to RUNNING, streams dropped. */
  reset(): void {
    this.#source = undefined;
    this.#reader = undefined;
    this.#state = MigrationState.RUNNING;
  }

  async #applyStreamEffect(from: number, to: number): Promise<void> {
    switch (arcStreamEffect(from as never, to as never)) {
      case StreamEffect.OPEN_SAVING:
        return this.#openSaving(to);
      case StreamEffect.KEEP:
        if (to === MigrationState.STOP_COPY) await this.#finishSaving();
        return;
      case StreamEffect.CLOSE_SAVING:
        this.#source = undefined;
        return;
      case StreamEffect.OPEN_RESUMING:
        this.#reader = new StreamReader({ expected: this.identity, acceptStateVersions: this.#def.acceptStateVersions ?? [] });
        this.#loadedFull = false;
        return;
      case StreamEffect.CLOSE_RESUMING:
        return this.#closeResuming();
      default:
        return;
    }
  }

  async #openSaving(to: number): Promise<void> {
    const preCopy = to !== MigrationState.STOP_COPY;
    this.#source = new StreamSource(this.identity, { flags: preCopy ? StreamFlag.PreCopy : 0 });
    if (preCopy) {
      this.#source.record('full', await this.#save()); // the initial data; STOP_COPY adds the final state
      return;
    }
    await this.#finishSaving();
  }

  async #finishSaving(): Promise<void> {
    const source = this.#source as StreamSource;
    source.record('config', this.#config.snapshot());
    source.record('full', await this.#save());
    source.end();
  }

  async #save(): Promise<Uint8Array> {
    const state = await this.#def.save();
    this.#lastSaveBytes = state.length;
    return state;
  }

  async #load(record: StreamRecord): Promise<void> {
    if (record.kind === 'config') return this.#config.restore(record.payload);
    if (record.kind === 'full') {
      this.#loadedFull = true;
      return this.#def.load('full', record.payload);
    }
    if (record.kind === 'delta') {
      if (!this.#loadedFull) throw new ProtocolError('migration stream: a delta record before the full state');
      return this.#def.load('delta', record.payload);
    }
    throw new ProtocolError(`migration stream: record kind ${String(record.kind)} is not known to this device`);
  }

  #closeResuming(): void {
    const reader = this.#reader;
    this.#reader = undefined;
    try {
      if (!reader) throw new StateError('RESUMING → STOP without a resuming stream');
      reader.finish();
    } catch (error) {
      throw new MigrationFatalError(`the migration stream is incomplete: ${(error as Error).message}`, { cause: error });
    }
  }

  #enterError(): void {
    this.#source = undefined;
    this.#reader = undefined;
    this.#state = MigrationState.ERROR;
  }
}

/** EINVAL for a migration command on a device that has no migration. */
export function noMigration(what: string): ProtocolError {
  return new ProtocolError(`${what}: the device does not support migration`, { errno: Errno.EINVAL });
}
