import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DmaController, type DmaMessageTransport } from '../../src/device/dma.js';
import { InvalidArgumentError, StateError, VfioUserError } from '../../src/errors.js';
import { mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';
import { DmaMapFlags } from '../../src/protocol/constants.js';
import type { DmaMapRequest } from '../../src/protocol/dma.js';
import { Errno } from '../../src/protocol/errno.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const { READ, WRITE } = DmaMapFlags;
const RW = READ | WRITE;
const PAGE = 4096;

function req(addr: bigint, size: bigint, flags = RW, offset = 0n): DmaMapRequest {
  return { argsz: 32, flags, offset, addr, size };
}

function bytes(n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);
}

/** Asserts that `fn` throws (or rejects with) a `cls` carrying `errno`. */
async function rejectsErrno(fn: () => unknown, errno: number, cls: typeof VfioUserError = InvalidArgumentError) {
  await assert.rejects(
    async () => fn(),
    (error: unknown) => {
      assert.ok(error instanceof cls, `expected ${cls.name}, got ${String(error)}`);
      assert.equal(error.errno, errno, error.message);
      return true;
    },
  );
}

/** A transport that records calls and serves reads from / applies writes to `memory` (at IOVA `base`). */
class FakeTransport implements DmaMessageTransport {
  readonly calls: string[] = [];
  readonly memory: Uint8Array;
  readonly base: bigint;
  constructor(memory: Uint8Array, base: bigint) {
    this.memory = memory;
    this.base = base;
  }
  async read(addr: bigint, count: number): Promise<Uint8Array> {
    this.calls.push(`read ${addr} ${count}`);
    await Promise.resolve();
    const at = Number(addr - this.base);
    return this.memory.slice(at, at + count);
  }
  async write(addr: bigint, data: Uint8Array): Promise<void> {
    this.calls.push(`write ${addr} ${data.length}`);
    await Promise.resolve();
    this.memory.set(data, Number(addr - this.base));
  }
}

/** A controller with one memfd-backed region [iova, +size) at `offset` in a file; `peek` maps the file independently. */
async function withRegion(
  iova: bigint,
  size: number,
  offset: number,
  fn: (dma: DmaController, file: Uint8Array) => unknown,
  flags = RW,
): Promise<void> {
  await assertNoFdLeak(async () => {
    const fd = memfdCreate('dma-access', offset + size + PAGE);
    const independent = mapFd(fd, 0, offset + size + PAGE, true);
    const dma = new DmaController();
    try {
      dma.map(req(iova, BigInt(size), flags, BigInt(offset)), native.dup(fd));
      await fn(dma, new Uint8Array(independent, offset, size));
    } finally {
      dma.close();
      unmap(independent);
      native.close(fd);
    }
  });
}

describe('DMA access through mmap', () => {
  it('read/write are visible through an independent mapping (unaligned offset)', () =>
    withRegion(0x10_0000n, 3 * PAGE, 100, async (dma, file) => {
      const data = bytes(5000, 1);
      await dma.write(0x10_0000n + 10n, data);
      assert.deepEqual(file.subarray(10, 5010), data);
      file.set(bytes(300, 9), 7000);
      assert.deepEqual(await dma.read(0x10_0000n + 7000n, 300), bytes(300, 9));
      assert.deepEqual(dma.readSync(0x10_0000n + 10n, 5000), data);
      dma.writeSync(0x10_0000n, Uint8Array.of(0xaa));
      assert.equal(file[0], 0xaa);
      assert.equal((await dma.read(0x10_0000n, 0)).length, 0);
    }));

  it('view gives direct access both ways', () =>
    withRegion(0x2000n, 2 * PAGE, 0, (dma, file) => {
      const view = dma.view(0x2000n + 4000n, 200, { write: true });
      view[0] = 0x55;
      assert.equal(file[4000], 0x55);
      file[4199] = 0x66;
      assert.equal(view[199], 0x66);
      assert.equal(dma.view(0x2000n, 0).length, 0);
    }));

  it('accesses span adjacent regions; views do not', () =>
    assertNoFdLeak(async () => {
      const a = memfdCreate('dma-span-a', PAGE);
      const b = memfdCreate('dma-span-b', 2 * PAGE);
      const dma = new DmaController();
      dma.map(req(0x1000n, 4096n), a);
      dma.map(req(0x2000n, 8192n), b);
      const data = bytes(6000, 3);
      await dma.write(0x1800n, data);
      assert.deepEqual(await dma.read(0x1800n, 6000), data);
      assert.deepEqual(dma.readSync(0x1800n, 6000), data);
      const sg = dma.scatterGather(0x1800n, 6000);
      assert.deepEqual(
        sg.map((s) => [s.iova, s.length, s.region.addr]),
        [
          [0x1800n, 2048, 0x1000n],
          [0x2000n, 3952, 0x2000n],
        ],
      );
      await rejectsErrno(() => dma.view(0x1800n, 6000), Errno.EINVAL);
      dma.close();
    }));

  it('unmapped bytes → EFAULT (gap, before, after, past 2^64)', () =>
    assertNoFdLeak(async () => {
      const dma = new DmaController();
      dma.map(req(0x1000n, 4096n), memfdCreate('dma-gap-a', PAGE));
      dma.map(req(0x3000n, 4096n), memfdCreate('dma-gap-b', PAGE));
      for (const [iova, n] of [
        [0x1800n, 0x2000], // crosses the gap at 0x2000
        [0x0n, 1],
        [0x0fffn, 2],
        [0x3fffn, 2],
        [0x10000n, 1],
        [(1n << 64n) - 1n, 2],
        [-1n, 1],
      ] as const) {
        await rejectsErrno(() => dma.read(iova, n), Errno.EFAULT);
        await rejectsErrno(() => dma.write(iova, new Uint8Array(n)), Errno.EFAULT);
        await rejectsErrno(() => dma.readSync(iova, n), Errno.EFAULT);
        await rejectsErrno(() => dma.view(iova, n), Errno.EFAULT);
        await rejectsErrno(() => dma.markDirty(iova, n), Errno.EFAULT);
        await rejectsErrno(() => dma.scatterGather(iova, n), Errno.EFAULT);
      }
      await rejectsErrno(() => dma.read(0x1000n, -1), Errno.EINVAL);
      await rejectsErrno(() => dma.read(0x1000n, 1.5), Errno.EINVAL);
      dma.close();
    }));

  it('permissions: write to a READ-only region, read of a WRITE-only region → EACCES', () =>
    assertNoFdLeak(async () => {
      const dma = new DmaController();
      dma.map(req(0x1000n, 4096n, READ), memfdCreate('dma-ro', PAGE));
      dma.map(req(0x2000n, 4096n, WRITE), memfdCreate('dma-wo', PAGE));
      dma.map(req(0x3000n, 4096n, 0), memfdCreate('dma-none', PAGE));
      await rejectsErrno(() => dma.write(0x1000n, Uint8Array.of(1)), Errno.EACCES);
      await rejectsErrno(() => dma.writeSync(0x1000n, Uint8Array.of(1)), Errno.EACCES);
      await rejectsErrno(() => dma.view(0x1000n, 1, { write: true }), Errno.EACCES);
      await rejectsErrno(() => dma.read(0x2000n, 1), Errno.EACCES);
      await rejectsErrno(() => dma.view(0x2000n, 1), Errno.EACCES);
      await rejectsErrno(() => dma.read(0x3000n, 1), Errno.EACCES);
      await rejectsErrno(() => dma.write(0x3000n, Uint8Array.of(1)), Errno.EACCES);
      await rejectsErrno(() => dma.scatterGather(0x1000n, 2 * PAGE, { write: true }), Errno.EACCES);
      await rejectsErrno(() => dma.scatterGather(0x1000n, 2 * PAGE, { read: true }), Errno.EACCES);
      assert.equal(dma.scatterGather(0x1000n, 3 * PAGE).length, 3);
      assert.equal((await dma.read(0x1000n, 8)).length, 8);
      await dma.write(0x2000n, Uint8Array.of(1, 2));
      dma.view(0x2000n, 2, { write: true });
      // A write spanning a writable and a read-only region fails before writing anything.
      await rejectsErrno(() => dma.write(0x1ffen, Uint8Array.of(9, 9, 9, 9)), Errno.EACCES);
      dma.close();
    }));
});

describe('DMA access in message mode', () => {
  it('reads and writes go through the transport', async () => {
    const t = new FakeTransport(new Uint8Array(2 * PAGE), 0x8000n);
    const dma = new DmaController({ transport: t });
    dma.map(req(0x8000n, 8192n), undefined);
    await dma.write(0x8010n, Uint8Array.of(1, 2, 3));
    assert.deepEqual(await dma.read(0x800fn, 5), Uint8Array.of(0, 1, 2, 3, 0));
    assert.deepEqual(t.calls, [`write ${0x8010n} 3`, `read ${0x800fn} 5`]);
    await rejectsErrno(() => dma.readSync(0x8000n, 1), Errno.ENOTSUP);
    await rejectsErrno(() => dma.writeSync(0x8000n, Uint8Array.of(1)), Errno.ENOTSUP);
    await rejectsErrno(() => dma.view(0x8000n, 1), Errno.ENOTSUP);
    dma.markDirty(0x8000n, 10); // no bitmap for message regions: ignored
  });

  it('a range over an mmap region and a message region uses both', () =>
    assertNoFdLeak(async () => {
      const t = new FakeTransport(new Uint8Array(PAGE), 0x2000n);
      const dma = new DmaController({ transport: t });
      dma.map(req(0x1000n, 4096n), memfdCreate('dma-mixed', PAGE));
      dma.map(req(0x2000n, 4096n), undefined);
      const data = bytes(200, 5);
      await dma.write(0x1f9cn, data); // 100 bytes each side
      assert.deepEqual(t.calls, [`write ${0x2000n} 100`]);
      assert.deepEqual(t.memory.subarray(0, 100), data.subarray(100));
      assert.deepEqual(await dma.read(0x1f9cn, 200), data);
      assert.deepEqual(t.calls[1], `read ${0x2000n} 100`);
      dma.close();
    }));

  it('no transport → ENOTCONN; setTransport fixes it', async () => {
    const dma = new DmaController();
    dma.map(req(0x8000n, 4096n, READ), undefined);
    await rejectsErrno(() => dma.read(0x8000n, 1), Errno.ENOTCONN, StateError);
    dma.setTransport(new FakeTransport(new Uint8Array(PAGE), 0x8000n));
    assert.equal((await dma.read(0x8000n, 1)).length, 1);
    dma.setTransport(undefined);
    await rejectsErrno(() => dma.read(0x8000n, 1), Errno.ENOTCONN, StateError);
  });

  it('a region unmapped while a message is in flight → EFAULT for the rest', () =>
    assertNoFdLeak(async () => {
      const dma = new DmaController();
      dma.setTransport({
        read: async (_addr, count) => {
          dma.unmap(0x2000n, 4096n);
          return new Uint8Array(count);
        },
        write: async () => {},
      });
      dma.map(req(0x1000n, 4096n), undefined);
      dma.map(req(0x2000n, 4096n), memfdCreate('dma-race', PAGE));
      await rejectsErrno(() => dma.read(0x1ff0n, 32), Errno.EFAULT);
      dma.close();
    }));

  it('a closed controller refuses every access with ENOTCONN', async () => {
    const dma = new DmaController();
    dma.map(req(0x8000n, 4096n), undefined);
    dma.close();
    for (const call of [
      () => dma.read(0x8000n, 1),
      () => dma.write(0x8000n, Uint8Array.of(1)),
      () => dma.readSync(0x8000n, 1),
      () => dma.writeSync(0x8000n, Uint8Array.of(1)),
      () => dma.view(0x8000n, 1),
      () => dma.scatterGather(0x8000n, 1),
      () => dma.markDirty(0x8000n, 1),
    ]) {
      await rejectsErrno(call, Errno.ENOTCONN, StateError);
    }
  });
});
