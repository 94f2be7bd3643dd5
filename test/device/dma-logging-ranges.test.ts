/**
 * DMA logging with the kernel's semantics: START's ranges honoured, REPORT of
 * any range (part of a region, several regions, gaps), clear on read of only
 * the reported part; checked against an independent page model.
 */
import { prngUnit as rng } from '../support/prng.js';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DirtyBitmap } from '../../src/device/dma-bitmap.js';
import { DmaController } from '../../src/device/dma.js';
import { memfdCreate } from '../../src/native/addon.js';
import { DmaMapFlags } from '../../src/protocol/constants.js';
import type { DmaMapRequest } from '../../src/protocol/dma.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const RW = DmaMapFlags.READ | DmaMapFlags.WRITE;
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const PAGE = 4096;

function req(addr: number, size: number): DmaMapRequest {
  return { argsz: 32, flags: RW, offset: 0n, addr: BigInt(addr), size: BigInt(size) };
}

/** Indices of the set bits (bit i%8 of byte i/8), written out independently of the code under test. */
function setBits(bitmap: Uint8Array): number[] {
  const out: number[] = [];
  bitmap.forEach((byte, j) => {
    for (let i = 0; i < 8; i++) if (byte & (1 << i)) out.push(j * 8 + i);
  });
  return out;
}

/**
 * The oracle: absolute guest pages of `track` bytes (regions are aligned to
 * it), dirty when a device write put a byte in them that lies inside a START
 * range. A report sets bit i for every dirty page overlapping report page i
 * within the range, then forgets the pages wholly inside the range.
 */
class PageModel {
  readonly dirty = new Set<number>();
  readonly ranges: ReadonlyArray<readonly [number, number]> | undefined;
  readonly track: number;
  constructor(ranges: ReadonlyArray<readonly [number, number]> | undefined, track = PAGE) {
    this.ranges = ranges;
    this.track = track;
  }

  write(iova: number, length: number): void {
    const t = this.track;
    for (let p = Math.floor(iova / t); p <= Math.floor((iova + length - 1) / t); p++) {
      const from = Math.max(iova, p * t);
      const to = Math.min(iova + length, (p + 1) * t);
      if (this.ranges === undefined || this.ranges.some(([s, e]) => from < e && to > s)) this.dirty.add(p);
    }
  }

  report(iova: number, length: number, pageSize: number): number[] {
    const t = this.track;
    const bits = new Set<number>();
    for (const p of [...this.dirty]) {
      const from = Math.max(p * t, iova);
      const to = Math.min((p + 1) * t, iova + length);
      if (from >= to) continue;
      for (let b = Math.floor((from - iova) / pageSize); b <= Math.floor((to - 1 - iova) / pageSize); b++) bits.add(b);
      if (p * t >= iova && (p + 1) * t <= iova + length) this.dirty.delete(p);
    }
    return [...bits].sort((a, b) => a - b);
  }
}

/** fd-backed regions at these [iova, size) plus message-mode ones, logged as `ranges`. */
async function withRegions(
  mmap: ReadonlyArray<readonly [number, number]>,
  message: ReadonlyArray<readonly [number, number]>,
  fn: (dma: DmaController) => unknown,
): Promise<void> {
  await assertNoFdLeak(async () => {
    const written: Array<[bigint, number]> = [];
    const dma = new DmaController({
      transport: { read: async (_a, n) => new Uint8Array(n), write: async (a, d) => void written.push([a, d.length]) },
    });
    try {
      for (const [iova, size] of mmap) dma.map(req(iova, size), memfdCreate('dma-range', size));
      for (const [iova, size] of message) dma.map(req(iova, size), undefined);
      await fn(dma);
    } finally {
      dma.close();
    }
  });
}

const toRanges = (r: ReadonlyArray<readonly [number, number]>): Array<{ iova: bigint; length: bigint }> =>
  r.map(([s, e]) => ({ iova: BigInt(s), length: BigInt(e - s) }));

describe('DMA_LOGGING_START ranges', () => {
  it('only writes inside the ranges are logged; a write outside every range never shows', () =>
    withRegions([[0x10_0000, MiB]], [], (dma) => {
      dma.startLogging(4096n, toRanges([[0x10_4000, 0x10_8000], [0x18_0000, 0x18_1000]]));
      dma.writeSync(0x10_0000n, Uint8Array.of(1)); // before the first range
      dma.writeSync(0x10_3fffn, Uint8Array.of(1, 2)); // straddles into the first range: page 4 counts
      dma.writeSync(0x10_7000n, new Uint8Array(0x2000)); // last page of the range, and the page after it
      dma.writeSync(0x17_f000n, new Uint8Array(0x3000)); // covers the one-page second range
      dma.writeSync(0x1f_f000n, Uint8Array.of(9)); // the last page, in no range
      assert.deepEqual(setBits(dma.report(0x10_0000n, BigInt(MiB), 4096n)), [4, 7, 0x80]);
      dma.writeSync(0x10_0000n, new Uint8Array(MiB)); // everything
      assert.deepEqual(setBits(dma.report(0x10_0000n, BigInt(MiB), 4096n)), [4, 5, 6, 7, 0x80]);
    }));

  it('no ranges (or an empty list) logs everything; a region outside every range gets no bitmap', () =>
    withRegions([[0, 64 * KiB], [0x10_0000, 64 * KiB]], [], (dma) => {
      dma.startLogging(4096n, []);
      dma.writeSync(0xf000n, Uint8Array.of(1));
      dma.writeSync(0x10_0000n, Uint8Array.of(1));
      assert.deepEqual(setBits(dma.report(0n, 0x11_0000n, 4096n)), [15, 256]);
      dma.stopLogging();
      dma.startLogging(4096n, toRanges([[0x10_0000, 0x10_1000]]));
      assert.equal(dma.regions().filter((r) => (r as { bitmap?: unknown }).bitmap !== undefined).length, 1);
      dma.writeSync(0xf000n, Uint8Array.of(1));
      dma.writeSync(0x10_0000n, Uint8Array.of(1));
      assert.deepEqual(setBits(dma.report(0n, 0x11_0000n, 4096n)), [256]);
    }));

  it('a region mapped while logging is limited to the ranges too', () =>
    withRegions([], [], (dma) => {
      dma.startLogging(4096n, toRanges([[0x2000, 0x4000]]));
      dma.map(req(0, 0x10000), memfdCreate('late', 0x10000));
      dma.writeSync(0n, new Uint8Array(0x10000));
      assert.deepEqual(setBits(dma.report(0n, 0x10000n, 4096n)), [2, 3]);
    }));

  it('a second START at the same page size logs the union of both', () =>
    withRegions([[0, 0x10000]], [], (dma) => {
      dma.startLogging(4096n, toRanges([[0x1000, 0x2000]]));
      dma.startLogging(4096n, toRanges([[0x8000, 0xa000]]));
      dma.writeSync(0n, new Uint8Array(0x10000));
      assert.deepEqual(setBits(dma.report(0n, 0x10000n, 4096n)), [1, 8, 9]);
      dma.startLogging(4096n); // everything
      dma.writeSync(0n, new Uint8Array(0x10000));
      assert.equal(setBits(dma.report(0n, 0x10000n, 4096n)).length, 16);
    }));

  it('many ranges (256, one page apart) in one region', () =>
    withRegions([[0, 2 * MiB]], [], (dma) => {
      const ranges = Array.from({ length: 256 }, (_, i) => [i * 2 * PAGE, i * 2 * PAGE + PAGE] as const);
      dma.startLogging(4096n, toRanges(ranges));
      dma.writeSync(0n, new Uint8Array(2 * MiB));
      assert.deepEqual(setBits(dma.report(0n, BigInt(2 * MiB), 4096n)), Array.from({ length: 256 }, (_, i) => 2 * i));
    }));
});

describe('DMA_LOGGING_REPORT of any range', () => {
  const mmap = [[0x10_0000, MiB], [0x20_0000, MiB], [0x40_0000, 2 * MiB]] as const; // two adjacent, a gap, one more
  const message = [[0x30_0000, 256 * KiB]] as const;

  it('spans several regions, a gap and a message-mode region; bits outside stay 0', () =>
    withRegions(mmap, message, async (dma) => {
      dma.startLogging(4096n);
      dma.writeSync(0x1f_f000n, new Uint8Array(0x2000)); // last page of region 1, first of region 2
      dma.writeSync(0x40_0000n, Uint8Array.of(1));
      await dma.write(0x30_0000n, Uint8Array.of(1)); // message mode: the client saw it
      const bitmap = dma.report(0x1f_e000n, 0x20_3000n, 4096n);
      assert.equal(bitmap.length, Math.ceil(0x203 / 64) * 8);
      assert.deepEqual(setBits(bitmap), [1, 2, 0x202]);
      assert.deepEqual(setBits(dma.report(0x1f_e000n, 0x20_3000n, 4096n)), [], 'cleared');
    }));

  it('clear on read forgets only the reported part', () =>
    withRegions(mmap, message, (dma) => {
      dma.startLogging(4096n);
      for (const p of [0, 1, 2, 100, 255]) dma.writeSync(0x10_0000n + BigInt(p * PAGE), Uint8Array.of(1));
      assert.deepEqual(setBits(dma.report(0x10_1000n, 0x6_4000n, 4096n)), [0, 1, 99], 'pages 1 … 100');
      assert.deepEqual(setBits(dma.report(0x10_0000n, BigInt(MiB), 4096n)), [0, 255], 'pages 0 and 255 are still dirty');
      dma.writeSync(0x10_3000n, Uint8Array.of(1));
      assert.deepEqual(setBits(dma.report(0x10_3800n, 0x1000n, 4096n)), [0], 'an unaligned report sees the page it straddles');
      assert.deepEqual(setBits(dma.report(0x10_3000n, 0x1000n, 4096n)), [0], '… and keeps it: it was not wholly inside');
      assert.deepEqual(setBits(dma.report(0x10_3000n, 0x1000n, 4096n)), []);
    }));

  it('report pages beyond 2^52 bytes (the arithmetic leaves plain numbers)', () =>
    withRegions([[0x10_0000, 64 * KiB]], [], (dma) => {
      const high = 2n ** 61n + 0x1000n;
      dma.map({ argsz: 32, flags: RW, offset: 0n, addr: high, size: 0x10000n }, memfdCreate('high', 0x10000));
      dma.startLogging(4096n);
      const dirty = (): void => {
        dma.writeSync(0x10_0000n, Uint8Array.of(1));
        dma.writeSync(high + 0x2000n, Uint8Array.of(1));
      };
      dirty();
      assert.deepEqual(setBits(dma.report(0n, 2n ** 62n, 2n ** 60n)), [0, 2]);
      dirty();
      assert.deepEqual(setBits(dma.report(high + 0x2000n, 0x1000n, 2n ** 60n)), [0], 'a sub-range, region before iova');
      dirty();
      assert.deepEqual(setBits(dma.report(2n ** 60n + 5n, 2n ** 61n, 2n ** 60n)), [1], 'an unaligned iova: the page at 2^61 + 0x3000 is in bit 1');
      assert.deepEqual(setBits(dma.report(0n, 2n ** 62n, 2n ** 60n)), [0], 'the low page is still dirty');
    }));

  // Regions aligned to 2 MiB, so that tracking pages are guest pages at every START page size.
  const aligned = [[0x20_0000, 2 * MiB], [0x40_0000, 2 * MiB], [0xc0_0000, 4 * MiB]] as const;
  const alignedMessage = [[0x80_0000, 2 * MiB]] as const;
  const cases = [[4, 4], [4, 8], [4, 64], [4, 2048], [8, 4], [64, 64], [64, 8], [2048, 4], [2048, 2048]] as const;
  for (const [startKiB, reportKiB] of cases) {
    it(`random ranges, writes and reports, logged at ${startKiB} KiB, reported at ${reportKiB} KiB: the page model`, () =>
      withRegions(aligned, alignedMessage, async (dma) => {
        const track = startKiB * KiB;
        const pageSize = reportKiB * KiB;
        const next = rng(track * 7 + pageSize);
        const pick = (n: number): number => Math.floor(next() * n);
        const ranges: Array<[number, number]> = [];
        for (let at = 0x20_0000 + pick(8) * track; at < 0x100_0000 && ranges.length < 12; ) {
          const len = (1 + pick(Math.max(2, (64 * PAGE) / track))) * track;
          ranges.push([at, Math.min(at + len, 0x100_0000)]);
          at += len + (1 + pick(Math.max(2, (64 * PAGE) / track))) * track;
        }
        dma.startLogging(BigInt(track), toRanges(ranges));
        const model = new PageModel(ranges, track);
        let unmapped = 0;
        for (let round = 0; round < 40; round++) {
          for (let w = 0; w < 30; w++) {
            const [base, size] = aligned[pick(aligned.length)]!;
            const off = pick(size);
            const len = Math.min(1 + pick(3 * PAGE), size - off);
            dma.writeSync(BigInt(base + off), new Uint8Array(len));
            model.write(base + off, len);
          }
          await dma.write(0x80_0000n + BigInt(pick(2 * MiB)), Uint8Array.of(1)); // message mode: never in the log
          const iova = 0x1f_c000 + pick(0xe0_0000);
          const length = 1 + pick(0x100_4000 - iova);
          const where = `round ${round}: [0x${iova.toString(16)}, +0x${length.toString(16)})`;
          if (![...aligned, ...alignedMessage].some(([b, n]) => iova < b + n && iova + length > b)) {
            assert.throws(() => dma.report(BigInt(iova), BigInt(length), BigInt(pageSize)), (e: { errno?: number }) => e.errno === 2, where);
            unmapped++;
            continue;
          }
          const got = setBits(dma.report(BigInt(iova), BigInt(length), BigInt(pageSize)));
          assert.deepEqual(got, model.report(iova, length, pageSize), where);
        }
        assert.deepEqual(setBits(dma.report(0x20_0000n, 0xe0_0000n, BigInt(pageSize))), model.report(0x20_0000, 0xe0_0000, pageSize));
        assert.ok(unmapped < 20, `${unmapped} of 40 reports hit only unmapped IOVA`);
      }));
  }
});

describe('ranges of thousands of pages', () => {
  const BASE = 0x4000_0000;
  const PAGES = [0, 255, 256, 65535, 65536, 262143];
  const dirtyAll = (dma: DmaController): void => {
    for (const p of PAGES) dma.writeSync(BigInt(BASE + p * PAGE + 17), Uint8Array.of(7));
  };

  it('a 1 GiB region: sub-range reports at 4 KiB, 8 KiB, 64 KiB and 2 MiB', () =>
    withRegions([[BASE, GiB]], [], (dma) => {
      dma.startLogging(4096n);
      const reports: Array<[number, number]> = [[0, 262144], [1, 65536], [255, 2], [256, 65280], [65535, 196609], [200, 70000]];
      for (const pageSize of [4 * KiB, 8 * KiB, 64 * KiB, 2 * MiB]) {
        for (const [first, count] of reports) {
          dirtyAll(dma);
          const model = new PageModel(undefined);
          PAGES.forEach((p) => model.write(BASE + p * PAGE, 1));
          const iova = BASE + first * PAGE;
          const got = setBits(dma.report(BigInt(iova), BigInt(count * PAGE), BigInt(pageSize)));
          assert.deepEqual(got, model.report(iova, count * PAGE, pageSize), `pages ${first} +${count} at ${pageSize}`);
          dma.report(BigInt(BASE), BigInt(GiB), 4096n); // start the next case clean
        }
      }
    }));

  it('START ranges of thousands of pages: writes outside them never show', () =>
    withRegions([[BASE, GiB]], [], (dma) => {
      const ranges = [[BASE, BASE + 256 * PAGE], [BASE + 65536 * PAGE, BASE + 70000 * PAGE], [BASE + 262000 * PAGE, BASE + GiB]] as const;
      dma.startLogging(4096n, toRanges(ranges));
      dirtyAll(dma);
      assert.deepEqual(setBits(dma.report(BigInt(BASE), BigInt(GiB), 4096n)), [0, 255, 65536, 262143]);
      dirtyAll(dma);
      assert.deepEqual(setBits(dma.report(BigInt(BASE), BigInt(GiB), BigInt(2 * MiB))), [0, 128, 511]);
      dirtyAll(dma);
      assert.deepEqual(setBits(dma.report(BigInt(BASE + 65536 * PAGE), BigInt(4464 * PAGE), 4096n)), [0]);
    }));
});

describe('DirtyBitmap spans and partial clears', () => {
  it('spans finer than the tracking page: a write between spans marks nothing, one inside marks its page', () => {
    const bitmap = new DirtyBitmap(64 * KiB, PAGE);
    bitmap.setSpans([512, 1024, 0x2000, 0x2200, 0x9e00, 0xa000]);
    bitmap.mark(0, 512); // before every span
    bitmap.mark(1024, 0x1000); // between the first two spans (pages 0 and 1)
    bitmap.mark(0x2200, 0x7c00); // from the end of the second span up to the start of the third
    assert.deepEqual([...Array(16).keys()].filter((p) => bitmap.isDirty(p)), []);
    bitmap.mark(1023, 2); // one byte inside the first span
    bitmap.mark(0x9dff, 2); // one byte inside the third
    assert.deepEqual([...Array(16).keys()].filter((p) => bitmap.isDirty(p)), [0, 9]);
    bitmap.setSpans(undefined);
    bitmap.mark(0x5000, 1);
    assert.equal(bitmap.isDirty(5), true);
  });

  it('forEachDirty and clearPages across chunk boundaries', () => {
    const chunkPages = 4096 * 8;
    const bitmap = new DirtyBitmap(4 * chunkPages * PAGE, PAGE);
    const pages = [0, 31, 32, chunkPages - 1, chunkPages, 2 * chunkPages + 5, 4 * chunkPages - 1];
    for (const p of pages) bitmap.mark(p * PAGE, 1);
    const seen: number[] = [];
    bitmap.forEachDirty(31, 2 * chunkPages + 5, (p) => seen.push(p));
    assert.deepEqual(seen.sort((a, b) => a - b), pages.slice(1, 6));
    bitmap.clearPages(32, 2 * chunkPages + 4); // frees nothing wholly, clears 32, chunkPages - 1, chunkPages
    bitmap.clearPages(3 * chunkPages, 4 * chunkPages - 1); // a whole chunk: freed
    const left: number[] = [];
    bitmap.forEachDirty(0, 4 * chunkPages - 1, (p) => left.push(p));
    assert.deepEqual(left.sort((a, b) => a - b), [0, 31, 2 * chunkPages + 5]);
  });
});
