import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DmaController } from '../../src/device/dma.js';
import { mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';
import { DmaMapFlags } from '../../src/protocol/constants.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const RW = DmaMapFlags.READ | DmaMapFlags.WRITE;
const mapReq = (addr: bigint, size: bigint, flags = RW) => ({ argsz: 32, flags, offset: 0n, addr, size });

describe('DMA fast path (repeated accesses to the last region)', () => {
  it('never writes through a stale region after unmap and re-map at the same IOVA', async () => {
    await assertNoFdLeak(() => {
      const dma = new DmaController();
      const first = memfdCreate('first', 0x10000);
      const second = memfdCreate('second', 0x10000);
      dma.map(mapReq(0x100000n, 0x10000n), native.dup(first));
      dma.writeSync(0x100010n, Uint8Array.of(1)); // primes the cache
      dma.writeSync(0x100020n, Uint8Array.of(2));
      dma.unmap(0x100000n, 0x10000n);
      assert.throws(() => dma.writeSync(0x100010n, Uint8Array.of(3)), (e: { errno?: number }) => e.errno === 14);
      dma.map(mapReq(0x100000n, 0x10000n), native.dup(second));
      dma.writeSync(0x100010n, Uint8Array.of(4));
      const a = new Uint8Array(mapFd(first, 0, 0x10000, false));
      const b = new Uint8Array(mapFd(second, 0, 0x10000, false));
      assert.deepEqual([a[0x10], a[0x20], b[0x10]], [1, 2, 4]);
      unmap(a.buffer as ArrayBuffer);
      unmap(b.buffer as ArrayBuffer);
      dma.close();
      assert.throws(() => dma.readInto(0x100010n, new Uint8Array(1)), (e: { errno?: number }) => e.errno === 107);
      native.close(first);
      native.close(second);
    });
  });

  it('checks permissions and bounds on every access, cached region or not', async () => {
    await assertNoFdLeak(() => {
      const dma = new DmaController();
      const fd = memfdCreate('ro', 0x2000);
      dma.map(mapReq(0x4000n, 0x2000n, DmaMapFlags.READ), fd);
      const out = new Uint8Array(16);
      dma.readInto(0x4000n, out); // primes the cache
      assert.throws(() => dma.writeSync(0x4000n, Uint8Array.of(1)), (e: { errno?: number }) => e.errno === 13);
      assert.throws(() => dma.readInto(0x5ff8n, out), (e: { errno?: number }) => e.errno === 14, 'runs past the region');
      assert.throws(() => dma.readInto(0x3ff8n, out), (e: { errno?: number }) => e.errno === 14, 'starts before it');
      dma.readInto(0x5ff0n, out);
      dma.close();
    });
  });

  it('marks dirty pages on fast-path writes', () => {
    const dma = new DmaController();
    const fd = memfdCreate('log', 0x10000);
    dma.map(mapReq(0x0n, 0x10000n), fd);
    dma.writeSync(0x0n, Uint8Array.of(1)); // primes the cache before logging starts
    dma.startLogging(4096n);
    dma.writeSync(0x3000n, Uint8Array.of(1));
    dma.writeSync(0x3000n, Uint8Array.of(2));
    dma.writeSync(0x9fffn, Uint8Array.of(1, 2)); // straddles pages 9 and 10
    const bitmap = dma.report(0x0n, 0x10000n, 4096n);
    assert.deepEqual([...bitmap.subarray(0, 2)], [0b0000_1000, 0b0000_0110]);
    dma.close();
  });
});
