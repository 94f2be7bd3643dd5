/**
 * DMA dirty-page logging state (DMA_LOGGING_START / STOP / REPORT and
 * DMA_UNMAP's GET_DIRTY_BITMAP): which page size was started, which IOVA
 * ranges are logged, and the per-region bitmaps.
 *
 * Tracking granularity: the START page size, but never finer than the
 * controller's own page size (default 4 KiB), so a tiny START page size
 * cannot make bitmaps explode. A REPORT at another page size replicates
 * (smaller pages) or ORs (larger pages) the tracked bits; reporting a page
 * dirty that was not written is allowed, missing one is not.
 *
 * Ranges (the kernel's semantics; libvfio-user ignores them): only device
 * writes inside START's ranges are recorded (no ranges = everything, the
 * spec's `num_ranges == 0`). Each region's bitmap carries its share of the
 * ranges as region-relative spans, computed at START and at DMA_MAP while
 * logging; a region outside every range gets no bitmap at all.
 */
import { Errno } from '../protocol/errno.js';
import { DirtyBitmap, setBitRange } from './dma-bitmap.js';
import { findIndex } from './dma-access.js';
import { type IovaSpan, type LoggingRange, normalizeRanges, regionSpans, unionRanges } from './dma-log-ranges.js';
import type { DmaRegionEntry } from './dma-region.js';
import { checkBitmapRequest, checkReportRequest, reject } from './dma-rules.js';

/** Page sizes beyond this track like this (a region is at most 8 TiB = 2^43). */
const MAX_TRACK_PAGE = 2 ** 44;
/** Report page sizes up to this map region offsets to bits in plain numbers (offset + remainder < 2^53). */
const NUMBER_PAGE_LIMIT = 2n ** 52n;
const IOVA_LIMIT = 1n << 64n;

/** The logging half of the DMA controller. */
export class DmaLog {
  readonly #minPage: number;
  #pageSize: bigint | undefined;
  #trackPage = 0;
  /** The logged IOVA spans, normalized; `undefined` = every IOVA. */
  #ranges: IovaSpan[] | undefined;

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
   * Starts logging at `pageSize` for `ranges` (none or empty: every IOVA),
   * giving every mmap-mode region that the ranges touch a bitmap. Starting
   * again with the same page size widens the logged set to the union of both
   * STARTs (libvfio-user accepts a repeated START; a union never loses a
   * write either request asked for).
   * @param ranges - already validated (aligned, non-overlapping, no overflow:
   *   the DMA_LOGGING_START handler checks them).
   * @throws {ProtocolError} EINVAL for page size 0 (or negative), or when already
   *   logging at another page size.
   */
  start(pageSize: bigint, ranges: readonly LoggingRange[] | undefined, regions: readonly DmaRegionEntry[]): void {
    const site = `DMA_LOGGING_START page_size ${pageSize}`;
    if (pageSize <= 0n) throw reject(site, 'page-size', 'page size is 0');
    const wanted = ranges === undefined || ranges.length === 0 ? undefined : normalizeRanges(ranges);
    if (this.#pageSize !== undefined) {
      if (this.#pageSize !== pageSize) {
        throw reject(site, 'already-logging', `already logging at page size ${this.#pageSize}`);
      }
      this.#ranges = unionRanges(this.#ranges, wanted);
    } else {
      const track = pageSize > BigInt(MAX_TRACK_PAGE) ? MAX_TRACK_PAGE : Number(pageSize);
      this.#trackPage = Math.max(track, this.#minPage);
      this.#pageSize = pageSize;
      this.#ranges = wanted;
    }
    for (const region of regions) this.attach(region);
  }

  /** Stops logging and drops every bitmap. Idempotent. */
  stop(regions: readonly DmaRegionEntry[]): void {
    this.#pageSize = undefined;
    this.#trackPage = 0;
    this.#ranges = undefined;
    for (const region of regions) region.bitmap = undefined;
  }

  /**
   * Gives `region` a bitmap limited to the logged ranges, if logging is on,
   * it is mmap mode and the ranges touch it (also for regions mapped while
   * logging); an existing bitmap keeps its bits and gets the new spans.
   */
  attach(region: DmaRegionEntry): void {
    if (this.#pageSize === undefined || region.mode !== 'mmap') return;
    const spans = regionSpans(region.addr, region.size, this.#ranges);
    if (spans !== undefined && spans.length === 0) return;
    region.bitmap ??= new DirtyBitmap(Number(region.size), this.#trackPage);
    region.bitmap.setSpans(spans);
  }

  /**
   * Checks a DMA_UNMAP bitmap request against `region` (which must match the
   * range exactly: libvfio-user's rules) before anything is consumed.
   * @returns the bitmap size in bytes.
   * @throws {ProtocolError} see `checkBitmapRequest`.
   */
  check(site: string, region: DmaRegionEntry, pageSize: bigint): number {
    return checkBitmapRequest(site, this.#pageSize !== undefined, region.mode, region.size, pageSize);
  }

  /**
   * The region's dirty bitmap at `pageSize` (`bytes` long, from {@link check}),
   * cleared on read; all clear for a region outside the logged ranges.
   */
  take(region: DmaRegionEntry, pageSize: bigint, bytes: number): Uint8Array {
    const out = new Uint8Array(bytes);
    const reportPage = pageSize > BigInt(MAX_TRACK_PAGE) ? MAX_TRACK_PAGE : Number(pageSize);
    region.bitmap?.take(reportPage, out);
    return out;
  }

  /**
   * Every rule of {@link report}, with no side effect: the bitmap size in bytes
   * a report of `[iova, iova + length)` at `pageSize` would return. A caller
   * that must refuse the request for its own reasons (the reply would not fit
   * the client's argsz or max_data_xfer_size) checks this first, so a refused
   * report never clears a dirty bit.
   * @throws {ProtocolError} as {@link report}.
   */
  reportSize(regions: readonly DmaRegionEntry[], iova: bigint, length: bigint, pageSize: bigint): number {
    return this.#checkReport(regions, iova, length, pageSize).bytes;
  }

  /** The rules of a report, in order; @returns the first overlapping region's index and the bitmap size. */
  #checkReport(regions: readonly DmaRegionEntry[], iova: bigint, length: bigint, pageSize: bigint): { first: number; bytes: number } {
    const site = `DMA_LOGGING_REPORT [${iova}, +${length})`;
    if (length <= 0n) throw reject(site, 'length', 'length is 0');
    if (iova < 0n || iova + length > IOVA_LIMIT) throw reject(site, 'overflow', 'range passes 2^64', Errno.EOVERFLOW);
    const first = firstOverlap(regions, iova, length);
    if (first < 0) throw reject(site, 'not-mapped', 'no byte of the range is mapped', Errno.ENOENT);
    return { first, bytes: checkReportRequest(site, this.#pageSize !== undefined, length, pageSize) };
  }

  /**
   * DMA_LOGGING_REPORT of any IOVA range: bit `i` is the report page at
   * `iova + i * pageSize`. Bits come from the regions' logs; pages that are
   * unmapped, in message-mode regions (the client performed those writes and
   * tracks them) or outside the logged ranges read as 0, and so do the
   * padding bits past `length`. Clear on read: the tracking pages wholly
   * inside the range are forgotten; one that straddles an end of the range is
   * reported and kept (a later report may show it again: over-reporting is
   * allowed, losing a write is not).
   * @param regions - the sorted region table.
   * @returns `bitmapBytes(length, pageSize)` bytes.
   * @throws {ProtocolError} in this order: EINVAL when `length` is 0; EOVERFLOW
   *   when the range passes 2^64; ENOENT when no byte of it is mapped (checked
   *   before logging, as libvfio-user does); then `checkReportRequest`'s rules.
   */
  report(regions: readonly DmaRegionEntry[], iova: bigint, length: bigint, pageSize: bigint): Uint8Array {
    const { first, bytes } = this.#checkReport(regions, iova, length, pageSize);
    const out = new Uint8Array(bytes);
    const end = iova + length;
    for (let i = first; i < regions.length && regions[i]!.addr < end; i++) {
      const region = regions[i]!;
      const bitmap = region.bitmap;
      if (bitmap === undefined) continue;
      if (region.addr === iova && region.end <= end) {
        // The common case (a report per region: QEMU, libvfio-user's samples): the bitmap's own conversion.
        // It may overwrite whole bytes past the region's pages, so it must come first: it does, as the region at `iova`.
        const reportPage = pageSize > BigInt(MAX_TRACK_PAGE) ? MAX_TRACK_PAGE : Number(pageSize);
        bitmap.take(reportPage, out);
        continue;
      }
      const lo = Number((iova > region.addr ? iova : region.addr) - region.addr);
      const hi = Number((end < region.end ? end : region.end) - region.addr);
      reportSpan(bitmap, lo, hi, bitMapper(region.addr - iova, pageSize), out);
    }
    return out;
  }
}

/** Index of the first region overlapping `[iova, iova + length)`, or -1. */
function firstOverlap(regions: readonly DmaRegionEntry[], iova: bigint, length: bigint): number {
  let i = Math.max(findIndex(regions, iova), 0);
  if (regions[i] !== undefined && regions[i]!.end <= iova) i++;
  const region = regions[i];
  return region !== undefined && region.addr < iova + length && region.end > iova ? i : -1;
}

/**
 * Region offset → report bit, for a region starting `base` bytes after the
 * report's `iova` (negative when it starts before). Plain numbers unless the
 * report page is beyond 2^52.
 */
function bitMapper(base: bigint, pageSize: bigint): (offset: number) => number {
  let q = base / pageSize;
  if (q * pageSize > base) q -= 1n; // floor for a negative base
  const r = base - q * pageSize; // 0 ≤ r < pageSize
  if (pageSize <= NUMBER_PAGE_LIMIT) {
    const qn = Number(q);
    const rn = Number(r);
    const page = Number(pageSize);
    return (offset) => qn + Math.floor((rn + offset) / page); // a power-of-two divisor: exact
  }
  return (offset) => Number(q + (r + BigInt(offset)) / pageSize);
}

/**
 * Reports the dirty tracking pages of region bytes `[lo, hi)` into `out`,
 * then clears the ones wholly inside `[lo, hi)`.
 */
function reportSpan(bitmap: DirtyBitmap, lo: number, hi: number, bitOf: (offset: number) => number, out: Uint8Array): void {
  const track = bitmap.pageSize;
  const last = Math.floor((hi - 1) / track);
  bitmap.forEachDirty(Math.floor(lo / track), last, (page) => {
    const from = Math.max(page * track, lo);
    const to = Math.min(page * track + track, hi);
    setBitRange(out, bitOf(from), bitOf(to - 1));
  });
  const lastWhole = hi === bitmap.regionSize ? last : Math.floor(hi / track) - 1;
  bitmap.clearPages(Math.ceil(lo / track), lastWhole);
}
