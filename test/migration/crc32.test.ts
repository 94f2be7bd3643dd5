/**
 * CRC-32 (IEEE): known vectors, agreement with an independent bit-at-a-time
 * implementation and with the native `zlib.crc32` path, and chaining. Its speed is measured by the migration
 * benchmark (`node dist/bench/run.js --only migration`), not here: a timed assertion fails on a loaded machine.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { crc32, crc32Portable } from '../../src/migration/crc32.js';
import { bitwiseCrc32, noise } from './stream-fixtures.js';

const text = (s: string): Uint8Array => new TextEncoder().encode(s);

const VECTORS: Array<[string, Uint8Array, number]> = [
  ['empty', new Uint8Array(0), 0],
  ['"123456789" (the check value)', text('123456789'), 0xcbf43926],
  ['"a"', text('a'), 0xe8b7be43],
  ['"abc"', text('abc'), 0x352441c2],
  ['the quick brown fox', text('The quick brown fox jumps over the lazy dog'), 0x414fa339],
  ['32 zero bytes', new Uint8Array(32), 0x190a55ad],
  ['32 0xff bytes', new Uint8Array(32).fill(0xff), 0xff6cab0b],
];

describe('crc32: known vectors', () => {
  for (const [name, input, expected] of VECTORS) {
    it(name, () => {
      assert.equal(crc32(input), expected);
      assert.equal(crc32Portable(input), expected);
      assert.equal(bitwiseCrc32(input), expected);
    });
  }
});

describe('crc32: agreement', () => {
  it('matches the bit-at-a-time CRC at every length 0..300 and at large odd lengths', () => {
    const data = noise(5000, 1);
    for (let n = 0; n <= 300; n++) assert.equal(crc32Portable(data.subarray(0, n)), bitwiseCrc32(data.subarray(0, n)), `n=${n}`);
    for (const n of [511, 512, 513, 1023, 4097, 4999]) {
      const want = bitwiseCrc32(data.subarray(0, n));
      assert.equal(crc32Portable(data.subarray(0, n)), want, `portable n=${n}`);
      assert.equal(crc32(data.subarray(0, n)), want, `crc32 n=${n}`);
    }
  });

  it('respects byteOffset (unaligned views)', () => {
    const data = noise(3000, 2);
    for (const start of [1, 3, 7, 13]) {
      const view = data.subarray(start, start + 2000);
      assert.equal(crc32(view), bitwiseCrc32(view));
      assert.equal(crc32Portable(view), bitwiseCrc32(view));
    }
  });

  it('chains: crc32(b, crc32(a)) = crc32(a ++ b) at every split point, both paths', () => {
    const data = noise(1100, 3);
    const whole = crc32(data);
    for (let split = 0; split <= data.length; split += 7) {
      const a = data.subarray(0, split);
      const b = data.subarray(split);
      assert.equal(crc32(b, crc32(a)), whole, `split ${split}`);
      assert.equal(crc32Portable(b, crc32Portable(a)), whole, `portable split ${split}`);
    }
  });
});
