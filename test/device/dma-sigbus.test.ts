/**
 * A DMA region whose file the client shrank after DMA_MAP: accesses past the
 * new end fail with EFAULT (the SIGBUS guard absorbed the fault), the region
 * says it faulted, the rest of guest memory keeps working, and unmapping the
 * region releases its fd.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DmaController } from '../../src/device/dma.js';
import { memfdCreate, native } from '../../src/native/addon.js';
import { DmaMapFlags } from '../../src/protocol/constants.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const RW = DmaMapFlags.READ | DmaMapFlags.WRITE;
const PAGE = native.constants.PAGE_SIZE;
const mapReq = (addr: bigint, size: bigint) => ({ argsz: 32, flags: RW, offset: 0n, addr, size });
const isEfault = (e: unknown): boolean => (e as { errno?: number }).errno === 14 && /shrank/.test((e as Error).message);

describe('DMA region whose file shrank under it', () => {
  it('fails reads and writes with EFAULT from the first fault on, leaving other regions alone', async () => {
    await assertNoFdLeak(async () => {
      const dma = new DmaController();
      const shrinking = memfdCreate('dma-shrinking', 8 * PAGE);
      const intact = memfdCreate('dma-intact', PAGE);
      dma.map(mapReq(0x100000n, BigInt(8 * PAGE)), native.dup(shrinking));
      dma.map(mapReq(0x200000n, BigInt(PAGE)), native.dup(intact));
      dma.writeSync(0x100000n + BigInt(6 * PAGE), Uint8Array.of(1, 2, 3)); // primes the fast path on the page to vanish
      const region = dma.regions().find((r) => r.addr === 0x100000n)!;
      assert.equal(region.faulted, false);
      native.ftruncate(shrinking, 4 * PAGE);
      assert.throws(() => dma.writeSync(0x100000n + BigInt(6 * PAGE), Uint8Array.of(9)), isEfault, 'fast-path write past the end');
      assert.equal(region.faulted, true);
      assert.throws(() => dma.readInto(0x100000n, new Uint8Array(4)), isEfault, 'the region stays failed, even below the new end');
      await assert.rejects(dma.read(0x100000n + BigInt(5 * PAGE), 16), isEfault, 'async read');
      dma.writeSync(0x200000n, Uint8Array.of(5));
      assert.deepEqual([...dma.readSync(0x200000n, 1)], [5], 'another region still works');
      dma.unmap(0x100000n, BigInt(8 * PAGE));
      dma.close();
      native.close(shrinking);
      native.close(intact);
    });
  });

  it('notices a fault taken through a view handed out earlier', async () => {
    await assertNoFdLeak(() => {
      const dma = new DmaController();
      const fd = memfdCreate('dma-view', 4 * PAGE);
      dma.map(mapReq(0x10000n, BigInt(4 * PAGE)), native.dup(fd));
      const view = dma.view(0x10000n + BigInt(3 * PAGE), 8);
      native.ftruncate(fd, 0);
      assert.deepEqual([...view], [0, 0, 0, 0, 0, 0, 0, 0], 'the view reads zeros instead of killing the process');
      assert.throws(() => dma.readSync(0x10000n, 4), isEfault);
      dma.close();
      native.close(fd);
    });
  });
});
