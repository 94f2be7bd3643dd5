import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DmaController } from '../../src/device/dma.js';
import { ProtocolError } from '../../src/errors.js';
import { memfdCreate } from '../../src/native/addon.js';
import { DmaMapFlags } from '../../src/protocol/constants.js';
import type { DmaMapRequest } from '../../src/protocol/dma.js';
import { Errno } from '../../src/protocol/errno.js';
import { bitmapBytes } from '../../src/protocol/feature.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const RW = DmaMapFlags.READ | DmaMapFlags.WRITE;
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

function req(addr: bigint, size: bigint, flags = RW): DmaMapRequest {
  return { argsz: 32, flags, offset: 0n, addr, size };
}

function throwsErrno(fn: () => unknown, errno: number): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof ProtocolError, String(error));
    assert.equal(error.errno, errno, error.message);
    return true;
  });
}

/** Indices of the set bits (bit i%8 of byte i/8), written out independently of the code under test. */
function setBits(bitmap: Uint8Array): number[] {
  const out: number[] = [];
  bitmap.forEach((byte, j) => {
    for (let i = 0; i < 8; i++) if (byte & (1 << i)) out.push(j * 8 + i);
  });
  return out;
}

/** Report pages of `reportPage` bytes overlapping any of the 4 KiB `pages`, sorted and unique. */
function expectedPages(pages: number[], reportPage: number, regionSize: number): number[] {
  const set = new Set<number>();
  for (const p of pages) {
    const start = p * 4096;
    const end = Math.min(start + 4096, regionSize) - 1;
    for (let r = Math.floor(start / reportPage); r <= Math.floor(end / reportPage); r++) set.add(r);
  }
  return [...set].sort((a, b) => a - b);
}

/** A controller with one memfd region of `size` bytes at `iova`. */
async function withLogged(iova: bigint, size: number, fn: (dma: DmaController) => unknown): Promise<void> {
  await assertNoFdLeak(async () => {
    const dma = new DmaController();
    try {
      dma.map(req(iova, BigInt(size)), memfdCreate('dma-log', size));
      await fn(dma);
    } finally {
      dma.close();
    }
  });
}

describe('DMA logging start/stop', () => {
  it('page size 0 → EINVAL; same size again OK; another size → EINVAL; stop allows a new size', () => {
    const dma = new DmaController();
    throwsErrno(() => dma.startLogging(0n), Errno.EINVAL);
    assert.equal(dma.logging, false);
    dma.startLogging(4096n);
    dma.startLogging(4096n);
    assert.equal(dma.loggingPageSize, 4096n);
    throwsErrno(() => dma.startLogging(8192n), Errno.EINVAL);
    dma.stopLogging();
    dma.stopLogging();
    assert.equal(dma.logging, false);
    dma.startLogging(8192n);
    assert.equal(dma.loggingPageSize, 8192n);
  });
});

describe('DMA_LOGGING_REPORT rules', () => {
  it('each rule gives its errno; what libvfio-user refused with ENOTSUP now reports, zero outside the region', () =>
    withLogged(0x10000n, 64 * KiB, (dma) => {
      dma.map(req(0x100000n, 0x10000n), undefined);
      throwsErrno(() => dma.report(0x10000n, 0x10000n, 4096n), Errno.EINVAL); // not logging
      dma.startLogging(4096n);
      throwsErrno(() => dma.report(0x30000n, 0x10000n, 4096n), Errno.ENOENT); // unmapped
      throwsErrno(() => dma.report(0x0n, 0x10000n, 4096n), Errno.ENOENT); // ends where the region starts
      throwsErrno(() => dma.report(0x10000n, 0n, 4096n), Errno.EINVAL); // length 0
      throwsErrno(() => dma.report(0xffff_ffff_ffff_f000n, 0x2000n, 4096n), Errno.EOVERFLOW);
      throwsErrno(() => dma.report(0x10000n, 0x10000n, 0n), Errno.EINVAL);
      throwsErrno(() => dma.report(0x10000n, 0x10000n, 3000n), Errno.EINVAL); // not a power of two
      throwsErrno(() => dma.report(0x10000n, 1n << 40n, 1n), Errno.ENOMEM); // a 128 GiB-bit bitmap
      dma.writeSync(0x10000n, Uint8Array.of(1)); // page 0 of the region
      dma.writeSync(0x1f000n, Uint8Array.of(1)); // its last page (15)
      assert.deepEqual(setBits(dma.report(0x10000n, 0x8000n, 4096n)), [0], 'head of the region (ENOTSUP on libvfio-user)');
      assert.deepEqual(setBits(dma.report(0x14000n, 0x4000n, 4096n)), [], 'inside: nothing dirty there');
      assert.deepEqual(setBits(dma.report(0x0n, 0x40000n, 4096n)), [31], 'a range starting in a gap and ending past the region');
      dma.writeSync(0x1f000n, Uint8Array.of(1));
      assert.deepEqual(setBits(dma.report(0x10000n, 0x10000n, 0x20000n)), [0], 'length < page size: one bit');
      assert.deepEqual([...dma.report(0x100000n, 0x10000n, 4096n)], new Array(8).fill(0), 'message mode: the client tracks it');
      assert.equal(dma.report(0x10000n, 0x10000n, 4096n).length, 8);
      dma.stopLogging();
      throwsErrno(() => dma.report(0x10000n, 0x10000n, 4096n), Errno.EINVAL);
    }));
});

describe('DMA dirty bitmaps', () => {
  it('bit layout, clear-on-read, and only writes count', () =>
    withLogged(0x40000n, 256 * KiB, async (dma) => {
      dma.startLogging(4096n);
      await dma.write(0x40000n + 5000n, Uint8Array.of(1)); // page 1
      dma.writeSync(0x40000n + 9n * 4096n - 1n, Uint8Array.of(1, 2)); // pages 8, 9
      await dma.read(0x40000n + 20n * 4096n, 4096); // reads do not dirty
      dma.view(0x40000n + 30n * 4096n, 4096); // nor read views
      const bitmap = dma.report(0x40000n, 0x40000n, 4096n);
      assert.equal(bitmap.length, Number(bitmapBytes(256n * 1024n, 4096n)));
      assert.deepEqual([...bitmap.subarray(0, 2)], [0b0000_0010, 0b0000_0011]);
      assert.deepEqual(setBits(bitmap), [1, 8, 9]);
      assert.deepEqual(setBits(dma.report(0x40000n, 0x40000n, 4096n)), []); // cleared
      dma.view(0x40000n + 63n * 4096n, 1, { write: true });
      dma.markDirty(0x40000n + 40n * 4096n, 8192);
      assert.deepEqual(setBits(dma.report(0x40000n, 0x40000n, 4096n)), [40, 41, 63]);
    }));

  for (const reportPage of [4 * KiB, 8 * KiB, 2 * MiB, 1 * KiB, 512]) {
    it(`2 MiB region logged at 4 KiB, reported at ${reportPage} bytes`, () =>
      withLogged(0x20_0000n, 2 * MiB, async (dma) => {
        dma.startLogging(4096n);
        const pages = [0, 1, 7, 8, 255, 256, 300, 511];
        for (const p of pages) await dma.write(0x20_0000n + BigInt(p * 4096 + 100), Uint8Array.of(1));
        const bitmap = dma.report(0x20_0000n, 0x20_0000n, BigInt(reportPage));
        assert.equal(bitmap.length, Number(bitmapBytes(2n * 1024n * 1024n, BigInt(reportPage))));
        assert.deepEqual(setBits(bitmap), expectedPages(pages, reportPage, 2 * MiB));
        assert.deepEqual(setBits(dma.report(0x20_0000n, 0x20_0000n, BigInt(reportPage))), []);
      }));
  }

  it('logging at 2 MiB tracks coarsely and replicates for a 4 KiB report', () =>
    withLogged(0x0n, 4 * MiB, (dma) => {
      dma.startLogging(2n * 1024n * 1024n);
      dma.writeSync(2n * 1024n * 1024n + 5n, Uint8Array.of(1));
      assert.deepEqual(setBits(dma.report(0n, 4n * 1024n * 1024n, 2n * 1024n * 1024n)), [1]);
      dma.writeSync(2n * 1024n * 1024n + 5n, Uint8Array.of(1));
      const fine = setBits(dma.report(0n, 4n * 1024n * 1024n, 4096n));
      assert.deepEqual(fine, Array.from({ length: 512 }, (_, i) => 512 + i));
    }));

  it('a region whose size is not a multiple of the page size: the last partial page', () =>
    withLogged(0x1000n, 3 * 4096 + 100, (dma) => {
      dma.startLogging(4096n);
      dma.writeSync(0x1000n + 3n * 4096n + 99n, Uint8Array.of(1));
      assert.deepEqual(setBits(dma.report(0x1000n, 3n * 4096n + 100n, 4096n)), [3]);
      dma.writeSync(0x1000n + 3n * 4096n + 99n, Uint8Array.of(1));
      assert.deepEqual(setBits(dma.report(0x1000n, 3n * 4096n + 100n, 8192n)), [1]);
    }));

  it('a 1 GiB region: pages 0, 255, 256, 65535, 65536, 262143 at every page size', () =>
    withLogged(0x4000_0000n, GiB, (dma) => {
      dma.startLogging(4096n);
      const pages = [0, 255, 256, 65535, 65536, 262143];
      for (const reportPage of [4 * KiB, 8 * KiB, 1 * KiB, 2 * MiB, 64 * KiB]) {
        for (const p of pages) dma.writeSync(0x4000_0000n + BigInt(p) * 4096n + 4095n, Uint8Array.of(7));
        const bitmap = dma.report(0x4000_0000n, BigInt(GiB), BigInt(reportPage));
        assert.equal(bitmap.length, GiB / reportPage / 8);
        assert.deepEqual(setBits(bitmap), expectedPages(pages, reportPage, GiB), `at ${reportPage}`);
      }
      assert.equal(setBits(dma.report(0x4000_0000n, BigInt(GiB), 4096n)).length, 0);
    }));

  it('regions mapped while logging get a bitmap; message regions never do (they read as 0)', () =>
    withLogged(0x0n, 64 * KiB, (dma) => {
      dma.startLogging(4096n);
      dma.map(req(0x10000n, 0x10000n), memfdCreate('dma-late', 64 * KiB));
      dma.map(req(0x20000n, 0x10000n), undefined);
      dma.writeSync(0x10000n + 8192n, Uint8Array.of(1));
      assert.deepEqual(setBits(dma.report(0x10000n, 0x10000n, 4096n)), [2]);
      assert.equal(dma.regions()[2]?.mode, 'message');
      assert.deepEqual(setBits(dma.report(0x20000n, 0x10000n, 4096n)), []);
    }));

  it('dirty pages before START are not reported; STOP forgets them', () =>
    withLogged(0x0n, 64 * KiB, (dma) => {
      dma.writeSync(0n, Uint8Array.of(1));
      dma.startLogging(4096n);
      assert.deepEqual(setBits(dma.report(0n, 0x10000n, 4096n)), []);
      dma.writeSync(4096n, Uint8Array.of(1));
      dma.stopLogging();
      dma.startLogging(4096n);
      assert.deepEqual(setBits(dma.report(0n, 0x10000n, 4096n)), []);
    }));
});

describe('DMA_UNMAP with GET_DIRTY_BITMAP', () => {
  it('returns the bitmap and unmaps; a failing rule unmaps nothing', () =>
    withLogged(0x0n, 64 * KiB, (dma) => {
      throwsErrno(() => dma.unmapWithDirtyBitmap(0n, 0x10000n, 4096n), Errno.EINVAL); // not logging
      dma.startLogging(4096n);
      dma.writeSync(0x3000n, Uint8Array.of(1));
      throwsErrno(() => dma.unmapWithDirtyBitmap(0n, 0x8000n, 4096n), Errno.ENOENT);
      throwsErrno(() => dma.unmapWithDirtyBitmap(0n, 0x10000n, 4095n), Errno.EINVAL);
      assert.equal(dma.regions().length, 1);
      const { region, bitmap } = dma.unmapWithDirtyBitmap(0n, 0x10000n, 8192n);
      assert.deepEqual(setBits(bitmap), [1]);
      assert.equal(bitmap.length, 8);
      assert.equal(region.mapped, false);
      assert.equal(dma.regions().length, 0);
    }));
});
