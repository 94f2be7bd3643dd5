/**
 * How a file-backed DMA region is cut into mmap windows.
 *
 * Node 20 caps an ArrayBuffer at 4 GiB and a DMA region may be 8 TiB, so a
 * region is mapped as a row of windows of at most {@link DMA_WINDOW_SIZE}
 * bytes, each mapped on first use. Consecutive windows overlap by
 * {@link DMA_WINDOW_OVERLAP} bytes, so any range of up to that many bytes lies
 * wholly inside one window and can be handed out as a single `Uint8Array`
 * view even when it straddles a window boundary. The overlap costs only
 * virtual address space: both windows map the same pages of the same file
 * (`MAP_SHARED`), so they stay coherent.
 */

/** Largest single mmap window of a DMA region (1 GiB). */
export const DMA_WINDOW_SIZE = 1 << 30;
/** Overlap of consecutive windows (64 MiB): the largest view guaranteed to fit anywhere. */
export const DMA_WINDOW_OVERLAP = 64 << 20;

/** Where the windows of one region lie in its file. All values are byte counts. */
export interface WindowLayout {
  /** File offset of window 0: the region's offset rounded down to the mapping page. */
  readonly base: number;
  /** Offset of the region's first byte inside window 0 (`offset - base`). */
  readonly delta: number;
  /** Bytes covered by all windows: `delta + size` rounded up to the mapping page. */
  readonly length: number;
  /** Size of every window but possibly the last. */
  readonly window: number;
  /** Distance between the starts of consecutive windows (`window - overlap`). */
  readonly stride: number;
  /** Number of windows (≥ 1). */
  readonly count: number;
  /** Longest range guaranteed to fit in one window wherever it starts. */
  readonly maxView: number;
}

function roundDown(value: number, unit: number): number {
  return value - (value % unit);
}

/**
 * Computes the window layout of a region.
 * @param offset - the region's offset in its file (< 2^53).
 * @param size - the region's size in bytes (> 0, ≤ 8 TiB).
 * @param mapPage - mapping granularity (a multiple of the system page size).
 * @param maxWindow - largest window wanted (rounded down to `mapPage`, at least one page).
 * @returns the layout; pure arithmetic, never throws.
 */
export function windowLayout(offset: number, size: number, mapPage: number, maxWindow = DMA_WINDOW_SIZE): WindowLayout {
  const base = roundDown(offset, mapPage);
  const delta = offset - base;
  const length = Math.ceil((delta + size) / mapPage) * mapPage;
  const window = Math.max(mapPage, roundDown(maxWindow, mapPage));
  if (length <= window) return { base, delta, length, window: length, stride: length, count: 1, maxView: size };
  const overlap = roundDown(Math.min(DMA_WINDOW_OVERLAP, Math.floor(window / 4)), mapPage);
  const stride = window - overlap;
  const count = 1 + Math.ceil((length - window) / stride);
  return { base, delta, length, window, stride, count, maxView: Math.max(overlap, 1) };
}

/**
 * The window holding mapping-relative byte `rel`: the last window starting at
 * or before it (so a range starting at `rel` gets the most room).
 * @returns the window index, its start (mapping-relative) and its length.
 */
export function windowAt(layout: WindowLayout, rel: number): { index: number; start: number; length: number } {
  const index = Math.min(Math.floor(rel / layout.stride), layout.count - 1);
  const start = index * layout.stride;
  return { index, start, length: Math.min(layout.window, layout.length - start) };
}
