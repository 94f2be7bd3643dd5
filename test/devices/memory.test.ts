/**
 * The memory sample device through a real socket: the client maps BAR0 from
 * the sparse-mmap fd of GET_REGION_INFO (after the argsz retry) and shares its
 * bytes with the device; BAR2 reports the size, fills and checksums.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createMemoryDevice, MemoryCommand, MemoryReg, MemoryStatus, type MemoryDevice } from '../../src/devices/memory.js';
import { fnv1a32 } from '../../src/devices/fnv1a.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { mapFd, native, unmap } from '../../src/native/addon.js';
import { Command, RegionInfoFlags } from '../../src/protocol/constants.js';
import { decodeRegionInfo, encodeRegionInfoRequest, type RegionInfo } from '../../src/protocol/region.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { StepClient } from '../support/step-client.js';
import { pattern, read32, readLe, regionRead, regionWrite, RegionIndex, serve, write32 } from './driver.js';

const BAR0 = RegionIndex.BAR0;
const BAR2 = RegionIndex.BAR2;

async function withMemory(size: number | undefined, fn: (mem: MemoryDevice, client: StepClient) => Promise<void>): Promise<void> {
  await assertNoFdLeak(async () => {
    const mem = createMemoryDevice(size === undefined ? {} : { size });
    const served = serve(mem.device);
    const { client } = await StepClient.open(served.path);
    try {
      await fn(mem, client);
    } finally {
      client.close();
      await served.close();
    }
  });
}

/** GET_REGION_INFO the way a client does it: 32 bytes first, then again with the argsz the server asked for. */
async function regionInfoWithRetry(client: StepClient, index: number): Promise<{ first: RegionInfo; info: RegionInfo; fds: number[] }> {
  const short = await client.ok(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 32, index }));
  const first = decodeRegionInfo(short.payload);
  assert.deepEqual(short.fds, [], 'no fd with a reply that has no room for the capability');
  const full = await client.ok(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: first.argsz, index }));
  return { first, info: decodeRegionInfo(full.payload), fds: full.fds };
}

describe('memory sample device', () => {
  it('BAR0 is a 64-bit prefetchable BAR the client mmaps through the sparse-mmap fd; both sides share the bytes', async () => {
    await withMemory(undefined, async (mem, client) => {
      const bar0 = await readLe(client, RegionIndex.CONFIG, 0x10, 4);
      assert.equal(bar0 & 0xf, 0b1100, 'memory, 64-bit, prefetchable');
      const { first, info, fds } = await regionInfoWithRetry(client, BAR0);
      assert.ok(first.argsz > 32, 'the server asks for room for the sparse-mmap capability');
      assert.equal(info.size, 1n << 20n);
      assert.equal(info.flags & (RegionInfoFlags.READ | RegionInfoFlags.WRITE | RegionInfoFlags.MMAP | RegionInfoFlags.CAPS), 0xf);
      assert.deepEqual(info.caps, [{ kind: 'sparse-mmap', version: 1, areas: [{ offset: 0n, size: 1n << 20n }] }]);
      assert.equal(fds.length, 1);
      const mapping = mapFd(fds[0]!, Number(info.offset), mem.size, true);
      native.close(fds[0]!);
      try {
        const theirs = new Uint8Array(mapping);
        const bytes = pattern(4096, 7);
        theirs.set(bytes, 0x8000);
        assert.deepEqual(mem.memory.subarray(0x8000, 0x9000), bytes, 'the device sees the client\'s writes');
        mem.memory.set([0xde, 0xad, 0xbe, 0xef], mem.size - 4);
        assert.deepEqual([...theirs.subarray(mem.size - 4)], [0xde, 0xad, 0xbe, 0xef], 'the client sees the device\'s writes');
        assert.equal(await read32(client, BAR2, MemoryReg.CHECKSUM), fnv1a32(theirs));
        assert.deepEqual(await regionRead(client, BAR0, 0x8000, 16), bytes.subarray(0, 16), 'REGION_READ reaches the same memory');
        await regionWrite(client, BAR0, 0x10, Uint8Array.of(1, 2, 3));
        assert.deepEqual([...theirs.subarray(0x10, 0x13)], [1, 2, 3], 'and so does REGION_WRITE');
      } finally {
        unmap(mapping);
      }
    });
  });

  it('BAR2 reports the size, fills a range with a pattern, and refuses a range outside BAR0', async () => {
    await withMemory(64 * 1024, async (mem, client) => {
      assert.equal(await read32(client, BAR2, MemoryReg.SIZE_LO), 0x10000);
      assert.equal(await read32(client, BAR2, MemoryReg.SIZE_HI), 0);
      assert.equal(await read32(client, BAR2, MemoryReg.STATUS), 0);
      await write32(client, BAR2, MemoryReg.FILL_PATTERN, 0x44332211);
      await write32(client, BAR2, MemoryReg.FILL_OFFSET, 0x101);
      await write32(client, BAR2, MemoryReg.FILL_LENGTH, 6);
      await write32(client, BAR2, MemoryReg.COMMAND, MemoryCommand.FILL);
      assert.equal(await read32(client, BAR2, MemoryReg.STATUS), MemoryStatus.DONE);
      assert.deepEqual([...mem.memory.subarray(0x100, 0x108)], [0, 0x11, 0x22, 0x33, 0x44, 0x11, 0x22, 0]);
      await write32(client, BAR2, MemoryReg.FILL_PATTERN, 0xabababab);
      await write32(client, BAR2, MemoryReg.FILL_OFFSET, 0);
      await write32(client, BAR2, MemoryReg.FILL_LENGTH, 0x10000);
      await write32(client, BAR2, MemoryReg.COMMAND, MemoryCommand.FILL);
      assert.ok(mem.memory.every((b) => b === 0xab));
      assert.equal(await read32(client, BAR2, MemoryReg.CHECKSUM), fnv1a32(new Uint8Array(0x10000).fill(0xab)));
      await write32(client, BAR2, MemoryReg.FILL_OFFSET, 0x8000);
      await write32(client, BAR2, MemoryReg.FILL_LENGTH, 0x8001);
      await write32(client, BAR2, MemoryReg.COMMAND, MemoryCommand.FILL);
      assert.equal(await read32(client, BAR2, MemoryReg.STATUS), MemoryStatus.ERROR);
      await write32(client, BAR2, MemoryReg.COMMAND, 7);
      assert.equal(await read32(client, BAR2, MemoryReg.STATUS), MemoryStatus.ERROR, 'unknown command');
      assert.equal(await read32(client, BAR2, MemoryReg.COMMAND), 0, 'COMMAND reads 0');
      assert.equal(await read32(client, BAR2, MemoryReg.FILL_LENGTH), 0x8001);
      await client.ok(Command.DEVICE_RESET);
      assert.equal(await read32(client, BAR2, MemoryReg.FILL_LENGTH), 0, 'reset clears the fill registers');
      assert.equal(mem.memory[0], 0xab, 'but not the memory');
    });
  });

  it('accepts power-of-two sizes from 4 KiB to 1 GiB only', () => {
    for (const size of [3000, 4095, 12288, 2 ** 31, 0, -4096, 1.5]) {
      assert.throws(() => createMemoryDevice({ size }), InvalidArgumentError, `size ${size}`);
    }
    const small = createMemoryDevice({ size: 4096 });
    assert.equal(small.memory.length, 4096);
    small.device.dispose();
  });
});
