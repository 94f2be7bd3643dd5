/**
 * Dirty tracking by steering the upstream's DMA through the mediator.
 *
 * The plugin keeps a mirror of the client's DMA table (a DmaController: the
 * client's fds dup'd and mmapped) plus one more dup of each fd. While the
 * client logs (DMA_LOGGING_START … STOP), every fd-backed region is presented
 * to the upstream WITHOUT its fd (DMA_UNMAP, then DMA_MAP without fd), so the
 * upstream's DMA arrives as DMA_READ / DMA_WRITE messages; the plugin applies
 * them to the client's memory through its own mapping, and the mirror marks
 * the pages dirty. LOGGING_STOP maps the fds back.
 *
 * In-flight DMA across the switch: the upstream's DMA_UNMAP reply means it no
 * longer uses the old mapping, and the START reply goes to the client only
 * after every region was re-presented — so every write that completes after
 * START's reply is steered and logged; earlier ones are covered by the
 * orchestrator's full copy, which follows START. Between a region's UNMAP and
 * its new MAP the upstream has no mapping there (its DMA fails EFAULT): the
 * session quiesces the device around the switch when the spec says how.
 * DMA messages that arrive for a range the mirror maps by fd are applied here
 * while steering and while a switch back is under way; outside that the
 * client answers them, as it would without the mediator.
 */
import { ProtocolError } from '../../errors.js';
import { DmaController } from '../../device/dma.js';
import { native } from '../../native/addon.js';
import { DmaMapFlags, U64_MAX } from '../../protocol/constants.js';
import { Errno } from '../../protocol/errno.js';
import type { DmaMapRequest } from '../../protocol/dma.js';
import type { DmaLoggingRange } from '../../protocol/feature.js';
import type { UpstreamPort } from './upstream.js';

/** Most ranges one START may carry (the kernel's one page of ranges). */
export const MAX_LOGGING_RANGES = 256;

/** Counters, for tests and logs. */
export interface SteeringStats {
  steering: boolean;
  steeredWrites: number;
  steeredReads: number;
  steeredBytes: number;
  /** Times the regions were re-presented (to message mode, and back). */
  switches: number;
}

interface Kept {
  request: DmaMapRequest;
  /** Our own dup of the client's fd (for mapping it back upstream). */
  fd: number | undefined;
  /** The upstream has it without its fd now. */
  steered: boolean;
}

/** A dup of `fd`. @throws {ProtocolError} the errno (EMFILE…). */
function dup(fd: number): number {
  const copy = native.dup(fd);
  if (copy < 0) throw new ProtocolError(`dup of a DMA fd failed (errno ${-copy})`, { errno: -copy });
  return copy;
}

const isPowerOfTwo = (x: bigint): boolean => x > 0n && (x & (x - 1n)) === 0n;

/**
 * The kernel's DMA_LOGGING_START checks (E2BIG, EINVAL, EOVERFLOW), one rule each.
 * @throws {ProtocolError}
 */
export function checkLoggingStart(pageSize: bigint, ranges: readonly DmaLoggingRange[]): void {
  if (!isPowerOfTwo(pageSize)) throw new ProtocolError(`DMA_LOGGING_START: page size ${pageSize} is not a power of two`);
  if (ranges.length > MAX_LOGGING_RANGES) throw new ProtocolError(`DMA_LOGGING_START: ${ranges.length} ranges, at most ${MAX_LOGGING_RANGES}`, { errno: Errno.E2BIG });
  for (const r of ranges) {
    if (r.iova % pageSize !== 0n || r.length % pageSize !== 0n || r.length === 0n) throw new ProtocolError('DMA_LOGGING_START: a range is not a non-empty multiple of the page size');
    if (r.iova + r.length - 1n > U64_MAX) throw new ProtocolError('DMA_LOGGING_START: range overflows 2^64', { errno: Errno.EOVERFLOW });
  }
  const sorted = [...ranges].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1] as DmaLoggingRange;
    if ((sorted[i] as DmaLoggingRange).iova < prev.iova + prev.length) throw new ProtocolError('DMA_LOGGING_START: ranges overlap');
  }
}

/** A DMA_MAP as the upstream sees it while steering: no fd, so no MMAP / FILE_IO flag, offset 0. */
function withoutFd(request: DmaMapRequest): DmaMapRequest {
  return { ...request, flags: request.flags & ~(DmaMapFlags.MMAP | DmaMapFlags.FILE_IO), offset: 0n };
}

/** The client's DMA table as the plugin mirrors it, and the steering switch. */
export class DmaSteering {
  readonly mirror = new DmaController({ pageSize: 4096 });
  readonly #kept = new Map<bigint, Kept>();
  #steering = false;
  readonly stats: SteeringStats = { steering: false, steeredWrites: 0, steeredReads: 0, steeredBytes: 0, switches: 0 };

  get steering(): boolean {
    return this.#steering;
  }

  /**
   * The client's DMA_MAP: mirrored first (our DmaController's checks), then
   * sent upstream — without the fd while steering.
   * @throws {ProtocolError} the mirror's errno (EINVAL overlap, …); the upstream's error (the mirror entry is dropped).
   */
  async map(port: UpstreamPort, request: DmaMapRequest, fd: number | undefined): Promise<void> {
    this.mirror.map(request, fd === undefined ? undefined : dup(fd));
    let kept: Kept;
    try {
      kept = { request, fd: fd === undefined ? undefined : dup(fd), steered: this.#steering && fd !== undefined };
    } catch (error) {
      this.mirror.unmap(request.addr, request.size);
      throw error;
    }
    try {
      await port.dmaMap(this.#steering && fd !== undefined ? withoutFd(request) : request, this.#steering ? undefined : fd);
    } catch (error) {
      if (kept.fd !== undefined) native.close(kept.fd);
      try {
        this.mirror.unmap(request.addr, request.size);
      } catch {
        // an identical earlier map stays as it was
      }
      throw error;
    }
    const old = this.#kept.get(request.addr);
    if (old?.fd !== undefined) native.close(old.fd);
    this.#kept.set(request.addr, kept);
  }

  /** The client's DMA_UNMAP of one region (after the upstream's success). */
  forget(addr: bigint, size: bigint): void {
    try {
      this.mirror.unmap(addr, size);
    } finally {
      this.#drop(addr);
    }
  }

  /**
   * The rules of an unmap with a dirty bitmap that can be checked before the upstream unmaps: logging on, a
   * power-of-two page size ≥ 4 KiB, a region that is exactly the range.
   * @throws {ProtocolError} EINVAL, ENOENT.
   */
  checkUnmapBitmap(addr: bigint, size: bigint, pageSize: bigint): void {
    if (!this.mirror.logging) throw new ProtocolError('DMA_UNMAP with GET_DIRTY_BITMAP: logging is not started');
    if (pageSize < 4096n || !isPowerOfTwo(pageSize)) throw new ProtocolError(`DMA_UNMAP: bitmap page size ${pageSize} is not a power of two ≥ 4096`);
    if (!this.mirror.regions().some((r) => r.addr === addr && r.size === size)) throw new ProtocolError('DMA_UNMAP: no region is exactly that range', { errno: Errno.ENOENT });
  }

  /** The client's DMA_UNMAP with GET_DIRTY_BITMAP: the mirror's bitmap for the region, then forgotten. */
  forgetWithBitmap(addr: bigint, size: bigint, pageSize: bigint): Uint8Array {
    try {
      return this.mirror.unmapWithDirtyBitmap(addr, size, pageSize).bitmap;
    } finally {
      this.#drop(addr);
    }
  }

  /** DMA_UNMAP ALL. */
  forgetAll(): void {
    this.mirror.unmapAll();
    for (const addr of [...this.#kept.keys()]) this.#drop(addr);
  }

  #drop(addr: bigint): void {
    const kept = this.#kept.get(addr);
    if (kept?.fd !== undefined) native.close(kept.fd);
    this.#kept.delete(addr);
  }

  /**
   * Re-presents every fd-backed region to the upstream: without fds (`on`) or
   * with them again; new maps follow the same mode. Each region records where
   * it is, so a failure part-way leaves an exact picture and a later call
   * (e.g. back to fds) handles only the regions that moved.
   * @throws the upstream's error (that region is put back as it was, if the upstream lets it).
   */
  async steer(port: UpstreamPort, on: boolean): Promise<void> {
    if (this.#steering !== on) this.stats.switches++;
    this.#steering = on;
    this.stats.steering = on;
    for (const kept of this.#kept.values()) {
      if (kept.fd === undefined || kept.steered === on) continue;
      const { addr, size } = kept.request;
      await port.dmaUnmap(addr, size);
      try {
        await port.dmaMap(on ? withoutFd(kept.request) : kept.request, on ? undefined : kept.fd);
      } catch (error) {
        await port.dmaMap(on ? kept.request : withoutFd(kept.request), on ? kept.fd : undefined).catch(() => undefined);
        throw error;
      }
      kept.steered = on;
    }
  }

  /**
   * An upstream DMA_WRITE: applied here when every byte lies in a region the
   * client mapped with an fd (pages marked dirty while logging).
   * @returns false when the client must answer it (a message-mode region, an unmapped byte).
   * @throws {InvalidArgumentError} EACCES (region without WRITE).
   */
  write(addr: bigint, data: Uint8Array): boolean {
    if (!this.#local(addr, data.length)) return false;
    this.mirror.writeSync(addr, data);
    this.stats.steeredWrites++;
    this.stats.steeredBytes += data.length;
    return true;
  }

  /** An upstream DMA_READ, answered here as {@link write}; undefined when the client must answer it. */
  read(addr: bigint, count: number): Uint8Array | undefined {
    if (!this.#local(addr, count)) return undefined;
    const data = this.mirror.readSync(addr, count);
    this.stats.steeredReads++;
    this.stats.steeredBytes += count;
    return data;
  }

  /**
   * Whether a DMA message is ours to answer: only while steering (or while a
   * switch back is under way), and only when every byte is fd-backed. Otherwise
   * the client answers it as it would without the mediator (its reply layout,
   * e.g. QEMU's, untouched).
   */
  #local(addr: bigint, count: number): boolean {
    if (count === 0 || !(this.#steering || this.#anySteered())) return false;
    try {
      return this.mirror.scatterGather(addr, count).every((s) => s.region.mode === 'mmap');
    } catch {
      return false;
    }
  }

  #anySteered(): boolean {
    for (const kept of this.#kept.values()) if (kept.steered) return true;
    return false;
  }

  /** Closes every kept fd and the mirror (session end). */
  close(): void {
    for (const kept of this.#kept.values()) if (kept.fd !== undefined) native.close(kept.fd);
    this.#kept.clear();
    this.mirror.close();
  }
}
