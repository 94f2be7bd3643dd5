/**
 * The guest memory a replay answers the device's DMA_READ / DMA_WRITE from:
 * the DMA regions the replayed client mapped, backed by the memfds the replay
 * recreated (mapped here too) or, for regions mapped without an fd, by sparse
 * pages kept in this process (bounded). A DMA_READ of such a region is first
 * answered with the data the recorded client answered the same read with
 * (the only view a recording has of memory it was not given), then from the
 * pages.
 */
import { ProtocolError } from '../errors.js';
import { mapFd, native, unmap } from '../native/addon.js';
import { Errno } from '../protocol/errno.js';
import { DmaUnmapFlags } from '../protocol/constants.js';
import type { DmaMapRequest, DmaUnmapRequest } from '../protocol/dma.js';
import type { Logger } from '../log.js';

const PAGE = 4096n;
/** Largest fd-backed region mapped here (beyond it the region is served from sparse pages). */
const MAX_MAPPED = 2n ** 40n;

interface Area {
  addr: bigint;
  size: bigint;
  /** The recreated fd's bytes [offset, offset + size), when mapped. */
  view: Uint8Array | undefined;
  buffer: ArrayBuffer | undefined;
}

/** Recorded DMA_READ answers by `addr:count`, consumed in order. */
export type DmaReadSeeds = Map<string, Uint8Array[]>;

/** Options of {@link ReplayMemory}. */
export interface ReplayMemoryOptions {
  /** Bytes of sparse pages kept for regions mapped without an fd (default 256 MiB); beyond it DMA fails ENOMEM. */
  maxSparseBytes?: number;
  seeds?: DmaReadSeeds;
  log: Logger;
}

/** DMA regions of one replayed session. */
export class ReplayMemory {
  readonly #areas: Area[] = [];
  readonly #pages = new Map<bigint, Uint8Array>();
  readonly #maxPages: number;
  readonly #seeds: DmaReadSeeds;
  readonly #log: Logger;

  constructor(options: ReplayMemoryOptions) {
    this.#maxPages = Math.floor((options.maxSparseBytes ?? 256 * 1024 * 1024) / Number(PAGE));
    this.#seeds = options.seeds ?? new Map();
    this.#log = options.log;
  }

  /** A DMA_MAP the replay sends: `fd` is the recreated file, if the map carried one. */
  map(request: DmaMapRequest, fd: number | undefined, writable: boolean): void {
    const area: Area = { addr: request.addr, size: request.size, view: undefined, buffer: undefined };
    if (fd !== undefined && request.size > 0n && request.size <= MAX_MAPPED) {
      const start = request.offset - (request.offset % PAGE);
      const skip = Number(request.offset - start);
      try {
        area.buffer = mapFd(fd, Number(start), skip + Number(request.size), writable);
        area.view = new Uint8Array(area.buffer, skip, Number(request.size));
      } catch (error) {
        this.#log.warn({ err: error, addr: request.addr }, 'replay: a recreated DMA fd could not be mapped; its region is served from sparse pages');
      }
    }
    this.#areas.push(area);
  }

  /** A DMA_UNMAP the replay sends. */
  unmap(request: DmaUnmapRequest): void {
    const all = (request.flags & DmaUnmapFlags.ALL) !== 0;
    for (let i = this.#areas.length - 1; i >= 0; i--) {
      const a = this.#areas[i]!;
      if (all || (a.addr === request.addr && a.size === request.size)) {
        if (a.buffer) unmap(a.buffer);
        this.#areas.splice(i, 1);
      }
    }
  }

  /**
   * The device's DMA_READ.
   * @throws {ProtocolError} EFAULT outside every region; ENOMEM when the sparse pages are exhausted.
   */
  read(addr: bigint, count: number): Uint8Array {
    const area = this.#find(addr, count);
    const seed = this.#takeSeed(addr, count);
    if (seed) {
      this.write(addr, seed);
      return seed;
    }
    if (area.view) return area.view.slice(Number(addr - area.addr), Number(addr - area.addr) + count);
    const out = new Uint8Array(count);
    this.#eachPage(addr, count, (page, at, n, done) => {
      const bytes = this.#pages.get(page);
      if (bytes) out.set(bytes.subarray(at, at + n), done);
    });
    return out;
  }

  /**
   * The device's DMA_WRITE.
   * @throws {ProtocolError} EFAULT outside every region; ENOMEM when the sparse pages are exhausted.
   */
  write(addr: bigint, data: Uint8Array): void {
    const area = this.#find(addr, data.length);
    if (area.view) {
      area.view.set(data, Number(addr - area.addr));
      return;
    }
    this.#eachPage(addr, data.length, (page, at, n, done) => {
      let bytes = this.#pages.get(page);
      if (!bytes) {
        if (this.#pages.size >= this.#maxPages) throw new ProtocolError('replay: the sparse DMA memory limit is reached', { errno: Errno.ENOMEM });
        bytes = new Uint8Array(Number(PAGE));
        this.#pages.set(page, bytes);
      }
      bytes.set(data.subarray(done, done + n), at);
    });
  }

  /** Unmaps everything. */
  dispose(): void {
    for (const a of this.#areas) if (a.buffer) unmap(a.buffer);
    this.#areas.length = 0;
    this.#pages.clear();
  }

  #find(addr: bigint, count: number): Area {
    const end = addr + BigInt(count);
    const area = this.#areas.find((a) => addr >= a.addr && end <= a.addr + a.size);
    if (!area) throw new ProtocolError(`replay: DMA at ${addr.toString(16)}+${count} is outside every mapped region`, { errno: Errno.EFAULT });
    if (area.view && area.view.length === 0) throw new ProtocolError('replay: the region was unmapped', { errno: Errno.EFAULT });
    return area;
  }

  #takeSeed(addr: bigint, count: number): Uint8Array | undefined {
    const key = `${addr}:${count}`;
    const queue = this.#seeds.get(key);
    const seed = queue?.shift();
    if (queue && queue.length === 0) this.#seeds.delete(key);
    return seed;
  }

  #eachPage(addr: bigint, count: number, fn: (page: bigint, at: number, n: number, done: number) => void): void {
    for (let done = 0; done < count; ) {
      const a = addr + BigInt(done);
      const page = a / PAGE;
      const at = Number(a % PAGE);
      const n = Math.min(count - done, Number(PAGE) - at);
      fn(page, at, n, done);
      done += n;
    }
  }
}

/** Whether a memfd's seals forbid writing through a shared mapping (F_SEAL_WRITE, F_SEAL_FUTURE_WRITE). */
export function writeSealed(seals: number | undefined): boolean {
  return seals !== undefined && (seals & (native.constants.F_SEAL_WRITE | 0x10)) !== 0;
}
