/**
 * The data movers of a migration: guest memory (whole, or the dirty pages the
 * source device logged and the client wrote itself) from one memfd to the
 * other, the device's migration stream from source to destination, and the
 * bandwidth meters the switch-over decision uses.
 */
import type { VfioUserClient } from '../client/client.js';
import { GUEST_PAGE_SIZE, type GuestMemory } from '../client/guest-memory.js';
import type { MigrationDestination } from './destination.js';
import type { MigrationSide } from './types.js';

/** Guest memory is copied in chunks of this size (also the event-loop yield granularity). */
export const COPY_CHUNK = 1 << 20;

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

/** Takes guest memory at an address: the destination's memory, or a channel to it. */
export type MemorySink = (gpa: bigint, data: Uint8Array) => void | Promise<void>;

/** Paces transfers (a bandwidth cap); `consume` resolves when the bytes just moved are within the cap. */
export interface Pacer {
  consume(bytes: number): Promise<void>;
}

/** Copies `[gpa, gpa + length)` of `from` to `to` (same addresses) in chunks. */
async function copyRange(from: GuestMemory, to: MemorySink, gpa: bigint, length: number): Promise<void> {
  for (let done = 0; done < length; done += COPY_CHUNK) {
    const n = Math.min(COPY_CHUNK, length - done);
    const pending = to(gpa + BigInt(done), from.read(gpa + BigInt(done), n));
    if (pending) await pending;
  }
}

/** Copies all of `from` into `to`, yielding to the event loop between chunks. @returns bytes copied. */
export async function copyAllMemory(from: GuestMemory, to: MemorySink, meter: Meter, pacer?: Pacer): Promise<bigint> {
  for (let gpa = 0n; gpa < from.size; gpa += BigInt(COPY_CHUNK)) {
    const n = Number(from.size - gpa < BigInt(COPY_CHUNK) ? from.size - gpa : BigInt(COPY_CHUNK));
    const t = now();
    await copyRange(from, to, gpa, n);
    meter.add(n, now() - t);
    if (pacer) await pacer.consume(n);
    await new Promise((resolve) => setImmediate(resolve));
  }
  return from.size;
}

/** Copies the given 4 KiB pages (sorted, unique), coalescing runs. @returns bytes copied. */
export async function copyPages(from: GuestMemory, to: MemorySink, pages: readonly number[], meter: Meter, pacer?: Pacer): Promise<bigint> {
  let bytes = 0;
  let ms = 0;
  for (let i = 0; i < pages.length; ) {
    let j = i + 1;
    while (j < pages.length && pages[j] === (pages[j - 1] as number) + 1) j++;
    const first = pages[i] as number;
    const length = (j - i) * GUEST_PAGE_SIZE;
    const t = now();
    await copyRange(from, to, BigInt(first * GUEST_PAGE_SIZE), length);
    ms += now() - t;
    if (pacer) await pacer.consume(length);
    bytes += length;
    i = j;
  }
  meter.add(bytes, ms);
  return BigInt(bytes);
}

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
 * empty read (or, in pre-copy, until `untilMs`), each chunk written to the destination.
 * @returns bytes moved.
 */
export async function moveDeviceData(from: VfioUserClient, to: MigrationDestination, meter: Meter, pacer?: Pacer, untilMs = Number.POSITIVE_INFINITY): Promise<bigint> {
  const chunk = Math.max(4096, Math.min(from.maxTransferSize, to.maxTransferSize) - 64);
  let bytes = 0;
  let ms = 0;
  // A pre-copy device may never run dry (it keeps producing deltas): `untilMs` ends the round.
  while (now() < untilMs || bytes === 0) {
    const t = now();
    const data = await from.migDataRead(chunk);
    if (data.length === 0) break;
    await to.writeDeviceData(data);
    ms += now() - t;
    bytes += data.length;
    if (pacer) await pacer.consume(data.length);
  }
  meter.add(bytes, ms);
  return BigInt(bytes);
}
