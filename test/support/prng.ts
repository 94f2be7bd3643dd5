/** mulberry32: a small seeded PRNG for tests, so a failing random sequence can be replayed. */

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

/** Numbers in [0, 1) from `seed`. */
export function prngUnit(seed: number): () => number {
  const next = prngU32(seed);
  return () => next() / 2 ** 32;
}
