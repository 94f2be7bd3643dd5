/**
 * The validate half of DMA_MAP, DMA_UNMAP's bitmap and DMA_LOGGING_REPORT
 * (protocol doc §8, §9): one rule per check, each rejection a
 * {@link ProtocolError} whose message names its rule.
 */
import { type BigIntStats, fstatSync } from 'node:fs';
import { ProtocolError } from '../errors.js';
import { native } from '../native/addon.js';
import { DMA_MAX_SIZE, DmaMapFlags, U64_MAX } from '../protocol/constants.js';
import type { DmaMapRequest } from '../protocol/dma.js';
import { Errno } from '../protocol/errno.js';
import { bitmapBytes } from '../protocol/feature.js';
import type { DmaAccessMode } from './dma-region.js';

/**
 * Errno for a DMA_MAP overlapping an existing region. The spec says `EEXIST`;
 * libvfio-user answers `EINVAL`, and we match the reference implementation so
 * clients written against it see what they expect.
 */
export const DMA_MAP_OVERLAP_ERRNO: number = Errno.EINVAL;

/** Every DMA_MAP flag bit we understand. */
export const DMA_MAP_KNOWN_FLAGS = DmaMapFlags.READ | DmaMapFlags.WRITE | DmaMapFlags.MMAP | DmaMapFlags.FILE_IO;

/** Largest dirty bitmap we build for one report (8 TiB at 4 KiB pages); larger → ENOMEM. */
export const DMA_MAX_BITMAP_BYTES = 256 << 20;

/** `ProtocolError` for `rule` at `site`. */
export function reject(site: string, rule: string, detail: string, errno: number = Errno.EINVAL): ProtocolError {
  return new ProtocolError(`${site} [${rule}]: ${detail}`, { errno });
}

/**
 * Checks the fd-independent rules of a DMA_MAP request, in libvfio-user's order.
 * @param hasFd - whether an fd came with the request.
 * @returns the access mode: `'mmap'` with an fd (MMAP, FILE_IO or neither flag), else `'message'`.
 * @throws {ProtocolError} EINVAL for unknown flag bits, MMAP/FILE_IO without an fd,
 *   size 0, or `addr + size` past 2^64; ENOSPC for `size` > 8 TiB.
 */
export function checkMapRequest(request: DmaMapRequest, hasFd: boolean): DmaAccessMode {
  const site = `DMA_MAP [${request.addr}, +${request.size})`;
  const fileFlags = DmaMapFlags.MMAP | DmaMapFlags.FILE_IO;
  if ((request.flags & fileFlags) !== 0 && !hasFd) throw reject(site, 'fd-required', 'MMAP/FILE_IO without an fd');
  if ((request.flags & ~DMA_MAP_KNOWN_FLAGS) !== 0) {
    throw reject(site, 'unknown-flags', `flags 0x${request.flags.toString(16)} has unknown bits`);
  }
  if (request.size === 0n) throw reject(site, 'size-zero', 'size is 0');
  if (request.size > DMA_MAX_SIZE) {
    throw reject(site, 'size-limit', `size exceeds ${DMA_MAX_SIZE} bytes`, Errno.ENOSPC);
  }
  if (request.addr + request.size - 1n > U64_MAX) throw reject(site, 'wraps', 'addr + size wraps past 2^64');
  return hasFd ? 'mmap' : 'message';
}

/** What {@link inspectFile} learns about a DMA_MAP fd. */
export interface DmaFileInfo {
  /** `st_dev:st_ino`. */
  fileId: string;
  /** mmap granularity: `st_blksize` when it is a power-of-two multiple of the page size, else the page size. */
  mapPage: number;
  /** Whether `F_SEAL_SHRINK` is set on the file. */
  sealedAgainstShrink: boolean;
}

/** fstat through Node (`bigint`: size, dev, ino), errors → ProtocolError with the syscall's errno. */
function fstatFile(site: string, fd: number): BigIntStats {
  try {
    return fstatSync(fd, { bigint: true });
  } catch (error) {
    const errno = Math.abs((error as NodeJS.ErrnoException).errno ?? Errno.EBADF);
    throw new ProtocolError(`${site} [fstat]: cannot stat fd ${fd}`, { errno, cause: error });
  }
}

/**
 * Checks a DMA_MAP fd: it must cover `[offset, offset + size)`, otherwise a
 * later access past its end would kill the process with SIGBUS. (A client
 * that shrinks its file after the map remains a hazard unless the file
 * carries `F_SEAL_SHRINK`; see `sealedAgainstShrink`.)
 * @throws {ProtocolError} the fstat errno (EBADF, …); EINVAL when the file is
 *   too small or the range lies past 2^53 (not addressable by mmap here).
 */
export function inspectFile(site: string, fd: number, offset: bigint, size: bigint): DmaFileInfo {
  const st = fstatFile(site, fd);
  if (offset + size > st.size) {
    throw reject(site, 'file-too-small', `fd of ${st.size} bytes does not cover offset ${offset} + size ${size}`);
  }
  if (offset + size > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw reject(site, 'offset-range', `offset ${offset} + size ${size} is beyond 2^53`);
  }
  const page = native.constants.PAGE_SIZE;
  const blk = Number(st.blksize);
  const mapPage = blk > page && blk % page === 0 && (blk & (blk - 1)) === 0 ? blk : page;
  const seals = native.getSeals(fd);
  const sealedAgainstShrink = seals >= 0 && (seals & native.constants.F_SEAL_SHRINK) !== 0;
  return { fileId: `${st.dev}:${st.ino}`, mapPage, sealedAgainstShrink };
}

/**
 * Checks the rules of a dirty-bitmap request (DMA_LOGGING_REPORT, DMA_UNMAP
 * with GET_DIRTY_BITMAP) once the region is known to match exactly.
 * @returns the bitmap size in bytes.
 * @throws {ProtocolError} EINVAL when logging is off, `pageSize` is 0 or not a power
 *   of two, `length < pageSize`, or the region is in message mode; ENOMEM when
 *   the bitmap would exceed {@link DMA_MAX_BITMAP_BYTES}.
 */
export function checkBitmapRequest(
  site: string,
  logging: boolean,
  mode: DmaAccessMode,
  length: bigint,
  pageSize: bigint,
): number {
  if (!logging) throw reject(site, 'not-logging', 'dirty page logging is not started');
  if (pageSize <= 0n || (pageSize & (pageSize - 1n)) !== 0n) {
    throw reject(site, 'page-size', `page size ${pageSize} is not a power of two`);
  }
  if (length < pageSize) throw reject(site, 'length', `length ${length} is below the page size ${pageSize}`);
  if (mode === 'message') throw reject(site, 'message-mode', 'region is accessed by messages: no bitmap');
  const bytes = bitmapBytes(length, pageSize);
  if (bytes > BigInt(DMA_MAX_BITMAP_BYTES)) {
    throw reject(site, 'bitmap-size', `bitmap of ${bytes} bytes is too large`, Errno.ENOMEM);
  }
  return Number(bytes);
}

/**
 * Checks the rules of a DMA_LOGGING_REPORT of any IOVA range (the kernel's
 * rules plus ours; the range itself was found to touch a mapping).
 * @returns the bitmap size in bytes: `ceil(length / pageSize)` bits rounded up to u64 words.
 * @throws {ProtocolError} EINVAL when logging is off or `pageSize` is 0 or not a
 *   power of two; ENOMEM when the bitmap would exceed {@link DMA_MAX_BITMAP_BYTES}.
 */
export function checkReportRequest(site: string, logging: boolean, length: bigint, pageSize: bigint): number {
  if (!logging) throw reject(site, 'not-logging', 'dirty page logging is not started');
  if (pageSize <= 0n || (pageSize & (pageSize - 1n)) !== 0n) {
    throw reject(site, 'page-size', `page size ${pageSize} is not a power of two`);
  }
  const bytes = bitmapBytes(length, pageSize);
  if (bytes > BigInt(DMA_MAX_BITMAP_BYTES)) {
    throw reject(site, 'bitmap-size', `bitmap of ${bytes} bytes is too large`, Errno.ENOMEM);
  }
  return Number(bytes);
}
