/**
 * Live migration of a running device and its guest memory from a source
 * session to a destination session within one downtime budget (the flow of
 * QEMU's `hw/vfio/migration.c` and the convergence rule of
 * `migration/migration.c`, docs/migration.md §10–§11):
 *
 * 1. Compatibility check (read-only; a mismatch throws {@link MigrationCompatibilityError}).
 * 2. Pre-copy: DMA logging on the source over the guest memory range, a full
 *    copy of guest RAM, the device's pre-copy data when it has PRE_COPY; then
 *    iterations that copy dirty pages and device deltas, until the projected
 *    downtime fits the budget ({@link estimateSwitchover}: the pages the source
 *    will have dirtied by the stop at the measured dirty rate, collected and
 *    copied at the measured dirty-page costs, the device data at its measured
 *    bandwidth, the STOP_COPY and resume arc latencies, request round trips).
 *    The switch-over starts when the projection fits the budget less
 *    {@link SWITCHOVER_HEADROOM} of it and the time kept to resume the source.
 *    Guest memory goes chunk by chunk, all-zero pages as zero markers
 *    (memory-copy.ts); progress is reported from inside every step.
 * 3. Switch-over: source → STOP_COPY (deadline-bounded when the server
 *    advertises `x-deadline-state`), last dirty pages, the device stream to
 *    EOF, destination → STOP → RUNNING. The downtime runs from the source
 *    leaving a running state until the destination runs. It is bounded while
 *    it runs: before each chunk the rest is projected against the deadline
 *    (the budget less the time kept to resume the source), and a timer trips
 *    at the deadline whatever step is awaited; either aborts at once.
 *    The time limit and the abort signal likewise trip within the step they
 *    expire in (limits.ts).
 * 4. Abort / failure: the source back to RUNNING (DEVICE_RESET if that fails),
 *    the destination DEVICE_RESET, DMA logging stopped. The source's guest
 *    memory is never written.
 * 5. A commit whose reply is lost: the destination is asked how it ended
 *    (`resolveCommit`): committed → the source stays stopped for good
 *    (migrated); abandoned → the source runs again; no answer → the source
 *    is held stopped, intact, for `vfio-user migrate-resolve`.
 */
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import type { VfioUserClient } from '../client/client.js';
import { GUEST_PAGE_SIZE } from '../client/guest-memory.js';
import { DeviceFeature, DeviceFeatureFlags, MigrationFlags, MigrationState as S } from '../protocol/constants.js';
import { DeadlineOutcome } from '../protocol/migration-extensions.js';
import { stateName } from '../migration/state-machine.js';
import { InvalidArgumentError } from '../errors.js';
import { checkCompatibility, MigrationCompatibilityError } from './compat.js';
import { destinationSink, isMigrationSide, localDestination, type MigrationDestination } from './destination.js';
import { Abort, Limits } from './limits.js';
import { ProgressReporter } from './progress.js';
import { Projector } from './projector.js';
import { AutoConverge, RateLimiter } from './throttle.js';
import { DirtyTracker, type Meter, copyAllMemory, copyPages, moveDeviceData, type CopyControl, type MemorySink, type Pacer } from './transfer.js';
import type { ArcTiming, MigrateOptions, MigrationBytes, MigrationPhase, MigrationReport, MigrationStep, Progress } from './types.js';

export { MigrationCompatibilityError } from './compat.js';
export type * from './types.js';

/** The longest a pre-copy round reads device data (a device that keeps producing deltas never reads empty). */
const PRECOPY_DEVICE_SLICE_MS = 200;
/**
 * The share of the budget a projection must leave free to switch over: the
 * projection is a measurement of a loaded machine (the benchmark saw the
 * downtime come out up to 10 % above it under load).
 */
export const SWITCHOVER_HEADROOM = 0.1;

const now = (): number => performance.now();
const noBytes = (): MigrationBytes => ({ precopyMemory: 0n, precopyDevice: 0n, stopCopyMemory: 0n, stopCopyDevice: 0n });

/**
 * Migrates the device and its guest memory (module TSDoc).
 * @throws {MigrationCompatibilityError} when the sides differ (nothing was changed).
 * @returns the report; an abort or failure is reported, not thrown.
 */
export async function migrate(options: MigrateOptions): Promise<MigrationReport> {
  const started = now();
  const destination = isMigrationSide(options.destination) ? localDestination(options.destination) : options.destination;
  if (options.autoConverge !== undefined && options.autoConverge !== false && options.throttle === undefined) {
    throw new InvalidArgumentError('migrate: autoConverge needs a throttle callback (the VMM slows its guest)');
  }
  // Everything that validates an option is built before the limits' timer starts: a refused option leaves nothing armed.
  const converge = options.autoConverge ? new AutoConverge(options.autoConverge === true ? {} : options.autoConverge) : undefined;
  const pacer = new RateLimiter(options.bandwidthLimit);
  const limits = new Limits({ started, timeoutMs: options.timeoutMs ?? 60_000, signal: options.signal });
  let flags: bigint;
  try {
    flags = (await limits.race(checkCompatibility(options.source, destination))).migrationFlags;
  } catch (error) {
    limits.dispose();
    if (error instanceof MigrationCompatibilityError) throw error;
    // A limit, or a side lost before anything changed (the channel broke during the check): nothing to recover.
    await destination.abandon();
    return endedBeforeStart(error, destination, started);
  }
  return new Run(options, destination, { pacer, converge, limits }, flags, started).execute();
}

/** The report of a migration that ended in its compatibility check (nothing was changed; the source runs). */
function endedBeforeStart(error: unknown, destination: MigrationDestination, started: number): MigrationReport {
  const aborted = error instanceof Abort;
  return {
    outcome: aborted ? 'aborted' : 'failed', reason: `compatibility check: ${error instanceof Error ? error.message : String(error)}`, sourceRecovery: 'running', phase: 'precopy',
    ...(destination.migrationId === undefined ? {} : { migrationId: destination.migrationId }),
    totalMs: now() - started, downtimeMs: 0, projectedDowntimeMs: Number.POSITIVE_INFINITY, bytes: noBytes(), zeroBytes: 0n,
    iterations: 0, arcs: [], destination: destination.address, throttlePercent: 0, bandwidthLimitedMs: 0,
  };
}

interface Pacing {
  pacer: RateLimiter;
  converge: AutoConverge | undefined;
  limits: Limits;
}

class Run {
  readonly #o: MigrateOptions;
  readonly #dst: MigrationDestination;
  readonly #sink: MemorySink;
  readonly #pacer: RateLimiter;
  readonly #converge: AutoConverge | undefined;
  readonly #limits: Limits;
  readonly #reporter: ProgressReporter;
  /** This process's event-loop delay while the migration runs: how late a deadline timer may fire. */
  readonly #lag: IntervalHistogram = monitorEventLoopDelay({ resolution: 5 });
  /** Bytes moved in the previous pre-copy iteration (what auto-converge compares the dirtied bytes with). */
  #movedLastIteration = 0;
  readonly #started: number;
  readonly #budget: number;
  readonly #timeout: number;
  readonly #preCopy: boolean;
  readonly #p2p: boolean;
  readonly #m: Projector;
  #tracker: DirtyTracker | undefined;
  #srcState: number = S.RUNNING;
  #dstState: number | undefined;
  #stoppedAt: number | undefined;
  /** When the stop-copy must be done by (the budget less the time kept to resume the source). */
  #deadlineAt = Number.POSITIVE_INFINITY;
  #phase: MigrationPhase = 'precopy';
  #step: MigrationStep = 'setup';
  #stepBytes = 0;
  #stepTotal = 0;
  /** The phase an abort came from. */
  #endPhase: MigrationPhase = 'precopy';
  /** Source stop → destination RUNNING (ms), once the destination runs. */
  #downtimeMs = 0;
  readonly #bytes = noBytes();
  #zeroBytes = 0n;
  #iterations = 0;
  #throttlePercent = 0;
  readonly #arcs: ArcTiming[] = [];

  constructor(options: MigrateOptions, destination: MigrationDestination, pacing: Pacing, flags: bigint, started: number) {
    this.#o = options;
    this.#dst = destination;
    this.#sink = destinationSink(destination);
    this.#pacer = pacing.pacer;
    this.#converge = pacing.converge;
    this.#limits = pacing.limits;
    this.#started = started;
    this.#budget = options.downtimeBudgetMs;
    this.#timeout = options.timeoutMs ?? 60_000;
    this.#preCopy = (flags & MigrationFlags.PRE_COPY) !== 0n;
    this.#p2p = (flags & MigrationFlags.P2P) !== 0n;
    this.#reporter = new ProgressReporter(options.onProgress, () => this.#snapshot());
    this.#lag.enable();
    this.#m = new Projector(options.source.client, destination, { preCopy: this.#preCopy, p2p: this.#p2p }, (work) => this.#w(work));
  }

  async execute(): Promise<MigrationReport> {
    try {
      await this.#precopy();
      return await this.#switchover();
    } catch (error) {
      return await this.#abort(error);
    } finally {
      this.#limits.dispose();
      this.#lag.disable();
    }
  }

  get #src(): VfioUserClient {
    return this.#o.source.client;
  }

  /** `work`, or the abort a limit trips first. */
  #w<T>(work: Promise<T>): Promise<T> {
    return this.#limits.race(work);
  }

  /** Enters a step (reported at once). */
  #enter(step: MigrationStep, totalBytes = 0): void {
    this.#step = step;
    this.#stepBytes = 0;
    this.#stepTotal = totalBytes;
    this.#reporter.report(true);
  }

  /** The copy control of a pre-copy transfer: the clocks checked, the bytes counted and reported, the cap applied (also raced). */
  #precopyControl(kind: 'memory' | 'device'): CopyControl {
    const pacer: Pacer | undefined = this.#pacer.limited ? { consume: (n) => this.#w(this.#pacer.consume(n)) } : undefined;
    return {
      pacer,
      check: () => this.#limits.check(),
      moved: (bytes, zero) => this.#moved(kind === 'memory' ? 'precopyMemory' : 'precopyDevice', bytes, zero),
      race: (work) => this.#w(work),
    };
  }

  /** The copy control of the stop-copy: before each chunk, whether the rest still fits the downtime deadline. */
  #stopCopyControl(kind: 'memory' | 'device'): CopyControl {
    return {
      check: (left) => this.#checkFits(kind === 'memory' ? left : 0, kind === 'memory'),
      moved: (bytes, zero) => this.#moved(kind === 'memory' ? 'stopCopyMemory' : 'stopCopyDevice', bytes, zero),
      race: (work) => this.#w(work),
    };
  }

  #moved(field: keyof MigrationBytes, bytes: number, zero: number): void {
    this.#bytes[field] += BigInt(bytes);
    this.#zeroBytes += BigInt(zero);
    this.#stepBytes += bytes;
    this.#reporter.report();
  }

  async #precopy(): Promise<void> {
    const { source } = this.#o;
    const logging = await this.#w(this.#src.probeFeature(DeviceFeature.DMA_LOGGING_START, DeviceFeatureFlags.SET));
    this.#tracker = await this.#w(DirtyTracker.start(source, logging));
    await this.#m.start();
    this.#dstState = await this.#w(this.#dst.migrationState());
    await this.#set('destination', S.RESUMING);
    if (this.#preCopy) await this.#set('source', S.PRE_COPY);

    const before = this.#movedBytes();
    this.#enter('full-copy', Number(source.memory.size));
    await copyAllMemory(source.memory, this.#sink, this.#m.memMeter, this.#precopyControl('memory'));
    await this.#flushInto(this.#m.memMeter);
    await this.#precopyDevice();
    this.#movedLastIteration = this.#movedBytes() - before;
    const max = this.#o.maxPrecopyIterations ?? 30;
    for (;;) {
      this.#limits.check();
      this.#iterations++;
      const pages = await this.#m.collectPages(this.#tracker);
      this.#autoConverge(pages.length * GUEST_PAGE_SIZE);
      const moved = this.#movedBytes();
      this.#enter('dirty-pages', pages.length * GUEST_PAGE_SIZE);
      await copyPages(source.memory, this.#sink, pages, this.#m.pageMeter, this.#precopyControl('memory'));
      if (pages.length > 0) await this.#flushInto(this.#m.pageMeter);
      await this.#precopyDevice();
      this.#movedLastIteration = this.#movedBytes() - moved;
      this.#enter('estimate');
      await this.#m.project(this.#tracker);
      this.#reporter.report(true);
      if (this.#m.projected <= this.#budget - this.#headroomMs()) return;
      if (this.#iterations >= max) {
        throw new Abort(`did not converge in ${max} pre-copy iterations: projected downtime ${this.#m.projected.toFixed(2)} ms > budget ${this.#budget} ms less ${this.#headroomMs().toFixed(2)} ms headroom`);
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /** A pre-copy round of the device's data (when it has PRE_COPY). */
  async #precopyDevice(): Promise<void> {
    if (!this.#preCopy) return;
    this.#enter('device-data');
    const untilMs = Math.min(now() + PRECOPY_DEVICE_SLICE_MS, this.#started + this.#timeout);
    await moveDeviceData(this.#src, this.#dst, this.#m.devMeter, this.#precopyControl('device'), untilMs);
  }

  /**
   * The time kept at the end of the budget to resume the source after an
   * abort in stop-copy (ms): two round trips (at least 1 ms) and how late this
   * process's timers run (the event loop's 99th-percentile delay so far, at
   * most a quarter of the budget) — on a loaded machine the deadline's timer
   * fires that much late.
   */
  #resumeReserveMs(): number {
    const lagMs = this.#lag.count > 0 ? this.#lag.percentile(99) / 1e6 : 0;
    return Math.max(1, 2 * this.#m.rtt) + Math.min(lagMs, 0.25 * this.#budget);
  }

  /** How far under the budget a projection must be to switch over (ms). */
  #headroomMs(): number {
    return SWITCHOVER_HEADROOM * this.#budget + this.#resumeReserveMs();
  }

  #movedBytes(): number {
    return Number(this.#bytes.precopyMemory + this.#bytes.precopyDevice);
  }

  /**
   * Waits until the destination applied what was streamed, charging the wait
   * to `meter`: a remote destination's copy costs until the pages are applied,
   * not until the socket took them (and a round trip measured next does not
   * wait behind the backlog).
   */
  async #flushInto(meter: Meter): Promise<void> {
    const t = now();
    await this.#w(this.#dst.flush());
    meter.add(0, now() - t);
  }

  /** Auto-converge (QEMU's rule): throttle the guest when it dirties more than the trigger ratio of what one iteration moves. */
  #autoConverge(dirtiedBytes: number): void {
    if (this.#converge === undefined) return;
    const before = this.#converge.percent;
    const percent = this.#converge.observe(dirtiedBytes, this.#movedLastIteration);
    this.#throttlePercent = Math.max(this.#throttlePercent, percent);
    if (percent !== before) this.#o.throttle?.(percent);
  }


  /**
   * The stop-copy so far and the rest of it as projected — the memory still to
   * copy at the measured per-page cost, the device stream while the memory is
   * not done, the destination's arcs, two round trips — against the deadline.
   * @throws {Abort} as soon as it can no longer fit (the source is then resumed within the budget).
   */
  #checkFits(memoryLeft: number, deviceLeft: boolean): void {
    this.#limits.check();
    const restMs = (memoryLeft / GUEST_PAGE_SIZE) * this.#m.pageCostMs() + (deviceLeft ? (this.#m.estimate?.deviceMs ?? 0) : 0) + this.#m.destinationArcsMs + 2 * this.#m.rtt;
    if (now() + restMs > this.#deadlineAt) throw new Abort(this.#budgetReason(`${restMs.toFixed(2)} ms projected for the rest no longer fit`));
  }

  #budgetReason(why: string): string {
    const stopped = now() - (this.#stoppedAt ?? now());
    return `downtime budget exceeded in ${this.#stopStep}: stopped ${stopped.toFixed(2)} ms, ${why} (budget ${this.#budget} ms, ${this.#resumeReserveMs().toFixed(2)} ms of it kept to resume the source)`;
  }

  /** What the stop-copy is doing (for an abort's reason). */
  #stopStep = 'source STOP_COPY';

  async #switchover(): Promise<MigrationReport> {
    const { source } = this.#o;
    this.#phase = 'switchover';
    this.#enter('stop-copy'); // reported before the stop: the VMM's own pause (its vCPUs) is not downtime
    this.#limits.check();
    this.#stoppedAt = now();
    const reserve = this.#resumeReserveMs();
    this.#deadlineAt = this.#stoppedAt + this.#budget - reserve;
    this.#limits.armDeadline(this.#deadlineAt, () => this.#budgetReason('at the deadline'));
    await this.#stopSource(reserve);
    this.#stopStep = 'final dirty pages';
    const pages = await this.#m.collectPages(this.#tracker as DirtyTracker);
    this.#stepTotal = pages.length * GUEST_PAGE_SIZE;
    await copyPages(source.memory, this.#sink, pages, this.#m.pageMeter, this.#stopCopyControl('memory'));
    this.#stopStep = 'device stream';
    await moveDeviceData(this.#src, this.#dst, this.#m.devMeter, this.#stopCopyControl('device'));
    this.#stopStep = 'VMM state';
    this.#enter('destination');
    if (this.#o.vmState) await this.#w(this.#dst.writeVmState(await this.#w(Promise.resolve(this.#o.vmState()))));
    this.#stopStep = 'destination STOP';
    await this.#set('destination', S.STOP);
    this.#stopStep = 'destination RUNNING';
    await this.#set('destination', S.RUNNING);
    this.#downtimeMs = now() - this.#stoppedAt;
    this.#limits.disarmDeadline(); // the destination runs: the downtime is over
    this.#limits.check(); // a signal or the time limit before the commit still aborts
    this.#limits.disarm();
    // The commit: a remote receiver keeps the device from here on; until it confirms, a failure resumes the source.
    this.#phase = 'commit';
    this.#enter('commit');
    await this.#dst.complete();
    return this.#committed();
  }

  /** Source → STOP_COPY: deadline-bounded by the server when it advertises `x-deadline-state`. */
  async #stopSource(reserveMs: number): Promise<void> {
    if (this.#src.migrationExtensions.deadlineState === undefined) {
      await this.#set('source', S.STOP_COPY);
      return;
    }
    const from = this.#srcState;
    const budgetNs = BigInt(Math.max(1, Math.round((this.#budget - reserveMs) * 1e6)));
    const t = now();
    const reply = await this.#w(this.#src.setMigrationStateWithDeadline(S.STOP_COPY, budgetNs, { timeoutMs: 2 * this.#budget + 10_000 }));
    this.#srcState = reply.reachedState;
    this.#arcs.push({ side: 'source', from: stateName(from), to: stateName(reply.reachedState), ms: now() - t });
    if (reply.outcome !== DeadlineOutcome.DONE) {
      throw new Abort(`source STOP_COPY within ${this.#budget} ms: deadline outcome ${reply.outcome} (reached ${stateName(reply.reachedState)}, estimate ${reply.estimateNs} ns)`);
    }
  }

  /** After the commit: outside the downtime window, the stopped source leaves STOP_COPY for good, logging ends. */
  async #committed(resolution?: string): Promise<MigrationReport> {
    this.#unthrottle();
    await this.#tracker?.stop().catch(() => undefined);
    await this.#set('source', S.STOP).catch(() => undefined);
    this.#phase = 'done';
    this.#endPhase = 'done';
    this.#enter('done');
    return { ...this.#report('migrated', this.#downtimeMs), ...(resolution === undefined ? {} : { resolution }) };
  }

  async #abort(error: unknown): Promise<MigrationReport> {
    if (this.#phase === 'commit' && (error as { commitUnsent?: boolean }).commitUnsent !== true) return this.#resolveCommit(error);
    return this.#recover(error);
  }

  /** The source back to RUNNING, the destination abandoned. */
  async #recover(error: unknown, why?: string): Promise<MigrationReport> {
    this.#limits.dispose();
    if (this.#phase !== 'abort') this.#endPhase = this.#phase;
    this.#phase = 'abort';
    this.#step = 'recover';
    const outcome = error instanceof Abort ? 'aborted' : 'failed';
    let sourceRecovery: MigrationReport['sourceRecovery'] = 'running';
    try {
      if ((await this.#src.migrationState()) !== S.RUNNING) await this.#set('source', S.RUNNING);
    } catch {
      try {
        await this.#src.reset();
        sourceRecovery = (await this.#src.migrationState()) === S.RUNNING ? 'reset' : 'unrecovered';
      } catch {
        sourceRecovery = 'unrecovered';
      }
    }
    const downtimeMs = this.#stoppedAt === undefined ? 0 : now() - this.#stoppedAt;
    this.#stoppedAt = undefined;
    this.#unthrottle();
    await this.#tracker?.stop();
    if (this.#dstState !== undefined) await this.#dst.abandon();
    this.#reporter.report(true);
    const reason = why ?? (error instanceof Error ? error.message : String(error));
    return { ...this.#report(outcome, downtimeMs), reason, sourceRecovery };
  }

  /**
   * The destination runs but did not confirm the commit (the link broke in
   * that last round trip): it may have committed. The destination is asked
   * how the migration ended; the source resumes only if it surely did not
   * commit. Without an answer the source is held stopped, its state and
   * memory intact, for the operator (`vfio-user migrate-resolve`) to decide.
   */
  async #resolveCommit(error: unknown): Promise<MigrationReport> {
    const lost = error instanceof Error ? error.message : String(error);
    const answer = this.#dst.resolveCommit ? await this.#dst.resolveCommit() : undefined;
    const id = this.#dst.migrationId ?? '?';
    if (answer?.outcome === 'committed') return this.#committed(`the commit's reply was lost (${lost}); the receiver confirmed migration ${id} committed`);
    if (answer?.outcome === 'abandoned') {
      return this.#recover(error, `the receiver abandoned migration ${id} before committing (its phase ${answer.phase}${answer.reason ? `: ${answer.reason}` : ''})`);
    }
    this.#endPhase = 'commit';
    this.#phase = 'abort';
    this.#step = 'recover';
    this.#unthrottle();
    this.#reporter.report(true);
    const why = answer?.reason ?? lost;
    const reason = `commit unconfirmed (the destination may run; the source is held stopped): ${why}; resolve with \`vfio-user migrate-resolve --to ${this.#dst.address} --id ${id}\``;
    return { ...this.#report('failed', now() - (this.#stoppedAt ?? now())), reason, sourceRecovery: 'held' };
  }

  #unthrottle(): void {
    if (this.#converge !== undefined && this.#throttlePercent > 0) this.#o.throttle?.(0);
  }

  /** A timed SET on one side (raced against the limits). */
  async #set(side: 'source' | 'destination', to: number): Promise<void> {
    const client = side === 'source' ? this.#src : this.#dst;
    const from = side === 'source' ? this.#srcState : (this.#dstState ?? S.RUNNING);
    const t = now();
    await (this.#phase === 'abort' || this.#phase === 'done' ? client.setMigrationState(to) : this.#w(client.setMigrationState(to)));
    this.#arcs.push({ side, from: stateName(from), to: stateName(to), ms: now() - t });
    if (side === 'source') this.#srcState = to;
    else this.#dstState = to;
  }

  #snapshot(): Omit<Progress, 'bytesPerSecond'> {
    return {
      phase: this.#phase,
      step: this.#step,
      iteration: this.#iterations,
      remainingBytes: this.#m.remaining,
      memoryBandwidth: this.#m.memMeter.rate,
      deviceBandwidth: this.#m.devMeter.rate,
      projectedDowntimeMs: this.#m.projected,
      elapsedMs: now() - this.#started,
      bytes: { ...this.#bytes },
      zeroBytes: this.#zeroBytes,
      dirtyPages: this.#m.collect.pages,
      stepBytes: this.#stepBytes,
      stepTotalBytes: this.#stepTotal,
      stoppedMs: this.#phase === 'switchover' && this.#stoppedAt !== undefined ? now() - this.#stoppedAt : 0,
      budgetMs: this.#budget,
      timeLimitMs: this.#timeout,
    };
  }

  #report(outcome: MigrationReport['outcome'], downtimeMs: number): MigrationReport {
    return {
      outcome,
      phase: outcome === 'migrated' ? 'done' : this.#endPhase,
      ...(this.#dst.migrationId === undefined ? {} : { migrationId: this.#dst.migrationId }),
      totalMs: now() - this.#started,
      downtimeMs,
      projectedDowntimeMs: this.#m.projected,
      bytes: { ...this.#bytes },
      zeroBytes: this.#zeroBytes,
      iterations: this.#iterations,
      arcs: [...this.#arcs],
      destination: this.#dst.address,
      throttlePercent: this.#throttlePercent,
      bandwidthLimitedMs: this.#pacer.sleptMs,
    };
  }
}
