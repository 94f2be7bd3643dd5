import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command } from '../../src/protocol/constants.js';
import { decodeRegionIoFdsReply, encodeRegionIoFdsRequest } from '../../src/protocol/region-io-fds.js';
import { native } from '../../src/native/addon.js';
import { StepClient } from '../support/step-client.js';
import { createDevice } from '../../src/device/device.js';
import { serveTestDevice, testDeviceDefinition } from '../support/server-fixture.js';
import { assertNoFdLeak } from '../support/fd-count.js';

describe('ioeventfds (DEVICE_GET_REGION_IO_FDS)', () => {
  it('offers declared doorbells; a signal reaches the region write path with the datamatch value', async () => {
    await assertNoFdLeak(async () => {
      const writes: [number, number[]][] = [];
      let resolveWrites!: () => void;
      const twoWrites = new Promise<void>((r) => (resolveWrites = r));
      const def = testDeviceDefinition();
      def.regions!.bar0 = {
        size: 4096,
        read: (_o, n) => new Uint8Array(n),
        write: (o, d) => {
          writes.push([o, [...d]]);
          if (writes.length === 2) resolveWrites();
        },
        ioeventfds: [{ offset: 0x10, size: 4, datamatch: 0x1234n }, { offset: 0x20, size: 2 }],
      };
      const served = serveTestDevice(def);
      try {
        const { client } = await StepClient.open(served.path);
        const small = await client.ok(Command.DEVICE_GET_REGION_IO_FDS, encodeRegionIoFdsRequest({ argsz: 16, flags: 0, index: 0, count: 0 }));
        const header = decodeRegionIoFdsReply(small.payload);
        assert.deepEqual([header.argsz, header.count, header.subRegions.length, small.fds.length], [16 + 2 * 48, 2, 0, 0]);
        const full = await client.ok(Command.DEVICE_GET_REGION_IO_FDS, encodeRegionIoFdsRequest({ argsz: header.argsz, flags: 0, index: 0, count: 0 }));
        const reply = decodeRegionIoFdsReply(full.payload);
        assert.equal(full.fds.length, 2);
        assert.deepEqual(
          reply.subRegions.map((s) => [s.offset, s.size, s.fdIndex, s.flags, s.datamatch]),
          [
            [0x10n, 4n, 0, 1, 0x1234n],
            [0x20n, 2n, 1, 0, 0n],
          ],
        );
        assert.equal(native.eventfdWrite(full.fds[0]!, 1n), 0);
        assert.equal(native.eventfdWrite(full.fds[1]!, 1n), 0);
        await twoWrites;
        assert.deepEqual(writes.sort((a, b) => a[0] - b[0]), [
          [0x10, [0x34, 0x12, 0, 0]],
          [0x20, [0, 0]],
        ]);
        full.fds.forEach((fd) => native.close(fd));
        const none = await client.ok(Command.DEVICE_GET_REGION_IO_FDS, encodeRegionIoFdsRequest({ argsz: 1024, flags: 0, index: 2, count: 0 }));
        assert.equal(decodeRegionIoFdsReply(none.payload).count, 0);
        client.close();
      } finally {
        await served.close();
      }
    });
  });

  it('refuses a misaligned or out-of-region doorbell when the device is created, leaking nothing', async () => {
    await assertNoFdLeak(() => {
      for (const bad of [{ offset: 62, size: 4 as const }, { offset: 2, size: 4 as const }, { offset: 0, size: 3 as unknown as 4 }]) {
        const def = testDeviceDefinition();
        def.regions!.bar0 = { size: 64, read: (_o, n) => new Uint8Array(n), ioeventfds: [{ offset: 8, size: 8 }, bad] };
        assert.throws(() => createDevice(def), (e: { errno?: number }) => e.errno === 22);
      }
    });
  });
});
