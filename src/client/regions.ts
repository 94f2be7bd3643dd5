/**
 * A device region opened by the client: where the server offers the region
 * for mmap (MMAP flag, a sparse-mmap capability and an fd with
 * DEVICE_GET_REGION_INFO), each sparse area is mapped into this process and
 * accesses inside it are plain memory copies; everything else goes through
 * REGION_READ/REGION_WRITE messages. Every access records which path it took.
 *
 * Safety against a hostile or buggy server: an area is mapped only if it lies
 * inside the region and inside the file as `fstat` sees it (touching a
 * mapping past the end of its file kills the process with SIGBUS); an area
 * that cannot be mapped falls back to messages and is listed in `skipped`.
 * A server that shrinks the file *after* we mapped it can still cause SIGBUS
 * unless it sealed it (F_SEAL_SHRINK), which this module does not require.
 */
import { InvalidArgumentError, StateError } from '../errors.js';
import { mapFd, native, unmap } from '../native/addon.js';
import { RegionInfoFlags } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { savingLayoutOf } from '../protocol/mmap-saving.js';
import type { RegionInfo, SparseMmapArea } from '../protocol/region.js';
import type { VfioUserClient } from './client.js';
import { intersectLayout, mmapSavingOf, type SavingParticipant } from './mmap-saving.js';

/** How an access reached the device. */
export type RegionAccessPath = 'mmap' | 'message' | 'mixed' | 'none';

/** Options of {@link MappedRegion.open}. */
export interface MappedRegionOptions {
  /** Never mmap: every access is a message (the fd is closed right away). */
  messagesOnly?: boolean;
}

/** A sparse-mmap area mapped into this process. */
export interface MappedArea {
  /** Offset in the region. */
  readonly offset: bigint;
  readonly size: bigint;
  /** Mapped read-write (else writes here go through messages). */
  readonly writable: boolean;
  /** The live memory (empty once the region is closed). */
  readonly bytes: Uint8Array;
}

/** A sparse area that was not mapped, and why. */
export interface SkippedArea {
  readonly offset: bigint;
  readonly size: bigint;
  readonly reason: string;
}

/** Bytes and accesses per path since the region was opened. */
export interface RegionAccessStats {
  mmapBytes: number;
  messageBytes: number;
  mmapAccesses: number;
  messageAccesses: number;
}

interface Segment {
  at: bigint;
  n: number;
  area: MappedArea | undefined;
}

/**
 * One region of a device, mmapped where the server allows it. A region whose info carries a SPARSE_MMAP_SAVING
 * layout takes part in `x-client-mmaps` (mmap-saving.ts): its mappings are declared to the server, and while the
 * device saves only the parts inside the saving layout stay mapped (the rest goes through messages; live
 * {@link view}s of an unmapped area become empty).
 */
export class MappedRegion implements SavingParticipant {
  readonly client: VfioUserClient;
  /** Region index (RegionIndex). */
  readonly index: number;
  /** DEVICE_GET_REGION_INFO's answer. */
  readonly info: RegionInfo;
  readonly size: bigint;
  /** The SPARSE_MMAP_SAVING layout (areas mappable while saving), or undefined when the server sent none. */
  readonly savingLayout: readonly SparseMmapArea[] | undefined;
  /** Path of the last completed access. */
  lastPath: RegionAccessPath = 'none';
  readonly stats: RegionAccessStats = { mmapBytes: 0, messageBytes: 0, mmapAccesses: 0, messageAccesses: 0 };
  #fd: number | undefined;
  #closed = false;
  #areas: MappedArea[] = [];
  #skipped: SkippedArea[] = [];
  /** The sparse areas offered (the runtime layout). */
  readonly #runtime: readonly SparseMmapArea[];

  private constructor(client: VfioUserClient, index: number, info: RegionInfo, fd: number | undefined, runtime: readonly SparseMmapArea[]) {
    this.client = client;
    this.index = index;
    this.info = info;
    this.size = info.size;
    this.#fd = fd;
    this.#runtime = runtime;
    this.savingLayout = fd === undefined ? undefined : savingLayoutOrEmpty(info);
  }

  /** The mapped areas, by offset. */
  get areas(): readonly MappedArea[] {
    return this.#areas;
  }

  /** Sparse areas of the current layout that could not be mapped. */
  get skipped(): readonly SkippedArea[] {
    return this.#skipped;
  }

  /**
   * DEVICE_GET_REGION_INFO of `index`, then mmaps its sparse areas (unless
   * `messagesOnly`, or the region has no MMAP flag, sparse capability or fd).
   * @throws {RemoteError} EINVAL for an index the device does not have.
   */
  static async open(client: VfioUserClient, index: number, options: MappedRegionOptions = {}): Promise<MappedRegion> {
    const { info, fd } = await client.regionInfo(index);
    const sparse = info.caps.flatMap((c) => (c.kind === 'sparse-mmap' ? c.areas : []));
    const usable = fd !== undefined && !options.messagesOnly && (info.flags & RegionInfoFlags.MMAP) !== 0 && sparse.length > 0;
    if (!usable) {
      if (fd !== undefined) native.close(fd);
      return new MappedRegion(client, index, info, undefined, []);
    }
    const region = new MappedRegion(client, index, info, fd, sparse);
    const tracker = mmapSavingOf(client);
    if (region.savingLayout !== undefined && tracker.feature !== undefined) {
      try {
        await tracker.admit(region, region.targetAreas(tracker.saving)); // declared before it is mapped
      } catch (error) {
        region.#skipped = sparse.map((a) => ({ offset: a.offset, size: a.size, reason: `x-client-mmaps declaration failed: ${(error as Error).message}` }));
        return region;
      }
    }
    region.remap(tracker.saving);
    return region;
  }

  /** The areas mapped now (SavingParticipant). */
  mappedAreas(): readonly SparseMmapArea[] {
    return this.#closed ? [] : this.#areas.map((a) => ({ offset: a.offset, size: a.size }));
  }

  /** The areas of the runtime layout, or (`saving`) their parts inside the saving layout (SavingParticipant). */
  targetAreas(saving: boolean): readonly SparseMmapArea[] {
    return saving && this.savingLayout !== undefined ? intersectLayout(this.#runtime, this.savingLayout) : this.#runtime;
  }

  /**
   * Unmaps the areas that are not targets of the layout and maps those that are not mapped yet (SavingParticipant;
   * called by mmap-saving.ts in the order that keeps the server's declaration a superset).
   */
  remap(saving: boolean): void {
    if (this.#closed || this.#fd === undefined) return;
    const targets = this.targetAreas(saving);
    const same = (a: SparseMmapArea, b: SparseMmapArea): boolean => a.offset === b.offset && a.size === b.size;
    const keep: MappedArea[] = [];
    for (const a of this.#areas) {
      if (targets.some((t) => same(t, a))) keep.push(a);
      else unmap(a.bytes.buffer as ArrayBuffer);
    }
    const skipped: SkippedArea[] = [];
    const fileSize = fileSizeOf(this.#fd);
    const writable = (this.info.flags & RegionInfoFlags.WRITE) !== 0;
    for (const area of targets) {
      if (keep.some((k) => same(k, area))) continue;
      const mapped = mapArea(this.#fd, this.info, area, fileSize, writable, keep);
      if (typeof mapped === 'string') skipped.push({ offset: area.offset, size: area.size, reason: mapped });
      else keep.push(mapped);
    }
    this.#areas = keep.sort((a, b) => (a.offset < b.offset ? -1 : 1));
    this.#skipped = skipped;
  }

  /** Whether some area is mapped. */
  get mapped(): boolean {
    return this.areas.length > 0 && !this.#closed;
  }

  /** Whether {@link close} ran. */
  get closed(): boolean {
    return this.#closed;
  }

  /** The path an access of `length` bytes at `offset` would take. @throws {InvalidArgumentError} EINVAL outside the region. */
  pathOf(offset: bigint, length: number, access: 'read' | 'write' = 'read'): RegionAccessPath {
    return pathOfSegments(this.#segments('pathOf', offset, length, access));
  }

  /**
   * Reads `length` bytes at `offset`: mapped areas by memory copy, the rest by REGION_READ.
   * @throws {InvalidArgumentError} EINVAL outside the region; {@link StateError} once closed; {@link RemoteError} the server's errno.
   */
  async read(offset: bigint, length: number): Promise<Uint8Array> {
    const segments = this.#segments('read', offset, length, 'read');
    const out = new Uint8Array(length);
    let done = 0;
    for (const s of segments) {
      if (s.area && !this.#areas.includes(s.area)) s.area = undefined; // unmapped for saving meanwhile: a message
      if (s.area) out.set(s.area.bytes.subarray(Number(s.at - s.area.offset), Number(s.at - s.area.offset) + s.n), done);
      else out.set(await this.client.regionRead(this.index, s.at, s.n), done);
      done += s.n;
    }
    this.#account(segments);
    return out;
  }

  /**
   * Writes `data` at `offset`, in order: writable mapped areas by memory copy,
   * the rest by REGION_WRITE.
   * @throws {InvalidArgumentError} EINVAL outside the region; {@link StateError} once closed; {@link RemoteError} the server's errno.
   */
  async write(offset: bigint, data: Uint8Array): Promise<void> {
    const segments = this.#segments('write', offset, data.length, 'write');
    let done = 0;
    for (const s of segments) {
      const part = data.subarray(done, done + s.n);
      if (s.area && !this.#areas.includes(s.area)) s.area = undefined; // unmapped for saving meanwhile: a message
      if (s.area) s.area.bytes.set(part, Number(s.at - s.area.offset));
      else await this.client.regionWrite(this.index, s.at, part);
      done += s.n;
    }
    this.#account(segments);
  }

  /** A live view of `[offset, offset + length)` if it lies inside one mapped area, else undefined. */
  view(offset: bigint, length: number): Uint8Array | undefined {
    const [s, ...rest] = this.#segments('view', offset, length, 'read');
    if (!s?.area || rest.length > 0) return undefined;
    const at = Number(s.at - s.area.offset);
    return s.area.bytes.subarray(at, at + length);
  }

  /** Unmaps the areas and closes the region fd. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    mmapSavingOf(this.client).leave(this);
    for (const a of this.#areas) unmap(a.bytes.buffer as ArrayBuffer);
    if (this.#fd !== undefined) native.close(this.#fd);
    this.#fd = undefined;
  }

  #segments(site: string, offset: bigint, length: number, access: 'read' | 'write'): Segment[] {
    if (this.#closed) throw new StateError(`MappedRegion.${site}: region ${this.index} is closed`, { errno: Errno.EBADF });
    if (!Number.isSafeInteger(length) || length < 0 || offset < 0n || offset + BigInt(length) > this.size) {
      throw new InvalidArgumentError(`MappedRegion.${site}: 0x${offset.toString(16)}+${length} outside region ${this.index} (${this.size} bytes)`);
    }
    const usable = access === 'read' ? this.#areas : this.#areas.filter((a) => a.writable);
    const out: Segment[] = [];
    const end = offset + BigInt(length);
    for (let at = offset; at < end; ) {
      const area = usable.find((a) => a.offset <= at && at < a.offset + a.size);
      let stop = end;
      if (area) stop = min(end, area.offset + area.size);
      else for (const a of usable) if (a.offset > at) stop = min(stop, a.offset);
      out.push({ at, n: Number(stop - at), area });
      at = stop;
    }
    return out;
  }

  #account(segments: Segment[]): void {
    let mmap = 0;
    let message = 0;
    for (const s of segments) {
      if (s.area) mmap += s.n;
      else message += s.n;
    }
    if (mmap > 0) this.stats.mmapAccesses++;
    if (message > 0) this.stats.messageAccesses++;
    this.stats.mmapBytes += mmap;
    this.stats.messageBytes += message;
    this.lastPath = pathOfSegments(segments);
  }
}

function pathOfSegments(segments: Segment[]): RegionAccessPath {
  const mmap = segments.some((s) => s.area);
  const message = segments.some((s) => !s.area);
  return mmap && message ? 'mixed' : mmap ? 'mmap' : message ? 'message' : 'none';
}

function min(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

function fileSizeOf(fd: number): bigint {
  try {
    return BigInt(native.fstat(fd).size);
  } catch {
    return 0n;
  }
}

/** Maps one sparse area, or says why not. */
function mapArea(fd: number, info: RegionInfo, area: SparseMmapArea, fileSize: bigint, writable: boolean, mapped: readonly MappedArea[]): MappedArea | string {
  if (area.size === 0n) return 'empty area';
  if (area.offset + area.size > info.size) return 'outside the region';
  if (mapped.some((a) => area.offset < a.offset + a.size && a.offset < area.offset + area.size)) return 'overlaps another area';
  const start = info.offset + area.offset;
  if (start + area.size > fileSize) return `outside the file (${fileSize} bytes)`;
  const page = BigInt(native.constants.PAGE_SIZE);
  const base = start - (start % page);
  const delta = Number(start - base);
  const length = delta + Number(area.size);
  if (!Number.isSafeInteger(length) || length > 2 ** 32) return 'too large for one mapping';
  const attempt = (rw: boolean): MappedArea => ({
    offset: area.offset,
    size: area.size,
    writable: rw,
    bytes: new Uint8Array(mapFd(fd, Number(base), length, rw), delta, Number(area.size)),
  });
  try {
    return attempt(writable);
  } catch (error) {
    if (!writable) return `mmap failed: ${(error as Error).message}`;
  }
  try {
    return attempt(false); // an fd opened read-only: map read-only, write through messages
  } catch (error) {
    return `mmap failed: ${(error as Error).message}`;
  }
}

/** The region's saving layout; a malformed capability counts as an empty layout (nothing stays mapped while saving). */
function savingLayoutOrEmpty(info: RegionInfo): readonly SparseMmapArea[] | undefined {
  try {
    return savingLayoutOf(info);
  } catch {
    return [];
  }
}
