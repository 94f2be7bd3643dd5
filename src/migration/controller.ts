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
import { ArcEstimateSource, DeadlineOutcome, DeadlineReplyFlags, type ArcLatency, type PrecopyInfo } from '../protocol/migration-extensions.js';
import type { ConfigSpace } from '../pci/config-space.js';

/** What the controller needs of a config space: its snapshot for the stream and its restore from one. */
export type MigratedConfig = Pick<ConfigSpace, 'snapshot' | 'restore'>;
import { StreamSource } from './stream.js';
import { StreamReader } from './stream-reader.js';
import { StreamFlag, type StreamIdentity, type StreamRecord } from './stream-format.js';
import {
  StreamEffect,
  arcStreamEffect,
  directArcs,
  migrationFlagsOf,
  migrationPath,
  nextHop,
  stateName,
  type MigrationCapabilities,
} from './state-machine.js';
import { MigrationFatalError, type MigrationDefinition } from './types.js';

/** Latency of one arc, measured. */
export interface ArcTiming {
  from: number;
  to: number;
  ms: number;
}

/** What a deadline-bounded SET did ({@link MigrationController.setStateWithDeadline}). */
export interface DeadlineResult {
  /** The state the device is in now. */
  reachedState: number;
  outcome: DeadlineOutcome;
  /** From the call to the end of the walk, rollback included. */
  elapsedNs: bigint;
  /** The estimate for the forward path, made before the first arc. */
  estimateNs: bigint;
  /** DeadlineReplyFlags bits. */
  flags: number;
  /** Why an arc failed (outcome FAILED). */
  error?: unknown;
  /** Every arc run, forward and back, in order. */
  arcs: ArcTiming[];
}

/** Options of {@link MigrationController.setStateWithDeadline}. */
export interface DeadlineOptions {
  /** Decline (do nothing) when the path's estimate exceeds the budget. */
  predict?: boolean;
}

interface ArcStats {
  count: number;
  totalNs: bigint;
  lastNs: bigint;
  maxNs: bigint;
}

const { PRE_COPY, PRE_COPY_P2P } = MigrationState;
/** setTimeout's largest delay; longer budgets rely on the checks between arcs only. */
const MAX_TIMER_MS = 0x7fff_ffff;

/** The migration side of one device. */
export class MigrationController {
  readonly caps: MigrationCapabilities;
  readonly identity: StreamIdentity;
  readonly #def: MigrationDefinition;
  readonly #config: MigratedConfig;
  readonly #onConfigRestored: (() => void) | undefined;
  #state: number = MigrationState.RUNNING;
  #source: StreamSource | undefined;
  #reader: StreamReader | undefined;
  #loadedFull = false;
  #lastSaveBytes = 0;
  readonly #timings = new Map<string, number>();
  readonly #stats = new Map<string, ArcStats>();
  #arcSignal: AbortSignal | undefined;

  /**
   * @param onConfigRestored - called after config space was restored from a stream
   *   (the device adopts the pending interrupts it holds).
   */
  constructor(def: MigrationDefinition, config: MigratedConfig, pci: { vendorId: number; deviceId: number }, onConfigRestored?: () => void) {
    this.#def = def;
    this.#config = config;
    this.#onConfigRestored = onConfigRestored;
    this.caps = { p2p: def.p2p ?? false, preCopy: def.preCopy ?? false };
    this.identity = { deviceType: def.deviceType, pciVendor: pci.vendorId, pciDevice: pci.deviceId, stateVersion: def.stateVersion };
  }

  /** The current state (MigrationState). */
  get state(): number {
    return this.#state;
  }

  /** The older state versions `load` also accepts (MigrationDefinition.acceptStateVersions). */
  get acceptStateVersions(): readonly number[] {
    return this.#def.acceptStateVersions ?? [];
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
   * During a deadline-bounded SET ({@link setStateWithDeadline}): a signal
   * aborted when the budget runs out. A `transition` hook that can give up an
   * arc early may watch it and throw; the arc is then not committed and the
   * walk back starts from the arc's `from` state. Undefined otherwise, and
   * while walking back (arcs back towards a running state must complete).
   */
  get arcSignal(): AbortSignal | undefined {
    return this.#arcSignal;
  }

  /**
   * Moves to `target` one arc at a time. On failure the device stays in the
   * last state reached (ERROR for a fatal hook error) and the error is thrown.
   * @throws {ProtocolError} EINVAL for a target the kernel's rules refuse; the hook's error otherwise.
   */
  async setState(target: number): Promise<ArcTiming[]> {
    // The kernel's rule: ERROR can never be requested, not even from ERROR.
    if (target === MigrationState.ERROR) throw new ProtocolError('migration state ERROR can never be requested');
    const timings: ArcTiming[] = [];
    while (this.#state !== target) {
      const from = this.#state;
      timings.push(await this.#runArc(from, nextHop(from, target, this.caps)));
    }
    return timings;
  }

  /**
   * Moves to `target` within `budgetNs` (0 = no budget), along the same path as
   * {@link setState}. The budget is checked before each arc and once the target
   * is reached; an arc in progress is always awaited (a hook that watches
   * {@link arcSignal} may give up early). When the budget runs out first, the
   * device walks back along the arcs it took, newest first, towards the start
   * state, but stops before an arc back that would open a data stream (a new
   * stream is not a return to where it was) or close a resuming stream
   * (RESUMING → STOP would fail on the stream just opened). Hence from RUNNING
   * or RUNNING_P2P it always gets back to the start state, unless the target
   * was RESUMING and was reached late.
   * An arc that fails (forward or back) ends the walk with outcome FAILED.
   * @throws {ProtocolError} EINVAL for a target the kernel's rules refuse (nothing is done).
   */
  async setStateWithDeadline(target: number, budgetNs: bigint, options: DeadlineOptions = {}): Promise<DeadlineResult> {
    const t0 = process.hrtime.bigint();
    const start = this.#state;
    const visited: number[] = [start, ...migrationPath(start, target, this.caps)];
    const estimate = this.#pathEstimate(visited);
    let flags = estimate.partial ? DeadlineReplyFlags.ESTIMATE_PARTIAL : 0;
    const arcs: ArcTiming[] = [];
    const result = (outcome: DeadlineOutcome, error?: unknown): DeadlineResult => ({
      reachedState: this.#state,
      outcome,
      elapsedNs: process.hrtime.bigint() - t0,
      estimateNs: estimate.ns,
      flags,
      arcs,
      ...(error === undefined ? {} : { error }),
    });
    if (visited.length === 1) return result(DeadlineOutcome.DONE); // already there: nothing to time
    if (options.predict && budgetNs > 0n && estimate.ns > budgetNs) return result(DeadlineOutcome.DECLINED);

    const deadline = budgetNs > 0n ? t0 + budgetNs : undefined;
    const expired = (): boolean => deadline !== undefined && process.hrtime.bigint() >= deadline;
    const abort = new AbortController();
    const timer = deadline === undefined ? undefined : abortAtDeadline(deadline, abort);
    let reached = 1; // visited[0 .. reached) are committed
    let late = false; // the budget ran out before the last committed arc completed, or before the next one
    this.#arcSignal = abort.signal;
    try {
      for (; reached < visited.length; reached++) {
        if ((late = expired())) break;
        const to = visited[reached] as number;
        const from = this.#state;
        try {
          arcs.push(await this.#runArc(from, to));
        } catch (error) {
          // After the deadline, a non-fatal failure of the arc in progress counts as giving it up.
          if ((abort.signal.aborted || expired()) && !(error instanceof MigrationFatalError) && this.#state === from) {
            flags |= DeadlineReplyFlags.ARC_ABANDONED | DeadlineReplyFlags.DEADLINE_IN_ARC;
            late = true;
            break;
          }
          return result(DeadlineOutcome.FAILED, error);
        }
        if ((late = expired())) flags |= DeadlineReplyFlags.DEADLINE_IN_ARC;
      }
    } finally {
      timer?.cancel();
      this.#arcSignal = undefined;
    }
    if (reached === visited.length && !late) return result(DeadlineOutcome.DONE);

    for (let i = reached - 1; i > 0; i--) {
      const cur = visited[i] as number;
      const back = visited[i - 1] as number;
      if (!this.#canWalkBack(cur, back)) break;
      try {
        arcs.push(await this.#runArc(cur, back));
      } catch (error) {
        return result(DeadlineOutcome.FAILED, error);
      }
    }
    return result(DeadlineOutcome.ROLLED_BACK);
  }

  /**
   * Latency of every direct arc of this device: measured runs (count, last,
   * mean, max) and the estimate a deadline SET plans with (the measured mean,
   * else the definition's `estimateArcNs`, else none).
   */
  arcLatencyTable(): ArcLatency[] {
    return directArcs(this.caps).map(([from, to]) => {
      const s = this.#stats.get(`${from}>${to}`);
      const estimate = this.#arcEstimate(from, to);
      return {
        from,
        to,
        count: s?.count ?? 0,
        source: estimate.source,
        lastNs: s?.lastNs ?? 0n,
        meanNs: s ? s.totalNs / BigInt(s.count) : 0n,
        maxNs: s?.maxNs ?? 0n,
        estimateNs: estimate.ns,
      };
    });
  }

  /**
   * The pre-copy extension's counters. First queues what the device changed
   * since its last save or delta (`saveDelta`), so that `dirtyBytes` grows as
   * the device dirties its state and shrinks as the client reads. REINIT is
   * never set: this controller sends initial data only when PRE_COPY starts.
   * @throws {ProtocolError} EINVAL outside PRE_COPY and PRE_COPY_P2P (as the kernel).
   */
  async precopyStatus(): Promise<PrecopyInfo> {
    if (this.#state !== PRE_COPY && this.#state !== PRE_COPY_P2P) {
      throw new ProtocolError(`PRECOPY_INFO: the device is in ${stateName(this.#state)}, not in a pre-copy state`);
    }
    const source = this.#source;
    if (source && !source.ended && this.#def.saveDelta) {
      const delta = await this.#def.saveDelta();
      if (delta && delta.length > 0) source.record('delta', delta);
    }
    return { ...this.precopyInfo(), flags: 0 };
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

  /** One direct arc: the hook, the stream effect, then the commit and its timing. */
  async #runArc(from: number, to: number): Promise<ArcTiming> {
    const t0 = process.hrtime.bigint();
    try {
      await this.#def.transition?.(from as never, to as never);
      await this.#applyStreamEffect(from, to);
    } catch (error) {
      if (error instanceof MigrationFatalError) this.#enterError();
      throw error;
    }
    this.#state = to;
    const ns = process.hrtime.bigint() - t0;
    const ms = Number(ns) / 1e6;
    const key = `${from}>${to}`;
    this.#timings.set(key, ms);
    const s = this.#stats.get(key);
    if (s) {
      s.count++;
      s.totalNs += ns;
      s.lastNs = ns;
      if (ns > s.maxNs) s.maxNs = ns;
    } else {
      this.#stats.set(key, { count: 1, totalNs: ns, lastNs: ns, maxNs: ns });
    }
    return { from, to, ms };
  }

  #arcEstimate(from: number, to: number): { ns: bigint; source: number } {
    const s = this.#stats.get(`${from}>${to}`);
    if (s) return { ns: s.totalNs / BigInt(s.count), source: ArcEstimateSource.MEASURED };
    const declared = this.#def.estimateArcNs?.(from as never, to as never);
    if (typeof declared === 'number' && Number.isFinite(declared) && declared >= 0) {
      return { ns: BigInt(Math.round(declared)), source: ArcEstimateSource.DECLARED };
    }
    return { ns: 0n, source: ArcEstimateSource.NONE };
  }

  /** Sum of the arc estimates along `states` (start first); partial when some arc has none. */
  #pathEstimate(states: readonly number[]): { ns: bigint; partial: boolean } {
    let ns = 0n;
    let partial = false;
    for (let i = 1; i < states.length; i++) {
      const e = this.#arcEstimate(states[i - 1] as number, states[i] as number);
      ns += e.ns;
      if (e.source === ArcEstimateSource.NONE) partial = true;
    }
    return { ns, partial };
  }

  /**
   * Whether the walk back may take `cur → back`: a direct arc that touches no
   * stream, keeps it, or closes the saving stream the walk's own forward arc
   * opened. Never one that opens a stream (not a return to where the device
   * was), nor RESUMING → STOP (it would check the resuming stream just opened,
   * find it incomplete and put the device in ERROR; only a reset abandons a
   * resuming stream).
   */
  #canWalkBack(cur: number, back: number): boolean {
    try {
      if (nextHop(cur, back, this.caps) !== back) return false;
    } catch {
      return false; // STOP_COPY → PRE_COPY*: refused
    }
    const effect = arcStreamEffect(cur as never, back as never);
    return effect === StreamEffect.NONE || effect === StreamEffect.KEEP || effect === StreamEffect.CLOSE_SAVING;
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

  /** Opens the saving stream; it is kept only once the device's save succeeded (a failed arc leaves none behind). */
  async #openSaving(to: number): Promise<void> {
    const preCopy = to !== MigrationState.STOP_COPY;
    const source = new StreamSource(this.identity, { flags: preCopy ? StreamFlag.PreCopy : 0 });
    if (preCopy) source.record('full', await this.#save()); // the initial data; STOP_COPY adds the final state
    else await this.#finishSaving(source);
    this.#source = source;
  }

  /**
   * The STOP_COPY part of the stream: config space, then `save()` — a device
   * that ran a pre-copy may make that final record as small as it can.
   * `save()` runs first, so a failing save appends nothing.
   */
  async #finishSaving(source: StreamSource = this.#source as StreamSource): Promise<void> {
    const state = await this.#save();
    source.record('config', this.#config.snapshot());
    source.record('full', state);
    source.end();
  }

  async #save(): Promise<Uint8Array> {
    const state = await this.#def.save();
    this.#lastSaveBytes = state.length;
    return state;
  }

  async #load(record: StreamRecord): Promise<void> {
    if (record.kind === 'config') {
      this.#config.restore(record.payload);
      this.#onConfigRestored?.();
      return;
    }
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
      throw new MigrationFatalError(`the migration stream is incomplete: ${(error as Error).message}`, { cause: error, errno: Errno.EINVAL });
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

/**
 * Aborts `abort` once `process.hrtime.bigint()` reaches `deadline`, never
 * before: libuv timers run against a cached loop time and may fire up to
 * about a millisecond early, so a timer that fires before the deadline is
 * re-armed for the time that remains. Budgets beyond setTimeout's range are
 * left to the checks between arcs.
 * @returns `cancel`, which stops the timer (idempotent).
 */
function abortAtDeadline(deadline: bigint, abort: AbortController): { cancel(): void } {
  let timer: NodeJS.Timeout | undefined;
  const arm = (): void => {
    const left = deadline - process.hrtime.bigint();
    if (left <= 0n) return abort.abort();
    const ms = Number((left + 999_999n) / 1_000_000n);
    timer = ms <= MAX_TIMER_MS ? setTimeout(arm, ms) : undefined;
  };
  arm();
  return { cancel: () => clearTimeout(timer) };
}
