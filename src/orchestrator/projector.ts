/**
 * What the switch-over decision is made of, measured as a migration goes: the
 * copy meters (full copy, dirty pages, device stream), the dirty rate between
 * collections, the round trips of the last iterations, the arcs the servers
 * report; and the projection of a switch-over now ({@link estimateSwitchover}).
 */
import type { VfioUserClient } from '../client/client.js';
import { GUEST_PAGE_SIZE } from '../client/guest-memory.js';
import type { DeviceChannel } from './destination.js';
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

/** One device of a migration as the projection sees it: its two sessions, its flags, its stream's meter. */
export interface ProjectedDevice {
  readonly src: VfioUserClient;
  readonly dst: DeviceChannel;
  readonly preCopy: boolean;
  readonly p2p: boolean;
  /** The device stream's bandwidth, seeded by {@link Projector.start}. */
  devMeter: Meter;
}

/**
 * The measurements and the projection of one migration: the guest memory's
 * (one, shared by the devices of a container) and every device's. The
 * devices change state concurrently (the arcs count once: the slowest
 * device's) and stream their data one after the other (the times add up).
 */
export class Projector {
  readonly memMeter = new Meter(Number.POSITIVE_INFINITY);
  /** Dirty-page copies only: scattered pages cost more per byte than the 1 MiB chunks of the full copy. */
  readonly pageMeter = new Meter(Number.POSITIVE_INFINITY);
  /** The last dirty collection: when its request went out, how long it took, what it found, the dirty rate over the interval before it. */
  collect = { at: 0, ms: 0, pages: 0, pagesPerMs: 0, saturated: false };
  /** The largest round trip of the last iterations (ms). */
  rtt = 0;
  /** The last projection, its bytes still to move and its total (ms). */
  estimate: SwitchoverEstimate | undefined;
  remaining = 0n;
  projected = Number.POSITIVE_INFINITY;
  /** The destination's arcs from RESUMING to RUNNING, as last reported (ms; the slowest device's). */
  destinationArcsMs = 0;
  readonly #recentRtts: number[] = [];
  readonly #devices: readonly ProjectedDevice[];
  readonly #race: Race;

  constructor(devices: readonly ProjectedDevice[], race: Race) {
    this.#devices = devices;
    this.#race = race;
  }

  /** The devices' stream bandwidth together (bytes/ms): everything measured over the time it took (the slowest seed until then). */
  get deviceRate(): number {
    let bytes = 0;
    let ms = 0;
    for (const d of this.#devices) {
      bytes += d.devMeter.bytes;
      ms += d.devMeter.ms;
    }
    return bytes > 0 && ms > 0 ? bytes / ms : Math.min(...this.#devices.map((d) => d.devMeter.rate));
  }

  /** The first round trip of every device, which also seeds its stream's bandwidth (one transfer-size chunk per round trip). */
  async start(): Promise<void> {
    this.collect.at = now();
    for (const d of this.#devices) {
      const t = now();
      await this.#race(d.src.migrationState());
      const rtt = now() - t;
      this.rtt = Math.max(this.rtt, rtt);
      d.devMeter = new Meter(Math.min(d.src.maxTransferSize, d.dst.maxTransferSize) / Math.max(rtt, 0.01));
    }
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
    let deviceBytes = 0n;
    let deviceMs = 0;
    let chunks = 0;
    let rtt = 0;
    let sourceArcsMs = 0;
    let destinationArcsMs = 0;
    for (const d of this.#devices) {
      const t = now();
      const pending = await this.#race(pendingDeviceBytes(d));
      const queries = d.preCopy && d.src.migrationExtensions.precopyInfo !== undefined ? 2 : 1;
      const sourceRtt = (now() - t) / queries;
      const td = now();
      await this.#race(d.dst.migrationState()); // the destination's round trip (a remote one crosses the channel)
      rtt = Math.max(rtt, sourceRtt, now() - td);
      const arcs = await this.#race(estimateArcsMs(d.src, d.dst, d.preCopy, d.p2p));
      sourceArcsMs = Math.max(sourceArcsMs, arcs.sourceMs);
      destinationArcsMs = Math.max(destinationArcsMs, arcs.destinationMs);
      deviceBytes += pending;
      deviceMs += d.devMeter.timeFor(pending);
      chunks += Math.ceil(Number(pending) / Math.min(d.src.maxTransferSize, COPY_CHUNK));
    }
    this.#recentRtts.push(rtt);
    if (this.#recentRtts.length > RTT_WINDOW) this.#recentRtts.shift();
    this.rtt = Math.max(...this.#recentRtts);
    this.destinationArcsMs = destinationArcsMs;
    // What a switch-over now would cost: the pages dirtied from the last collection until the sources stop, the devices' pending data.
    const estimate = estimateSwitchover({
      dirtyPagesPerMs: this.collect.pagesPerMs,
      saturated: this.collect.saturated,
      sinceCollectMs: now() - this.collect.at,
      totalPages: tracker.totalPages,
      pageCopyMs: this.pageCostMs(),
      lastCollect: { ms: this.collect.ms, pages: this.collect.pages },
      deviceBytes,
      deviceBytesPerMs: deviceMs > 0 ? Number(deviceBytes) / deviceMs : Number.POSITIVE_INFINITY,
      sourceArcsMs,
      destinationArcsMs,
      requestMs: this.rtt,
      // the SETs go to every device at once; each device's stream ends with its own empty read
      requests: SWITCHOVER_REQUESTS + (this.#devices.length - 1) + 2 * chunks,
    });
    this.estimate = estimate;
    this.remaining = BigInt(estimate.pages * GUEST_PAGE_SIZE) + deviceBytes;
    this.projected = estimate.totalMs;
  }
}

/** Device data still to move: PRECOPY_INFO (when pre-copying and advertised) + MIG_DATA_SIZE (100 GiB when unknown, as QEMU). */
async function pendingDeviceBytes(d: ProjectedDevice): Promise<bigint> {
  let bytes = 0n;
  if (d.preCopy && d.src.migrationExtensions.precopyInfo !== undefined) {
    const info = await d.src.precopyInfo();
    bytes += info.initialBytes + info.dirtyBytes;
  }
  try {
    bytes += await d.src.migrationDataSize();
  } catch {
    bytes += UNKNOWN_DEVICE_DATA;
  }
  return bytes;
}
