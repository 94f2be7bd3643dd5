/**
 * The IOVA ranges DMA_LOGGING_START asked to log (migration doc §8.1), and
 * their intersection with each DMA region: the region-relative spans its
 * dirty bitmap records. Computed when logging starts and when a region is
 * mapped while logging, so that a device write only pays a span lookup.
 */

/** A logged IOVA interval `[start, end)`, `end` at most 2^64. */
export interface IovaSpan {
  readonly start: bigint;
  readonly end: bigint;
}

/** One range of a DMA_LOGGING_START request. */
export interface LoggingRange {
  readonly iova: bigint;
  readonly length: bigint;
}

/**
 * Sorts and merges ranges (overlapping or adjacent ones become one); empty
 * ranges are dropped.
 * @param ranges - START ranges, or spans already normalized.
 * @returns sorted, disjoint, non-adjacent spans.
 */
export function normalizeRanges(ranges: readonly (LoggingRange | IovaSpan)[]): IovaSpan[] {
  const spans = ranges
    .map((r) => ('iova' in r ? { start: r.iova, end: r.iova + r.length } : r))
    .filter((s) => s.end > s.start)
    .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const out: IovaSpan[] = [];
  for (const s of spans) {
    const last = out[out.length - 1];
    if (last !== undefined && s.start <= last.end) {
      if (s.end > last.end) out[out.length - 1] = { start: last.start, end: s.end };
    } else {
      out.push(s);
    }
  }
  return out;
}

/**
 * The logged set after a second START: the union of both (`undefined` =
 * everything, which absorbs anything).
 */
export function unionRanges(a: readonly IovaSpan[] | undefined, b: readonly IovaSpan[] | undefined): IovaSpan[] | undefined {
  if (a === undefined || b === undefined) return undefined;
  return normalizeRanges([...a, ...b]);
}

/**
 * The part of region `[addr, addr + size)` that `ranges` cover, as
 * region-relative `[start, end)` pairs (flat, sorted, disjoint).
 * @param ranges - normalized spans, or `undefined` for "log everything".
 * @returns `undefined` when the whole region is covered, `[]` when none of it is.
 */
export function regionSpans(addr: bigint, size: bigint, ranges: readonly IovaSpan[] | undefined): number[] | undefined {
  if (ranges === undefined) return undefined;
  const end = addr + size;
  const out: number[] = [];
  for (const r of ranges) {
    if (r.end <= addr) continue;
    if (r.start >= end) break;
    const from = r.start > addr ? r.start : addr;
    const to = r.end < end ? r.end : end;
    out.push(Number(from - addr), Number(to - addr));
  }
  if (out.length === 2 && out[0] === 0 && out[1] === Number(size)) return undefined;
  return out;
}
