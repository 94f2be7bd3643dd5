/**
 * SPARSE_MMAP_SAVING and client-declared mmaps (docs/protocol-extensions.md §9, §10).
 *
 * Alex Williamson's 2020 counter-proposal to dynamic BAR trapping, for vfio-user:
 *
 * - a region-info capability `SPARSE_MMAP_SAVING` (id 0x8000, body as SPARSE_MMAP) describes the mmap layout
 *   that stays valid **while saving** (PRE_COPY, PRE_COPY_P2P, STOP_COPY); a region without it keeps its
 *   runtime layout while saving;
 * - a vfio-user server cannot see a client's mmaps, so the client **declares** them: DEVICE_FEATURE
 *   `x-client-mmaps` (0x8005) SET replaces the set of mappings it holds, GET returns it;
 * - the server refuses a transition into a saving state (EBUSY) while a declared mapping is not entirely
 *   inside one saving area of its region ({@link savingConflicts}).
 *
 * Discovery: the client names `x-client-mmaps` (value `{}`) in its VERSION `capabilities.migration`; a
 * migratable device's server answers with `{"feature": N}` there, and only then sends the capability in
 * GET_REGION_INFO. Constants, codecs and pure helpers; no I/O, no server state (a mediator uses them too).
 */
import { InvalidArgumentError, ProtocolError } from '../errors.js';
import type { Capabilities, ExtraMembers } from './capabilities.js';
import { DeviceFeatureFlags, MigrationState, U64_MAX } from './constants.js';
import type { RegionInfo, SparseMmapArea, UnknownRegionCap } from './region.js';
import { WireReader } from './wire-reader.js';
import { WireWriter } from './wire-writer.js';

/** Region-info capability id of SPARSE_MMAP_SAVING (vendor half of the 16-bit cap id space). */
export const SPARSE_MMAP_SAVING_CAP_ID = 0x8000;
/** Version written in its capability header. */
export const SPARSE_MMAP_SAVING_CAP_VERSION = 1;
/** Body size without areas: `u32 nr_areas, u32 reserved`. */
export const SAVING_CAP_BODY_SIZE = 8;
/** One area: `u64 offset, u64 size`. */
export const SAVING_AREA_SIZE = 16;
/** Most areas one saving layout may list (a hostile count is refused before anything is allocated). */
export const MAX_SAVING_AREAS = 256;

/** The VERSION member (inside `capabilities.migration`) of the extension. */
export const CLIENT_MMAPS_CAPABILITY = 'x-client-mmaps';
/** The feature index this server uses (clients use the advertised one, never this constant). */
export const ClientMmapsFeature = {
  INDEX: 0x8005,
} as const;
/** One declared mapping on the wire: `u32 region, u32 pad, u64 offset, u64 size`. */
export const CLIENT_MMAP_SIZE = 24;
/** Most mappings one declaration may list. */
export const MAX_CLIENT_MMAPS = 1024;

/** One mapping a client holds: `[offset, offset + size)` of region `region` (offsets relative to the region). */
export interface ClientMmap {
  region: number;
  offset: bigint;
  size: bigint;
}

/** A declared mapping that the saving layout does not allow. */
export interface SavingConflict {
  /** Its position in the declaration. */
  index: number;
  mapping: ClientMmap;
  /** The saving layout of its region (sorted). */
  layout: readonly SparseMmapArea[];
}

/** The saving layout of each region that has one; a region absent here keeps its runtime layout. */
export type SavingLayouts = ReadonlyMap<number, readonly SparseMmapArea[]> | ((region: number) => readonly SparseMmapArea[] | undefined);

const hex = (v: bigint): string => `0x${v.toString(16)}`;

/** `offset+size` for logs. */
export function describeMmap(m: ClientMmap): string {
  return `region ${m.region} ${hex(m.offset)}+${hex(m.size)}`;
}

/**
 * Checks a saving layout: at most {@link MAX_SAVING_AREAS} areas, each non-empty, inside the region, sorted by
 * offset and not overlapping. An empty layout is valid (nothing stays mapped while saving).
 * @returns the first rule broken, or undefined.
 */
export function savingLayoutProblem(areas: readonly SparseMmapArea[], regionSize: bigint): string | undefined {
  if (areas.length > MAX_SAVING_AREAS) return `${areas.length} areas exceed ${MAX_SAVING_AREAS}`;
  let end = 0n;
  for (const [i, a] of areas.entries()) {
    if (typeof a.offset !== 'bigint' || typeof a.size !== 'bigint') return `area ${i}: offset and size must be bigints`;
    if (a.size <= 0n || a.offset < 0n) return `area ${i} ${hex(a.offset)}+${hex(a.size)} is empty or negative`;
    if (a.offset + a.size > regionSize) return `area ${i} ${hex(a.offset)}+${hex(a.size)} ends past the region (${hex(regionSize)} bytes)`;
    if (a.offset < end) return `area ${i} at ${hex(a.offset)} is not sorted after, or overlaps, the previous area (ending at ${hex(end)})`;
    end = a.offset + a.size;
  }
  return undefined;
}

/**
 * Encodes the capability body (after the 8-byte cap header): `u32 nr_areas, u32 reserved (0), {u64 offset, u64 size}[]`.
 * @throws {InvalidArgumentError} EINVAL for a layout {@link savingLayoutProblem} refuses.
 */
export function encodeSavingCap(areas: readonly SparseMmapArea[], regionSize: bigint): Uint8Array {
  const problem = savingLayoutProblem(areas, regionSize);
  if (problem !== undefined) throw new InvalidArgumentError(`SPARSE_MMAP_SAVING: ${problem}`);
  const w = new WireWriter(SAVING_CAP_BODY_SIZE + SAVING_AREA_SIZE * areas.length, 'SPARSE_MMAP_SAVING');
  w.u32(areas.length, 'nr_areas').zeros(4, 'reserved');
  for (const a of areas) w.u64(a.offset, 'area.offset').u64(a.size, 'area.size');
  return w.finish();
}

/**
 * Decodes a capability body (an {@link UnknownRegionCap}'s `data`); `reserved` and trailing bytes are ignored.
 * @throws {ProtocolError} EINVAL when truncated, `nr_areas` is over {@link MAX_SAVING_AREAS} (checked before
 *   reading areas), or the layout is unsorted, overlapping, empty-sized or past `regionSize`.
 */
export function decodeSavingCap(body: Uint8Array, regionSize: bigint): SparseMmapArea[] {
  const r = new WireReader(body, 'SPARSE_MMAP_SAVING');
  const nr = r.u32('nr_areas');
  r.skip(4, 'reserved');
  if (nr > MAX_SAVING_AREAS) throw r.error(`nr_areas ${nr} exceeds ${MAX_SAVING_AREAS}`);
  r.need(SAVING_AREA_SIZE * nr, 'areas');
  const areas: SparseMmapArea[] = [];
  for (let i = 0; i < nr; i++) areas.push({ offset: r.u64('area.offset'), size: r.u64('area.size') });
  const problem = savingLayoutProblem(areas, regionSize);
  if (problem !== undefined) throw r.error(problem);
  return areas;
}

/** The capability as a region-info chain entry (for `encodeRegionInfo`). @throws {InvalidArgumentError} EINVAL as {@link encodeSavingCap}. */
export function savingRegionCap(areas: readonly SparseMmapArea[], regionSize: bigint): UnknownRegionCap {
  return { kind: 'unknown', id: SPARSE_MMAP_SAVING_CAP_ID, version: SPARSE_MMAP_SAVING_CAP_VERSION, data: encodeSavingCap(areas, regionSize) };
}

/**
 * The saving layout a decoded GET_REGION_INFO reply carries, or undefined without the capability.
 * @throws {ProtocolError} EINVAL for a malformed capability, or two of them.
 */
export function savingLayoutOf(info: RegionInfo): SparseMmapArea[] | undefined {
  const caps = info.caps.filter((c): c is UnknownRegionCap => c.kind === 'unknown' && c.id === SPARSE_MMAP_SAVING_CAP_ID);
  if (caps.length > 1) throw new ProtocolError(`region ${info.index}: ${caps.length} SPARSE_MMAP_SAVING capabilities`);
  return caps[0] && decodeSavingCap(caps[0].data, info.size);
}

/** Checks one declared mapping's own fields. @returns the rule broken, or undefined. */
function mmapProblem(m: ClientMmap, i: number): string | undefined {
  if (!Number.isInteger(m.region) || m.region < 0 || m.region > 0xffff_ffff) return `mapping ${i}: region ${m.region} is not a u32`;
  if (typeof m.offset !== 'bigint' || typeof m.size !== 'bigint') return `mapping ${i}: offset and size must be bigints`;
  if (m.offset < 0n || m.size <= 0n) return `mapping ${i} ${describeMmap(m)} is empty or negative`;
  if (m.offset + m.size > U64_MAX + 1n) return `mapping ${i} ${describeMmap(m)} wraps past 2^64`;
  return undefined;
}

/**
 * Encodes an `x-client-mmaps` SET (or GET reply) data: the mappings, 24 bytes each.
 * @throws {InvalidArgumentError} EINVAL for over {@link MAX_CLIENT_MMAPS} mappings, an empty one or one wrapping past 2^64.
 */
export function encodeClientMmaps(mmaps: readonly ClientMmap[]): Uint8Array {
  if (mmaps.length > MAX_CLIENT_MMAPS) throw new InvalidArgumentError(`x-client-mmaps: ${mmaps.length} mappings exceed ${MAX_CLIENT_MMAPS}`);
  for (const [i, m] of mmaps.entries()) {
    const problem = mmapProblem(m, i);
    if (problem !== undefined) throw new InvalidArgumentError(`x-client-mmaps: ${problem}`);
  }
  const w = new WireWriter(CLIENT_MMAP_SIZE * mmaps.length, 'x-client-mmaps');
  for (const m of mmaps) w.u32(m.region, 'region').zeros(4, 'pad').u64(m.offset, 'offset').u64(m.size, 'size');
  return w.finish();
}

/**
 * Decodes `x-client-mmaps` data. Empty data is the empty set.
 * @throws {ProtocolError} EINVAL when the length is not a multiple of 24, the count is over
 *   {@link MAX_CLIENT_MMAPS} (checked before decoding), `pad` is not 0, or a mapping is empty or wraps past 2^64.
 */
export function decodeClientMmaps(data: Uint8Array): ClientMmap[] {
  const r = new WireReader(data, 'x-client-mmaps');
  if (data.length % CLIENT_MMAP_SIZE !== 0) throw r.error(`${data.length} bytes are not a whole number of ${CLIENT_MMAP_SIZE}-byte mappings`);
  const count = data.length / CLIENT_MMAP_SIZE;
  if (count > MAX_CLIENT_MMAPS) throw r.error(`${count} mappings exceed ${MAX_CLIENT_MMAPS}`);
  const out: ClientMmap[] = [];
  for (let i = 0; i < count; i++) {
    const region = r.u32('region');
    if (r.u32('pad') !== 0) throw r.error(`mapping ${i}: pad is not 0`);
    const m = { region, offset: r.u64('offset'), size: r.u64('size') };
    const problem = mmapProblem(m, i);
    if (problem !== undefined) throw r.error(problem);
    out.push(m);
  }
  return out;
}

function layoutFor(layouts: SavingLayouts, region: number): readonly SparseMmapArea[] | undefined {
  return typeof layouts === 'function' ? layouts(region) : layouts.get(region);
}

/** Whether `[offset, offset + size)` lies entirely inside one of `areas`. */
export function insideOneArea(offset: bigint, size: bigint, areas: readonly SparseMmapArea[]): boolean {
  return areas.some((a) => a.offset <= offset && offset + size <= a.offset + a.size);
}

/**
 * The declared mappings a saving layout does not allow: each that is not entirely inside one saving area of its
 * region. A region with no saving layout (absent from `layouts`) keeps its runtime layout while saving: its
 * mappings never conflict. Pure; no I/O.
 */
export function savingConflicts(declared: readonly ClientMmap[], layouts: SavingLayouts): SavingConflict[] {
  const out: SavingConflict[] = [];
  declared.forEach((mapping, index) => {
    const layout = layoutFor(layouts, mapping.region);
    if (layout !== undefined && !insideOneArea(mapping.offset, mapping.size, layout)) out.push({ index, mapping, layout });
  });
  return out;
}

/** The states in which the saving layout applies: PRE_COPY, PRE_COPY_P2P, STOP_COPY. */
export function isSavingState(state: number): boolean {
  return state === MigrationState.PRE_COPY || state === MigrationState.PRE_COPY_P2P || state === MigrationState.STOP_COPY;
}

// ------------------------------------------------------------ discovery

/** What a client adds to its VERSION `capabilities.migration` to ask for the extension. */
export function clientMmapsRequest(): ExtraMembers {
  return { [CLIENT_MMAPS_CAPABILITY]: {} };
}

/** Whether a client's VERSION `capabilities.migration` extra members name the extension (any value). */
export function clientMmapsRequested(migrationExtra: ExtraMembers | undefined): boolean {
  return migrationExtra !== undefined && Object.hasOwn(migrationExtra, CLIENT_MMAPS_CAPABILITY);
}

/** The member a server adds to its VERSION `capabilities.migration` to offer the extension. */
export function clientMmapsMember(feature: number = ClientMmapsFeature.INDEX): ExtraMembers {
  return { [CLIENT_MMAPS_CAPABILITY]: { feature } };
}

/**
 * The feature index a server advertised (its VERSION capabilities, as sent), or undefined: a member that is
 * missing or malformed (not an object, no integer `feature` in 0..0xffff) counts as not advertised.
 */
export function clientMmapsFeatureOf(caps: Capabilities | undefined): number | undefined {
  const member = caps?.migration?.extra?.[CLIENT_MMAPS_CAPABILITY];
  if (typeof member !== 'object' || member === null || Array.isArray(member)) return undefined;
  const feature = (member as Record<string, unknown>)['feature'];
  if (typeof feature !== 'number' || !Number.isInteger(feature) || feature < 0 || feature > DeviceFeatureFlags.MASK) return undefined;
  return feature;
}
