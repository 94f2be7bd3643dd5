/**
 * Dirty-page bitmaps for DMA logging (protocol doc §9, migration doc §8).
 *
 * Layout everywhere: bit `i % 8` of byte `i / 8` is page `i` (the little-endian
 * reading of an array of u64 words). Page indices are plain numbers (never
 * 8- or 16-bit counters): a region is at most 8 TiB, so at 4 KiB pages an
 * index stays below 2^31 and a byte offset below 2^53.
 *
 * A {@link DirtyBitmap} tracks one DMA region at a fixed granularity and
 * allocates its storage lazily, in chunks of {@link DIRTY_CHUNK_BYTES}: a
 * region that is barely written costs a few KiB however large it is.
 */

/** Bytes per lazily allocated bitmap chunk (32,768 pages: 128 MiB at 4 KiB). */
export const DIRTY_CHUNK_BYTES = 4096;
const CHUNK_BITS = DIRTY_CHUNK_BYTES * 8;

/**
 * Sets bits `first ..= last` of `bits` (whole bytes are filled at once).
 * @param bits - the bitmap; indices must be below `bits.length * 8` (< 2^32).
 * @param first - first bit to set.
 * @param last - last bit to set (inclusive); nothing happens when `last < first`.
 */
export function setBitRange(bits: Uint8Array, first: number, last: number): void {
  let i = first;
  for (; i <= last && (i & 7) !== 0; i++) bits[i >>> 3]! |= 1 << (i & 7);
  const wholeEnd = last + 1 - ((last + 1) % 8); // first bit of the byte holding `last`, if partial (no int32 wrap)
  if (i < wholeEnd) {
    bits.fill(0xff, i >>> 3, wholeEnd >>> 3);
    i = wholeEnd;
  }
  for (; i <= last; i++) bits[i >>> 3]! |= 1 << (i & 7);
}

/**
 * Whether bit `i` of `bits` is set (bit `i % 8` of byte `i / 8`).
 * @returns false for an index past the end.
 */
export function testBit(bits: Uint8Array, i: number): boolean {
  return (((bits[Math.floor(i / 8)] ?? 0) >> (i % 8)) & 1) === 1;
}

/** The dirty pages of one DMA region, at one tracking granularity. */
export class DirtyBitmap {
  /** Tracking granularity in bytes (the server's page size for this log). */
  readonly pageSize: number;
  /** Size of the tracked region in bytes. */
  readonly regionSize: number;
  readonly #chunks = new Map<number, Uint8Array>();

  /**
   * @param regionSize - bytes in the region (≤ 8 TiB).
   * @param pageSize - tracking granularity in bytes (> 0, need not be a power of two).
   */
  constructor(regionSize: number, pageSize: number) {
    this.regionSize = regionSize;
    this.pageSize = pageSize;
  }

  /** Number of pages tracked (the last one may be partial). */
  get pages(): number {
    return Math.ceil(this.regionSize / this.pageSize);
  }

  /**
   * Marks the pages touching `[offset, offset + length)` (region-relative,
   * already checked to lie inside the region) dirty. `length` 0 does nothing.
   */
  mark(offset: number, length: number): void {
    if (length <= 0) return;
    let page = Math.floor(offset / this.pageSize);
    const last = Math.floor((offset + length - 1) / this.pageSize);
    while (page <= last) {
      const chunk = Math.floor(page / CHUNK_BITS);
      const base = chunk * CHUNK_BITS;
      const end = Math.min(last, base + CHUNK_BITS - 1);
      setBitRange(this.#chunk(chunk), page - base, end - base);
      page = end + 1;
    }
  }

  /** Whether tracking page `page` is dirty. */
  isDirty(page: number): boolean {
    const chunk = this.#chunks.get(Math.floor(page / CHUNK_BITS));
    return chunk !== undefined && testBit(chunk, page % CHUNK_BITS);
  }

  /** Forgets every dirty page. */
  clear(): void {
    this.#chunks.clear();
  }

  /**
   * Reports the dirty pages at `reportPageSize` granularity into `out` (which
   * must be zeroed and hold at least `ceil(regionSize / reportPageSize)` bits),
   * then clears the log (clear-on-read). With a smaller report page each
   * tracked bit is replicated; with a larger one tracked bits are ORed. The
   * two granularities need not divide each other: a report page is dirty when
   * it overlaps any dirty tracked page.
   *
   * Cost: proportional to the allocated chunks plus the bits written, not to
   * the region size.
   */
  take(reportPageSize: number, out: Uint8Array): void {
    if (reportPageSize === this.pageSize) this.#copySame(out);
    else this.#convert(reportPageSize, out);
    this.#chunks.clear();
  }

  #chunk(index: number): Uint8Array {
    let chunk = this.#chunks.get(index);
    if (chunk === undefined) {
      chunk = new Uint8Array(DIRTY_CHUNK_BYTES);
      this.#chunks.set(index, chunk);
    }
    return chunk;
  }

  #copySame(out: Uint8Array): void {
    for (const [index, chunk] of this.#chunks) {
      const at = index * DIRTY_CHUNK_BYTES;
      if (at >= out.length) continue;
      out.set(chunk.subarray(0, Math.min(DIRTY_CHUNK_BYTES, out.length - at)), at);
    }
  }

  #convert(reportPageSize: number, out: Uint8Array): void {
    for (const [index, chunk] of this.#chunks) {
      // Skip clean stretches a word at a time; bytes are read individually, so host endianness does not matter.
      const words = new Uint32Array(chunk.buffer, chunk.byteOffset, DIRTY_CHUNK_BYTES / 4);
      for (let word = 0; word < words.length; word++) {
        if (words[word] === 0) continue;
        for (let byte = word * 4; byte < word * 4 + 4; byte++) {
          const value = chunk[byte]!;
          for (let bit = 0; value !== 0 && bit < 8; bit++) {
            if (((value >> bit) & 1) !== 0) this.#convertPage(index * CHUNK_BITS + byte * 8 + bit, reportPageSize, out);
          }
        }
      }
    }
  }

  /** Sets the report bits of every report page overlapping tracked page `page`. */
  #convertPage(page: number, reportPageSize: number, out: Uint8Array): void {
    const start = page * this.pageSize;
    const end = Math.min(start + this.pageSize, this.regionSize);
    setBitRange(out, Math.floor(start / reportPageSize), Math.floor((end - 1) / reportPageSize));
  }
}
