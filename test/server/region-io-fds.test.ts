import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, IoFdType, RegionIndex } from '../../src/protocol/constants.js';
import { decodeRegionIoFdsReply, encodeRegionIoFdsRequest, type RegionIoFdsRequest } from '../../src/protocol/region-io-fds.js';
import { createEventFd, native } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { withDevice } from '../support/pci-driver.js';
import { wb } from '../support/wire-builder.js';

const EINVAL = 22;
const req = (v: Partial<RegionIoFdsRequest> = {}): Uint8Array => encodeRegionIoFdsRequest({ argsz: 16, flags: 0, index: 0, count: 0, ...v });

describe('DEVICE_GET_REGION_IO_FDS', () => {
  for (const index of [RegionIndex.BAR0, RegionIndex.BAR2, RegionIndex.BAR4, RegionIndex.CONFIG]) {
    it(`answers count 0, argsz 16, no fds for region ${index} (no ioeventfds)`, (t) =>
      withDevice(t, async ({ client }) => {
        const r = await client.ok(Command.DEVICE_GET_REGION_IO_FDS, req({ index, argsz: 4096 }));
        assert.equal(r.payload.length, 16);
        assert.deepEqual(decodeRegionIoFdsReply(r.payload), { argsz: 16, flags: 0, index, count: 0, subRegions: [] });
        assert.equal(r.fds.length, 0);
      }));
  }

  it('accepts argsz exactly 16 and exactly 1 MiB', (t) =>
    withDevice(t, async ({ client }) => {
      await client.ok(Command.DEVICE_GET_REGION_IO_FDS, req({ argsz: 16 }));
      await client.ok(Command.DEVICE_GET_REGION_IO_FDS, req({ argsz: 1 << 20 }));
    }));

  it('sends 48-byte records with deduplicated fds when argsz has room, only the needed argsz otherwise', (t) =>
    assertNoFdLeak(async () => {
      const a = createEventFd();
      const b = createEventFd();
      try {
        await withDevice(t, async ({ served, client }) => {
          served.device.regionIoEventFds = (index) =>
            index !== RegionIndex.BAR0
              ? []
              : [
                  { offset: 0x10n, size: 4n, fd: a, datamatch: 0n, flags: 0 },
                  { offset: 0x20n, size: 4n, fd: b, datamatch: 7n, flags: 1 },
                  { offset: 0x30n, size: 8n, fd: a, datamatch: 0n, flags: 0 },
                ];
          const small = await client.ok(Command.DEVICE_GET_REGION_IO_FDS, req({ argsz: 16 }));
          assert.deepEqual(decodeRegionIoFdsReply(small.payload), { argsz: 16 + 3 * 48, flags: 0, index: 0, count: 3, subRegions: [] });
          assert.equal(small.fds.length, 0);
          const full = await client.ok(Command.DEVICE_GET_REGION_IO_FDS, req({ argsz: 16 + 3 * 48 }));
          try {
            assert.equal(full.payload.length, 16 + 3 * 48);
            const reply = decodeRegionIoFdsReply(full.payload);
            assert.equal(full.fds.length, 2, 'one fd per distinct eventfd');
            assert.deepEqual(
              reply.subRegions.map((s) => [s.offset, s.size, s.fdIndex, s.type, s.flags, s.datamatch]),
              [
                [0x10n, 4n, 0, IoFdType.IOEVENTFD, 0, 0n],
                [0x20n, 4n, 1, IoFdType.IOEVENTFD, 1, 7n],
                [0x30n, 8n, 0, IoFdType.IOEVENTFD, 0, 0n],
              ],
            );
            // fd_index 0 is `a`: signalling the received copy reaches ours
            native.eventfdWrite(full.fds[0] as number, 1n);
            assert.equal(native.eventfdRead(a), 1n);
          } finally {
            for (const fd of full.fds) native.close(fd);
          }
        });
      } finally {
        native.close(a);
        native.close(b);
      }
    }));

  for (const [name, payload] of [
    ['flags 1', req({ flags: 1 })],
    ['count 1', req({ count: 1 })],
    ['index 9', req({ index: 9 })],
    ['index 0xffffffff', req({ index: 0xffffffff })],
    ['an unimplemented region (BAR1)', req({ index: RegionIndex.BAR1 })],
    ['an unimplemented region (ROM)', req({ index: RegionIndex.ROM })],
    ['argsz 15', req({ argsz: 15 })],
    ['argsz 0', req({ argsz: 0 })],
    ['argsz above 1 MiB', req({ argsz: (1 << 20) + 1 })],
    ['a 12-byte payload', wb().u32(16).u32(0).u32(0).build()],
  ] as const) {
    it(`refuses ${name} with EINVAL and keeps serving`, (t) =>
      withDevice(t, async ({ client }) => {
        await client.fails(Command.DEVICE_GET_REGION_IO_FDS, payload, EINVAL);
        await client.ok(Command.DEVICE_GET_REGION_IO_FDS, req());
      }));
  }
});
