/**
 * The device's regions other than config space: BARs, expansion ROM and VGA.
 * Each is served from shared memory (a memfd the client may mmap in its sparse
 * areas, sealed so that no client can resize it), from the author's callbacks, or both; the MSI-X table and PBA are
 * carved out of their BAR and routed to the MSI-X emulation.
 */
import { InvalidArgumentError } from '../errors.js';
import { RegionIndex, RegionInfoFlags } from '../protocol/constants.js';
import { createSealedMemfd, mapFd, native, unmap } from '../native/addon.js';
import type { Logger } from '../log.js';
import type { BarDefinition, DeviceDefinition, RegionDefinition, RegionSpan } from './types.js';
import type { IoEventFdDescription, RegionDescription } from '../server/types.js';
import { IoEventFd, checkIoEventFd } from './ioeventfds.js';
import { CallbackChecks } from './callback-checks.js';

/** The MSI-X structures' accessors (from config space) a region may host. */
export interface MsixWindow {
  tableOffset: number;
  tableSize: number;
  pbaOffset: number;
  pbaSize: number;
  tableRead(offset: number, length: number): Uint8Array;
  tableWrite(offset: number, data: Uint8Array): void;
  pbaRead(offset: number, length: number): Uint8Array;
}

const PAGE = native.constants.PAGE_SIZE;
/** Size of the vfio VGA region: legacy memory 0xa0000–0xbffff plus the VGA I/O ports. */
export const VGA_REGION_SIZE = 0xc0000;

/** One realized region. */
export class Region {
  readonly index: number;
  readonly size: number;
  readonly readable: boolean;
  readonly writable: boolean;
  readonly definition: RegionDefinition;
  /** Shared memory, mapped in this process (undefined when not shared). */
  readonly memory: Uint8Array | undefined;
  readonly fd: number | undefined;
  readonly sparse: readonly RegionSpan[];
  /** The areas that stay mappable while saving (SPARSE_MMAP_SAVING), when declared. */
  readonly savingSparse: readonly RegionSpan[] | undefined;
  readonly ioEventFds: readonly IoEventFd[];
  msix: MsixWindow | undefined;
  readonly #logger: Logger | undefined;
  /** The author's callbacks, called through checks that log their mistakes at warn. */
  readonly #callbacks: CallbackChecks;

  constructor(index: number, definition: RegionDefinition, msixCarveOut: RegionSpan[], logger?: Logger) {
    const declaredIoFds = (definition as BarDefinition).ioeventfds ?? [];
    for (const d of declaredIoFds) checkIoEventFd(definition.size, d); // validate before allocating anything
    this.index = index;
    this.#logger = logger;
    this.#callbacks = new CallbackChecks(index, logger);
    this.size = definition.size;
    this.definition = definition;
    this.readable = definition.readable ?? true;
    this.writable = index !== RegionIndex.ROM && (definition.writable ?? true);
    if (definition.shared) {
      const declared = typeof definition.shared === 'object' ? definition.shared.sparse : undefined;
      this.sparse = declared ? checkSparse(index, declared, this.size) : defaultSparse(this.size, msixCarveOut);
      this.savingSparse = definition.savingMmap && checkSaving(index, definition.savingMmap, this.sparse);
      const length = roundUp(this.size, PAGE);
      // Sealed before any client sees it: a client's ftruncate fails (EPERM) instead of making our accesses SIGBUS.
      this.fd = createSealedMemfd(`vfio-user-region-${index}`, length);
      this.memory = new Uint8Array(mapFd(this.fd, 0, length, true), 0, this.size);
    } else {
      this.memory = undefined;
      this.fd = undefined;
      this.sparse = [];
      this.savingSparse = undefined;
    }
    this.ioEventFds = declaredIoFds.map((d) => new IoEventFd(this.size, d, (offset, data) => this.#signalled(offset, data)));
  }

  /** The records GET_REGION_IO_FDS reports. */
  describeIoEventFds(): IoEventFdDescription[] {
    return this.ioEventFds.map((e) => e.describe());
  }

  /** An ioeventfd fired: the device sees a write. Nobody waits for a reply, so a failure is logged. */
  #signalled(offset: number, data: Uint8Array): void {
    const report = (err: unknown): void => this.#logger?.error({ err, region: this.index, offset }, 'ioeventfd write handler failed');
    try {
      const done = this.write(offset, data);
      if (done instanceof Promise) done.catch(report);
    } catch (err) {
      report(err);
    }
  }

  /** What GET_REGION_INFO reports. */
  describe(): RegionDescription {
    let flags = 0;
    if (this.readable) flags |= RegionInfoFlags.READ;
    if (this.writable) flags |= RegionInfoFlags.WRITE;
    if (this.fd === undefined || this.sparse.length === 0) return { flags, size: BigInt(this.size), fdOffset: 0n };
    return {
      flags: flags | RegionInfoFlags.MMAP,
      size: BigInt(this.size),
      fdOffset: 0n,
      fd: this.fd,
      sparse: this.sparse.map((s) => ({ offset: BigInt(s.offset), size: BigInt(s.size) })),
      ...(this.savingSparse ? { savingSparse: this.savingSparse.map((s) => ({ offset: BigInt(s.offset), size: BigInt(s.size) })) } : {}),
    };
  }

  /** Reads `length` bytes at `offset` (inside the region; checked by the caller). */
  read(offset: number, length: number): Uint8Array | Promise<Uint8Array> {
    const m = this.msix;
    if (m && this.#hits(offset, length, m.tableOffset, m.tableSize)) return m.tableRead(offset - m.tableOffset, length);
    if (m && this.#hits(offset, length, m.pbaOffset, m.pbaSize)) return m.pbaRead(offset - m.pbaOffset, length);
    if (this.memory && (this.#inSparse(offset, length) || !this.definition.read)) return this.memory.slice(offset, offset + length);
    if (this.definition.read) return this.#callbacks.read(this.definition, offset, length);
    if (m) return new Uint8Array(length); // the rest of a BAR that only hosts MSI-X reads as zeros
    throw new InvalidArgumentError(`region ${this.index} has no read handler for offset 0x${offset.toString(16)}`);
  }

  /** Writes `data` at `offset` (inside the region; checked by the caller). */
  write(offset: number, data: Uint8Array): void | Promise<void> {
    const m = this.msix;
    if (m && this.#hits(offset, data.length, m.tableOffset, m.tableSize)) return m.tableWrite(offset - m.tableOffset, data);
    if (m && this.#hits(offset, data.length, m.pbaOffset, m.pbaSize)) return; // the PBA is read-only
    if (this.memory && (this.#inSparse(offset, data.length) || !this.definition.write)) {
      this.memory.set(data, offset);
      return;
    }
    if (this.definition.write) return this.#callbacks.write(this.definition, offset, data);
    if (m) return; // ... and ignores writes
    throw new InvalidArgumentError(`region ${this.index} has no write handler for offset 0x${offset.toString(16)}`);
  }

  /** Unmaps and closes the shared memory. */
  dispose(): void {
    for (const e of this.ioEventFds) e.dispose();
    if (this.memory) unmap(this.memory.buffer as ArrayBuffer);
    if (this.fd !== undefined) native.close(this.fd);
  }

  /** Whether an access falls in an MSI-X structure; one that straddles its edge is refused. */
  #hits(offset: number, length: number, start: number, size: number): boolean {
    if (!overlaps(offset, length, start, size)) return false;
    if (offset >= start && offset + length <= start + size) return true;
    throw new InvalidArgumentError(`region ${this.index}: access 0x${offset.toString(16)}+${length} straddles the MSI-X table or PBA`);
  }

  #inSparse(offset: number, length: number): boolean {
    return this.sparse.some((s) => offset >= s.offset && offset + length <= s.offset + s.size);
  }
}

/** The BARs, ROM and VGA regions declared by a device, by vfio region index. */
export function buildRegions(def: DeviceDefinition, msixCarveOut: (bar: number) => RegionSpan[], logger?: Logger): (Region | undefined)[] {
  const r = def.regions ?? {};
  const bars: (BarDefinition | undefined)[] = [r.bar0, r.bar1, r.bar2, r.bar3, r.bar4, r.bar5];
  const out: (Region | undefined)[] = [];
  try {
    bars.forEach((bar, i) => (out[i] = bar ? new Region(i, bar, msixCarveOut(i), logger) : undefined));
    out[RegionIndex.ROM] = r.rom ? new Region(RegionIndex.ROM, r.rom, [], logger) : undefined;
    out[RegionIndex.CONFIG] = undefined; // config space is emulated by the device itself
    out[RegionIndex.VGA] = r.vga ? new Region(RegionIndex.VGA, { ...r.vga, size: r.vga.size || VGA_REGION_SIZE }, [], logger) : undefined;
  } catch (error) {
    for (const region of out) region?.dispose(); // all or nothing
    throw error;
  }
  return out;
}

/** The whole region, page-aligned, minus the pages holding the MSI-X table/PBA. */
function defaultSparse(size: number, carveOut: RegionSpan[]): RegionSpan[] {
  const excluded = carveOut.map((c) => ({ start: roundDown(c.offset, PAGE), end: roundUp(c.offset + c.size, PAGE) })).sort((a, b) => a.start - b.start);
  const areas: RegionSpan[] = [];
  let at = 0;
  for (const e of excluded) {
    if (e.start > at) areas.push({ offset: at, size: e.start - at });
    at = Math.max(at, e.end);
  }
  const end = roundUp(size, PAGE);
  if (at < end) areas.push({ offset: at, size: Math.min(end, size) - at });
  return areas.filter((a) => a.size > 0);
}

function checkSparse(index: number, areas: readonly RegionSpan[], size: number): RegionSpan[] {
  for (const a of areas) {
    if (a.offset % PAGE !== 0 || a.size <= 0 || a.offset + a.size > size) {
      throw new InvalidArgumentError(`region ${index}: sparse area 0x${a.offset.toString(16)}+0x${a.size.toString(16)} must be page aligned and inside the region`);
    }
  }
  return [...areas];
}

/** Saving areas must each lie inside one runtime sparse area (nothing more is mappable while saving). */
function checkSaving(index: number, areas: readonly RegionSpan[], sparse: readonly RegionSpan[]): RegionSpan[] {
  for (const a of areas) {
    if (!sparse.some((s) => a.offset >= s.offset && a.offset + a.size <= s.offset + s.size)) {
      throw new InvalidArgumentError(`region ${index}: savingMmap area 0x${a.offset.toString(16)}+0x${a.size.toString(16)} is not inside one runtime sparse area`);
    }
  }
  return areas.map((a) => ({ offset: a.offset, size: a.size }));
}

function overlaps(offset: number, length: number, start: number, size: number): boolean {
  return offset < start + size && offset + length > start;
}

function roundUp(x: number, to: number): number {
  return Math.ceil(x / to) * to;
}

function roundDown(x: number, to: number): number {
  return Math.floor(x / to) * to;
}
