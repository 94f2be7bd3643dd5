/**
 * BAR memory as device state: the areas the spec names (default: every area
 * the upstream offers for mmap), reached through the region fd the upstream's
 * GET_REGION_INFO gives (mmapped by the plugin) or, without one, by
 * REGION_READ / REGION_WRITE. A shadow of what was last sent lets a pre-copy
 * send only the pages that changed since, whoever changed them (the client
 * through trapped accesses, or the device itself).
 */
import { mapFd, native, unmap } from '../../native/addon.js';
import { RegionInfoFlags } from '../../protocol/constants.js';
import { SectionKind, type Section } from './state-codec.js';
import type { MemoryArea } from './spec.js';
import type { UpstreamPort } from './upstream.js';

/** Granularity of the shadow comparison. */
const PAGE = 4096;
/** Largest area the plugin carries (its shadow lives in this process). */
const MAX_AREA = 1 << 30;
/** Regions that can hold memory: the BARs and VGA. */
const MEMORY_REGIONS = [0, 1, 2, 3, 4, 5, 8];

/** One area of one region. */
class Area {
  readonly region: number;
  readonly offset: bigint;
  readonly size: number;
  /** The mapping, when the upstream gave an fd. */
  #buffer: ArrayBuffer | undefined;
  #view: Uint8Array | undefined;
  #shadow: Uint8Array | undefined;

  constructor(region: number, offset: bigint, size: number, buffer: ArrayBuffer | undefined) {
    this.region = region;
    this.offset = offset;
    this.size = size;
    this.#buffer = buffer;
    this.#view = buffer ? new Uint8Array(buffer) : undefined;
  }

  async read(port: UpstreamPort): Promise<Uint8Array> {
    return this.#view ? this.#view.slice() : port.regionRead(this.region, this.offset, this.size);
  }

  async write(port: UpstreamPort, at: number, data: Uint8Array): Promise<void> {
    if (at < 0 || at + data.length > this.size) throw new RangeError(`memory section [${at}, +${data.length}) outside area of ${this.size} bytes`);
    if (this.#view) this.#view.set(data, at);
    else await port.regionWrite(this.region, this.offset + BigInt(at), data);
  }

  /** Sections for the pages that differ from the shadow (all of it without one); the shadow follows. */
  async changed(port: UpstreamPort, all: boolean): Promise<Section[]> {
    const shadow = this.#shadow;
    if (all || !shadow) {
      const now = await this.read(port);
      this.#shadow = now.slice();
      return [{ kind: SectionKind.MEMORY, index: this.region, offset: this.offset, data: now }];
    }
    // Mapped: compared in place, only the changed runs copied. Otherwise one read, compared with the shadow.
    const now = this.#view ?? (await this.read(port));
    const a = Buffer.from(now.buffer, now.byteOffset, now.length);
    const out: Section[] = [];
    let runStart = -1;
    for (let p = 0; p <= this.size; p += PAGE) {
      const end = Math.min(p + PAGE, this.size);
      const dirty = p < this.size && a.compare(shadow, p, end, p, end) !== 0;
      if (dirty && runStart < 0) runStart = p;
      if (!dirty && runStart >= 0) {
        const data = now.slice(runStart, p);
        shadow.set(data, runStart);
        out.push({ kind: SectionKind.MEMORY, index: this.region, offset: this.offset + BigInt(runStart), data });
        runStart = -1;
      }
    }
    return out;
  }

  forget(): void {
    this.#shadow = undefined;
  }

  /** Bytes the next {@link changed} would send: the changed pages of a mapped area (a scan), else all of it. */
  pending(): number {
    const shadow = this.#shadow;
    const view = this.#view;
    if (!shadow || !view) return this.size;
    const a = Buffer.from(view.buffer, view.byteOffset, view.length);
    let n = 0;
    for (let p = 0; p < this.size; p += PAGE) {
      const end = Math.min(p + PAGE, this.size);
      if (a.compare(shadow, p, end, p, end) !== 0) n += end - p;
    }
    return n;
  }

  release(): void {
    if (this.#buffer) unmap(this.#buffer);
    this.#buffer = undefined;
    this.#view = undefined;
    this.#shadow = undefined;
  }
}

/** The areas of the upstream's memory the state carries. */
export class DeviceMemory {
  readonly #areas: Area[];

  private constructor(areas: Area[]) {
    this.#areas = areas;
  }

  /** Bytes carried in all. */
  get size(): number {
    return this.#areas.reduce((n, a) => n + a.size, 0);
  }

  /** The areas, as (region, offset, size). */
  get areas(): ReadonlyArray<{ region: number; offset: bigint; size: number }> {
    return this.#areas;
  }

  /**
   * Finds the areas: `'mmappable'` = the sparse-mmap areas (or whole region)
   * of every BAR (and VGA) flagged MMAP; a list = those spans. Each is mapped through
   * the region's fd when the upstream gives one (writable if the region is).
   * @throws {RangeError} for an area outside its region or over 1 GiB; the upstream's errors.
   */
  static async open(port: UpstreamPort, spec: 'mmappable' | readonly MemoryArea[]): Promise<DeviceMemory> {
    const areas: Area[] = [];
    const listed = new Map<number, MemoryArea[]>();
    if (spec !== 'mmappable') for (const m of spec) listed.set(m.region, [...(listed.get(m.region) ?? []), m]);
    const regions = spec === 'mmappable' ? MEMORY_REGIONS : [...listed.keys()];
    try {
      for (const region of regions) await openRegion(port, region, spec === 'mmappable' ? undefined : listed.get(region), areas);
    } catch (error) {
      for (const a of areas) a.release();
      throw error;
    }
    return new DeviceMemory(areas);
  }

  /** Sections of every area: whole (`all`) or the pages changed since the last call. */
  async sections(port: UpstreamPort, all: boolean): Promise<Section[]> {
    const out: Section[] = [];
    for (const a of this.#areas) out.push(...(await a.changed(port, all)));
    return out;
  }

  /**
   * Applies a MEMORY section.
   * @throws {RangeError} when it lies outside every area.
   */
  async apply(port: UpstreamPort, section: Section): Promise<void> {
    const end = section.offset + BigInt(section.data.length);
    const area = this.#areas.find((a) => a.region === section.index && section.offset >= a.offset && end <= a.offset + BigInt(a.size));
    if (!area) throw new RangeError(`memory section region ${section.index} [0x${section.offset.toString(16)}, +${section.data.length}) is outside the carried areas`);
    await area.write(port, Number(section.offset - area.offset), section.data);
  }

  /** Bytes the next {@link sections} (not `all`) would carry, section headers aside (MIG_DATA_SIZE). */
  pending(): number {
    return this.#areas.reduce((n, a) => n + a.pending(), 0);
  }

  /** Drops the shadows (the next sections are whole). */
  forget(): void {
    for (const a of this.#areas) a.forget();
  }

  release(): void {
    for (const a of this.#areas) a.release();
  }
}

/** Opens one region's areas: its fd mapped when possible. */
async function openRegion(port: UpstreamPort, region: number, listed: readonly MemoryArea[] | undefined, into: Area[]): Promise<void> {
  const { info, fd } = await port.regionInfo(region);
  try {
    if (info.size === 0n || (!listed && (info.flags & RegionInfoFlags.MMAP) === 0)) return;
    const spans = listed
      ? listed.map((m) => ({ offset: m.offset ?? 0n, size: m.size ?? info.size - (m.offset ?? 0n) }))
      : (info.caps.find((c) => c.kind === 'sparse-mmap')?.areas ?? [{ offset: 0n, size: info.size }]);
    for (const span of spans) {
      if (span.offset < 0n || span.size <= 0n || span.offset + span.size > info.size || span.size > BigInt(MAX_AREA)) {
        throw new RangeError(`memory area region ${region} [0x${span.offset.toString(16)}, +0x${span.size.toString(16)}) is outside the region or too large`);
      }
      const mappable = fd !== undefined && (info.flags & RegionInfoFlags.MMAP) !== 0 && (info.offset + span.offset) % BigInt(PAGE) === 0n;
      const buffer = mappable ? mapFd(fd, Number(info.offset + span.offset), Number(span.size), (info.flags & RegionInfoFlags.WRITE) !== 0) : undefined;
      into.push(new Area(region, span.offset, Number(span.size), buffer));
    }
  } finally {
    if (fd !== undefined) native.close(fd);
  }
}
