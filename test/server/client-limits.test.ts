/** What the server honours of the client's VERSION capabilities, and the device's DMA hooks. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, DmaMapFlags, RegionInfoFlags } from '../../src/protocol/constants.js';
import { decodeRegionInfo, encodeRegionInfoRequest } from '../../src/protocol/region.js';
import { encodeRegionIoFdsRequest } from '../../src/protocol/region-io-fds.js';
import { encodeDmaMapRequest, encodeDmaUnmapRequest } from '../../src/protocol/dma.js';
import { memfdCreate, native } from '../../src/native/addon.js';
import type { DmaRegion } from '../../src/device/dma.js';
import { StepClient } from '../support/step-client.js';
import { serveTestDevice, testDeviceDefinition } from '../support/server-fixture.js';
import { assertNoFdLeak } from '../support/fd-count.js';

describe('client max_msg_fds', () => {
  it('a client that takes no fds gets shared regions without MMAP, caps or an fd', async () => {
    const served = serveTestDevice();
    try {
      const { client } = await StepClient.open(served.path, { maxMsgFds: 0 });
      const r = await client.ok(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 1024, index: 2 }));
      const info = decodeRegionInfo(r.payload);
      assert.equal(r.fds.length, 0);
      assert.equal(info.flags & (RegionInfoFlags.MMAP | RegionInfoFlags.CAPS), 0);
      assert.equal(info.argsz, 32);
      assert.equal(info.size, 0x10000n);
      client.close();
    } finally {
      await served.close();
    }
  });

  it('refuses GET_REGION_IO_FDS whose fds exceed the client max_msg_fds (EINVAL)', async () => {
    const def = testDeviceDefinition();
    def.regions!.bar0 = { size: 64, read: (_o, n) => new Uint8Array(n), write: () => {}, ioeventfds: [{ offset: 0, size: 4 }, { offset: 8, size: 4 }] };
    const served = serveTestDevice(def);
    try {
      const { client } = await StepClient.open(served.path, { maxMsgFds: 1 });
      await client.fails(Command.DEVICE_GET_REGION_IO_FDS, encodeRegionIoFdsRequest({ argsz: 1024, flags: 0, index: 0, count: 0 }), 22);
      client.close();
    } finally {
      await served.close();
    }
  });
});

describe('device DMA hooks', () => {
  it('tells the device about every map and unmap, including those of a client that leaves', async () => {
    await assertNoFdLeak(async () => {
      const events: string[] = [];
      const label = (what: string, r: DmaRegion): string => `${what} 0x${r.addr.toString(16)}+0x${r.size.toString(16)} ${r.mode}`;
      const served = serveTestDevice(
        testDeviceDefinition({
          dma: { onMap: (r) => void events.push(label('map', r)), onUnmap: (r) => void events.push(label('unmap', r)) },
        }),
      );
      try {
        const { client } = await StepClient.open(served.path);
        const fd = memfdCreate('guest', 0x2000);
        const map = (addr: bigint, fds: number[]) =>
          client.ok(Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags: DmaMapFlags.READ | DmaMapFlags.WRITE, offset: 0n, addr, size: 0x2000n }), fds);
        await map(0x10000n, [fd]);
        await map(0x20000n, []);
        native.close(fd);
        await client.ok(Command.DMA_UNMAP, encodeDmaUnmapRequest({ argsz: 24, flags: 0, addr: 0x10000n, size: 0x2000n }));
        client.close();
        await served.server.idle();
        assert.deepEqual(events, ['map 0x10000+0x2000 mmap', 'map 0x20000+0x2000 message', 'unmap 0x10000+0x2000 mmap', 'unmap 0x20000+0x2000 message']);
      } finally {
        await served.close();
      }
    });
  });

  it('keeps serving when a hook throws', async () => {
    const served = serveTestDevice(
      testDeviceDefinition({
        dma: {
          onMap: () => {
            throw new Error('hook bug');
          },
        },
      }),
    );
    try {
      const { client } = await StepClient.open(served.path);
      await client.ok(Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags: DmaMapFlags.READ, offset: 0n, addr: 0x1000n, size: 0x1000n }));
      assert.equal(served.device.dma.regions().length, 1);
      client.close();
    } finally {
      await served.close();
    }
  });
});
