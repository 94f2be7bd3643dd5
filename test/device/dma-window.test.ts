import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { DmaController } from '../../src/device/dma.js';
import type { DmaRegionEntry } from '../../src/device/dma-region.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';
import { DmaMapFlags } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const RW = DmaMapFlags.READ | DmaMapFlags.WRITE;
const GiB = 2 ** 30;
const MiB = 2 ** 20;

/** Mappings of the memfd `name` in /proc/self/maps. */
function mappingsOf(name: string): number {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((line) => line.includes(`/memfd:${name} `)).length;
}

/** Reads `n` bytes at file offset `at` through a fresh, independent mapping of `fd`. */
function peek(fd: number, at: number, n: number): number[] {
  const base = at - (at % 4096);
  const buffer = mapFd(fd, base, at - base + n, false);
  const out = [...new Uint8Array(buffer, at - base, n)];
  unmap(buffer);
  return out;
}

describe('windowed mapping of a large region', () => {
  it('a 3 GiB memfd region maps windows lazily; data lands at the right file offsets', () =>
    assertNoFdLeak(async () => {
      const name = 'dma-3g';
      const fd = memfdCreate(name, 3 * GiB + 4096); // sparse: only touched pages cost memory
      const dma = new DmaController();
      const region = dma.map(
        { argsz: 32, flags: RW, offset: 4096n, addr: 0x1_0000_0000n, size: BigInt(3 * GiB) },
        native.dup(fd),
      ) as DmaRegionEntry;
      assert.equal(region.mappedWindows, 1);
      assert.equal(mappingsOf(name), 1);
      const base = 0x1_0000_0000n;
      const spots = [0, GiB - 3, GiB + 17, 2 * GiB - 2, 3 * GiB - 4];
      for (const [i, at] of spots.entries()) await dma.write(base + BigInt(at), Uint8Array.of(i + 1, i + 2, i + 3));
      assert.equal(region.mappedWindows, 4);
      for (const [i, at] of spots.entries()) {
        assert.deepEqual(peek(fd, 4096 + at, 3), [i + 1, i + 2, i + 3], `at ${at}`);
        assert.deepEqual([...(await dma.read(base + BigInt(at), 3))], [i + 1, i + 2, i + 3]);
      }
      // A copy across a window boundary, and a view straddling one (within the overlap).
      const big = Uint8Array.from({ length: 3 * MiB }, (_, i) => i & 0xff);
      dma.writeSync(base + BigInt(GiB - MiB), big);
      assert.deepEqual(dma.readSync(base + BigInt(GiB - MiB), 3 * MiB), big);
      const view = dma.view(base + BigInt(GiB - 8), 16, { write: true });
      view.set([9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
      assert.deepEqual(peek(fd, 4096 + GiB - 8, 16), new Array(16).fill(9));
      dma.unmap(base, BigInt(3 * GiB));
      assert.equal(view.length, 0);
      assert.equal(mappingsOf(name), 0);
      native.close(fd);
    }));

  it('small windows: a view straddling a boundary by more than the overlap → EINVAL', () =>
    assertNoFdLeak(() => {
      const fd = memfdCreate('dma-small-win', 64 * 4096);
      const dma = new DmaController({ windowSize: 16 * 4096 }); // overlap = 4 pages, stride 12 pages
      const region = dma.map({ argsz: 32, flags: RW, offset: 0n, addr: 0n, size: 64n * 4096n }, fd) as DmaRegionEntry;
      assert.equal(region.maxView, 4 * 4096);
      const data = Uint8Array.from({ length: 64 * 4096 }, (_, i) => (i * 7) & 0xff);
      dma.writeSync(0n, data);
      assert.deepEqual(dma.readSync(0n, 64 * 4096), data);
      assert.equal(region.mappedWindows, 5);
      assert.deepEqual(dma.view(12n * 4096n - 100n, 4 * 4096), data.subarray(12 * 4096 - 100, 16 * 4096 - 100));
      assert.throws(
        () => dma.view(12n * 4096n - 100n, 8 * 4096),
        (e: unknown) => e instanceof InvalidArgumentError && e.errno === Errno.EINVAL,
      );
      dma.close();
    }));
});
