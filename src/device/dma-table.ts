/**
 * The sorted, non-overlapping table of DMA regions and the act half of
 * DMA_MAP / DMA_UNMAP on it (the rules live in `dma-rules.ts`).
 */
import { ProtocolError, StateError } from '../errors.js';
import type { DmaMapRequest } from '../protocol/dma.js';
import { Errno } from '../protocol/errno.js';
import { findIndex } from './dma-access.js';
import { DmaRegionEntry, type DmaRegionFile } from './dma-region.js';
import { DMA_MAP_OVERLAP_ERRNO, type DmaFileInfo, checkMapRequest, inspectFile, reject } from './dma-rules.js';
import { windowLayout } from './dma-window.js';

/** Outcome of {@link DmaTable.add}. */
export interface DmaAddResult {
  region: DmaRegionEntry;
  /** False for an identical re-map: the caller still owns (and must close) its fd. */
  created: boolean;
}

/** Regions sorted by address; lookups by binary search. */
export class DmaTable {
  /** The regions, sorted by `addr`, non-overlapping. Read-only to callers. */
  readonly entries: DmaRegionEntry[] = [];
  readonly #maxRegions: number;
  readonly #windowSize: number;

  /**
   * @param maxRegions - region count limit.
   * @param windowSize - largest mmap window.
   */
  constructor(maxRegions: number, windowSize: number) {
    this.#maxRegions = maxRegions;
    this.#windowSize = windowSize;
  }

  /**
   * Validates a DMA_MAP request against the rules and the table, then maps and
   * inserts the region. On success with `created`, the region owns `fd`.
   * @throws {ProtocolError} the DMA_MAP errnos (see `DmaController.map`).
   */
  add(request: DmaMapRequest, fd: number | undefined, maxRegions = this.#maxRegions): DmaAddResult {
    const { addr, size, offset, flags } = request;
    const site = `DMA_MAP [${addr}, +${size})`;
    checkMapRequest(request, fd !== undefined);
    const file = fd === undefined ? undefined : inspectFile(site, fd, offset, size);
    const index = findIndex(this.entries, addr);
    const existing = this.entries[index];
    if (existing && existing.addr === addr && existing.size === size) {
      if (existing.offset === offset && existing.flags === flags && existing.fileId === file?.fileId) {
        return { region: existing, created: false };
      }
      throw reject(site, 'remap-differs', 'same range mapped with another offset, flags or file');
    }
    const next = this.entries[index + 1];
    if ((existing && existing.end > addr) || (next && next.addr < addr + size)) {
      throw reject(site, 'overlap', 'overlaps an existing region', DMA_MAP_OVERLAP_ERRNO);
    }
    if (this.entries.length >= maxRegions) throw reject(site, 'region-limit', `${maxRegions} regions`);
    const entry = new DmaRegionEntry(addr, size, offset, flags, this.#backing(request, fd, file));
    mapFirst(site, entry);
    this.entries.splice(index + 1, 0, entry);
    return { region: entry, created: true };
  }

  /**
   * Index of the region that is exactly `[addr, addr + size)`.
   * @throws {ProtocolError} ENOENT when there is none.
   */
  exactIndex(site: string, addr: bigint, size: bigint): number {
    const index = findIndex(this.entries, addr);
    const region = this.entries[index];
    if (region === undefined || region.addr !== addr || region.size !== size) {
      throw reject(site, 'no-match', 'no region matches exactly', Errno.ENOENT);
    }
    return index;
  }

  /** Takes the region at `index` out of the table (it stays mapped). */
  removeAt(index: number): DmaRegionEntry {
    const [entry] = this.entries.splice(index, 1);
    return entry!;
  }

  #backing(request: DmaMapRequest, fd: number | undefined, file: DmaFileInfo | undefined): DmaRegionFile | undefined {
    if (fd === undefined || file === undefined) return undefined;
    const layout = windowLayout(Number(request.offset), Number(request.size), file.mapPage, this.#windowSize);
    return { fd, fileId: file.fileId, sealedAgainstShrink: file.sealedAgainstShrink, layout };
  }
}

/** Maps the region's first window so mmap errors surface at DMA_MAP time. */
function mapFirst(site: string, entry: DmaRegionEntry): void {
  try {
    entry.mapFirstWindow();
  } catch (error) {
    entry.release(() => {}); // nothing was mapped; the caller still owns and closes the fd
    const errno = error instanceof StateError && error.errno !== undefined ? error.errno : Errno.ENOMEM;
    throw new ProtocolError(`${site} [mmap]: cannot map the fd`, { errno, cause: error });
  }
}
