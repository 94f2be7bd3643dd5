/**
 * DMA_MAP (2), DMA_UNMAP (3), and the server→client DMA_READ (11) / DMA_WRITE (12).
 * Addresses, offsets and sizes are u64 → bigint.
 */
import { InvalidArgumentError } from '../errors.js';
import {
  DMA_ACCESS_SIZE,
  DMA_BITMAP_SIZE,
  DMA_MAP_SIZE,
  DMA_UNMAP_SIZE,
  DmaUnmapFlags,
  QEMU_DMA_ACCESS_SIZE,
} from './constants.js';
import { WireReader } from './wire-reader.js';
import { WireWriter } from './wire-writer.js';

/** DMA_MAP request (`struct vfio_user_dma_map`); the optional fd travels beside it. */
export interface DmaMapRequest {
  /** Size of this struct (≥ 32); there is no reply payload. */
  argsz: number;
  /** `DmaMapFlags` bits, kept raw (unknown bits are the server's to reject). */
  flags: number;
  /** Offset into the fd. */
  offset: bigint;
  /** IOVA of the region. */
  addr: bigint;
  size: bigint;
}

/** `struct vfio_user_bitmap` header: page size and bitmap byte count. */
export interface DmaBitmapHeader {
  pgsize: bigint;
  size: bigint;
}

/** A dirty bitmap: header plus `size` bytes. */
export interface DmaBitmap extends DmaBitmapHeader {
  data: Uint8Array;
}

/** DMA_UNMAP request (`struct vfio_user_dma_unmap`). */
export interface DmaUnmapRequest {
  /** Largest reply payload the client accepts. */
  argsz: number;
  /** Raw flags: 0, GET_DIRTY_BITMAP (1) or ALL (2) are meaningful. */
  flags: number;
  addr: bigint;
  size: bigint;
  /** Present iff `flags` has GET_DIRTY_BITMAP. */
  bitmap?: DmaBitmapHeader;
}

/** DMA_UNMAP reply: the request echoed, plus the bitmap when one was asked for. */
export interface DmaUnmapReply {
  argsz: number;
  flags: number;
  addr: bigint;
  size: bigint;
  /** Present iff the reply payload is longer than 24 bytes. */
  bitmap?: DmaBitmap;
}

/** `struct vfio_user_dma_region_access` without data: DMA_READ request, DMA_WRITE reply. */
export interface DmaAccess {
  addr: bigint;
  count: bigint;
}

/** DMA_WRITE request and DMA_READ reply: access header plus `count` bytes. */
export interface DmaAccessWithData extends DmaAccess {
  data: Uint8Array;
}

/** Encodes a DMA_MAP request (32 bytes). @throws {InvalidArgumentError} EINVAL if a field does not fit. */
export function encodeDmaMapRequest(v: DmaMapRequest): Uint8Array {
  return new WireWriter(DMA_MAP_SIZE, 'DMA_MAP')
    .u32(v.argsz, 'argsz')
    .u32(v.flags, 'flags')
    .u64(v.offset, 'offset')
    .u64(v.addr, 'addr')
    .u64(v.size, 'size')
    .finish();
}

/**
 * Decodes a DMA_MAP request; bytes after the 32-byte struct are ignored (as libvfio-user does).
 * @throws {ProtocolError} EINVAL if shorter than 32 bytes.
 */
export function decodeDmaMapRequest(payload: Uint8Array): DmaMapRequest {
  const r = new WireReader(payload, 'DMA_MAP');
  return {
    argsz: r.u32('argsz'),
    flags: r.u32('flags'),
    offset: r.u64('offset'),
    addr: r.u64('addr'),
    size: r.u64('size'),
  };
}

function writeUnmapFixed(w: WireWriter, v: DmaUnmapRequest | DmaUnmapReply): void {
  w.u32(v.argsz, 'argsz').u32(v.flags, 'flags').u64(v.addr, 'addr').u64(v.size, 'size');
}

function readUnmapFixed(r: WireReader): Omit<DmaUnmapRequest, 'bitmap'> {
  return { argsz: r.u32('argsz'), flags: r.u32('flags'), addr: r.u64('addr'), size: r.u64('size') };
}

/**
 * Encodes a DMA_UNMAP request (24, or 40 with a bitmap header).
 * @throws {InvalidArgumentError} EINVAL if `bitmap` is given without GET_DIRTY_BITMAP in
 * `flags` or the reverse, or a field does not fit.
 */
export function encodeDmaUnmapRequest(v: DmaUnmapRequest): Uint8Array {
  if ((v.bitmap !== undefined) !== ((v.flags & DmaUnmapFlags.GET_DIRTY_BITMAP) !== 0)) {
    throw new InvalidArgumentError('DMA_UNMAP: bitmap must be given exactly when flags has GET_DIRTY_BITMAP');
  }
  const w = new WireWriter(DMA_UNMAP_SIZE + (v.bitmap ? DMA_BITMAP_SIZE : 0), 'DMA_UNMAP');
  writeUnmapFixed(w, v);
  if (v.bitmap) w.u64(v.bitmap.pgsize, 'bitmap.pgsize').u64(v.bitmap.size, 'bitmap.size');
  return w.finish();
}

/**
 * Decodes a DMA_UNMAP request. With GET_DIRTY_BITMAP in `flags` the 16-byte
 * bitmap header must follow; other trailing bytes are ignored. Flag policy
 * (only 0, 1, 2) and `argsz` rules are the server's.
 * @throws {ProtocolError} EINVAL if truncated.
 */
export function decodeDmaUnmapRequest(payload: Uint8Array): DmaUnmapRequest {
  const r = new WireReader(payload, 'DMA_UNMAP');
  const fixed = readUnmapFixed(r);
  if ((fixed.flags & DmaUnmapFlags.GET_DIRTY_BITMAP) === 0) return fixed;
  const bitmap = { pgsize: r.u64('bitmap.pgsize'), size: r.u64('bitmap.size') };
  return { argsz: fixed.argsz, flags: fixed.flags, addr: fixed.addr, size: fixed.size, bitmap };
}

/**
 * Encodes a DMA_UNMAP reply (24-byte echo, plus 16 + bitmap bytes if `bitmap` is given).
 * @throws {InvalidArgumentError} EINVAL if `bitmap.size` differs from `bitmap.data.length`.
 */
export function encodeDmaUnmapReply(v: DmaUnmapReply): Uint8Array {
  const b = v.bitmap;
  const w = new WireWriter(DMA_UNMAP_SIZE + (b ? DMA_BITMAP_SIZE + b.data.length : 0), 'DMA_UNMAP reply');
  writeUnmapFixed(w, v);
  if (b) {
    if (b.size !== BigInt(b.data.length)) {
      throw new InvalidArgumentError(`DMA_UNMAP reply: bitmap.size ${b.size} differs from ${b.data.length} bytes`);
    }
    w.u64(b.pgsize, 'bitmap.pgsize').u64(b.size, 'bitmap.size').bytes(b.data, 'bitmap');
  }
  return w.finish();
}

/**
 * Decodes a DMA_UNMAP reply. A payload longer than 24 bytes carries a bitmap
 * whose `size` must match the remaining bytes exactly.
 * @throws {ProtocolError} EINVAL if truncated or the bitmap size disagrees with the payload.
 */
export function decodeDmaUnmapReply(payload: Uint8Array): DmaUnmapReply {
  const r = new WireReader(payload, 'DMA_UNMAP reply');
  const fixed = readUnmapFixed(r);
  if (r.remaining === 0) return fixed;
  const pgsize = r.u64('bitmap.pgsize');
  const size = r.u64('bitmap.size');
  if (size !== BigInt(r.remaining)) {
    throw r.error(`bitmap.size ${size} but ${r.remaining} bitmap bytes follow`);
  }
  const bitmap = { pgsize, size, data: r.rest() };
  return { argsz: fixed.argsz, flags: fixed.flags, addr: fixed.addr, size: fixed.size, bitmap };
}

/** Encodes a DMA_READ request / DMA_WRITE reply (16 bytes). @throws {InvalidArgumentError} EINVAL. */
export function encodeDmaAccess(v: DmaAccess): Uint8Array {
  return new WireWriter(DMA_ACCESS_SIZE, 'DMA access').u64(v.addr, 'addr').u64(v.count, 'count').finish();
}

/**
 * Decodes a DMA_READ request (16 bytes; trailing bytes ignored).
 * @throws {ProtocolError} EINVAL if shorter than 16 bytes.
 */
export function decodeDmaReadRequest(payload: Uint8Array): DmaAccess {
  const r = new WireReader(payload, 'DMA_READ');
  return { addr: r.u64('addr'), count: r.u64('count') };
}

/**
 * Layout of data-carrying DMA messages. `'vfio-user'` is the spec's and
 * libvfio-user's (u64 addr, u64 count, data at 16). `'qemu'` is QEMU's
 * `VFIOUserDMARW` (u64 addr, u32 count, data at 12, message sized as
 * 16 + count because of C struct padding, so 4 trailing pad bytes).
 */
export type DmaLayout = 'vfio-user' | 'qemu';

/**
 * Encodes a DMA_WRITE request / DMA_READ reply: access header + data.
 * @param layout - `'qemu'` only when the peer is known to be QEMU's client.
 * @throws {InvalidArgumentError} EINVAL if `count` differs from `data.length` or does not fit.
 */
export function encodeDmaAccessWithData(v: DmaAccessWithData, layout: DmaLayout = 'vfio-user'): Uint8Array {
  if (v.count !== BigInt(v.data.length)) {
    throw new InvalidArgumentError(`DMA access: count ${v.count} differs from ${v.data.length} data bytes`);
  }
  const w = new WireWriter(DMA_ACCESS_SIZE + v.data.length, 'DMA access');
  if (layout === 'qemu') {
    return w.u64(v.addr, 'addr').u32(v.data.length, 'count').bytes(v.data, 'data').zeros(4, 'pad').finish();
  }
  return w.u64(v.addr, 'addr').u64(v.count, 'count').bytes(v.data, 'data').finish();
}

/**
 * Decodes a DMA_WRITE request: payload must be exactly 16 + `count` bytes.
 * @throws {ProtocolError} EINVAL if truncated or `count` disagrees with the payload.
 */
export function decodeDmaWriteRequest(payload: Uint8Array): DmaAccessWithData {
  const r = new WireReader(payload, 'DMA_WRITE');
  const addr = r.u64('addr');
  const count = r.u64('count');
  if (count !== BigInt(r.remaining)) throw r.error(`count ${count} but ${r.remaining} data bytes follow`);
  return { addr, count, data: r.rest() };
}

/**
 * Decodes a DMA_READ reply. With the default layout the payload must be exactly
 * 16 + `count` bytes. With `'qemu'`, `count` is a u32 at 8, data starts at 12,
 * and the payload may be 12 + count or (as QEMU sends) 16 + count bytes. The
 * layouts cannot be told apart reliably from the bytes, so the caller chooses.
 * @throws {ProtocolError} EINVAL if truncated or `count` disagrees with the payload.
 */
export function decodeDmaReadReply(payload: Uint8Array, layout: DmaLayout = 'vfio-user'): DmaAccessWithData {
  const r = new WireReader(payload, 'DMA_READ reply');
  const addr = r.u64('addr');
  if (layout === 'vfio-user') {
    const count = r.u64('count');
    if (count !== BigInt(r.remaining)) throw r.error(`count ${count} but ${r.remaining} data bytes follow`);
    return { addr, count, data: r.rest() };
  }
  const count = r.u32('count');
  if (r.remaining !== count && r.remaining !== count + 4) {
    throw r.error(`count ${count} but ${r.remaining} bytes follow (QEMU layout)`);
  }
  return { addr, count: BigInt(count), data: r.bytes(count, 'data') };
}

/**
 * Decodes a DMA_WRITE reply: libvfio-user's 16 bytes `{addr, count}`, the
 * spec table's 12 bytes (u32 count), or QEMU's bare header (empty payload).
 * @returns the echoed access, or `undefined` for an empty payload.
 * @throws {ProtocolError} EINVAL for any other length.
 */
export function decodeDmaWriteReply(payload: Uint8Array): DmaAccess | undefined {
  const r = new WireReader(payload, 'DMA_WRITE reply');
  switch (payload.length) {
    case 0:
      return undefined;
    case QEMU_DMA_ACCESS_SIZE:
      return { addr: r.u64('addr'), count: BigInt(r.u32('count')) };
    case DMA_ACCESS_SIZE:
      return { addr: r.u64('addr'), count: r.u64('count') };
    default:
      throw r.error(`payload of ${payload.length} bytes is neither 0, 12 nor 16`);
  }
}
