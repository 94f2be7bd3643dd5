/**
 * REGION_READ (9), REGION_WRITE (10) and REGION_WRITE_MULTI (15).
 * Every decoder rejects an access whose `offset + count` passes 2^64.
 */
import { InvalidArgumentError, ProtocolError } from '../errors.js';
import {
  REGION_ACCESS_SIZE,
  REGION_WRITE_MULTI_DATA_SIZE,
  REGION_WRITE_MULTI_ENTRY_SIZE,
  REGION_WRITE_MULTI_SIZE,
  U64_MAX,
} from './constants.js';
import { WireReader } from './wire-reader.js';
import { WireWriter } from './wire-writer.js';

/** `struct vfio_user_region_access` without data: REGION_READ request, REGION_WRITE reply. */
export interface RegionAccess {
  offset: bigint;
  region: number;
  count: number;
}

/** REGION_WRITE request and REGION_READ reply: access header plus `count` bytes. */
export interface RegionAccessWithData extends RegionAccess {
  data: Uint8Array;
}

/** REGION_WRITE_MULTI request: coalesced writes of at most 8 bytes each. */
export interface RegionWriteMulti {
  writes: RegionAccessWithData[];
}

/** REGION_WRITE_MULTI reply: number of writes completed (u64). */
export interface RegionWriteMultiReply {
  wrCnt: bigint;
}

/** Offsets above this may wrap with a u32 count; below it no check is needed (saves bigint work). */
const WRAP_RISK = (1n << 64n) - (1n << 32n);
const TWO_64 = U64_MAX + 1n;

// The 16-byte access struct is read and written byte-wise here, without a
// WireReader/WireWriter: it is on every REGION_READ/WRITE of a device server.
// u64s go through an 8-byte scratch (a DataView over a small on-heap array
// would move it off-heap, hundreds of ns).
const scratch = new Uint8Array(8);
const scratchView = new DataView(scratch.buffer);

function get32(b: Uint8Array, p: number): number {
  return (b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16) | (b[p + 3]! << 24)) >>> 0;
}

function put32(b: Uint8Array, p: number, v: number): void {
  b[p] = v;
  b[p + 1] = v >>> 8;
  b[p + 2] = v >>> 16;
  b[p + 3] = v >>> 24;
}

function checkWrap(what: string, offset: bigint, count: number, field: string): void {
  if (offset > WRAP_RISK && offset + BigInt(count) > TWO_64) {
    throw new ProtocolError(`${what}: ${field}offset ${offset} + count ${count} wraps past 2^64`);
  }
}

/** The access struct at the start of `b` (the caller checked that 16 bytes exist). */
function accessAt(b: Uint8Array, what: string): RegionAccess {
  for (let i = 0; i < 8; i++) scratch[i] = b[i]!;
  const offset = scratchView.getBigUint64(0, true);
  const region = get32(b, 8);
  const count = get32(b, 12);
  checkWrap(what, offset, count, '');
  return { offset, region, count };
}

function readAccess(payload: Uint8Array, what: string): RegionAccess {
  if (payload.length < REGION_ACCESS_SIZE) {
    throw new ProtocolError(`${what}: truncated (need ${REGION_ACCESS_SIZE} bytes, have ${payload.length})`);
  }
  return accessAt(payload, what);
}

function readAccessWithData(payload: Uint8Array, what: string): RegionAccessWithData {
  const { offset, region, count } = readAccess(payload, what);
  const remaining = payload.length - REGION_ACCESS_SIZE;
  if (count !== remaining) throw new ProtocolError(`${what}: count ${count} but ${remaining} data bytes follow`);
  return { offset, region, count, data: payload.subarray(REGION_ACCESS_SIZE) };
}

function checkU32(v: number, field: string, what: string): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) throw new InvalidArgumentError(`${what}: ${field} = ${v} does not fit its field`);
}

/** Writes the access struct at the start of `out` (at least 16 bytes). */
function putAccess(out: Uint8Array, v: RegionAccess, what: string): void {
  const offset = v.offset;
  if (typeof offset !== 'bigint' || offset < 0n || offset > U64_MAX) {
    throw new InvalidArgumentError(`${what}: offset = ${String(offset)} does not fit a u64`);
  }
  checkU32(v.region, 'region', what);
  checkU32(v.count, 'count', what);
  scratchView.setBigUint64(0, offset, true);
  for (let i = 0; i < 8; i++) out[i] = scratch[i]!;
  put32(out, 8, v.region);
  put32(out, 12, v.count);
}

function checkData(v: RegionAccessWithData, what: string): void {
  if (v.count !== v.data.length) {
    throw new InvalidArgumentError(`${what}: count ${v.count} differs from ${v.data.length} data bytes`);
  }
}

/** Encodes a REGION_READ request or REGION_WRITE reply (16 bytes). @throws {InvalidArgumentError} EINVAL. */
export function encodeRegionAccess(v: RegionAccess): Uint8Array {
  const out = new Uint8Array(REGION_ACCESS_SIZE);
  putAccess(out, v, 'region access');
  return out;
}

/**
 * Encodes a REGION_WRITE request or REGION_READ reply (16 + count bytes).
 * @throws {InvalidArgumentError} EINVAL if `count` differs from `data.length` or a field does not fit.
 */
export function encodeRegionAccessWithData(v: RegionAccessWithData): Uint8Array {
  checkData(v, 'region access');
  const out = new Uint8Array(REGION_ACCESS_SIZE + v.data.length);
  putAccess(out, v, 'region access');
  out.set(v.data, REGION_ACCESS_SIZE);
  return out;
}

/**
 * Decodes a REGION_READ request; bytes after the 16-byte struct are ignored (libvfio-user).
 * Bounds against the region and `max_data_xfer_size` are the server's checks.
 * @throws {ProtocolError} EINVAL if shorter than 16 bytes or `offset + count` wraps.
 */
export function decodeRegionReadRequest(payload: Uint8Array): RegionAccess {
  return readAccess(payload, 'REGION_READ');
}

/**
 * Decodes a REGION_WRITE request: the payload must be exactly 16 + `count` bytes.
 * @throws {ProtocolError} EINVAL if truncated, `count` disagrees with the payload, or `offset + count` wraps.
 */
export function decodeRegionWriteRequest(payload: Uint8Array): RegionAccessWithData {
  return readAccessWithData(payload, 'REGION_WRITE');
}

/**
 * Decodes a REGION_READ reply: exactly 16 + `count` bytes.
 * @returns the access, or `undefined` for an empty payload (libvfio-user's reply to `count == 0`).
 * @throws {ProtocolError} EINVAL if truncated, `count` disagrees with the payload, or `offset + count` wraps.
 */
export function decodeRegionReadReply(payload: Uint8Array): RegionAccessWithData | undefined {
  if (payload.length === 0) return undefined;
  return readAccessWithData(payload, 'REGION_READ reply');
}

/**
 * Decodes a REGION_WRITE reply (16 bytes; trailing bytes ignored).
 * @returns the echoed access, or `undefined` for an empty payload (libvfio-user's reply to `count == 0`).
 * @throws {ProtocolError} EINVAL if 1..15 bytes long or `offset + count` wraps.
 */
export function decodeRegionWriteReply(payload: Uint8Array): RegionAccess | undefined {
  if (payload.length === 0) return undefined;
  return readAccess(payload, 'REGION_WRITE reply');
}

/**
 * Encodes a REGION_WRITE_MULTI request: u64 `wr_cnt`, then 24-byte entries
 * whose 8 data bytes are zero-padded after `count`.
 * @throws {InvalidArgumentError} EINVAL if a write has more than 8 bytes or `count` ≠ `data.length`.
 */
export function encodeRegionWriteMulti(v: RegionWriteMulti): Uint8Array {
  const n = v.writes.length;
  const w = new WireWriter(REGION_WRITE_MULTI_SIZE + n * REGION_WRITE_MULTI_ENTRY_SIZE, 'REGION_WRITE_MULTI');
  w.u64(BigInt(n), 'wr_cnt');
  for (const one of v.writes) {
    checkData(one, 'REGION_WRITE_MULTI');
    if (one.count > REGION_WRITE_MULTI_DATA_SIZE) {
      throw new InvalidArgumentError(`REGION_WRITE_MULTI: a ${one.count}-byte write does not fit an 8-byte entry`);
    }
    w.u64(one.offset, 'offset').u32(one.region, 'region').u32(one.count, 'count').bytes(one.data, 'data').zeros(REGION_WRITE_MULTI_DATA_SIZE - one.count, 'data padding');
  }
  return w.finish();
}

/**
 * Decodes a REGION_WRITE_MULTI request: the payload must be exactly
 * 8 + 24 × `wr_cnt` bytes and every entry's `count` at most 8.
 * @throws {ProtocolError} EINVAL if truncated, `wr_cnt` disagrees with the payload,
 * an entry's `count` exceeds 8, or an entry's `offset + count` wraps.
 */
export function decodeRegionWriteMulti(payload: Uint8Array): RegionWriteMulti {
  const r = new WireReader(payload, 'REGION_WRITE_MULTI');
  const wrCnt = r.u64('wr_cnt');
  if (wrCnt * BigInt(REGION_WRITE_MULTI_ENTRY_SIZE) !== BigInt(r.remaining)) {
    throw r.error(`wr_cnt ${wrCnt} but ${r.remaining} entry bytes follow`);
  }
  const writes: RegionAccessWithData[] = [];
  for (let i = 0; i < Number(wrCnt); i++) {
    const offset = r.u64('wrs[].offset');
    const region = r.u32('wrs[].region');
    const count = r.u32('wrs[].count');
    checkWrap('REGION_WRITE_MULTI', offset, count, `wrs[${i}].`);
    if (count > REGION_WRITE_MULTI_DATA_SIZE) throw r.error(`wrs[${i}].count ${count} exceeds 8`);
    const data = r.bytes(REGION_WRITE_MULTI_DATA_SIZE, 'wrs[].data').subarray(0, count);
    writes.push({ offset, region, count, data });
  }
  return { writes };
}

/** Encodes a REGION_WRITE_MULTI reply (u64 `wr_cnt`). @throws {InvalidArgumentError} EINVAL. */
export function encodeRegionWriteMultiReply(v: RegionWriteMultiReply): Uint8Array {
  return new WireWriter(REGION_WRITE_MULTI_SIZE, 'REGION_WRITE_MULTI reply').u64(v.wrCnt, 'wr_cnt').finish();
}

/**
 * Decodes a REGION_WRITE_MULTI reply; trailing bytes are ignored.
 * @throws {ProtocolError} EINVAL if shorter than 8 bytes.
 */
export function decodeRegionWriteMultiReply(payload: Uint8Array): RegionWriteMultiReply {
  return { wrCnt: new WireReader(payload, 'REGION_WRITE_MULTI reply').u64('wr_cnt') };
}
