import assert from 'node:assert/strict';
import { closeSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { DMA_MAP_OVERLAP_ERRNO, DmaController, type DmaRegion } from '../../src/device/dma.js';
import { ProtocolError, StateError, VfioUserError } from '../../src/errors.js';
import { mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';
import { DMA_MAX_SIZE, DmaMapFlags } from '../../src/protocol/constants.js';
import type { DmaMapRequest } from '../../src/protocol/dma.js';
import { Errno } from '../../src/protocol/errno.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const { READ, WRITE, MMAP, FILE_IO } = DmaMapFlags;
const RW = READ | WRITE;
const PAGE = 4096;

function req(addr: bigint, size: bigint, flags = RW, offset = 0n): DmaMapRequest {
  return { argsz: 32, flags, offset, addr, size };
}

function isOpen(fd: number): boolean {
  const dup = native.dup(fd);
  if (dup < 0) return false;
  native.close(dup);
  return true;
}

/** Asserts that `fn` throws a `cls` carrying `errno`. */
function throwsErrno(fn: () => unknown, errno: number, cls: typeof VfioUserError = ProtocolError): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof cls, `expected ${cls.name}, got ${String(error)}`);
    assert.equal(error.errno, errno, error.message);
    return true;
  });
}

describe('DmaController.map rules', () => {
  const big = 1n << 40n;
  // Each row: one rule; fd = a fresh memfd of `fdSize` bytes when given.
  const rows: { name: string; request: DmaMapRequest; fdSize?: number; errno: number }[] = [
    { name: 'unknown flag bit', request: req(0n, 4096n, RW | 0x10), errno: Errno.EINVAL },
    { name: 'unknown flag bit with fd', request: req(0n, 4096n, RW | (1 << 31)), fdSize: PAGE, errno: Errno.EINVAL },
    { name: 'MMAP without fd', request: req(0n, 4096n, RW | MMAP), errno: Errno.EINVAL },
    { name: 'FILE_IO without fd', request: req(0n, 4096n, RW | FILE_IO), errno: Errno.EINVAL },
    { name: 'size 0', request: req(0n, 0n), errno: Errno.EINVAL },
    { name: 'size 0 with fd', request: req(0n, 0n), fdSize: PAGE, errno: Errno.EINVAL },
    { name: 'size > 8 TiB', request: req(0n, DMA_MAX_SIZE + 1n), errno: Errno.ENOSPC },
    { name: 'addr + size wraps 2^64', request: req((1n << 64n) - 4096n, 8192n), errno: Errno.EINVAL },
    { name: 'fd smaller than offset + size', request: req(0n, 8192n), fdSize: PAGE, errno: Errno.EINVAL },
    { name: 'offset past the end of the fd', request: req(0n, 4096n, RW, 4096n), fdSize: PAGE, errno: Errno.EINVAL },
    { name: 'huge size with a small fd', request: req(0n, big), fdSize: PAGE, errno: Errno.EINVAL },
  ];
  for (const row of rows) {
    it(`${row.name} → ${row.errno}, fd closed`, () =>
      assertNoFdLeak(() => {
        const dma = new DmaController();
        const fd = row.fdSize === undefined ? undefined : memfdCreate('dma-rule', row.fdSize);
        throwsErrno(() => dma.map(row.request, fd), row.errno);
        if (fd !== undefined) assert.equal(isOpen(fd), false);
        assert.equal(dma.regions().length, 0);
      }));
  }

  it('a bad fd → EBADF', () => {
    throwsErrno(() => new DmaController({ closeFd: () => {} }).map(req(0n, 4096n), 999_999), Errno.EBADF);
  });

  it('a region exactly at the top of the IOVA space is fine', () => {
    const dma = new DmaController();
    const region = dma.map(req((1n << 64n) - 4096n, 4096n), undefined);
    assert.equal(region.end, 1n << 64n);
    assert.equal(region.mode, 'message');
  });

  it('an 8 TiB message-mode region is accepted', () => {
    const dma = new DmaController();
    assert.equal(dma.map(req(0n, DMA_MAX_SIZE), undefined).size, DMA_MAX_SIZE);
  });

  it('overlap → EINVAL (the named constant), whichever side overlaps', () => {
    assert.equal(DMA_MAP_OVERLAP_ERRNO, Errno.EINVAL);
    const dma = new DmaController();
    dma.map(req(0x10000n, 0x10000n), undefined);
    for (const [addr, size] of [
      [0x8000n, 0x10000n], // tail inside
      [0x18000n, 0x10000n], // head inside
      [0x12000n, 0x1000n], // contained
      [0x0n, 0x30000n], // contains
      [0x10000n, 0x1000n], // same start, other size
    ] as const) {
      throwsErrno(() => dma.map(req(addr, size), undefined), DMA_MAP_OVERLAP_ERRNO);
    }
    dma.map(req(0x20000n, 0x1000n), undefined); // adjacent is fine
    dma.map(req(0xf000n, 0x1000n), undefined);
    assert.deepEqual(
      dma.regions().map((r) => r.addr),
      [0xf000n, 0x10000n, 0x20000n],
    );
  });

  it('region count limit → EINVAL', () => {
    const dma = new DmaController({ maxRegions: 2 });
    dma.map(req(0n, 4096n), undefined);
    dma.map(req(4096n, 4096n), undefined);
    throwsErrno(() => dma.map(req(8192n, 4096n), undefined), Errno.EINVAL);
    dma.map(req(0n, 4096n), undefined); // an identical re-map is still a no-op
  });

  it('identical re-map is a no-op returning the region; the new fd is closed', () =>
    assertNoFdLeak(() => {
      const dma = new DmaController();
      const file = memfdCreate('dma-same', 4 * PAGE);
      const first = dma.map(req(0x1000n, 8192n, RW | MMAP, 4096n), native.dup(file));
      const again = native.dup(file);
      assert.equal(dma.map(req(0x1000n, 8192n, RW | MMAP, 4096n), again), first);
      assert.equal(isOpen(again), false);
      assert.equal(dma.regions().length, 1);
      const m1 = dma.map(req(0x100000n, 4096n), undefined);
      assert.equal(dma.map(req(0x100000n, 4096n), undefined), m1);
      dma.close();
      native.close(file);
    }));

  it('same range with another offset, flags or file → EINVAL', () =>
    assertNoFdLeak(() => {
      const dma = new DmaController();
      const file = memfdCreate('dma-same-a', 4 * PAGE);
      const other = memfdCreate('dma-same-b', 4 * PAGE);
      dma.map(req(0x1000n, 8192n, RW, 0n), native.dup(file));
      throwsErrno(() => dma.map(req(0x1000n, 8192n, RW, 4096n), native.dup(file)), Errno.EINVAL);
      throwsErrno(() => dma.map(req(0x1000n, 8192n, READ, 0n), native.dup(file)), Errno.EINVAL);
      throwsErrno(() => dma.map(req(0x1000n, 8192n, RW, 0n), native.dup(other)), Errno.EINVAL);
      throwsErrno(() => dma.map(req(0x1000n, 8192n, RW, 0n), undefined), Errno.EINVAL);
      dma.close();
      native.close(file);
      native.close(other);
    }));

  it('mmap errors propagate: a read-only fd mapped WRITE → EACCES', () =>
    assertNoFdLeak(() => {
      const path = `/tmp/dma-ro-${process.pid}`;
      writeFileSync(path, new Uint8Array(PAGE));
      const fd = openSync(path, 'r');
      try {
        const dma = new DmaController();
        throwsErrno(() => dma.map(req(0n, 4096n, RW), fd), Errno.EACCES);
        assert.equal(isOpen(fd), false);
        const ro = openSync(path, 'r');
        assert.equal(dma.map(req(0n, 4096n, READ), ro).readable, true);
        dma.close();
      } finally {
        if (isOpen(fd)) closeSync(fd);
        rmSync(path);
      }
    }));

  it('records flags, mode and F_SEAL_SHRINK', () =>
    assertNoFdLeak(() => {
      const dma = new DmaController();
      const plain = memfdCreate('dma-plain', PAGE);
      const sealed = memfdCreate('dma-sealed', PAGE, native.constants.MFD_ALLOW_SEALING);
      assert.equal(native.addSeals(sealed, native.constants.F_SEAL_SHRINK), 0);
      const a = dma.map(req(0n, 4096n, READ | FILE_IO), plain);
      const b = dma.map(req(0x10000n, 4096n, WRITE), sealed);
      const c = dma.map(req(0x20000n, 4096n, READ), undefined);
      assert.deepEqual([a.mode, a.readable, a.writable, a.sealedAgainstShrink], ['mmap', true, false, false]);
      assert.deepEqual([b.mode, b.readable, b.writable, b.sealedAgainstShrink], ['mmap', false, true, true]);
      assert.deepEqual([c.mode, c.readable, c.writable, c.sealedAgainstShrink], ['message', true, false, false]);
      dma.close();
    }));
});

describe('DmaController.unmap', () => {
  it('needs an exact match, else ENOENT (also for a second unmap)', () =>
    assertNoFdLeak(() => {
      const dma = new DmaController();
      const fd = memfdCreate('dma-unmap', 4 * PAGE);
      dma.map(req(0x4000n, 0x4000n), fd);
      throwsErrno(() => dma.unmap(0x4000n, 0x1000n), Errno.ENOENT);
      throwsErrno(() => dma.unmap(0x5000n, 0x3000n), Errno.ENOENT);
      throwsErrno(() => dma.unmap(0x0n, 0x4000n), Errno.ENOENT);
      assert.equal(isOpen(fd), true);
      const region = dma.unmap(0x4000n, 0x4000n);
      assert.equal(region.mapped, false);
      assert.equal(isOpen(fd), false);
      throwsErrno(() => dma.unmap(0x4000n, 0x4000n), Errno.ENOENT);
    }));

  it('calls onUnmap (out of the table, memory still mapped), then detaches views and closes the fd', () =>
    assertNoFdLeak(() => {
      const seen: { region: DmaRegion; viewLength: number; count: number }[] = [];
      let held: Uint8Array = new Uint8Array(0);
      const dma: DmaController = new DmaController({
        onUnmap: (region) => seen.push({ region, viewLength: held.length, count: dma.regions().length }),
      });
      const fd = memfdCreate('dma-detach', 2 * PAGE);
      dma.map(req(0x1000n, 8192n), fd);
      held = dma.view(0x1000n, 8192, { write: true });
      held[5] = 7;
      const region = dma.unmap(0x1000n, 8192n);
      assert.equal(held.length, 0);
      assert.equal(held[5], undefined);
      assert.deepEqual(seen, [{ region, viewLength: 8192, count: 0 }]);
      assert.equal(isOpen(fd), false);
    }));

  it('unmapAll removes everything and calls onUnmap for each; close refuses further use', () =>
    assertNoFdLeak(() => {
      const closed: number[] = [];
      const seen: bigint[] = [];
      const dma = new DmaController({
        onUnmap: (r) => seen.push(r.addr),
        closeFd: (fd) => {
          closed.push(fd);
          native.close(fd);
        },
      });
      const fds = [memfdCreate('dma-all-1', PAGE), memfdCreate('dma-all-2', PAGE)];
      dma.map(req(0x2000n, 4096n), fds[0]);
      dma.map(req(0x1000n, 4096n), fds[1]);
      dma.map(req(0x3000n, 4096n), undefined);
      dma.unmapAll();
      assert.equal(dma.regions().length, 0);
      assert.deepEqual(seen, [0x3000n, 0x2000n, 0x1000n]); // from the top down
      assert.deepEqual(closed.sort((x, y) => x - y), [...fds].sort((x, y) => x - y));
      dma.close();
      dma.close();
      throwsErrno(() => dma.map(req(0n, 4096n), undefined), Errno.ENOTCONN, StateError);
      throwsErrno(() => dma.unmap(0n, 4096n), Errno.ENOTCONN, StateError);
      throwsErrno(() => dma.readSync(0n, 1), Errno.ENOTCONN, StateError);
    }));

  it('close() unmaps live regions and closes their fds', () =>
    assertNoFdLeak(() => {
      const dma = new DmaController();
      const fd = memfdCreate('dma-close', PAGE);
      const region = dma.map(req(0n, 4096n), fd);
      const view = dma.view(0n, 16);
      dma.close();
      assert.equal(region.mapped, false);
      assert.equal(view.length, 0);
      assert.equal(isOpen(fd), false);
      assert.equal(dma.closed, true);
    }));

  it('an independent mapping still sees data written before unmap', () =>
    assertNoFdLeak(() => {
      const file = memfdCreate('dma-persist', PAGE);
      const dma = new DmaController();
      dma.map(req(0n, 4096n), native.dup(file));
      dma.writeSync(100n, Uint8Array.of(1, 2, 3));
      dma.unmap(0n, 4096n);
      const check = mapFd(file, 0, PAGE, false);
      assert.deepEqual([...new Uint8Array(check, 100, 3)], [1, 2, 3]);
      unmap(check);
      native.close(file);
    }));
});
