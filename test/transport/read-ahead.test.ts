import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_BACKOFF, ReadAhead } from '../../src/transport/read-ahead.js';

/** How many `shouldTry()` calls return false before the next true. */
function skipped(r: ReadAhead): number {
  let n = 0;
  while (!r.shouldTry()) n++;
  return n;
}

describe('ReadAhead', () => {
  it('reads ahead on every wake-up while it finds data', () => {
    const r = new ReadAhead();
    for (let i = 0; i < 100; i++) {
      assert.equal(r.shouldTry(), true);
      r.hit();
    }
  });

  it('skips twice as many wake-ups after each consecutive miss, up to MAX_BACKOFF', () => {
    const r = new ReadAhead();
    const skips: number[] = [];
    for (let i = 0; i < 14; i++) {
      assert.equal(r.shouldTry(), true);
      r.miss();
      skips.push(skipped(r));
      r.miss(); // the probe after the skipped wake-ups misses too
      skips.push(skipped(r));
    }
    assert.deepEqual(skips.slice(0, 6), [1, 2, 4, 8, 16, 32]);
    assert.equal(Math.max(...skips), MAX_BACKOFF);
    assert.equal(skips.at(-1), MAX_BACKOFF);
  });

  it('a hit after misses restores reading ahead on every wake-up', () => {
    const r = new ReadAhead();
    r.miss();
    r.miss();
    assert.equal(skipped(r), 2);
    r.hit();
    assert.equal(r.shouldTry(), true);
    r.hit();
    assert.equal(r.shouldTry(), true);
    r.miss();
    assert.equal(skipped(r), 1, 'backoff starts again from one');
  });
});
