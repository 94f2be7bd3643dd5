/**
 * The DMA controller: the server's table of guest memory regions the client
 * mapped (DMA_MAP / DMA_UNMAP), the DMA API device code uses to read and
 * write guest memory, and dirty-page logging for migration.
 *
 * Two error channels:
 * - session-facing calls (`map`, `unmap`, logging) throw {@link ProtocolError}
 *   with the errno that goes into the ERROR reply (protocol doc §8, §9);
 * - device-facing calls (`read`, `write`, `view`, …) throw
 *   {@link InvalidArgumentError} (EFAULT: a byte of the range is not mapped;
 *   EACCES: the region lacks READ/WRITE; ENOTSUP: sync access to a
 *   message-mode region) or {@link StateError} (ENOTCONN: controller closed
 *   or no message transport).
 */
import { InvalidArgumentError, StateError } from '../errors.js';
import { native } from '../native/addon.js';
import type { DmaMapRequest } from '../protocol/dma.js';
import type { DmaLoggingRange } from '../protocol/feature.js';
import { Errno } from '../protocol/errno.js';
import { DmaAccess, type RegionSegment, liveRegion, requireMmap, resolve } from './dma-access.js';
import { DmaLog } from './dma-logging.js';
import type { DmaRegion, DmaRegionEntry } from './dma-region.js';
import { DmaTable } from './dma-table.js';
import { DMA_WINDOW_SIZE } from './dma-window.js';

export type { DmaAccessMode, DmaRegion } from './dma-region.js';
export { DMA_MAP_OVERLAP_ERRNO } from './dma-rules.js';

/** DMA_READ / DMA_WRITE to the client, for message-mode regions; provided by the session. */
export interface DmaMessageTransport {
  /** DMA_READ of `count` bytes at `addr` (the session chunks it to `max_data_xfer_size`). */
  read(addr: bigint, count: number): Promise<Uint8Array>;
  /** DMA_WRITE of `data` at `addr`. */
  write(addr: bigint, data: Uint8Array): Promise<void>;
}

/** Options of {@link DmaController}. */
export interface DmaControllerOptions {
  /** The server's page size: finest dirty-tracking granularity (power of two, default 4096). */
  pageSize?: number;
  /** Most regions at once (libvfio-user's `max_regions`; default 1024). */
  maxRegions?: number;
  /** DMA_READ/DMA_WRITE for message-mode regions (see {@link DmaController.setTransport}). */
  transport?: DmaMessageTransport;
  /** Called for each region removed, after it left the table and before its memory is unmapped. */
  onUnmap?: (region: DmaRegion) => void;
  /** Closes a region's fd (default `native.close`). */
  closeFd?: (fd: number) => void;
  /** Largest mmap window in bytes (default 1 GiB; smaller only for tests). */
  windowSize?: number;
}

/** Per-call limits of {@link DmaController.map}. */
export interface DmaMapLimits {
  /** Most regions at once, replacing the controller's `maxRegions` (the server passes its `max_dma_maps`). */
  maxRegions?: number;
}

/** Options of {@link DmaController.read} and {@link DmaController.write}. */
export interface DmaAccessOptions {
  /**
   * `'message'`: go through DMA_READ/DMA_WRITE messages to the client even for
   * memory it mapped with an fd (what libvfio-user's `vfu_sgl_read/write` do,
   * and what its sample client expects). Bounds and permissions are checked
   * the same way; the client tracks the pages such writes dirty. Default: the
   * mapping when there is one.
   */
  via?: 'auto' | 'message';
}

/** A piece of an IOVA range inside one region, from {@link DmaController.scatterGather}. */
export interface DmaSegment {
  iova: bigint;
  length: number;
  region: DmaRegion;
}

/** Result of {@link DmaController.unmapWithDirtyBitmap}. */
export interface DmaUnmapResult {
  region: DmaRegion;
  bitmap: Uint8Array;
}

/**
 * Default most regions mapped at once (libvfio-user's `max_regions` default),
 * and the server's default `max_dma_maps`: what is advertised is what is
 * enforced. Each region holds an fd and at least one mmap, and the kernel's
 * default `vm.max_map_count` is 65530 for the whole process.
 */
export const DEFAULT_MAX_REGIONS = 1024;

function closedError(site: string): StateError {
  return new StateError(`DMA ${site}: controller is closed`, { errno: Errno.ENOTCONN });
}

/** The table of DMA regions of one device, and its DMA API. */
export class DmaController {
  /** Finest dirty-tracking granularity in bytes. */
  readonly pageSize: number;
  /** Largest number of regions mapped at once. */
  readonly maxRegions: number;
  readonly #table: DmaTable;
  readonly #regions: DmaRegionEntry[];
  #transport: DmaMessageTransport | undefined;
  #closed = false;
  /** The region the last synchronous access hit (fast path for repeated accesses). */
  #lastHit: DmaRegionEntry | undefined;
  readonly #log: DmaLog;
  readonly #onUnmap: ((region: DmaRegion) => void) | undefined;
  readonly #closeFd: (fd: number) => void;

  /** @throws {InvalidArgumentError} EINVAL for a page size that is not a power of two or a bad limit. */
  constructor(options: DmaControllerOptions = {}) {
    const pageSize = options.pageSize ?? 4096;
    if (!Number.isSafeInteger(pageSize) || pageSize <= 0 || (pageSize & (pageSize - 1)) !== 0) {
      throw new InvalidArgumentError(`DmaController: page size ${pageSize} is not a power of two`);
    }
    const maxRegions = options.maxRegions ?? DEFAULT_MAX_REGIONS;
    if (!Number.isSafeInteger(maxRegions) || maxRegions < 1) {
      throw new InvalidArgumentError(`DmaController: maxRegions ${maxRegions} must be at least 1`);
    }
    this.pageSize = pageSize;
    this.maxRegions = maxRegions;
    this.#transport = options.transport;
    this.#onUnmap = options.onUnmap;
    this.#closeFd = options.closeFd ?? ((fd) => void native.close(fd));
    this.#table = new DmaTable(maxRegions, options.windowSize ?? DMA_WINDOW_SIZE);
    this.#regions = this.#table.entries;
    this.#log = new DmaLog(pageSize);
  }

  /** Sets (or, with `undefined`, removes) the transport for message-mode regions. */
  setTransport(transport: DmaMessageTransport | undefined): void {
    this.#transport = transport;
  }

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** The regions, sorted by address (a snapshot). */
  regions(): readonly DmaRegion[] {
    return [...this.#regions];
  }

  // ------------------------------------------------------------ session side

  /**
   * DMA_MAP: adds a region. Takes ownership of `fd` whatever happens: it is
   * closed on failure, on an identical re-map (which returns the existing
   * region), and when the region is unmapped. With an fd the region is
   * mapped (MMAP and FILE_IO alike; windows of at most 1 GiB, the first one at
   * once, the rest on first use); without one it is accessed by messages.
   * @param fd - the fd that came with the request, if any.
   * @param limits - the server's limits for this session (its advertised
   *   `max_dma_maps`), instead of the controller's own `maxRegions`.
   * @returns the new (or identical existing) region.
   * @throws {ProtocolError} EINVAL: unknown flag bits, MMAP/FILE_IO without fd,
   *   size 0, range wraps 2^64, overlap ({@link DMA_MAP_OVERLAP_ERRNO}), same
   *   range with other offset/flags/file, region limit, file too small;
   *   ENOSPC: size > 8 TiB; fstat/mmap errno (EBADF, EACCES, ENODEV, ENOMEM).
   * @throws {StateError} ENOTCONN after {@link close}.
   */
  map(request: DmaMapRequest, fd: number | undefined, limits: DmaMapLimits = {}): DmaRegion {
    let owned = fd;
    try {
      if (this.#closed) throw closedError('map');
      const { region, created } = this.#table.add(request, fd, limits.maxRegions ?? this.maxRegions);
      if (created) {
        owned = undefined; // the new region owns it now (message mode: no fd)
        this.#log.attach(region);
      }
      return region;
    } finally {
      if (owned !== undefined) this.#closeFd(owned);
    }
  }

  /**
   * DMA_UNMAP: removes the region that is exactly `[addr, addr + size)`. It
   * leaves the table, `onUnmap` runs, then every window is unmapped (any view
   * device code holds becomes length 0) and the fd is closed.
   * @throws {ProtocolError} ENOENT when no region matches exactly.
   * @throws {StateError} ENOTCONN after {@link close}.
   */
  unmap(addr: bigint, size: bigint): DmaRegion {
    const index = this.#exactIndex(`DMA_UNMAP [${addr}, +${size})`, addr, size);
    return this.#remove(index);
  }

  /**
   * DMA_UNMAP with GET_DIRTY_BITMAP: the region's dirty bitmap at `pageSize`
   * (same rules as {@link report}; cleared), then the unmap. Nothing is
   * unmapped if a bitmap rule fails.
   * @throws {ProtocolError} ENOENT when no region matches exactly; EINVAL/ENOMEM
   *   as for {@link report}.
   * @throws {StateError} ENOTCONN after {@link close}.
   */
  unmapWithDirtyBitmap(addr: bigint, size: bigint, pageSize: bigint): DmaUnmapResult {
    const site = `DMA_UNMAP [${addr}, +${size})`;
    const index = this.#exactIndex(site, addr, size);
    const entry = this.#regions[index]!;
    const bytes = this.#log.check(site, entry, pageSize);
    const bitmap = this.#log.take(entry, pageSize, bytes);
    return { region: this.#remove(index), bitmap };
  }

  /** DMA_UNMAP ALL, and client disconnect: removes every region (as {@link unmap} does). */
  unmapAll(): void {
    while (this.#regions.length > 0) this.#remove(this.#regions.length - 1);
  }

  /** Removes every region and refuses all further use (ENOTCONN). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.unmapAll();
    this.#log.stop([]);
    this.#transport = undefined;
    this.#closed = true;
  }

  // ----------------------------------------------------------- dirty logging

  /** Whether dirty-page logging is on. */
  get logging(): boolean {
    return this.#log.pageSize !== undefined;
  }

  /** The page size logging was started with, if logging. */
  get loggingPageSize(): bigint | undefined {
    return this.#log.pageSize;
  }

  /**
   * DMA_LOGGING_START: logs device writes to mmap-mode regions, present and
   * future, inside `ranges` (none or empty: every IOVA, the spec's
   * `num_ranges == 0`). Message-mode regions are the client's to track. A
   * repeated START at the same page size logs the union of both range sets.
   * @param ranges - validated by the caller (the DMA_LOGGING_START handler:
   *   at most 256, page-aligned, non-overlapping, no overflow).
   * @throws {ProtocolError} EINVAL for page size 0 or a different page size while logging.
   */
  startLogging(pageSize: bigint, ranges?: readonly DmaLoggingRange[]): void {
    this.#log.start(pageSize, ranges, this.#regions);
  }

  /** DMA_LOGGING_STOP: drops every bitmap. Idempotent. */
  stopLogging(): void {
    this.#log.stop(this.#regions);
  }

  /**
   * DMA_LOGGING_REPORT of any IOVA range (several regions, part of one, gaps
   * between them): `bitmapBytes(length, pageSize)` bytes, bit `i % 8` of byte
   * `i / 8` = the page at `iova + i * pageSize`. Unmapped pages, message-mode
   * regions and pages outside the START ranges read as 0, as do the padding
   * bits; the log is cleared for the range reported (a tracking page that
   * straddles an end of the range stays dirty). libvfio-user accepts only
   * exactly one whole fd-backed region; everything it accepts gives the same
   * bitmap here.
   * @throws {ProtocolError} EINVAL when `length` is 0, not logging, or `pageSize`
   *   is not a power of two; EOVERFLOW when the range passes 2^64; ENOENT when no
   *   byte of the range is mapped (checked before logging); ENOMEM for a bitmap
   *   over 256 MiB.
   */
  report(iova: bigint, length: bigint, pageSize: bigint): Uint8Array {
    return this.#log.report(this.#regions, iova, length, pageSize);
  }

  /**
   * The size in bytes of the bitmap {@link report} would return for the same
   * arguments, after checking all of its rules; clears nothing. Callers that
   * may still refuse the request check this before calling {@link report}.
   * @throws {ProtocolError} as {@link report}.
   */
  reportSize(iova: bigint, length: bigint, pageSize: bigint): number {
    return this.#log.reportSize(this.#regions, iova, length, pageSize);
  }

  // ------------------------------------------------------------- device side

  /**
   * Reads guest memory; the range may span adjacent regions of either mode.
   * @throws {InvalidArgumentError} EFAULT (unmapped byte, or a region unmapped
   *   while a message was in flight), EACCES (region without READ), EINVAL (bad length).
   * @throws {StateError} ENOTCONN when closed, or a message region has no transport;
   *   EFAULT when the client shrank the region's file under it ({@link DmaRegion.faulted}).
   */
  async read(iova: bigint, length: number, options: DmaAccessOptions = {}): Promise<Uint8Array> {
    const segments = this.#resolve('read', iova, length, DmaAccess.READ);
    const out = new Uint8Array(length);
    let pos = 0;
    for (const seg of segments) {
      if (seg.region.mode === 'mmap' && options.via !== 'message') {
        liveRegion(seg).copyOut(seg.off, out, pos, seg.length);
      } else {
        out.set(await this.#transportFor('read').read(seg.region.addr + BigInt(seg.off), seg.length), pos);
      }
      pos += seg.length;
    }
    return out;
  }

  /**
   * Writes guest memory; marks the pages dirty in mmap regions while logging.
   * @throws {InvalidArgumentError} EFAULT, EACCES (region without WRITE), EINVAL.
   * @throws {StateError} ENOTCONN when closed, or a message region has no transport;
   *   EFAULT when the client shrank the region's file under it ({@link DmaRegion.faulted}).
   */
  async write(iova: bigint, data: Uint8Array, options: DmaAccessOptions = {}): Promise<void> {
    let pos = 0;
    for (const seg of this.#resolve('write', iova, data.length, DmaAccess.WRITE)) {
      if (seg.region.mode === 'mmap' && options.via !== 'message') {
        liveRegion(seg).copyIn(seg.off, data, pos, seg.length);
        seg.region.bitmap?.mark(seg.off, seg.length);
      } else {
        const chunk = data.subarray(pos, pos + seg.length);
        await this.#transportFor('write').write(seg.region.addr + BigInt(seg.off), chunk);
      }
      pos += seg.length;
    }
  }

  /**
   * Synchronous {@link read} for ranges in mmap-mode regions only.
   * @throws {InvalidArgumentError} EFAULT, EACCES, EINVAL; ENOTSUP when a
   *   segment is message mode. @throws {StateError} ENOTCONN when closed; EFAULT
   *   when the client shrank the region's file under it ({@link DmaRegion.faulted}).
   */
  readSync(iova: bigint, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.readInto(iova, out);
    return out;
  }

  /**
   * Like {@link readSync}, into the caller's buffer (no allocation): reads
   * `target.length` bytes at `iova`.
   * @throws {InvalidArgumentError} EFAULT, EACCES, EINVAL; ENOTSUP when a
   *   segment is message mode. @throws {StateError} ENOTCONN when closed; EFAULT
   *   when the client shrank the region's file under it ({@link DmaRegion.faulted}).
   */
  readInto(iova: bigint, target: Uint8Array): void {
    const off = this.#fastOffset(iova, target.length, false);
    if (off >= 0 && (this.#lastHit as DmaRegionEntry).tryCopyOut(off, target)) return;
    const segments = this.#resolveSync('read', iova, target.length, DmaAccess.READ);
    let pos = 0;
    for (const seg of segments) {
      seg.region.copyOut(seg.off, target, pos, seg.length);
      pos += seg.length;
    }
  }

  /**
   * Synchronous {@link write} for ranges in mmap-mode regions only; marks dirty pages.
   * @throws {InvalidArgumentError} EFAULT, EACCES, EINVAL; ENOTSUP when a
   *   segment is message mode. @throws {StateError} ENOTCONN when closed; EFAULT
   *   when the client shrank the region's file under it ({@link DmaRegion.faulted}).
   */
  writeSync(iova: bigint, data: Uint8Array): void {
    const off = this.#fastOffset(iova, data.length, true);
    if (off >= 0 && (this.#lastHit as DmaRegionEntry).tryCopyIn(off, data)) {
      this.#lastHit?.bitmap?.mark(off, data.length);
      return;
    }
    let pos = 0;
    for (const seg of this.#resolveSync('write', iova, data.length, DmaAccess.WRITE)) {
      seg.region.copyIn(seg.off, data, pos, seg.length);
      seg.region.bitmap?.mark(seg.off, seg.length);
      pos += seg.length;
    }
  }

  /**
   * A view straight into guest memory: one mmap-mode region, no copy. With
   * `write` the region must be writable and the pages are marked dirty now;
   * later writes through a retained view are NOT tracked — call
   * {@link markDirty} after them. Views become length 0 when the region is
   * unmapped. Writing through a view of a region mapped without WRITE kills
   * the process (SIGSEGV): ask with `write: true` to have that checked.
   * @throws {InvalidArgumentError} EFAULT (unmapped), EACCES (permission),
   *   ENOTSUP (message mode), EINVAL (spans regions, or straddles an mmap
   *   window boundary by more than the 64 MiB window overlap).
   * @throws {StateError} ENOTCONN when closed.
   */
  view(iova: bigint, length: number, options: { write?: boolean } = {}): Uint8Array {
    const access = options.write ? DmaAccess.WRITE : DmaAccess.READ;
    const segments = this.#resolveSync('view', iova, length, access);
    if (segments.length === 0) return new Uint8Array(0);
    const seg = segments[0]!;
    if (segments.length > 1) {
      throw new InvalidArgumentError(`DMA view [${iova}, +${length}): spans ${segments.length} regions`);
    }
    const view = seg.region.view(seg.off, seg.length);
    if (view === undefined) {
      throw new InvalidArgumentError(
        `DMA view [${iova}, +${length}): straddles an mmap window boundary (views up to ${seg.region.maxView} bytes always fit)`,
      );
    }
    if (options.write) seg.region.bitmap?.mark(seg.off, seg.length);
    return view;
  }

  /**
   * Splits `[iova, iova + length)` into per-region pieces (libvfio-user's
   * `vfu_addr_to_sgl`). With `access` the regions' permissions are checked.
   * @throws {InvalidArgumentError} EFAULT, EACCES, EINVAL. @throws {StateError} ENOTCONN.
   */
  scatterGather(iova: bigint, length: number, access: { read?: boolean; write?: boolean } = {}): DmaSegment[] {
    const mode = (access.read ? DmaAccess.READ : 0) | (access.write ? DmaAccess.WRITE : 0);
    return this.#resolve('scatterGather', iova, length, mode).map((seg) => ({
      iova: seg.region.addr + BigInt(seg.off),
      length: seg.length,
      region: seg.region,
    }));
  }

  /**
   * Marks `[iova, iova + length)` dirty (after writes through a retained
   * {@link view}). No-op when not logging; message-mode pieces are skipped.
   * @throws {InvalidArgumentError} EFAULT, EINVAL. @throws {StateError} ENOTCONN.
   */
  markDirty(iova: bigint, length: number): void {
    for (const seg of this.#resolve('markDirty', iova, length, DmaAccess.NONE)) {
      seg.region.bitmap?.mark(seg.off, seg.length);
    }
  }

  // ----------------------------------------------------------------- private

  #exactIndex(site: string, addr: bigint, size: bigint): number {
    if (this.#closed) throw closedError(site);
    return this.#table.exactIndex(site, addr, size);
  }

  #remove(index: number): DmaRegion {
    const entry = this.#table.removeAt(index);
    try {
      this.#onUnmap?.(entry);
    } finally {
      entry.release(this.#closeFd);
    }
    return entry;
  }

  #resolve(site: string, iova: bigint, length: number, access: number): RegionSegment[] {
    if (this.#closed) throw closedError(site);
    return resolve(this.#regions, iova, length, access);
  }

  #resolveSync(site: string, iova: bigint, length: number, access: number): RegionSegment[] {
    const segments = requireMmap(site, this.#resolve(site, iova, length, access));
    if (segments.length === 1) this.#lastHit = segments[0]!.region;
    return segments;
  }

  /**
   * The offset in {@link #lastHit} of a synchronous access that lies inside the
   * region the previous one hit, with the permission it needs; -1 sends the
   * access down the general path (which also produces every error).
   */
  #fastOffset(iova: bigint, length: number, write: boolean): number {
    const region = this.#lastHit;
    if (!region || !region.mapped || this.#closed || length === 0) return -1;
    if (write ? !region.writable : !region.readable) return -1;
    return region.offsetOf(iova, length);
  }

  #transportFor(site: string): DmaMessageTransport {
    if (this.#closed) throw closedError(site);
    if (!this.#transport) {
      throw new StateError(`DMA ${site}: message-mode region but no transport`, { errno: Errno.ENOTCONN });
    }
    return this.#transport;
  }
}
