/**
 * MappedRegion over a real socket: the memory device's BAR0 through mmap and
 * through messages (both see the same bytes, and so does the device), its
 * message-only control BAR, a sparse BAR where one access takes both paths,
 * bounds and lifecycle — with no fd left open.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { MappedRegion } from '../../src/client/regions.js';
import { createMemoryDevice, MemoryCommand, MemoryReg, MemoryStatus, type MemoryDevice } from '../../src/devices/memory.js';
import { fnv1a32 } from '../../src/devices/fnv1a.js';
import { InvalidArgumentError, RemoteError, StateError } from '../../src/errors.js';
import { RegionIndex } from '../../src/protocol/constants.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { serveTestDevice, testDeviceDefinition } from '../support/server-fixture.js';
import { pattern, serve } from '../devices/driver.js';

const SIZE = 256 * 1024;

async function withMemoryDevice(fn: (dev: MemoryDevice, client: VfioUserClient) => Promise<void>): Promise<void> {
  await assertNoFdLeak(async () => {
    const dev = createMemoryDevice({ size: SIZE });
    const served = serve(dev.device);
    let client: VfioUserClient | undefined;
    try {
      client = await VfioUserClient.connect(served.path);
      await fn(dev, client);
    } finally {
      client?.close();
      await served.close();
    }
  });
}

function le32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}

function u32(b: Uint8Array): number {
  return new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);
}

describe('MappedRegion on the memory device', () => {
  it('maps BAR0: the mmap path and the message path see the same bytes as the device', () =>
    withMemoryDevice(async (dev, client) => {
      const mapped = await MappedRegion.open(client, RegionIndex.BAR0);
      const messages = await MappedRegion.open(client, RegionIndex.BAR0, { messagesOnly: true });
      try {
        assert.equal(mapped.size, BigInt(SIZE));
        assert.equal(mapped.mapped, true);
        assert.deepEqual(mapped.areas.map((a) => [a.offset, a.size, a.writable]), [[0n, BigInt(SIZE), true]]);
        assert.equal(messages.mapped, false);
        const a = pattern(10_000, 1);
        await mapped.write(0x1234n, a);
        assert.equal(mapped.lastPath, 'mmap');
        assert.deepEqual(await messages.read(0x1234n, a.length), a);
        assert.equal(messages.lastPath, 'message');
        assert.deepEqual(dev.memory.subarray(0x1234, 0x1234 + a.length), a);
        const b = pattern(3000, 2);
        await messages.write(0x20000n, b);
        assert.deepEqual(await mapped.read(0x20000n, b.length), b);
        assert.deepEqual(mapped.view(0x20000n, b.length), b);
        assert.deepEqual(mapped.stats, { mmapBytes: a.length + b.length, messageBytes: 0, mmapAccesses: 2, messageAccesses: 0 });
        assert.deepEqual(messages.stats, { mmapBytes: 0, messageBytes: a.length + b.length, mmapAccesses: 0, messageAccesses: 2 });
        // The device's own FILL lands in the shared pages; its checksum covers what we wrote through the mapping.
        const bar2 = await MappedRegion.open(client, RegionIndex.BAR2);
        try {
          assert.equal(bar2.mapped, false);
          await bar2.write(BigInt(MemoryReg.FILL_PATTERN), le32(0xa5a5a5a5));
          await bar2.write(BigInt(MemoryReg.FILL_OFFSET), le32(0x30000));
          await bar2.write(BigInt(MemoryReg.FILL_LENGTH), le32(64));
          await bar2.write(BigInt(MemoryReg.COMMAND), le32(MemoryCommand.FILL));
          assert.equal(bar2.lastPath, 'message');
          await dev.idle(); // commands run asynchronously
          assert.equal(u32(await bar2.read(BigInt(MemoryReg.STATUS), 4)), MemoryStatus.DONE);
          assert.deepEqual(await mapped.read(0x30000n, 64), new Uint8Array(64).fill(0xa5));
          await bar2.write(BigInt(MemoryReg.COMMAND), le32(MemoryCommand.CHECKSUM));
          await dev.idle();
          assert.equal(u32(await bar2.read(BigInt(MemoryReg.CHECKSUM), 4)), fnv1a32(await mapped.read(0n, SIZE)));
        } finally {
          bar2.close();
        }
      } finally {
        mapped.close();
        messages.close();
      }
    }));

  it('checks bounds and refuses use after close', () =>
    withMemoryDevice(async (_dev, client) => {
      const region = await MappedRegion.open(client, RegionIndex.BAR0);
      await assert.rejects(region.read(BigInt(SIZE - 1), 2), InvalidArgumentError);
      await assert.rejects(region.write(-1n, new Uint8Array(1)), InvalidArgumentError);
      assert.deepEqual(await region.read(5n, 0), new Uint8Array(0));
      assert.equal(region.lastPath, 'none');
      const view = region.view(0n, 16);
      assert.ok(view);
      region.close();
      region.close();
      assert.equal(view.length, 0, 'views are detached by close');
      assert.equal(region.mapped, false);
      await assert.rejects(region.read(0n, 1), StateError);
      await assert.rejects(MappedRegion.open(client, 42), RemoteError);
      const unused = await MappedRegion.open(client, RegionIndex.BAR5);
      assert.equal(unused.size, 0n);
      unused.close();
    }));
});

describe('MappedRegion on a sparse BAR', () => {
  it('takes the mmap path inside sparse areas and messages elsewhere, within one access', () =>
    assertNoFdLeak(async () => {
      const definition = testDeviceDefinition({
        regions: {
          bar0: { size: 0x4000, shared: { sparse: [{ offset: 0x1000, size: 0x1000 }, { offset: 0x3000, size: 0x1000 }] } },
        },
        irqs: {},
        msix: undefined,
      });
      const served = serveTestDevice(definition);
      let client: VfioUserClient | undefined;
      try {
        client = await VfioUserClient.connect(served.path);
        const region = await MappedRegion.open(client, RegionIndex.BAR0);
        try {
          assert.deepEqual(region.areas.map((a) => [a.offset, a.size]), [[0x1000n, 0x1000n], [0x3000n, 0x1000n]]);
          assert.equal(region.pathOf(0x800n, 0x1000), 'mixed');
          assert.equal(region.pathOf(0x1000n, 0x1000), 'mmap');
          assert.equal(region.pathOf(0x2000n, 0x1000), 'message');
          const data = pattern(0x3000, 5);
          await region.write(0x800n, data);
          assert.equal(region.lastPath, 'mixed');
          assert.deepEqual(region.stats, { mmapBytes: 0x1800, messageBytes: 0x1800, mmapAccesses: 1, messageAccesses: 1 });
          const memory = served.device.regionMemory(0);
          assert.deepEqual(memory.subarray(0x800, 0x3800), data);
          assert.deepEqual(await region.read(0n, 0x4000), memory);
          assert.equal(region.view(0xf00n, 0x200), undefined, 'not inside one area');
        } finally {
          region.close();
        }
      } finally {
        client?.close();
        await served.close();
      }
    }));
});
