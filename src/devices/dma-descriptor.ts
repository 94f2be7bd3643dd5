/**
 * The DMA engine's descriptor format: 32 bytes in guest memory, little-endian.
 *
 * | off  | size | field    | written by | meaning |
 * |------|------|----------|------------|---------|
 * | 0x00 | 8    | src      | driver     | source IOVA |
 * | 0x08 | 8    | dst      | driver     | destination IOVA (ignored for CHECKSUM_ONLY) |
 * | 0x10 | 4    | length   | driver     | bytes to transfer |
 * | 0x14 | 4    | flags    | driver     | bit 0 COPY, bit 1 CHECKSUM_ONLY (exactly one) |
 * | 0x18 | 4    | checksum | device     | FNV-1a 32 over the source bytes |
 * | 0x1c | 4    | status   | device     | 0 not done, 1 DONE, 2 ERROR with the errno in bits 31:16 |
 */

/** Size of one descriptor. */
export const DESCRIPTOR_SIZE = 32;
/** Offset of the device-written part (checksum, status). */
export const DESCRIPTOR_WRITEBACK_OFFSET = 0x18;

/** Descriptor `flags` bits. */
export const DescriptorFlags = {
  /** Copy `length` bytes from `src` to `dst` (and checksum them). */
  COPY: 1 << 0,
  /** Only checksum `length` bytes at `src`. */
  CHECKSUM_ONLY: 1 << 1,
} as const;

/** Descriptor `status` values (low 16 bits); an error carries its errno in bits 31:16. */
export const DescriptorStatus = { PENDING: 0, DONE: 1, ERROR: 2 } as const;
/** One of {@link DescriptorStatus}. */
export type DescriptorStatus = (typeof DescriptorStatus)[keyof typeof DescriptorStatus];

/** A decoded descriptor (the driver-written fields). */
export interface Descriptor {
  src: bigint;
  dst: bigint;
  length: number;
  flags: number;
}

/** The device-written part of a descriptor. */
export interface DescriptorResult {
  checksum: number;
  status: number;
}

/**
 * Decodes the driver-written fields of a 32-byte descriptor.
 * @param bytes - at least {@link DESCRIPTOR_SIZE} bytes.
 */
export function decodeDescriptor(bytes: Uint8Array): Descriptor {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { src: v.getBigUint64(0, true), dst: v.getBigUint64(8, true), length: v.getUint32(16, true), flags: v.getUint32(20, true) };
}

/** Encodes a whole descriptor (drivers and tests build rings with it). */
export function encodeDescriptor(d: Descriptor & Partial<DescriptorResult>): Uint8Array {
  const bytes = new Uint8Array(DESCRIPTOR_SIZE);
  const v = new DataView(bytes.buffer);
  v.setBigUint64(0, d.src, true);
  v.setBigUint64(8, d.dst, true);
  v.setUint32(16, d.length, true);
  v.setUint32(20, d.flags, true);
  v.setUint32(24, d.checksum ?? 0, true);
  v.setUint32(28, d.status ?? 0, true);
  return bytes;
}

/** Encodes the 8 device-written bytes (checksum, status) at {@link DESCRIPTOR_WRITEBACK_OFFSET}. */
export function encodeWriteback(r: DescriptorResult): Uint8Array {
  const bytes = new Uint8Array(8);
  const v = new DataView(bytes.buffer);
  v.setUint32(0, r.checksum >>> 0, true);
  v.setUint32(4, r.status >>> 0, true);
  return bytes;
}

/** Decodes the device-written part of a descriptor from the whole 32 bytes. */
export function decodeResult(bytes: Uint8Array): DescriptorResult {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { checksum: v.getUint32(24, true), status: v.getUint32(28, true) };
}

/** An error status word for `errno`. */
export function errorStatus(errno: number): number {
  return (DescriptorStatus.ERROR | ((errno & 0xffff) << 16)) >>> 0;
}
