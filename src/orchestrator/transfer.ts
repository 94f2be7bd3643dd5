/**
 * The data movers of a migration: guest memory (whole, or the dirty pages the
 * source device logged and the client wrote itself: memory-copy.ts), the
 * device's migration stream from source to destination, and the bandwidth
 * meters the switch-over decision uses.
 */
import type { VfioUserClient } from '../client/client.js';
import { GUEST_PAGE_SIZE } from '../client/guest-memory.js';
import type { MigrationDestination } from './destination.js';
import type { CopyControl } from './memory-copy.js';
import type { MigrationSide } from './types.js';

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

/**
 * Dirty tracking of the source's guest memory: the device's DMA writes
 * (DMA logging over the memory's IOVA range) and the client's own writes
 * (`GuestMemory.takeDirty()`). Without device logging every page counts as dirty.
 */
export class DirtyTracker {
  readonly #side: MigrationSide;
  #pageSize: bigint | undefined;

  private constructor(side: MigrationSide) {
    this.#side = side;
  }

  /** Starts DMA logging if the device can; drops the client-side dirty set (a full copy follows). */
  static async start(side: MigrationSide, deviceLogging: boolean): Promise<DirtyTracker> {
    const tracker = new DirtyTracker(side);
    if (deviceLogging) tracker.#pageSize = await side.client.startDirtyLogging(BigInt(GUEST_PAGE_SIZE), [{ iova: side.iova, length: side.memory.size }]);
    side.memory.takeDirty();
    return tracker;
  }

  get logging(): boolean {
    return this.#pageSize !== undefined;
  }

  /** Guest pages in all. */
  get totalPages(): number {
    return Number(this.#side.memory.size / BigInt(GUEST_PAGE_SIZE));
  }

  /** Collects (and clears) the dirty 4 KiB pages, sorted. */
  async collect(): Promise<number[]> {
    const pages = new Set<number>(this.#side.memory.takeDirty());
    const total = Number(this.#side.memory.size / BigInt(GUEST_PAGE_SIZE));
    if (this.#pageSize === undefined) return Array.from({ length: total }, (_, p) => p);
    const ps = Number(this.#pageSize);
    const bitmap = await this.#side.client.dirtyReport(this.#side.iova, this.#side.memory.size, this.#pageSize);
    bitmap.forEach((byte, i) => {
      if (byte === 0) return;
      for (let bit = 0; bit < 8; bit++) {
        if (((byte >> bit) & 1) === 0) continue;
        const start = Math.floor(((i * 8 + bit) * ps) / GUEST_PAGE_SIZE);
        const end = Math.ceil(((i * 8 + bit + 1) * ps) / GUEST_PAGE_SIZE);
        for (let p = start; p < end && p < total; p++) pages.add(p);
      }
    });
    return [...pages].sort((a, b) => a - b);
  }

  /** Stops DMA logging (errors ignored: used on every exit path). */
  async stop(): Promise<void> {
    if (this.#pageSize === undefined) return;
    this.#pageSize = undefined;
    await this.#side.client.stopDirtyLogging().catch(() => undefined);
  }
}

/**
 * Moves the device's migration data available now: MIG_DATA_READ until an
 * empty read (or, in pre-copy, until `untilMs`), each chunk written to the
 * destination; `control` is checked before each read and told of each chunk.
 * @returns bytes moved.
 */
export async function moveDeviceData(from: VfioUserClient, to: MigrationDestination, meter: Meter, control: CopyControl = {}, untilMs = Number.POSITIVE_INFINITY): Promise<bigint> {
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
