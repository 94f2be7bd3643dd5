/**
 * Dirty-page merging of a {@link Container}: the pages of one GuestMemory
 * written since the last take, by anyone — the client itself
 * (`GuestMemory.takeDirty()`) and every device the memory is mapped into
 * (its DMA_LOGGING_REPORT over each mapping, translated from IOVA to the
 * memory's own 4 KiB pages). A device that cannot log is assumed to have
 * written every page it may write.
 */
import { DeviceFeature, DeviceFeatureFlags } from '../protocol/constants.js';
import { ConnectionClosedError, RemoteError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import type { VfioUserClient } from './client.js';
import { GUEST_PAGE_SIZE, type GuestMemory } from './guest-memory.js';

const PAGE = BigInt(GUEST_PAGE_SIZE);
/** DEVICE_FEATURE head (8) + REPORT head (24) + slack: what a REPORT reply carries besides its bitmap. */
const REPORT_OVERHEAD = 128;

/** One mapping of a memory into one device, as the dirty merge needs it. */
export interface DirtySource {
  memory: GuestMemory;
  iova: bigint;
  /** Offset of `iova` in the memory. */
  offset: bigint;
  size: bigint;
  writable: boolean;
}

/** A device's logging: the page size it chose, or undefined when it cannot log. */
export interface DeviceLogging {
  pageSize: bigint | undefined;
}

/** Sorted, distinct page numbers → the vfio bitmap of `pages` bits (page p = bit p % 8 of byte p >> 3). */
export function pagesToBitmap(pages: readonly number[], totalPages: number): Uint8Array {
  const out = new Uint8Array(Math.ceil(totalPages / 8));
  for (const p of pages) out[p >> 3] = (out[p >> 3] ?? 0) | (1 << (p & 7));
  return out;
}

/**
 * Starts DMA logging on `client` at 4 KiB pages over all of guest memory (no
 * ranges: mappings added later are logged too).
 * @returns the device's page size, or undefined when it does not offer logging.
 * @throws {RemoteError} the server's errno when START fails for another reason.
 */
export async function startDeviceLogging(client: VfioUserClient): Promise<DeviceLogging> {
  if (!(await client.probeFeature(DeviceFeature.DMA_LOGGING_START, DeviceFeatureFlags.SET))) return { pageSize: undefined };
  try {
    return { pageSize: await client.startDirtyLogging(PAGE) };
  } catch (error) {
    if (error instanceof RemoteError && error.errno === Errno.ENOTSUP) return { pageSize: undefined };
    throw error;
  }
}

/** Stops DMA logging on `client` (a closed connection is not an error). @throws {RemoteError} the server's errno. */
export async function stopDeviceLogging(client: VfioUserClient, logging: DeviceLogging): Promise<void> {
  if (logging.pageSize === undefined) return;
  try {
    await client.stopDirtyLogging();
  } catch (error) {
    if (!(error instanceof ConnectionClosedError)) throw error;
  }
}

/**
 * Adds to `pages` the memory pages `client` wrote through mapping `source`
 * since its last report (reading clears them on the device), reported in
 * chunks that fit the connection's transfer size. Without logging, every
 * page of a writable mapping.
 * @throws {RemoteError} the server's errno for DMA_LOGGING_REPORT.
 */
export async function collectDeviceDirty(client: VfioUserClient, logging: DeviceLogging, source: DirtySource, pages: Set<number>): Promise<void> {
  const first = Number(source.offset / PAGE);
  const count = Number(source.size / PAGE);
  if (logging.pageSize === undefined) {
    if (source.writable) for (let p = 0; p < count; p++) pages.add(first + p);
    return;
  }
  const ps = logging.pageSize;
  const bitsPerChunk = BigInt(Math.max(8, (client.maxTransferSize - REPORT_OVERHEAD) * 8));
  const chunk = bitsPerChunk * ps;
  for (let at = 0n; at < source.size; at += chunk) {
    const length = source.size - at < chunk ? source.size - at : chunk;
    const bitmap = await client.dirtyReport(source.iova + at, length, ps);
    addBits(bitmap, at, length, ps, (lo, hi) => {
      for (let p = lo; p < hi; p++) pages.add(first + p);
    });
  }
}

/** Calls `range(lo, hi)` with the mapping-relative 4 KiB pages each set bit covers, clipped to the chunk. */
function addBits(bitmap: Uint8Array, at: bigint, length: bigint, ps: bigint, range: (lo: number, hi: number) => void): void {
  const end = at + length;
  bitmap.forEach((byte, i) => {
    if (byte === 0) return;
    for (let bit = 0; bit < 8; bit++) {
      if (((byte >> bit) & 1) === 0) continue;
      const lo = at + BigInt(i * 8 + bit) * ps;
      if (lo >= end) return;
      const hi = lo + ps < end ? lo + ps : end;
      range(Number(lo / PAGE), Number((hi + PAGE - 1n) / PAGE));
    }
  });
}
