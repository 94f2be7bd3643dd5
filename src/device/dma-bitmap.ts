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
 * region that is barely written costs a few KiB however large it is. It may
 * be limited to some spans of the region (DMA_LOGGING_START's ranges): writes
 * elsewhere are not recorded.
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
 * Clears bits `first ..= last` of `bits` (the counterpart of {@link setBitRange}).
 * @param bits - the bitmap; indices must be below `bits.length * 8` (< 2^32).
 * @param first - first bit to clear.
 * @param last - last bit to clear (inclusive); nothing happens when `last < first`.
 */
export function clearBitRange(bits: Uint8Array, first: number, last: number): void {
  let i = first;
  for (; i <= last && (i & 7) !== 0; i++) bits[i >>> 3]! &= ~(1 << (i & 7));
  const wholeEnd = last + 1 - ((last + 1) % 8);
  if (i < wholeEnd) {
    bits.fill(0, i >>> 3, wholeEnd >>> 3);
    i = wholeEnd;
  }
  for (; i <= last; i++) bits[i >>> 3]! &= ~(1 << (i & 7));
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
  /** Region-relative `[start, end)` pairs, sorted and disjoint, that are logged; `undefined` = all of it. */
  #spans: readonly number[] | undefined;

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

  /** The logged spans (flat `[start, end)` pairs), or `undefined` when the whole region is logged. */
  get spans(): readonly number[] | undefined {
    return this.#spans;
  }

  /**
   * Limits logging to `spans` from now on (marks already made stay).
   * @param spans - region-relative `[start, end)` pairs, flat, sorted, disjoint
   *   and non-empty; `undefined` logs the whole region.
   */
  setSpans(spans: readonly number[] | undefined): void {
    this.#spans = spans;
  }

  /**
   * Marks the pages touching `[offset, offset + length)` (region-relative,
   * already checked to lie inside the region) dirty, as far as it lies in the
   * logged spans. `length` 0 does nothing. Cost with spans: one binary search
   * plus the spans the write touches.
   */
  mark(offset: number, length: number): void {
    if (length <= 0) return;
    const spans = this.#spans;
    if (spans === undefined) {
      this.#markBytes(offset, offset + length);
      return;
    }
    const end = offset + length;
    let lo = 0;
    let hi = spans.length >>> 1; // first span whose end is beyond `offset`
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (spans[2 * mid + 1]! <= offset) lo = mid + 1;
      else hi = mid;
    }
    for (let i = 2 * lo; i < spans.length && spans[i]! < end; i += 2) {
      const from = Math.max(offset, spans[i]!);
      const to = Math.min(end, spans[i + 1]!);
      if (from < to) this.#markBytes(from, to);
    }
  }

  /** Marks the pages touching region bytes `[from, to)`, `from < to`. */
  #markBytes(from: number, to: number): void {
    let page = Math.floor(from / this.pageSize);
    const last = Math.floor((to - 1) / this.pageSize);
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
   * Calls `fn` for every dirty tracking page in `first ..= last`, in no
   * particular order. Cost: the allocated chunks plus the words of the range
   * inside them; clean words are skipped 32 pages at a time.
   */
  forEachDirty(first: number, last: number, fn: (page: number) => void): void {
    for (const [index, chunk] of this.#chunks) {
      const base = index * CHUNK_BITS;
      const from = Math.max(first, base) - base;
      const to = Math.min(last, base + CHUNK_BITS - 1) - base;
      if (from > to) continue;
      const words = new Uint32Array(chunk.buffer, chunk.byteOffset, DIRTY_CHUNK_BYTES / 4);
      for (let word = from >>> 5; word <= to >>> 5; word++) {
        if (words[word] === 0) continue;
        const lo = Math.max(from, word * 32);
        const hi = Math.min(to, word * 32 + 31);
        for (let bit = lo; bit <= hi; bit++) {
          if (((chunk[bit >>> 3]! >> (bit & 7)) & 1) !== 0) fn(base + bit);
        }
      }
    }
  }

  /** Forgets the dirty tracking pages `first ..= last` (chunks left empty are freed). */
  clearPages(first: number, last: number): void {
    if (last < first) return;
    for (const [index, chunk] of this.#chunks) {
      const base = index * CHUNK_BITS;
      const from = Math.max(first, base) - base;
      const to = Math.min(last, base + CHUNK_BITS - 1) - base;
      if (from > to) continue;
      if (from === 0 && to === CHUNK_BITS - 1) this.#chunks.delete(index);
      else clearBitRange(chunk, from, to);
    }
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
