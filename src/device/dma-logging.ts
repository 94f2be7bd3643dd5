/**
 * DMA dirty-page logging state (DMA_LOGGING_START / STOP / REPORT and
 * DMA_UNMAP's GET_DIRTY_BITMAP): which page size was started, and the
 * per-region bitmaps.
 *
 * Tracking granularity: the START page size, but never finer than the
 * controller's own page size (default 4 KiB), so a tiny START page size
 * cannot make bitmaps explode. A REPORT at another page size replicates
 * (smaller pages) or ORs (larger pages) the tracked bits; reporting a page
 * dirty that was not written is allowed, missing one is not.
 */
import { ProtocolError } from '../errors.js';
import { DirtyBitmap } from './dma-bitmap.js';
import type { DmaRegionEntry } from './dma-region.js';
import { checkBitmapRequest, reject } from './dma-rules.js';

/** Page sizes beyond this track like this (a region is at most 8 TiB = 2^43). */
const MAX_TRACK_PAGE = 2 ** 44;

/** The logging half of the DMA controller. */
export class DmaLog {
  readonly #minPage: number;
  #pageSize: bigint | undefined;
  #trackPage = 0;

  /** @param minPage - the server's page size: the finest tracking granularity. */
  constructor(minPage: number) {
    this.#minPage = minPage;
  }

  /** The page size logging was started with, or `undefined` when not logging. */
  get pageSize(): bigint | undefined {
    return this.#pageSize;
  }

  /** Granularity of the bitmaps in bytes (0 when not logging). */
  get trackPage(): number {
    return this.#trackPage;
  }

  /**
   * Starts logging at `pageSize`, giving every mmap-mode region a bitmap.
   * Starting again with the same page size is a no-op.
   * @throws {ProtocolError} EINVAL for page size 0 (or negative), or when already
   *   logging at another page size.
   */
  start(pageSize: bigint, regions: readonly DmaRegionEntry[]): void {
    const site = `DMA_LOGGING_START page_size ${pageSize}`;
    if (pageSize <= 0n) throw reject(site, 'page-size', 'page size is 0');
    if (this.#pageSize !== undefined) {
      if (this.#pageSize === pageSize) return;
      throw reject(site, 'already-logging', `already logging at page size ${this.#pageSize}`);
    }
    const wanted = pageSize > BigInt(MAX_TRACK_PAGE) ? MAX_TRACK_PAGE : Number(pageSize);
    this.#trackPage = Math.max(wanted, this.#minPage);
    this.#pageSize = pageSize;
    for (const region of regions) this.attach(region);
  }

  /** Stops logging and drops every bitmap. Idempotent. */
  stop(regions: readonly DmaRegionEntry[]): void {
    this.#pageSize = undefined;
    this.#trackPage = 0;
    for (const region of regions) region.bitmap = undefined;
  }

  /** Gives `region` a bitmap if logging is on and it is mmap mode (newly mapped regions). */
  attach(region: DmaRegionEntry): void {
    if (this.#pageSize !== undefined && region.mode === 'mmap') {
      region.bitmap = new DirtyBitmap(Number(region.size), this.#trackPage);
    }
  }

  /**
   * Checks a bitmap request against `region` (which must match the range
   * exactly) before anything is consumed.
   * @returns the bitmap size in bytes.
   * @throws {ProtocolError} see `checkBitmapRequest`.
   */
  check(site: string, region: DmaRegionEntry, pageSize: bigint): number {
    return checkBitmapRequest(site, this.#pageSize !== undefined, region.mode, region.size, pageSize);
  }

  /**
   * The region's dirty bitmap at `pageSize` (`bytes` long, from {@link check}),
   * cleared on read.
   */
  take(region: DmaRegionEntry, pageSize: bigint, bytes: number): Uint8Array {
    const out = new Uint8Array(bytes);
    const reportPage = pageSize > BigInt(MAX_TRACK_PAGE) ? MAX_TRACK_PAGE : Number(pageSize);
    if (!region.bitmap) throw new ProtocolError('DMA dirty bitmap: region has no log');
    region.bitmap.take(reportPage, out);
    return out;
  }
}
