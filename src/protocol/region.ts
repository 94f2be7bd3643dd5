/**
 * DEVICE_GET_REGION_INFO (5): `struct vfio_region_info` and its capability
 * chain (sparse mmap, region type, and unknown capabilities kept raw).
 * Capability offsets (`cap_offset`, `next`) count from the start of region_info,
 * i.e. from the start of the payload.
 */
import {
  CAP_HEADER_SIZE,
  REGION_INFO_SIZE,
  REGION_TYPE_CAP_SIZE,
  RegionCapId,
  RegionInfoFlags,
  SPARSE_MMAP_AREA_SIZE,
  SPARSE_MMAP_CAP_SIZE,
} from './constants.js';
import { WireReader } from './wire-reader.js';
import { WireWriter } from './wire-writer.js';

/** One mmap-able area, relative to the region (mmap at `region.offset + area.offset`). */
export interface SparseMmapArea {
  offset: bigint;
  size: bigint;
}

/** `VFIO_REGION_INFO_CAP_SPARSE_MMAP` (id 1). */
export interface SparseMmapCap {
  kind: 'sparse-mmap';
  version: number;
  areas: SparseMmapArea[];
}

/** `VFIO_REGION_INFO_CAP_TYPE` (id 2): a device-specific region's type/subtype. */
export interface RegionTypeCap {
  kind: 'type';
  version: number;
  type: number;
  subtype: number;
}

/** A capability this library does not interpret; `data` is everything after its 8-byte header. */
export interface UnknownRegionCap {
  kind: 'unknown';
  id: number;
  version: number;
  data: Uint8Array;
}

/** One entry of the region info capability chain. */
export type RegionCap = SparseMmapCap | RegionTypeCap | UnknownRegionCap;

/** DEVICE_GET_REGION_INFO request: only `argsz` and `index` are meaningful (other fields sent as zero). */
export interface RegionInfoRequest {
  /** Largest reply payload the client accepts (≥ 32). */
  argsz: number;
  index: number;
}

/** DEVICE_GET_REGION_INFO reply. */
export interface RegionInfo {
  /** Payload size needed for everything (32 + caps); may exceed what was sent. */
  argsz: number;
  /** `RegionInfoFlags` bits, raw. */
  flags: number;
  index: number;
  /** Offset of the first capability, 0 if none. Written as 32 when `caps` is non-empty. */
  capOffset: number;
  size: bigint;
  /** mmap offset of the region in the accompanying fd. */
  offset: bigint;
  /** The decoded chain, in chain order; empty unless CAPS is set and `capOffset` ≠ 0. */
  caps: RegionCap[];
}

/** Encodes a DEVICE_GET_REGION_INFO request (32 bytes). @throws {InvalidArgumentError} EINVAL. */
export function encodeRegionInfoRequest(v: RegionInfoRequest): Uint8Array {
  return new WireWriter(REGION_INFO_SIZE, 'DEVICE_GET_REGION_INFO')
    .u32(v.argsz, 'argsz')
    .zeros(4, 'flags')
    .u32(v.index, 'index')
    .zeros(20, 'cap_offset, size, offset')
    .finish();
}

/**
 * Decodes a DEVICE_GET_REGION_INFO request; fields other than argsz/index are ignored.
 * @throws {ProtocolError} EINVAL if shorter than 32 bytes.
 */
export function decodeRegionInfoRequest(payload: Uint8Array): RegionInfoRequest {
  const r = new WireReader(payload, 'DEVICE_GET_REGION_INFO');
  r.need(REGION_INFO_SIZE, 'region_info');
  const argsz = r.u32('argsz');
  r.skip(4, 'flags');
  return { argsz, index: r.u32('index') };
}

function capSize(cap: RegionCap): number {
  switch (cap.kind) {
    case 'sparse-mmap':
      return SPARSE_MMAP_CAP_SIZE + SPARSE_MMAP_AREA_SIZE * cap.areas.length;
    case 'type':
      return REGION_TYPE_CAP_SIZE;
    case 'unknown':
      return CAP_HEADER_SIZE + cap.data.length;
  }
}

function capId(cap: RegionCap): number {
  if (cap.kind === 'sparse-mmap') return RegionCapId.SPARSE_MMAP;
  if (cap.kind === 'type') return RegionCapId.TYPE;
  return cap.id;
}

function writeCap(w: WireWriter, cap: RegionCap, next: number): void {
  w.u16(capId(cap), 'cap.id').u16(cap.version, 'cap.version').u32(next, 'cap.next');
  if (cap.kind === 'sparse-mmap') {
    w.u32(cap.areas.length, 'nr_areas').zeros(4, 'reserved');
    for (const a of cap.areas) w.u64(a.offset, 'area.offset').u64(a.size, 'area.size');
  } else if (cap.kind === 'type') {
    w.u32(cap.type, 'type').u32(cap.subtype, 'subtype');
  } else {
    w.bytes(cap.data, 'cap.data');
  }
}

/**
 * Encodes a DEVICE_GET_REGION_INFO reply. Capabilities are laid out one after
 * another from offset 32, each `next` pointing at the following one (0 ends);
 * `cap_offset` is then 32. `argsz` and `flags` are written as given.
 * @throws {InvalidArgumentError} EINVAL if a field does not fit.
 */
export function encodeRegionInfo(v: RegionInfo): Uint8Array {
  const sizes = v.caps.map(capSize);
  const total = sizes.reduce((a, b) => a + b, REGION_INFO_SIZE);
  const w = new WireWriter(total, 'DEVICE_GET_REGION_INFO reply');
  w.u32(v.argsz, 'argsz').u32(v.flags, 'flags').u32(v.index, 'index');
  w.u32(v.caps.length > 0 ? REGION_INFO_SIZE : v.capOffset, 'cap_offset');
  w.u64(v.size, 'size').u64(v.offset, 'offset');
  let at = REGION_INFO_SIZE;
  v.caps.forEach((cap, i) => {
    at += sizes[i] ?? 0;
    writeCap(w, cap, i + 1 < v.caps.length ? at : 0);
  });
  return w.finish();
}

/**
 * Decodes a DEVICE_GET_REGION_INFO reply and walks its capability chain when
 * CAPS is set and `cap_offset` ≠ 0. Bytes after the struct are otherwise
 * ignored (libvfio-user zero-fills a reply truncated to the client's argsz).
 * @throws {ProtocolError} EINVAL if shorter than 32 bytes, or the chain loops,
 * points inside the fixed struct or past the payload, or its capabilities overlap.
 */
export function decodeRegionInfo(payload: Uint8Array): RegionInfo {
  const r = new WireReader(payload, 'DEVICE_GET_REGION_INFO reply');
  const argsz = r.u32('argsz');
  const flags = r.u32('flags');
  const index = r.u32('index');
  const capOffset = r.u32('cap_offset');
  const size = r.u64('size');
  const offset = r.u64('offset');
  const walk = (flags & RegionInfoFlags.CAPS) !== 0 && capOffset !== 0;
  return { argsz, flags, index, capOffset, size, offset, caps: walk ? decodeCapChain(r, capOffset) : [] };
}

interface CapHeader {
  at: number;
  id: number;
  version: number;
}

function chainHeaders(r: WireReader, first: number): CapHeader[] {
  const headers: CapHeader[] = [];
  const seen = new Set<number>();
  for (let at = first; at !== 0; ) {
    if (at < REGION_INFO_SIZE || at > r.length - CAP_HEADER_SIZE) {
      throw r.error(`capability offset ${at} is outside ${REGION_INFO_SIZE}..${r.length - CAP_HEADER_SIZE}`);
    }
    if (seen.has(at)) throw r.error(`capability chain loops back to offset ${at}`);
    seen.add(at);
    if (seen.size * CAP_HEADER_SIZE > r.length - REGION_INFO_SIZE) {
      throw r.error(`capability at ${at} overlaps another`);
    }
    r.seek(at, 'capability');
    const id = r.u16('cap.id');
    const version = r.u16('cap.version');
    headers.push({ at, id, version });
    at = r.u32('cap.next');
  }
  return headers;
}

/**
 * Walks the chain from `first`. Work is bounded: every capability consumes its
 * size from the bytes after the fixed struct, so overlapping capabilities (the
 * only way to make the walk cost more than the payload) are rejected.
 */
function decodeCapChain(r: WireReader, first: number): RegionCap[] {
  const headers = chainHeaders(r, first);
  const starts = headers.map((h) => h.at).sort((a, b) => a - b);
  const ends = new Map(starts.map((s, i) => [s, starts[i + 1] ?? r.length]));
  const budget = { left: r.length - REGION_INFO_SIZE };
  return headers.map((h) => {
    r.seek(h.at + CAP_HEADER_SIZE, 'capability body');
    return decodeCap(r, h, ends.get(h.at) ?? r.length, budget);
  });
}

function consume(r: WireReader, budget: { left: number }, n: number, at: number): void {
  budget.left -= n;
  if (budget.left < 0) throw r.error(`capability at ${at} overlaps another or overruns the payload`);
}

function decodeCap(r: WireReader, h: CapHeader, end: number, budget: { left: number }): RegionCap {
  if (h.id === RegionCapId.SPARSE_MMAP) {
    const nr = r.u32('nr_areas');
    r.skip(4, 'reserved');
    consume(r, budget, SPARSE_MMAP_CAP_SIZE + SPARSE_MMAP_AREA_SIZE * nr, h.at);
    r.need(SPARSE_MMAP_AREA_SIZE * nr, 'areas');
    const areas: SparseMmapArea[] = [];
    for (let i = 0; i < nr; i++) areas.push({ offset: r.u64('area.offset'), size: r.u64('area.size') });
    return { kind: 'sparse-mmap', version: h.version, areas };
  }
  if (h.id === RegionCapId.TYPE) {
    const type = r.u32('type');
    const subtype = r.u32('subtype');
    consume(r, budget, REGION_TYPE_CAP_SIZE, h.at);
    return { kind: 'type', version: h.version, type, subtype };
  }
  consume(r, budget, end - h.at, h.at);
  return { kind: 'unknown', id: h.id, version: h.version, data: r.bytes(end - h.at - CAP_HEADER_SIZE, 'cap.data') };
}
