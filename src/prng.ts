/** mulberry32: a small seeded PRNG, so a random sequence (fault injection, a test's) can be replayed from its seed. */

/** Integers in 0..2^32-1 from `seed`. */
export function prngU32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t ^= t + Math.imul(t ^ (t >>> 7), 61 | t);
    return (t ^ (t >>> 14)) >>> 0;
  };
}
