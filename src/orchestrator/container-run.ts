/**
 * One migration run (the algorithm of migrate.ts's module TSDoc): N devices
 * — {@link Leg}s — sharing one guest memory, under one downtime budget. A
 * one-device migration is a run of one leg; a container's devices change
 * state together, and with two or more devices the switch-over has a P2P
 * phase (every source into RUNNING_P2P / PRE_COPY_P2P before any stops; the
 * destinations through RUNNING_P2P before any runs).
 */
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { GUEST_PAGE_SIZE } from '../client/guest-memory.js';
import { DeviceFeature, DeviceFeatureFlags, MigrationState as S } from '../protocol/constants.js';
import { DeadlineOutcome } from '../protocol/migration-extensions.js';
import { Leg, recoverSources, together, type Await } from './container-leg.js';
import { destinationSink, type ContainerDestination } from './destination.js';
import { Abort, type Limits } from './limits.js';
import { ProgressReporter } from './progress.js';
import { Projector } from './projector.js';
import type { AutoConverge, RateLimiter } from './throttle.js';
import { DirtyTracker, type Meter, copyAllMemory, copyPages, moveDeviceData, type CopyControl, type MemorySink, type Pacer } from './transfer.js';
import type { ArcTiming, ContainerMigrationReport, MigrateContainerOptions, MigrationBytes, MigrationPhase, MigrationStep, Progress } from './types.js';

/** The longest a pre-copy round reads one device's data (a device that keeps producing deltas never reads empty). */
const PRECOPY_DEVICE_SLICE_MS = 200;
/**
 * The share of the budget a projection must leave free to switch over: the
 * projection is a measurement of a loaded machine (the benchmark saw the
 * downtime come out up to 10 % above it under load).
 */
export const SWITCHOVER_HEADROOM = 0.1;

const now = (): number => performance.now();
export const noBytes = (): MigrationBytes => ({ precopyMemory: 0n, precopyDevice: 0n, stopCopyMemory: 0n, stopCopyDevice: 0n });
const direct: Await = (work) => work;

/** The throttles and clocks of a run (built, and validated, before it starts). */
export interface Pacing {
  pacer: RateLimiter;
  converge: AutoConverge | undefined;
  limits: Limits;
}

/** What a run is given: its options, the destination, and each device's migration flags. */
export interface RunSetup {
  options: MigrateContainerOptions;
  destination: ContainerDestination;
  names: readonly string[];
  flags: ReadonlyArray<{ preCopy: boolean; p2p: boolean }>;
  warnings: string[];
  started: number;
}

export class Run {
  readonly #o: MigrateContainerOptions;
  readonly #dst: ContainerDestination;
  readonly #sink: MemorySink;
  readonly #legs: Leg[];
  /** Two or more devices: the switch-over has P2P phases. */
  readonly #multi: boolean;
  readonly #warnings: string[];
  /** Every leg's state changes, in order (device-tagged in a container). */
  readonly #arcs: ArcTiming[] = [];
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
  readonly #m: Projector;
  #tracker: DirtyTracker | undefined;
  #stoppedAt: number | undefined;
  /** When the stop-copy must be done by (the budget less the time kept to resume the source). */
  #deadlineAt = Number.POSITIVE_INFINITY;
  #phase: MigrationPhase = 'precopy';
  #step: MigrationStep = 'setup';
  #stepDevice: string | undefined;
  #stepBytes = 0;
  #stepTotal = 0;
  /** The phase an abort came from. */
  #endPhase: MigrationPhase = 'precopy';
  /** Source stop → destination RUNNING (ms), once the destination runs. */
  #downtimeMs = 0;
  /** The P2P phases' time (ms). */
  #p2pMs = 0;
  readonly #bytes = noBytes();
  #zeroBytes = 0n;
  #iterations = 0;
  #throttlePercent = 0;
  /** What the stop-copy is doing (for an abort's reason). */
  #stopStep = 'source STOP_COPY';
  /** The device whose request failed first. */
  #failedLeg: Leg | undefined;

  constructor(setup: RunSetup, pacing: Pacing) {
    const { options, destination, started } = setup;
    this.#o = options;
    this.#dst = destination;
    this.#sink = destinationSink(destination);
    this.#multi = options.source.devices.length > 1;
    this.#warnings = setup.warnings;
    this.#legs = options.source.devices.map((d, i) => {
      const dst = destination.devices[i] as (typeof destination.devices)[number];
      return new Leg(setup.names[i] as string, d.client, dst, setup.flags[i] as RunSetup['flags'][number], started, { log: this.#arcs, tag: this.#multi });
    });
    this.#pacer = pacing.pacer;
    this.#converge = pacing.converge;
    this.#limits = pacing.limits;
    this.#started = started;
    this.#budget = options.downtimeBudgetMs;
    this.#timeout = options.timeoutMs ?? 60_000;
    this.#reporter = new ProgressReporter(options.onProgress, () => this.#snapshot());
    this.#lag.enable();
    this.#m = new Projector(this.#legs, (work) => this.#w(work));
  }

  async execute(): Promise<ContainerMigrationReport> {
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

  /**
   * `work` of one device: a failure (not an abort) is remembered as that
   * device's, so a container's report names the device that failed.
   */
  async #of<T>(leg: Leg, work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      if (!(error instanceof Abort)) this.#failedLeg ??= leg;
      throw error;
    }
  }

  /** `step` for each of `legs` at once ({@link together}), a failure remembered as its device's. */
  #all(legs: readonly Leg[], step: (leg: Leg) => Promise<void>): Promise<void> {
    return together(legs, (leg) => this.#of(leg, () => step(leg)));
  }

  /** `work`, or the abort a limit trips first. */
  #w<T>(work: Promise<T>): Promise<T> {
    return this.#limits.race(work);
  }

  /** How a state change is awaited now: raced against the limits until the abort or the end. */
  get #wait(): Await {
    return this.#phase === 'abort' || this.#phase === 'done' ? direct : (work) => this.#w(work);
  }

  /** Enters a step (reported at once). */
  #enter(step: MigrationStep, totalBytes = 0, device?: Leg): void {
    this.#step = step;
    this.#stepDevice = this.#multi ? device?.name : undefined;
    this.#stepBytes = 0;
    this.#stepTotal = totalBytes;
    this.#reporter.report(true);
  }

  /** The copy control of a pre-copy transfer: the clocks checked, the bytes counted and reported, the cap applied (also raced). */
  #precopyControl(leg?: Leg): CopyControl {
    const pacer: Pacer | undefined = this.#pacer.limited ? { consume: (n) => this.#w(this.#pacer.consume(n)) } : undefined;
    return {
      pacer,
      check: () => this.#limits.check(),
      moved: (bytes, zero) => this.#moved(leg === undefined ? 'precopyMemory' : 'precopyDevice', bytes, zero, leg),
      race: (work) => this.#w(work),
    };
  }

  /** The copy control of the stop-copy: before each chunk, whether the rest still fits the downtime deadline. */
  #stopCopyControl(leg?: Leg): CopyControl {
    return {
      check: (left) => this.#checkFits(leg === undefined ? left : 0, leg === undefined),
      moved: (bytes, zero) => this.#moved(leg === undefined ? 'stopCopyMemory' : 'stopCopyDevice', bytes, zero, leg),
      race: (work) => this.#w(work),
    };
  }

  #moved(field: keyof MigrationBytes, bytes: number, zero: number, leg: Leg | undefined): void {
    this.#bytes[field] += BigInt(bytes);
    if (leg) leg.bytes[field === 'precopyDevice' ? 'precopy' : 'stopCopy'] += BigInt(bytes);
    this.#zeroBytes += BigInt(zero);
    this.#stepBytes += bytes;
    this.#reporter.report();
  }

  async #precopy(): Promise<void> {
    const { source } = this.#o;
    const legs = this.#legs;
    const devices = [];
    for (const leg of legs) devices.push({ client: leg.src, logging: await this.#w(leg.src.probeFeature(DeviceFeature.DMA_LOGGING_START, DeviceFeatureFlags.SET)) });
    this.#tracker = await this.#w(DirtyTracker.start({ memory: source.memory, iova: source.iova, devices }));
    await this.#m.start();
    await this.#all(legs, async (leg) => void (leg.dstState = await this.#w(leg.dst.migrationState())));
    await this.#all(legs, (leg) => leg.set('destination', S.RESUMING, this.#wait));
    await this.#all(legs.filter((leg) => leg.preCopy), (leg) => leg.set('source', S.PRE_COPY, this.#wait));

    const before = this.#movedBytes();
    this.#enter('full-copy', Number(source.memory.size));
    await copyAllMemory(source.memory, this.#sink, this.#m.memMeter, this.#precopyControl());
    await this.#flushInto(this.#m.memMeter);
    await this.#precopyDevices();
    this.#movedLastIteration = this.#movedBytes() - before;
    const max = this.#o.maxPrecopyIterations ?? 30;
    for (;;) {
      this.#limits.check();
      this.#iterations++;
      const pages = await this.#m.collectPages(this.#tracker);
      this.#autoConverge(pages.length * GUEST_PAGE_SIZE);
      const moved = this.#movedBytes();
      this.#enter('dirty-pages', pages.length * GUEST_PAGE_SIZE);
      await copyPages(source.memory, this.#sink, pages, this.#m.pageMeter, this.#precopyControl());
      if (pages.length > 0) await this.#flushInto(this.#m.pageMeter);
      await this.#precopyDevices();
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

  /** A pre-copy round of each device's data (those with PRE_COPY), one device after the other. */
  async #precopyDevices(): Promise<void> {
    for (const leg of this.#legs) {
      if (!leg.preCopy) continue;
      this.#enter('device-data', 0, leg);
      const untilMs = Math.min(now() + PRECOPY_DEVICE_SLICE_MS, this.#started + this.#timeout);
      await this.#of(leg, () => moveDeviceData(leg.src, leg.dst, leg.devMeter, this.#precopyControl(leg), untilMs));
    }
  }

  /**
   * The time kept at the end of the budget to resume the sources after an
   * abort in stop-copy (ms): two round trips (at least 1 ms; four with the
   * P2P mirror order of a container) and how late this process's timers run
   * (the event loop's 99th-percentile delay so far, at most a quarter of the
   * budget) — on a loaded machine the deadline's timer fires that much late.
   */
  #resumeReserveMs(): number {
    const lagMs = this.#lag.count > 0 ? this.#lag.percentile(99) / 1e6 : 0;
    return Math.max(1, (this.#multi ? 4 : 2) * this.#m.rtt) + Math.min(lagMs, 0.25 * this.#budget);
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
   * copy at the measured per-page cost, the device streams while the memory is
   * not done, the destination's arcs, two round trips — against the deadline.
   * @throws {Abort} as soon as it can no longer fit (the sources are then resumed within the budget).
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

  async #switchover(): Promise<ContainerMigrationReport> {
    const { source } = this.#o;
    this.#phase = 'switchover';
    // Reported before the stop: the VMM's own pause (its vCPUs) is not downtime.
    this.#enter(this.#multi ? 'p2p' : 'stop-copy');
    this.#limits.check();
    this.#stoppedAt = now();
    const reserve = this.#resumeReserveMs();
    this.#deadlineAt = this.#stoppedAt + this.#budget - reserve;
    this.#limits.armDeadline(this.#deadlineAt, () => this.#budgetReason('at the deadline'));
    if (this.#multi) {
      this.#stopStep = 'sources P2P';
      await this.#p2pRound('source', (leg) => (leg.preCopy ? S.PRE_COPY_P2P : S.RUNNING_P2P));
      this.#enter('stop-copy');
    }
    this.#stopStep = 'source STOP_COPY';
    await this.#all(this.#legs, (leg) => this.#stopSource(leg, reserve));
    this.#stopStep = 'final dirty pages';
    const pages = await this.#m.collectPages(this.#tracker as DirtyTracker);
    this.#stepTotal = pages.length * GUEST_PAGE_SIZE;
    await copyPages(source.memory, this.#sink, pages, this.#m.pageMeter, this.#stopCopyControl());
    for (const leg of this.#legs) {
      this.#stopStep = this.#multi ? `device stream of ${leg.name}` : 'device stream';
      await this.#of(leg, () => moveDeviceData(leg.src, leg.dst, leg.devMeter, this.#stopCopyControl(leg)));
    }
    this.#stopStep = 'VMM state';
    this.#enter('destination');
    if (this.#o.vmState) await this.#w(this.#dst.writeVmState(await this.#w(Promise.resolve(this.#o.vmState()))));
    this.#stopStep = 'destination STOP';
    await this.#all(this.#legs, (leg) => leg.set('destination', S.STOP, this.#wait));
    if (this.#multi) {
      this.#stopStep = 'destination RUNNING_P2P';
      await this.#p2pRound('destination', () => S.RUNNING_P2P);
    }
    this.#stopStep = 'destination RUNNING';
    await this.#all(this.#legs, (leg) => leg.set('destination', S.RUNNING, this.#wait));
    this.#downtimeMs = now() - this.#stoppedAt;
    this.#limits.disarmDeadline(); // the destination runs: the downtime is over
    this.#limits.check(); // a signal or the time limit before the commit still aborts
    this.#limits.disarm();
    // The commit: a remote receiver keeps the devices from here on; until it confirms, a failure resumes the sources.
    this.#phase = 'commit';
    this.#enter('commit');
    await this.#dst.complete();
    return this.#committed();
  }

  /**
   * Every device with P2P states into `target(leg)` on `side`, all at once;
   * none goes further until all are there. Devices without P2P (allowed with
   * `withoutP2P: 'warn'`) skip it.
   */
  async #p2pRound(side: 'source' | 'destination', target: (leg: Leg) => number): Promise<void> {
    const t = now();
    await this.#all(this.#legs.filter((leg) => leg.p2p), (leg) => leg.set(side, target(leg), this.#wait));
    this.#p2pMs += now() - t;
  }

  /** A source → STOP_COPY: deadline-bounded by the server when it advertises `x-deadline-state`. */
  async #stopSource(leg: Leg, reserveMs: number): Promise<void> {
    if (leg.src.migrationExtensions.deadlineState === undefined) {
      await leg.set('source', S.STOP_COPY, this.#wait);
      return;
    }
    const from = leg.srcState;
    const budgetNs = BigInt(Math.max(1, Math.round((this.#budget - reserveMs) * 1e6)));
    const t = now();
    const reply = await this.#w(leg.src.setMigrationStateWithDeadline(S.STOP_COPY, budgetNs, { timeoutMs: 2 * this.#budget + 10_000 }));
    leg.arc('source', from, reply.reachedState, now() - t);
    if (reply.outcome !== DeadlineOutcome.DONE) {
      const who = this.#multi ? `${leg.name}: ` : '';
      throw new Abort(`${who}source STOP_COPY within ${this.#budget} ms: deadline outcome ${reply.outcome} (reached ${leg.stateName('source')}, estimate ${reply.estimateNs} ns)`);
    }
  }

  /** After the commit: outside the downtime window, the stopped sources leave STOP_COPY for good, logging ends. */
  async #committed(resolution?: string): Promise<ContainerMigrationReport> {
    this.#unthrottle();
    await this.#tracker?.stop().catch(() => undefined);
    this.#phase = 'done';
    await together(this.#legs, (leg) => leg.set('source', S.STOP, direct)).catch(() => undefined);
    this.#endPhase = 'done';
    this.#enter('done');
    return { ...this.#report('migrated', this.#downtimeMs), ...(resolution === undefined ? {} : { resolution }) };
  }

  async #abort(error: unknown): Promise<ContainerMigrationReport> {
    if (this.#phase === 'commit' && (error as { commitUnsent?: boolean }).commitUnsent !== true) return this.#resolveCommit(error);
    return this.#recover(error);
  }

  /** Every source back to RUNNING (a container's in the mirror order), the destination abandoned. */
  async #recover(error: unknown, why?: string): Promise<ContainerMigrationReport> {
    this.#limits.dispose();
    if (this.#phase !== 'abort') this.#endPhase = this.#phase;
    this.#phase = 'abort';
    this.#step = 'recover';
    const outcome = error instanceof Abort ? 'aborted' : 'failed';
    const sourceRecovery = await recoverSources(this.#legs, this.#multi);
    const downtimeMs = this.#stoppedAt === undefined ? 0 : now() - this.#stoppedAt;
    this.#stoppedAt = undefined;
    this.#unthrottle();
    await this.#tracker?.stop();
    if (this.#legs.some((leg) => leg.dstState !== undefined)) await this.#dst.abandon();
    this.#reporter.report(true);
    const message = error instanceof Error ? error.message : String(error);
    const reason = why ?? (this.#multi && this.#failedLeg ? `${this.#failedLeg.name}: ${message}` : message);
    return { ...this.#report(outcome, downtimeMs), reason, sourceRecovery };
  }

  /**
   * The destination runs but did not confirm the commit (the link broke in
   * that last round trip): it may have committed. The destination is asked
   * how the migration ended; the sources resume only if it surely did not
   * commit. Without an answer the sources are held stopped, their state and
   * memory intact, for the operator (`vfio-user migrate-resolve`) to decide.
   */
  async #resolveCommit(error: unknown): Promise<ContainerMigrationReport> {
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
    for (const leg of this.#legs) leg.sourceRecovery = 'held';
    this.#reporter.report(true);
    const why = answer?.reason ?? lost;
    const reason = `commit unconfirmed (the destination may run; the source is held stopped): ${why}; resolve with \`vfio-user migrate-resolve --to ${this.#dst.address} --id ${id}\``;
    return { ...this.#report('failed', now() - (this.#stoppedAt ?? now())), reason, sourceRecovery: 'held' };
  }

  #unthrottle(): void {
    if (this.#converge !== undefined && this.#throttlePercent > 0) this.#o.throttle?.(0);
  }

  #snapshot(): Omit<Progress, 'bytesPerSecond'> {
    return {
      phase: this.#phase,
      step: this.#step,
      ...(this.#stepDevice === undefined ? {} : { device: this.#stepDevice }),
      iteration: this.#iterations,
      remainingBytes: this.#m.remaining,
      memoryBandwidth: this.#m.memMeter.rate,
      deviceBandwidth: this.#m.deviceRate,
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

  #report(outcome: ContainerMigrationReport['outcome'], downtimeMs: number): ContainerMigrationReport {
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
      devices: this.#legs.map((leg) => leg.report()),
      p2pMs: this.#p2pMs,
      warnings: [...this.#warnings],
    };
  }
}
