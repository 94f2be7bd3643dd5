/**
 * IOVA → region lookup for device-side DMA: binary search over the sorted,
 * non-overlapping region table, and the split of an IOVA range into
 * per-region segments with permission checks.
 */
import { InvalidArgumentError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import type { DmaRegionEntry } from './dma-region.js';

const IOVA_LIMIT = 1n << 64n;

/** What an access needs from every region it touches (bits, may be combined). */
export const DmaAccess = { NONE: 0, READ: 1, WRITE: 2 } as const;
/** One of {@link DmaAccess}. */
export type DmaAccess = (typeof DmaAccess)[keyof typeof DmaAccess];

/** One piece of an IOVA range, inside one region. */
export interface RegionSegment {
  region: DmaRegionEntry;
  /** Offset of the piece inside the region. */
  off: number;
  length: number;
}

/**
 * Index of the last region starting at or below `iova`, or -1.
 * @param regions - sorted by `addr`, non-overlapping.
 */
export function findIndex(regions: readonly DmaRegionEntry[], iova: bigint): number {
  let lo = 0;
  let hi = regions.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    if (regions[mid]!.addr <= iova) lo = mid + 1;
    else hi = mid - 1;
  }
  return hi;
}

/** The region containing `iova`, if any. */
export function findRegion(regions: readonly DmaRegionEntry[], iova: bigint): DmaRegionEntry | undefined {
  const region = regions[findIndex(regions, iova)];
  return region !== undefined && iova < region.end ? region : undefined;
}

function fault(iova: bigint, length: number, why: string): InvalidArgumentError {
  return new InvalidArgumentError(`DMA [${iova}, +${length}): ${why}`, { errno: Errno.EFAULT });
}

function checkPermission(region: DmaRegionEntry, access: number, iova: bigint, length: number): void {
  if ((access & DmaAccess.READ) !== 0 && !region.readable) {
    throw new InvalidArgumentError(`DMA read [${iova}, +${length}): region at ${region.addr} is not readable`, {
      errno: Errno.EACCES,
    });
  }
  if ((access & DmaAccess.WRITE) !== 0 && !region.writable) {
    throw new InvalidArgumentError(`DMA write [${iova}, +${length}): region at ${region.addr} is not writable`, {
      errno: Errno.EACCES,
    });
  }
}

/**
 * Checks that `length` is a byte count and `iova` a u64 range start.
 * @throws {InvalidArgumentError} EINVAL for a bad length, EFAULT for a range past 2^64.
 */
export function checkRange(iova: bigint, length: number): void {
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new InvalidArgumentError(`DMA: length ${length} is not a byte count`);
  }
  if (typeof iova !== 'bigint' || iova < 0n || iova + BigInt(length) > IOVA_LIMIT) {
    throw fault(iova, length, 'range is outside the 64-bit IOVA space');
  }
}

/**
 * Splits `[iova, iova + length)` into per-region segments; consecutive
 * regions must be adjacent. `length` 0 gives no segments.
 * @param access - a mask of {@link DmaAccess} bits every region must allow.
 * @throws {InvalidArgumentError} EFAULT when some byte is not mapped, EACCES
 *   when a region lacks the permission `access` needs, EINVAL for a bad length.
 */
export function resolve(
  regions: readonly DmaRegionEntry[],
  iova: bigint,
  length: number,
  access: number,
): RegionSegment[] {
  checkRange(iova, length);
  const segments: RegionSegment[] = [];
  let index = findIndex(regions, iova);
  let cur = iova;
  let left = length;
  while (left > 0) {
    const region = regions[index];
    if (region === undefined || cur < region.addr || cur >= region.end) {
      throw fault(iova, length, `${cur} is not mapped`);
    }
    checkPermission(region, access, iova, length);
    const off = Number(cur - region.addr);
    const n = Math.min(left, Number(region.end - cur));
    segments.push({ region, off, length: n });
    cur += BigInt(n);
    left -= n;
    index++;
  }
  return segments;
}

/**
 * Returns `segments` if every one is in an mmap-mode region.
 * @throws {InvalidArgumentError} ENOTSUP naming the first message-mode region.
 */
export function requireMmap(site: string, segments: RegionSegment[]): RegionSegment[] {
  for (const seg of segments) {
    if (seg.region.mode !== 'mmap') {
      throw new InvalidArgumentError(`DMA ${site}: region at ${seg.region.addr} is message mode (no direct access)`, {
        errno: Errno.ENOTSUP,
      });
    }
  }
  return segments;
}

/**
 * The segment's region, checked to be still mapped (an async access may
 * have awaited a message while the region was unmapped).
 * @throws {InvalidArgumentError} EFAULT when it was unmapped.
 */
export function liveRegion(seg: RegionSegment): DmaRegionEntry {
  if (!seg.region.mapped) {
    throw new InvalidArgumentError(`DMA: region at ${seg.region.addr} was unmapped during the access`, {
      errno: Errno.EFAULT,
    });
  }
  return seg.region;
}
