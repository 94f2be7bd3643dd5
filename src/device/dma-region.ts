/**
 * One DMA region: a range of guest memory the client mapped with DMA_MAP,
 * either backed by an fd we mmap (windowed, see `dma-window.ts`) or accessed
 * by DMA_READ/DMA_WRITE messages.
 *
 * A client may shrink the file behind an mmap-mode region (an fd without
 * `F_SEAL_SHRINK`): touching a page past the new end raises SIGBUS. The
 * addon's SIGBUS guard absorbs it (that page reads as zeros and drops writes);
 * this module notices through `sigbusFaults()` and `mappingFaulted()`, marks
 * the region faulted, and fails that access and every later one with EFAULT
 * until the client unmaps the region. The process never dies of it.
 */
import { StateError, SystemError } from '../errors.js';
import { mapFd, mappingFaulted, sigbusFaults, unmap } from '../native/addon.js';
import { DmaMapFlags } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import type { DirtyBitmap } from './dma-bitmap.js';
import { type WindowLayout, windowAt } from './dma-window.js';

/**
 * How the server reaches a region's memory: `'mmap'` through a shared mapping
 * of the client's fd (also used for FILE_IO regions: mmap gives the same
 * bytes as `pread`/`pwrite` on a shared file, without a syscall per access),
 * `'message'` through DMA_READ/DMA_WRITE to the client.
 */
export type DmaAccessMode = 'mmap' | 'message';

/** A DMA region as device code and the session see it. */
export interface DmaRegion {
  /** IOVA of the first byte. */
  readonly addr: bigint;
  /** Size in bytes (> 0). */
  readonly size: bigint;
  /** `addr + size` (exclusive end; at most 2^64). */
  readonly end: bigint;
  /** Offset of `addr` in the client's fd (meaningless in message mode). */
  readonly offset: bigint;
  /** Raw DMA_MAP flags (`DmaMapFlags` bits). */
  readonly flags: number;
  /** The client allows the device to read (DmaMapFlags.READ). */
  readonly readable: boolean;
  /** The client allows the device to write (DmaMapFlags.WRITE). */
  readonly writable: boolean;
  readonly mode: DmaAccessMode;
  /**
   * The fd carries `F_SEAL_SHRINK`. When false, a client may shrink the file
   * after DMA_MAP; an access past the new end is then absorbed by the SIGBUS
   * guard and fails with EFAULT (see {@link faulted}); a sealed memfd rules
   * that out. Always false in message mode.
   */
  readonly sealedAgainstShrink: boolean;
  /**
   * The client shrank the file under this region and an access touched a page
   * past its end: every access now fails with EFAULT (views handed out earlier
   * read zeros there and drop writes) until the region is unmapped.
   */
  readonly faulted: boolean;
  /** False once the region has been unmapped (its views are then detached). */
  readonly mapped: boolean;
}

/** What {@link DmaRegionEntry} needs to know about a file-backed region. */
export interface DmaRegionFile {
  fd: number;
  /** `st_dev:st_ino`, to recognise the same file in a repeated DMA_MAP. */
  fileId: string;
  sealedAgainstShrink: boolean;
  layout: WindowLayout;
}

/**
 * The controller's record of a region: the {@link DmaRegion} facts plus the
 * mapping windows, the fd it owns and the dirty bitmap while logging.
 * Internal to the DMA controller; device code sees it as a {@link DmaRegion}.
 */
export class DmaRegionEntry implements DmaRegion {
  readonly addr: bigint;
  readonly size: bigint;
  readonly end: bigint;
  readonly offset: bigint;
  readonly flags: number;
  readonly readable: boolean;
  readonly writable: boolean;
  readonly mode: DmaAccessMode;
  readonly sealedAgainstShrink: boolean;
  /** Identity of the backing file, `undefined` in message mode. */
  readonly fileId: string | undefined;
  /** Dirty log; set only while logging and only in mmap mode. */
  bitmap: DirtyBitmap | undefined;
  #mapped = true;
  #faulted = false;
  /** {@link sigbusFaults} when this region's windows were last found intact. */
  #faultsSeen: number;
  #fd: number;
  readonly #layout: WindowLayout | undefined;
  readonly #windows: (ArrayBuffer | undefined)[] = [];
  /** The window the last fast-path access used: its bytes and its [start, end) in region-relative file offsets. */
  #hitBytes: Uint8Array | undefined;
  #hitStart = 0;
  #hitEnd = -1;
  /** `size` as a number (regions of 2^53 bytes or more never take the fast path). */
  readonly #sizeNumber: number;

  /**
   * @param file - the fd (now owned by this entry) and its layout; `undefined` for message mode.
   */
  constructor(addr: bigint, size: bigint, offset: bigint, flags: number, file: DmaRegionFile | undefined) {
    this.addr = addr;
    this.size = size;
    this.end = addr + size;
    this.#sizeNumber = size <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(size) : -1;
    this.offset = offset;
    this.flags = flags;
    this.readable = (flags & DmaMapFlags.READ) !== 0;
    this.writable = (flags & DmaMapFlags.WRITE) !== 0;
    this.mode = file ? 'mmap' : 'message';
    this.sealedAgainstShrink = file?.sealedAgainstShrink ?? false;
    this.fileId = file?.fileId;
    this.#fd = file?.fd ?? -1;
    this.#layout = file?.layout;
    this.#faultsSeen = file ? sigbusFaults() : 0;
  }

  get mapped(): boolean {
    return this.#mapped;
  }

  get faulted(): boolean {
    if (!this.#faulted && this.#layout && sigbusFaults() !== this.#faultsSeen) this.#recheck();
    return this.#faulted;
  }

  /** Longest view that fits in one window wherever it starts (region size when unwindowed). */
  get maxView(): number {
    return this.#layout?.maxView ?? 0;
  }

  /** Number of mmap windows currently mapped (for tests and diagnostics). */
  get mappedWindows(): number {
    return this.#windows.filter((w) => w !== undefined).length;
  }

  /**
   * Maps the window holding the region's first byte, so that mmap errors
   * (EACCES for an fd opened without the access asked, ENODEV, ENOMEM) show
   * at DMA_MAP time. A region without READ or WRITE is never mapped.
   * @throws {SystemError} from mmap.
   */
  mapFirstWindow(): void {
    if (this.#layout && (this.readable || this.writable)) this.#buffer(0);
  }

  /** Copies `length` bytes at region offset `off` into `dst[pos ..]`. */
  copyOut(off: number, dst: Uint8Array, pos: number, length: number): void {
    while (length > 0) {
      const [buffer, at, room] = this.#locate(off);
      const n = Math.min(length, room);
      dst.set(new Uint8Array(buffer, at, n), pos);
      off += n;
      pos += n;
      length -= n;
    }
    this.#guard();
  }

  /**
   * The region offset of `[iova, iova + length)` when it lies inside this region, else -1.
   * One bigint subtraction: the fast path's only 64-bit arithmetic.
   */
  offsetOf(iova: bigint, length: number): number {
    const off = Number(iova - this.addr);
    return off >= 0 && off + length <= this.#sizeNumber ? off : -1;
  }

  /**
   * Copies `bytes` to region offset `off` when that range lies in one mapped
   * window (the common case); returns false otherwise (use {@link copyIn}).
   */
  tryCopyIn(off: number, bytes: Uint8Array): boolean {
    const at = this.#windowOffset(off, bytes.length);
    if (at < 0) return false;
    (this.#hitBytes as Uint8Array).set(bytes, at);
    this.#guard();
    return true;
  }

  /** Like {@link tryCopyIn}, reading into `dst`. */
  tryCopyOut(off: number, dst: Uint8Array): boolean {
    const at = this.#windowOffset(off, dst.length);
    if (at < 0) return false;
    dst.set((this.#hitBytes as Uint8Array).subarray(at, at + dst.length));
    this.#guard();
    return true;
  }

  /**
   * The offset in {@link #hitBytes} of `[off, off + length)` when it lies in one
   * window, else -1. The last window used is cached, so repeated accesses
   * allocate nothing.
   */
  #windowOffset(off: number, length: number): number {
    const layout = this.#layout;
    if (!layout || !this.#mapped || this.#faulted) return -1;
    const rel = layout.delta + off;
    if (rel >= this.#hitStart && rel + length <= this.#hitEnd) return rel - this.#hitStart;
    const win = windowAt(layout, rel);
    if (rel - win.start + length > win.length) return -1;
    this.#hitBytes = new Uint8Array(this.#windows[win.index] ?? this.#buffer(win.index));
    this.#hitStart = win.start;
    this.#hitEnd = win.start + win.length;
    return rel - win.start;
  }

  /** Copies `length` bytes of `src[pos ..]` to region offset `off`. */
  copyIn(off: number, src: Uint8Array, pos: number, length: number): void {
    while (length > 0) {
      const [buffer, at, room] = this.#locate(off);
      const n = Math.min(length, room);
      new Uint8Array(buffer, at, n).set(src.subarray(pos, pos + n));
      off += n;
      pos += n;
      length -= n;
    }
    this.#guard();
  }

  /**
   * A view of `length` bytes at region offset `off`, or `undefined` when the
   * range straddles a window boundary by more than the window overlap.
   */
  view(off: number, length: number): Uint8Array | undefined {
    const [buffer, at, room] = this.#locate(off);
    return length <= room ? new Uint8Array(buffer, at, length) : undefined;
  }

  /**
   * Unmaps every window (detaching every view device code still holds: they
   * become length 0) and closes the fd. Idempotent.
   */
  release(closeFd: (fd: number) => void): void {
    if (!this.#mapped) return;
    this.#mapped = false;
    this.bitmap = undefined;
    for (const buffer of this.#windows) if (buffer) unmap(buffer);
    this.#windows.length = 0;
    const fd = this.#fd;
    this.#fd = -1;
    if (fd >= 0) closeFd(fd);
  }

  /**
   * After an access: when the SIGBUS guard absorbed a fault anywhere since
   * this region was last found intact, find out whether it was here.
   * @throws {StateError} EFAULT when this region's file shrank under it.
   */
  #guard(): void {
    if (sigbusFaults() !== this.#faultsSeen) this.#recheck();
    if (this.#faulted) throw this.#faultError();
  }

  #recheck(): void {
    this.#faultsSeen = sigbusFaults();
    if (this.#windows.some((w) => w !== undefined && mappingFaulted(w))) this.#faulted = true;
  }

  #faultError(): StateError {
    return new StateError(
      `DMA region [${this.addr}, ${this.end}): the client shrank its file under the mapping; unmap the region`,
      { errno: Errno.EFAULT },
    );
  }

  /**
   * `[buffer, offset in buffer, bytes available there]` for region offset `off`.
   * @throws {StateError} EFAULT once the region is {@link faulted}.
   */
  #locate(off: number): [ArrayBuffer, number, number] {
    this.#guard();
    const layout = this.#layout!;
    const rel = layout.delta + off;
    const win = windowAt(layout, rel);
    const buffer = this.#windows[win.index] ?? this.#buffer(win.index);
    return [buffer, rel - win.start, win.length - (rel - win.start)];
  }

  #buffer(index: number): ArrayBuffer {
    const layout = this.#layout!;
    const win = windowAt(layout, index * layout.stride);
    let buffer: ArrayBuffer;
    try {
      buffer = mapFd(this.#fd, layout.base + win.start, win.length, this.writable);
    } catch (error) {
      const errno = error instanceof SystemError ? error.errno : Errno.ENOMEM;
      throw new StateError(`DMA region [${this.addr}, ${this.end}): mmap of window ${index} failed`, {
        errno,
        cause: error,
      });
    }
    this.#windows[index] = buffer;
    return buffer;
  }
}
