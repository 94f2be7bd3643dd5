/**
 * FNV-1a, 32-bit (Fowler–Noll–Vo, the "1a" variant): the checksum the sample
 * devices use to let a driver verify memory contents. Incremental, so large
 * buffers can be hashed chunk by chunk.
 */

/** FNV-1a 32-bit offset basis: the hash of zero bytes. */
export const FNV1A_OFFSET_BASIS = 0x811c9dc5;
const FNV1A_PRIME = 0x01000193;

/**
 * Continues an FNV-1a 32 hash over `bytes`.
 * @param bytes - the next bytes of the input.
 * @param hash - the hash so far ({@link FNV1A_OFFSET_BASIS} to start).
 * @returns the updated hash, an unsigned 32-bit integer.
 */
export function fnv1aUpdate(bytes: Uint8Array, hash: number = FNV1A_OFFSET_BASIS): number {
  let h = hash >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    h = Math.imul(h ^ (bytes[i] as number), FNV1A_PRIME) >>> 0;
  }
  return h;
}

/**
 * FNV-1a 32 of `bytes`.
 * @returns an unsigned 32-bit integer.
 */
export function fnv1a32(bytes: Uint8Array): number {
  return fnv1aUpdate(bytes, FNV1A_OFFSET_BASIS);
}
