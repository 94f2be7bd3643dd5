/** Seeded PRNGs for tests, so a failing random sequence can be replayed (mulberry32, as src/prng.ts). */
import { prngU32 } from '../../src/prng.js';

export { prngU32 };

/** Numbers in [0, 1) from `seed`. */
export function prngUnit(seed: number): () => number {
  const next = prngU32(seed);
  return () => next() / 2 ** 32;
}
