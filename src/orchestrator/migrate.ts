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
 * 3. Switch-over: source → STOP_COPY (deadline-bounded when the server
 *    advertises `x-deadline-state`), last dirty pages, the device stream to
 *    EOF, destination → STOP → RUNNING. The downtime runs from the source
 *    leaving a running state until the destination runs; once it exceeds the
 *    budget before the destination runs, the migration aborts.
 * 4. Abort / failure: the source back to RUNNING (DEVICE_RESET if that fails),
 *    the destination DEVICE_RESET, DMA logging stopped. The source's guest
 *    memory is never written.
 * 5. A commit whose reply is lost: the destination is asked how it ended
 *    (`resolveCommit`): committed → the source stays stopped for good
 *    (migrated); abandoned → the source runs again; no answer → the source
 *    is held stopped, intact, for `vfio-user migrate-resolve`.
 */
import type { VfioUserClient } from '../client/client.js';
import { GUEST_PAGE_SIZE } from '../client/guest-memory.js';
import { DeviceFeature, DeviceFeatureFlags, MigrationFlags, MigrationState as S } from '../protocol/constants.js';
import { DeadlineOutcome } from '../protocol/migration-extensions.js';
import { stateName } from '../migration/state-machine.js';
import { InvalidArgumentError } from '../errors.js';
import { checkCompatibility, MigrationCompatibilityError } from './compat.js';
import { isMigrationSide, localDestination, type MigrationDestination } from './destination.js';
import { estimateArcsMs, estimateSwitchover } from './estimate.js';
import { AutoConverge, RateLimiter } from './throttle.js';
import { COPY_CHUNK, DirtyTracker, Meter, copyAllMemory, copyPages, moveDeviceData, type MemorySink } from './transfer.js';
import type { ArcTiming, MigrateOptions, MigrationPhase, MigrationReport } from './types.js';

export { MigrationCompatibilityError } from './compat.js';
export type * from './types.js';

/** What QEMU assumes for the device data when MIG_DATA_SIZE fails: so much that the migration never converges. */
const UNKNOWN_DEVICE_DATA = 100n << 30n;
/** Requests in a switch-over besides the stream chunks and the dirty report (3 SETs, the empty read). */
const SWITCHOVER_REQUESTS = 4;

/** The longest a pre-copy round reads device data (a device that keeps producing deltas never reads empty). */
const PRECOPY_DEVICE_SLICE_MS = 200;
/** Iterations whose round trips count in the projection. */
const RTT_WINDOW = 3;

/** A deliberate abort (budget, convergence, timeout), as opposed to a failure. */
class Abort extends Error {}

const now = (): number => performance.now();

/**
 * Migrates the device and its guest memory (module TSDoc).
 * @throws {MigrationCompatibilityError} when the sides differ (nothing was changed).
 * @returns the report; an abort or failure is reported, not thrown.
 */
export async function migrate(options: MigrateOptions): Promise<MigrationReport> {
  const started = now();
  const destination = isMigrationSide(options.destination) ? localDestination(options.destination) : options.destination;
  const pacer = new RateLimiter(options.bandwidthLimit);
  if (options.autoConverge !== undefined && options.autoConverge !== false && options.throttle === undefined) {
    throw new InvalidArgumentError('migrate: autoConverge needs a throttle callback (the VMM slows its guest)');
  }
  const converge = options.autoConverge ? new AutoConverge(options.autoConverge === true ? {} : options.autoConverge) : undefined;
  let flags: bigint;
  try {
    flags = (await checkCompatibility(options.source, destination)).migrationFlags;
  } catch (error) {
    if (error instanceof MigrationCompatibilityError) throw error;
    // A side lost before anything changed (the channel broke during the check): nothing to recover.
    await destination.abandon();
    return failedBeforeStart(error, destination, started);
  }
  return new Run(options, destination, { pacer, converge }, flags, started).execute();
}

/** The report of a migration that failed in its compatibility check (nothing was changed; the source runs). */
function failedBeforeStart(error: unknown, destination: MigrationDestination, started: number): MigrationReport {
  return {
    outcome: 'failed', reason: `compatibility check: ${error instanceof Error ? error.message : String(error)}`, sourceRecovery: 'running', phase: 'precopy',
    ...(destination.migrationId === undefined ? {} : { migrationId: destination.migrationId }),
    totalMs: now() - started, downtimeMs: 0, projectedDowntimeMs: Number.POSITIVE_INFINITY,
    bytes: { precopyMemory: 0n, precopyDevice: 0n, stopCopyMemory: 0n, stopCopyDevice: 0n },
    iterations: 0, arcs: [], destination: destination.address, throttlePercent: 0, bandwidthLimitedMs: 0,
  };
}

class Run {
  readonly #o: MigrateOptions;
  readonly #dst: MigrationDestination;
  readonly #toDestination: MemorySink;
  readonly #pacer: RateLimiter;
  readonly #converge: AutoConverge | undefined;
  /** Bytes moved in the previous pre-copy iteration (what auto-converge compares the dirtied bytes with). */
  #movedLastIteration = 0;
  readonly #started: number;
  readonly #budget: number;
  readonly #timeout: number;
  readonly #preCopy: boolean;
  readonly #p2p: boolean;
  readonly #memMeter = new Meter(Number.POSITIVE_INFINITY);
  /** Dirty-page copies only: scattered pages cost more per byte than the 1 MiB chunks of the full copy. */
  readonly #pageMeter = new Meter(Number.POSITIVE_INFINITY);
  /** The last dirty collection: when its request went out, how long it took, what it found, the dirty rate over the interval before it. */
  #collect = { at: 0, ms: 0, pages: 0, pagesPerMs: 0, saturated: false };
  #devMeter = new Meter(Number.POSITIVE_INFINITY);
  #tracker: DirtyTracker | undefined;
  #srcState: number = S.RUNNING;
  #dstState: number | undefined;
  #stoppedAt: number | undefined;
  #rtt = 0;
  /** Round trips measured in the last iterations: the projection uses their maximum (a busy spell ages out). */
  readonly #recentRtts: number[] = [];
  #remaining = 0n;
  #projected = Number.POSITIVE_INFINITY;
  #phase: MigrationPhase = 'precopy';
  /** The phase an abort came from. */
  #endPhase: MigrationPhase = 'precopy';
  /** Source stop → destination RUNNING (ms), once the destination runs. */
  #downtimeMs = 0;
  readonly #bytes = { precopyMemory: 0n, precopyDevice: 0n, stopCopyMemory: 0n, stopCopyDevice: 0n };
  #iterations = 0;
  #throttlePercent = 0;
  readonly #arcs: ArcTiming[] = [];

  constructor(options: MigrateOptions, destination: MigrationDestination, pacing: { pacer: RateLimiter; converge: AutoConverge | undefined }, flags: bigint, started: number) {
    this.#o = options;
    this.#dst = destination;
    this.#toDestination = (gpa, data) => destination.writeMemory(gpa, data);
    this.#pacer = pacing.pacer;
    this.#converge = pacing.converge;
    this.#started = started;
    this.#budget = options.downtimeBudgetMs;
    this.#timeout = options.timeoutMs ?? 60_000;
    this.#preCopy = (flags & MigrationFlags.PRE_COPY) !== 0n;
    this.#p2p = (flags & MigrationFlags.P2P) !== 0n;
  }

  async execute(): Promise<MigrationReport> {
    try {
      await this.#precopy();
      return await this.#switchover();
    } catch (error) {
      return await this.#abort(error);
    }
  }

  get #src(): VfioUserClient {
    return this.#o.source.client;
  }

  async #precopy(): Promise<void> {
    const { source } = this.#o;
    const pacer = this.#pacer.limited ? this.#pacer : undefined;
    const logging = await this.#src.probeFeature(DeviceFeature.DMA_LOGGING_START, DeviceFeatureFlags.SET);
    this.#tracker = await DirtyTracker.start(source, logging);
    this.#collect.at = now();
    const t = now();
    await this.#src.migrationState();
    this.#rtt = now() - t;
    this.#devMeter = new Meter(Math.min(this.#src.maxTransferSize, this.#dst.maxTransferSize) / Math.max(this.#rtt, 0.01));
    this.#dstState = await this.#dst.migrationState();
    await this.#set('destination', S.RESUMING);
    if (this.#preCopy) await this.#set('source', S.PRE_COPY);
    this.#checkTimeout();

    const before = this.#bytes.precopyMemory + this.#bytes.precopyDevice;
    this.#bytes.precopyMemory += await copyAllMemory(source.memory, this.#toDestination, this.#memMeter, pacer);
    await this.#flushInto(this.#memMeter);
    if (this.#preCopy) this.#bytes.precopyDevice += await moveDeviceData(this.#src, this.#dst, this.#devMeter, pacer, this.#roundEnd());
    this.#movedLastIteration = Number(this.#bytes.precopyMemory + this.#bytes.precopyDevice - before);
    const max = this.#o.maxPrecopyIterations ?? 30;
    for (;;) {
      this.#checkTimeout();
      this.#iterations++;
      const pages = await this.#collectPages(this.#tracker);
      this.#autoConverge(pages.length * GUEST_PAGE_SIZE);
      const moved = this.#bytes.precopyMemory + this.#bytes.precopyDevice;
      this.#bytes.precopyMemory += await copyPages(source.memory, this.#toDestination, pages, this.#pageMeter, pacer);
      if (pages.length > 0) await this.#flushInto(this.#pageMeter);
      if (this.#preCopy) this.#bytes.precopyDevice += await moveDeviceData(this.#src, this.#dst, this.#devMeter, pacer, this.#roundEnd());
      this.#movedLastIteration = Number(this.#bytes.precopyMemory + this.#bytes.precopyDevice - moved);
      const t = now();
      const deviceBytes = await this.#pendingDeviceBytes();
      const queries = this.#preCopy && this.#src.migrationExtensions.precopyInfo !== undefined ? 2 : 1;
      const sourceRtt = (now() - t) / queries;
      const td = now();
      await this.#dst.migrationState(); // the destination's round trip (a remote one crosses the channel)
      this.#recentRtts.push(Math.max(sourceRtt, now() - td));
      if (this.#recentRtts.length > RTT_WINDOW) this.#recentRtts.shift();
      this.#rtt = Math.max(...this.#recentRtts);
      const arcs = await estimateArcsMs(this.#src, this.#dst, this.#preCopy, this.#p2p);
      const chunks = Math.ceil(Number(deviceBytes) / Math.min(this.#src.maxTransferSize, COPY_CHUNK));
      // What a switch-over now would cost: the pages dirtied from the last collection until the source stops, the device's pending data.
      const estimate = estimateSwitchover({
        dirtyPagesPerMs: this.#collect.pagesPerMs,
        saturated: this.#collect.saturated,
        sinceCollectMs: now() - this.#collect.at,
        totalPages: this.#tracker.totalPages,
        pageCopyMs: GUEST_PAGE_SIZE / (this.#pageMeter.measured ? this.#pageMeter.rate : this.#memMeter.rate),
        lastCollect: { ms: this.#collect.ms, pages: this.#collect.pages },
        deviceBytes,
        deviceBytesPerMs: this.#devMeter.rate,
        sourceArcsMs: arcs.sourceMs,
        destinationArcsMs: arcs.destinationMs,
        requestMs: this.#rtt,
        requests: SWITCHOVER_REQUESTS + 2 * chunks,
      });
      this.#remaining = BigInt(estimate.pages * GUEST_PAGE_SIZE) + deviceBytes;
      this.#projected = estimate.totalMs;
      this.#progress();
      if (this.#projected <= this.#budget) return;
      if (this.#iterations >= max) {
        throw new Abort(`did not converge in ${max} pre-copy iterations: projected downtime ${this.#projected.toFixed(2)} ms > budget ${this.#budget} ms`);
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /**
   * Waits until the destination applied what was streamed, charging the wait
   * to `meter`: a remote destination's copy costs until the pages are applied,
   * not until the socket took them (and a round trip measured next does not
   * wait behind the backlog).
   */
  async #flushInto(meter: Meter): Promise<void> {
    const t = now();
    await this.#dst.flush();
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

  /** A timed dirty collection; the dirty rate is measured over the interval since the previous one (request to request). */
  async #collectPages(tracker: DirtyTracker): Promise<number[]> {
    const at = now();
    const pages = await tracker.collect();
    const interval = at - this.#collect.at;
    this.#collect = {
      at,
      ms: now() - at,
      pages: pages.length,
      pagesPerMs: interval > 0 ? pages.length / interval : 0,
      saturated: pages.length >= tracker.totalPages,
    };
    return pages;
  }

  /** Device data still to move: PRECOPY_INFO (when pre-copying and advertised) + MIG_DATA_SIZE (100 GiB when unknown, as QEMU). */
  async #pendingDeviceBytes(): Promise<bigint> {
    let bytes = 0n;
    if (this.#preCopy && this.#src.migrationExtensions.precopyInfo !== undefined) {
      const info = await this.#src.precopyInfo();
      bytes += info.initialBytes + info.dirtyBytes;
    }
    try {
      bytes += await this.#src.migrationDataSize();
    } catch {
      bytes += UNKNOWN_DEVICE_DATA;
    }
    return bytes;
  }

  async #switchover(): Promise<MigrationReport> {
    const { source } = this.#o;
    this.#phase = 'switchover';
    this.#checkTimeout();
    this.#stoppedAt = now();
    if (this.#src.migrationExtensions.deadlineState !== undefined) {
      const from = this.#srcState;
      const budgetNs = BigInt(Math.max(1, Math.round(this.#budget * 1e6)));
      const reply = await this.#src.setMigrationStateWithDeadline(S.STOP_COPY, budgetNs, { timeoutMs: 2 * this.#budget + 10_000 });
      this.#srcState = reply.reachedState;
      this.#arcs.push({ side: 'source', from: stateName(from), to: stateName(reply.reachedState), ms: now() - this.#stoppedAt });
      if (reply.outcome !== DeadlineOutcome.DONE) {
        throw new Abort(`source STOP_COPY within ${this.#budget} ms: deadline outcome ${reply.outcome} (reached ${stateName(reply.reachedState)}, estimate ${reply.estimateNs} ns)`);
      }
    } else {
      await this.#set('source', S.STOP_COPY);
    }
    this.#checkBudget('source STOP_COPY');
    const pages = await this.#collectPages(this.#tracker as DirtyTracker);
    this.#bytes.stopCopyMemory += await copyPages(source.memory, this.#toDestination, pages, this.#pageMeter);
    this.#checkBudget('final dirty pages');
    this.#bytes.stopCopyDevice += await moveDeviceData(this.#src, this.#dst, this.#devMeter);
    this.#checkBudget('device stream');
    if (this.#o.vmState) await this.#dst.writeVmState(await this.#o.vmState());
    await this.#set('destination', S.STOP);
    this.#checkBudget('destination STOP');
    await this.#set('destination', S.RUNNING);
    this.#downtimeMs = now() - this.#stoppedAt;
    this.#checkSignal();
    // The commit: a remote receiver keeps the device from here on; until it confirms, a failure resumes the source.
    this.#phase = 'commit';
    await this.#dst.complete();
    return this.#committed();
  }

  /** After the commit: outside the downtime window, the stopped source leaves STOP_COPY for good, logging ends. */
  async #committed(resolution?: string): Promise<MigrationReport> {
    this.#unthrottle();
    await this.#tracker?.stop().catch(() => undefined);
    await this.#set('source', S.STOP).catch(() => undefined);
    this.#phase = 'done';
    this.#endPhase = 'done';
    this.#progress();
    return { ...this.#report('migrated', this.#downtimeMs), ...(resolution === undefined ? {} : { resolution }) };
  }

  async #abort(error: unknown): Promise<MigrationReport> {
    if (this.#phase === 'commit' && (error as { commitUnsent?: boolean }).commitUnsent !== true) return this.#resolveCommit(error);
    return this.#recover(error);
  }

  /** The source back to RUNNING, the destination abandoned. */
  async #recover(error: unknown, why?: string): Promise<MigrationReport> {
    if (this.#phase !== 'abort') this.#endPhase = this.#phase;
    this.#phase = 'abort';
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
    this.#unthrottle();
    await this.#tracker?.stop();
    if (this.#dstState !== undefined) await this.#dst.abandon();
    this.#progress();
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
    this.#unthrottle();
    this.#progress();
    const why = answer?.reason ?? lost;
    const reason = `commit unconfirmed (the destination may run; the source is held stopped): ${why}; resolve with \`vfio-user migrate-resolve --to ${this.#dst.address} --id ${id}\``;
    return { ...this.#report('failed', now() - (this.#stoppedAt ?? now())), reason, sourceRecovery: 'held' };
  }

  #unthrottle(): void {
    if (this.#converge !== undefined && this.#throttlePercent > 0) this.#o.throttle?.(0);
  }

  /** A timed SET on one side. */
  async #set(side: 'source' | 'destination', to: number): Promise<void> {
    const client = side === 'source' ? this.#src : this.#dst;
    const from = side === 'source' ? this.#srcState : (this.#dstState ?? S.RUNNING);
    const t = now();
    await client.setMigrationState(to);
    this.#arcs.push({ side, from: stateName(from), to: stateName(to), ms: now() - t });
    if (side === 'source') this.#srcState = to;
    else this.#dstState = to;
  }

  /** When a pre-copy round of device data ends: a time slice, and never past the migration's timeout. */
  #roundEnd(): number {
    return Math.min(now() + PRECOPY_DEVICE_SLICE_MS, this.#started + this.#timeout);
  }

  #checkSignal(): void {
    const signal = this.#o.signal;
    if (signal?.aborted) throw new Abort(`interrupted (${signal.reason instanceof Error ? signal.reason.message : String(signal.reason ?? 'aborted')})`);
  }

  #checkTimeout(): void {
    this.#checkSignal();
    const elapsed = now() - this.#started;
    if (elapsed > this.#timeout) throw new Abort(`timed out after ${elapsed.toFixed(0)} ms (limit ${this.#timeout} ms)`);
  }

  #checkBudget(step: string): void {
    this.#checkSignal();
    const elapsed = now() - (this.#stoppedAt ?? now());
    if (elapsed > this.#budget) throw new Abort(`downtime budget exceeded after ${step}: ${elapsed.toFixed(2)} ms > ${this.#budget} ms`);
  }

  #progress(): void {
    this.#o.onProgress?.({
      phase: this.#phase,
      iteration: this.#iterations,
      remainingBytes: this.#remaining,
      memoryBandwidth: this.#memMeter.rate,
      deviceBandwidth: this.#devMeter.rate,
      projectedDowntimeMs: this.#projected,
      elapsedMs: now() - this.#started,
    });
  }

  #report(outcome: MigrationReport['outcome'], downtimeMs: number): MigrationReport {
    return {
      outcome,
      phase: outcome === 'migrated' ? 'done' : this.#endPhase,
      ...(this.#dst.migrationId === undefined ? {} : { migrationId: this.#dst.migrationId }),
      totalMs: now() - this.#started,
      downtimeMs,
      projectedDowntimeMs: this.#projected,
      bytes: { ...this.#bytes },
      iterations: this.#iterations,
      arcs: [...this.#arcs],
      destination: this.#dst.address,
      throttlePercent: this.#throttlePercent,
      bandwidthLimitedMs: this.#pacer.sleptMs,
    };
  }
}
