/**
 * The data movers of a migration: guest memory (whole, or the dirty pages the
 * source device logged and the client wrote itself: memory-copy.ts), the
 * device's migration stream from source to destination, and the bandwidth
 * meters the switch-over decision uses.
 */
import type { VfioUserClient } from '../client/client.js';
import { GUEST_PAGE_SIZE, type GuestMemory } from '../client/guest-memory.js';
import type { DeviceChannel } from './destination.js';
import type { CopyControl } from './memory-copy.js';

export { COPY_CHUNK, copyAllMemory, copyPages, type CopyControl, type CopyResult, type MemorySink, type Pacer } from './memory-copy.js';

/** Bytes moved per ms, over everything measured so far. */
export class Meter {
  #bytes = 0;
  #ms = 0;
  readonly #fallback: number;

  constructor(fallbackBytesPerMs: number) {
    this.#fallback = fallbackBytesPerMs;
  }

  add(bytes: number, ms: number): void {
    this.#bytes += bytes;
    this.#ms += ms;
  }

  /** Bytes measured so far. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Time (ms) those bytes took. */
  get ms(): number {
    return this.#ms;
  }

  /** Measured bandwidth (bytes/ms); the fallback until something measurable was moved. */
  get rate(): number {
    return this.#bytes > 0 && this.#ms > 0 ? this.#bytes / this.#ms : this.#fallback;
  }

  /** Whether something measurable was moved. */
  get measured(): boolean {
    return this.#bytes > 0 && this.#ms > 0;
  }

  /** Time (ms) to move `bytes` at the measured rate. */
  timeFor(bytes: bigint): number {
    return Number(bytes) / this.rate;
  }
}

const now = (): number => performance.now();

/** The guest memory a dirty tracker watches, and the device sessions that DMA into it. */
export interface TrackedMemory {
  memory: GuestMemory;
  iova: bigint;
  /** Each device, and whether it can log its DMA writes (DMA_LOGGING_START probed). */
  devices: ReadonlyArray<{ client: VfioUserClient; logging: boolean }>;
}

/**
 * Dirty tracking of the source's guest memory: every device's DMA writes
 * (DMA logging over the memory's IOVA range, the bitmaps merged) and the
 * client's own writes (`GuestMemory.takeDirty()`). Without logging on every
 * device, every page counts as dirty.
 */
export class DirtyTracker {
  readonly #memory: GuestMemory;
  readonly #iova: bigint;
  /** The logging devices and their page sizes; undefined when a device cannot log. */
  #logs: Array<{ client: VfioUserClient; pageSize: bigint }> | undefined;

  private constructor(memory: GuestMemory, iova: bigint) {
    this.#memory = memory;
    this.#iova = iova;
  }

  /**
   * Starts DMA logging on every device when all can; drops the client-side dirty set (a full copy follows).
   * @throws {RemoteError} when a device refuses DMA_LOGGING_START (the devices already logging are stopped).
   */
  static async start(tracked: TrackedMemory): Promise<DirtyTracker> {
    const tracker = new DirtyTracker(tracked.memory, tracked.iova);
    if (tracked.devices.length > 0 && tracked.devices.every((d) => d.logging)) {
      tracker.#logs = [];
      const range = [{ iova: tracked.iova, length: tracked.memory.size }];
      try {
        for (const { client } of tracked.devices) tracker.#logs.push({ client, pageSize: await client.startDirtyLogging(BigInt(GUEST_PAGE_SIZE), range) });
      } catch (error) {
        await tracker.stop();
        throw error;
      }
    }
    tracked.memory.takeDirty();
    return tracker;
  }

  get logging(): boolean {
    return this.#logs !== undefined;
  }

  /** Guest pages in all. */
  get totalPages(): number {
    return Number(this.#memory.size / BigInt(GUEST_PAGE_SIZE));
  }

  /** Collects (and clears) the dirty 4 KiB pages of every device and of the client, sorted. */
  async collect(): Promise<number[]> {
    const pages = new Set<number>(this.#memory.takeDirty());
    const total = this.totalPages;
    if (this.#logs === undefined) return Array.from({ length: total }, (_, p) => p);
    const reports = await Promise.all(this.#logs.map(async (l) => ({ ps: Number(l.pageSize), bitmap: await l.client.dirtyReport(this.#iova, this.#memory.size, l.pageSize) })));
    for (const { ps, bitmap } of reports) {
      bitmap.forEach((byte, i) => {
        if (byte === 0) return;
        for (let bit = 0; bit < 8; bit++) {
          if (((byte >> bit) & 1) === 0) continue;
          const start = Math.floor(((i * 8 + bit) * ps) / GUEST_PAGE_SIZE);
          const end = Math.ceil(((i * 8 + bit + 1) * ps) / GUEST_PAGE_SIZE);
          for (let p = start; p < end && p < total; p++) pages.add(p);
        }
      });
    }
    return [...pages].sort((a, b) => a - b);
  }

  /** Stops DMA logging on every device (errors ignored: used on every exit path). */
  async stop(): Promise<void> {
    const logs = this.#logs;
    this.#logs = undefined;
    if (logs === undefined) return;
    await Promise.all(logs.map((l) => l.client.stopDirtyLogging().catch(() => undefined)));
  }
}

/**
 * Moves the device's migration data available now: MIG_DATA_READ until an
 * empty read (or, in pre-copy, until `untilMs`), each chunk written to the
 * destination; `control` is checked before each read and told of each chunk.
 * @returns bytes moved.
 */
export async function moveDeviceData(from: VfioUserClient, to: Pick<DeviceChannel, 'maxTransferSize' | 'writeDeviceData'>, meter: Meter, control: CopyControl = {}, untilMs = Number.POSITIVE_INFINITY): Promise<bigint> {
  const chunk = Math.max(4096, Math.min(from.maxTransferSize, to.maxTransferSize) - 64);
  const race = <T>(work: Promise<T>): Promise<T> => (control.race ? control.race(work) : work);
  let bytes = 0;
  let ms = 0;
  // A pre-copy device may never run dry (it keeps producing deltas): `untilMs` ends the round.
  while (now() < untilMs || bytes === 0) {
    control.check?.(0);
    const t = now();
    const data = await race(from.migDataRead(chunk));
    if (data.length === 0) break;
    await race(to.writeDeviceData(data));
    ms += now() - t;
    bytes += data.length;
    control.moved?.(data.length, 0);
    if (control.pacer) await control.pacer.consume(data.length);
  }
  meter.add(bytes, ms);
  return BigInt(bytes);
}
