/**
 * What the switch-over decision is made of, measured as a migration goes: the
 * copy meters (full copy, dirty pages, device stream), the dirty rate between
 * collections, the round trips of the last iterations, the arcs the servers
 * report; and the projection of a switch-over now ({@link estimateSwitchover}).
 */
import type { VfioUserClient } from '../client/client.js';
import { GUEST_PAGE_SIZE } from '../client/guest-memory.js';
import type { MigrationDestination } from './destination.js';
import { estimateArcsMs, estimateSwitchover, type SwitchoverEstimate } from './estimate.js';
import { COPY_CHUNK } from './memory-copy.js';
import { Meter, type DirtyTracker } from './transfer.js';

/** What QEMU assumes for the device data when MIG_DATA_SIZE fails: so much that the migration never converges. */
const UNKNOWN_DEVICE_DATA = 100n << 30n;
/** Requests in a switch-over besides the stream chunks and the dirty report (3 SETs, the empty read). */
const SWITCHOVER_REQUESTS = 4;
/** Iterations whose round trips count in the projection. */
const RTT_WINDOW = 3;

const now = (): number => performance.now();

/** Awaits work under the migration's limits (`Limits.race`). */
export type Race = <T>(work: Promise<T>) => Promise<T>;

/** The measurements and the projection of one migration. */
export class Projector {
  readonly memMeter = new Meter(Number.POSITIVE_INFINITY);
  /** Dirty-page copies only: scattered pages cost more per byte than the 1 MiB chunks of the full copy. */
  readonly pageMeter = new Meter(Number.POSITIVE_INFINITY);
  devMeter = new Meter(Number.POSITIVE_INFINITY);
  /** The last dirty collection: when its request went out, how long it took, what it found, the dirty rate over the interval before it. */
  collect = { at: 0, ms: 0, pages: 0, pagesPerMs: 0, saturated: false };
  /** The largest round trip of the last iterations (ms). */
  rtt = 0;
  /** The last projection, its bytes still to move and its total (ms). */
  estimate: SwitchoverEstimate | undefined;
  remaining = 0n;
  projected = Number.POSITIVE_INFINITY;
  /** The destination's arcs from RESUMING to RUNNING, as last reported (ms). */
  destinationArcsMs = 0;
  readonly #recentRtts: number[] = [];
  readonly #src: VfioUserClient;
  readonly #dst: MigrationDestination;
  readonly #preCopy: boolean;
  readonly #p2p: boolean;
  readonly #race: Race;

  constructor(src: VfioUserClient, dst: MigrationDestination, flags: { preCopy: boolean; p2p: boolean }, race: Race) {
    this.#src = src;
    this.#dst = dst;
    this.#preCopy = flags.preCopy;
    this.#p2p = flags.p2p;
    this.#race = race;
  }

  /** The first round trip, which also seeds the device-stream bandwidth (one transfer-size chunk per round trip). */
  async start(): Promise<void> {
    this.collect.at = now();
    const t = now();
    await this.#race(this.#src.migrationState());
    this.rtt = now() - t;
    this.devMeter = new Meter(Math.min(this.#src.maxTransferSize, this.#dst.maxTransferSize) / Math.max(this.rtt, 0.01));
  }

  /** Measured cost (ms) of one dirty page (the full copy's rate until dirty pages were measured). */
  pageCostMs(): number {
    return GUEST_PAGE_SIZE / (this.pageMeter.measured ? this.pageMeter.rate : this.memMeter.rate);
  }

  /** A timed dirty collection; the dirty rate is measured over the interval since the previous one (request to request). */
  async collectPages(tracker: DirtyTracker): Promise<number[]> {
    const at = now();
    const pages = await this.#race(tracker.collect());
    const interval = at - this.collect.at;
    this.collect = { at, ms: now() - at, pages: pages.length, pagesPerMs: interval > 0 ? pages.length / interval : 0, saturated: pages.length >= tracker.totalPages };
    return pages;
  }

  /** Round trips, pending device data, arc latencies: the projection of a switch-over now. */
  async project(tracker: DirtyTracker): Promise<void> {
    const t = now();
    const deviceBytes = await this.#race(this.#pendingDeviceBytes());
    const queries = this.#preCopy && this.#src.migrationExtensions.precopyInfo !== undefined ? 2 : 1;
    const sourceRtt = (now() - t) / queries;
    const td = now();
    await this.#race(this.#dst.migrationState()); // the destination's round trip (a remote one crosses the channel)
    this.#recentRtts.push(Math.max(sourceRtt, now() - td));
    if (this.#recentRtts.length > RTT_WINDOW) this.#recentRtts.shift();
    this.rtt = Math.max(...this.#recentRtts);
    const arcs = await this.#race(estimateArcsMs(this.#src, this.#dst, this.#preCopy, this.#p2p));
    this.destinationArcsMs = arcs.destinationMs;
    const chunks = Math.ceil(Number(deviceBytes) / Math.min(this.#src.maxTransferSize, COPY_CHUNK));
    // What a switch-over now would cost: the pages dirtied from the last collection until the source stops, the device's pending data.
    const estimate = estimateSwitchover({
      dirtyPagesPerMs: this.collect.pagesPerMs,
      saturated: this.collect.saturated,
      sinceCollectMs: now() - this.collect.at,
      totalPages: tracker.totalPages,
      pageCopyMs: this.pageCostMs(),
      lastCollect: { ms: this.collect.ms, pages: this.collect.pages },
      deviceBytes,
      deviceBytesPerMs: this.devMeter.rate,
      sourceArcsMs: arcs.sourceMs,
      destinationArcsMs: arcs.destinationMs,
      requestMs: this.rtt,
      requests: SWITCHOVER_REQUESTS + 2 * chunks,
    });
    this.estimate = estimate;
    this.remaining = BigInt(estimate.pages * GUEST_PAGE_SIZE) + deviceBytes;
    this.projected = estimate.totalMs;
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
}
