/** FNV-1a 32 written out for the tests (independent of src/devices/fnv1a.ts): offset basis 0x811c9dc5, prime 0x01000193. */
export function fnv1a(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h >>> 0;
}
