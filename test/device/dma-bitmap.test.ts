import assert from 'node:assert/strict';
import { prngUnit as rng } from '../support/prng.js';
import { describe, it } from 'node:test';
import { DIRTY_CHUNK_BYTES, DirtyBitmap, setBitRange, testBit } from '../../src/device/dma-bitmap.js';
import { DMA_WINDOW_OVERLAP, windowAt, windowLayout } from '../../src/device/dma-window.js';

describe('setBitRange', () => {
  it('matches a bit-by-bit oracle for every small range', () => {
    for (let first = 0; first < 40; first++) {
      for (let last = first - 1; last < 48; last++) {
        const got = new Uint8Array(8);
        setBitRange(got, first, last);
        const want = new Uint8Array(8);
        for (let i = first; i <= last; i++) want[i >> 3]! |= 1 << (i & 7);
        assert.deepEqual(got, want, `${first}..${last}`);
      }
    }
  });

  it('works at bit indices near 2^31 (no int32 wrap)', () => {
    const bits = new Uint8Array(2 ** 28 + 8); // 2^31 + 64 bits, sparse enough in practice
    setBitRange(bits, 2 ** 31 - 3, 2 ** 31 + 9);
    assert.deepEqual([bits[2 ** 28 - 1], bits[2 ** 28], bits[2 ** 28 + 1], bits[2 ** 28 - 2]], [0b1110_0000, 0xff, 0b11, 0]);
  });

  it('testBit reads the same layout and is false past the end', () => {
    const bits = new Uint8Array(2);
    setBitRange(bits, 9, 9);
    assert.deepEqual([testBit(bits, 9), testBit(bits, 8), testBit(bits, 100)], [true, false, false]);
  });
});

describe('DirtyBitmap', () => {
  /** Oracle: tracked pages touched by the byte ranges, mapped to report pages by overlap. */
  function oracle(ranges: [number, number][], track: number, report: number, size: number): Set<number> {
    const tracked = new Set<number>();
    for (const [off, len] of ranges) {
      for (let p = Math.floor(off / track); p <= Math.floor((off + len - 1) / track); p++) tracked.add(p);
    }
    const out = new Set<number>();
    for (const p of tracked) {
      const end = Math.min((p + 1) * track, size) - 1;
      for (let r = Math.floor((p * track) / report); r <= Math.floor(end / report); r++) out.add(r);
    }
    return out;
  }

  for (const [track, report] of [
    [4096, 4096],
    [4096, 1024],
    [4096, 8192],
    [4096, 1 << 21],
    [8192, 4096],
    [1 << 21, 4096],
    [5000, 4096], // granularities that do not divide each other
    [4096, 3000],
  ] as const) {
    it(`random writes, tracked at ${track}, reported at ${report}`, () => {
      const next = rng(track ^ report);
      const size = 3 * DIRTY_CHUNK_BYTES * 8 * 4096 + 12345; // > 3 chunks at 4 KiB
      const bitmap = new DirtyBitmap(size, track);
      const ranges: [number, number][] = [];
      for (let i = 0; i < 300; i++) {
        const off = Math.floor(next() * (size - 1));
        const len = 1 + Math.floor(next() * Math.min(3 * track, size - off - 1));
        ranges.push([off, len]);
        bitmap.mark(off, len);
      }
      ranges.push([size - 1, 1]);
      bitmap.mark(size - 1, 1);
      const out = new Uint8Array(Math.ceil(Math.ceil(size / report) / 64) * 8);
      bitmap.take(report, out);
      const got = new Set<number>();
      out.forEach((byte, j) => {
        for (let i = 0; i < 8; i++) if (byte & (1 << i)) got.add(j * 8 + i);
      });
      assert.deepEqual(got, oracle(ranges, track, report, size));
      const again = new Uint8Array(out.length);
      bitmap.take(report, again);
      assert.ok(again.every((b) => b === 0), 'cleared on read');
    });
  }

  it('isDirty and clear', () => {
    const bitmap = new DirtyBitmap(1 << 30, 4096);
    bitmap.mark(70_000 * 4096, 1);
    assert.deepEqual([bitmap.isDirty(70_000), bitmap.isDirty(69_999), bitmap.pages], [true, false, 262_144]);
    bitmap.clear();
    assert.equal(bitmap.isDirty(70_000), false);
  });
});

describe('windowLayout', () => {
  const GiB = 2 ** 30;

  it('a small region is one window with its offset rounded down and length rounded up', () => {
    assert.deepEqual(windowLayout(4096 + 100, 8000, 4096), {
      base: 4096,
      delta: 100,
      length: 8192,
      window: 8192,
      stride: 8192,
      count: 1,
      maxView: 8000,
    });
  });

  it('a 3 GiB region: overlapping 1 GiB windows covering every byte', () => {
    const l = windowLayout(0, 3 * GiB, 4096);
    assert.equal(l.window, GiB);
    assert.equal(l.stride, GiB - DMA_WINDOW_OVERLAP);
    assert.equal(l.maxView, DMA_WINDOW_OVERLAP);
    assert.equal(l.count, 4);
    for (const rel of [0, GiB - 1, GiB, 2 * GiB + 5, 3 * GiB - 1]) {
      const w = windowAt(l, rel);
      assert.ok(w.start <= rel && rel < w.start + w.length, `byte ${rel}`);
      // A view of maxView bytes at rel fits when the region has that many bytes left.
      if (rel + l.maxView <= l.length) assert.ok(rel + l.maxView <= w.start + w.length, `view at ${rel}`);
    }
    const last = windowAt(l, 3 * GiB - 1);
    assert.equal(last.start + last.length, 3 * GiB);
  });

  it('windows respect a large mapping page', () => {
    const l = windowLayout(2 * 1024 * 1024 + 4096, 3 * GiB, 2 * 1024 * 1024);
    assert.equal(l.base, 2 * 1024 * 1024);
    assert.equal(l.stride % (2 * 1024 * 1024), 0);
    assert.equal(l.length % (2 * 1024 * 1024), 0);
  });
});
