/**
 * Hostile requests against a live server: each row must get its errno (or be
 * served, for harmless oddities), close every fd it carried, and leave the
 * session serving. The last rows break the stream: the server must answer
 * EINVAL, close that connection, and serve the next client.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, DeviceFeature, DeviceFeatureFlags, HeaderFlags, IrqIndex, IrqSetFlags, RegionIndex, SERVER_MAX_MSG_SIZE } from '../../src/protocol/constants.js';
import { encodeDeviceInfo } from '../../src/protocol/device.js';
import { createEventFd, native } from '../../src/native/addon.js';
import { StepClient } from '../support/step-client.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { closeAll, withDevice } from '../support/pci-driver.js';
import { buildMessage, wb } from '../support/wire-builder.js';

const EINVAL = 22;
const ENOENT = 2;
const ENOSPC = 28;
const OK = 0;
const U64_MAX = (1n << 64n) - 1n;
const getInfo = encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 });
const { DATA_NONE, DATA_BOOL, DATA_EVENTFD, ACTION_TRIGGER } = IrqSetFlags;
const feature = (index: number, ops: number, data: number[] = []): Uint8Array => wb().u32(8 + data.length).u32(index | ops).bytes(data).build();

interface Row {
  name: string;
  cmd: number;
  payload?: Uint8Array;
  /** Eventfds sent with the request (the server must close them). */
  fds?: number;
  /** Header flags (default: a plain command). */
  flags?: number;
  /** Expected errno, or OK (0) for a request that must succeed. */
  errno: number;
}

const rows: Row[] = [
  // DMA_MAP / DMA_UNMAP
  { name: 'DMA_MAP with a 16-byte payload', cmd: Command.DMA_MAP, payload: new Uint8Array(16), errno: EINVAL },
  { name: 'DMA_MAP with argsz 8', cmd: Command.DMA_MAP, payload: wb().u32(8).u32(3).u64(0).u64(0x1000).u64(0x1000).build(), errno: EINVAL },
  { name: 'DMA_MAP with unknown flags and an fd', cmd: Command.DMA_MAP, payload: wb().u32(32).u32(0x103).u64(0).u64(0x1000).u64(0x1000).build(), fds: 1, errno: EINVAL },
  { name: 'DMA_MAP wrapping past 2^64', cmd: Command.DMA_MAP, payload: wb().u32(32).u32(3).u64(0).u64(U64_MAX - 0xfffn).u64(0x2000).build(), errno: EINVAL },
  { name: 'DMA_MAP of size 0', cmd: Command.DMA_MAP, payload: wb().u32(32).u32(3).u64(0).u64(0x1000).u64(0).build(), errno: EINVAL },
  { name: 'DMA_MAP with the MMAP flag and no fd', cmd: Command.DMA_MAP, payload: wb().u32(32).u32(3 | 4).u64(0).u64(0x1000).u64(0x1000).build(), errno: EINVAL },
  { name: 'DMA_MAP of more than 8 TiB', cmd: Command.DMA_MAP, payload: wb().u32(32).u32(3).u64(0).u64(0).u64((8n << 40n) + 0x1000n).build(), errno: ENOSPC },
  { name: 'DMA_UNMAP with an 8-byte payload', cmd: Command.DMA_UNMAP, payload: new Uint8Array(8), errno: EINVAL },
  { name: 'DMA_UNMAP with argsz above 1 MiB', cmd: Command.DMA_UNMAP, payload: wb().u32(0x200000).u32(0).u64(0x1000).u64(0x1000).build(), errno: EINVAL },
  { name: 'DMA_UNMAP with flags 4', cmd: Command.DMA_UNMAP, payload: wb().u32(24).u32(4).u64(0x1000).u64(0x1000).build(), errno: EINVAL },
  { name: 'DMA_UNMAP GET_DIRTY_BITMAP without the bitmap header', cmd: Command.DMA_UNMAP, payload: wb().u32(40).u32(1).u64(0x1000).u64(0x1000).build(), errno: EINVAL },
  { name: 'DMA_UNMAP of nothing, with a stray fd', cmd: Command.DMA_UNMAP, payload: wb().u32(24).u32(0).u64(0x1000).u64(0x1000).build(), fds: 1, errno: ENOENT },
  // info commands
  { name: 'DEVICE_GET_INFO with argsz 1', cmd: Command.DEVICE_GET_INFO, payload: wb().u32(1).zeros(12).build(), errno: EINVAL },
  { name: 'DEVICE_GET_INFO with a 3-byte payload', cmd: Command.DEVICE_GET_INFO, payload: new Uint8Array(3), errno: EINVAL },
  { name: 'DEVICE_GET_INFO with two stray fds', cmd: Command.DEVICE_GET_INFO, payload: getInfo, fds: 2, errno: OK },
  { name: 'GET_REGION_INFO with an 8-byte payload', cmd: Command.DEVICE_GET_REGION_INFO, payload: wb().u32(32).u32(0).build(), errno: EINVAL },
  { name: 'GET_REGION_INFO of index 0x80000000', cmd: Command.DEVICE_GET_REGION_INFO, payload: wb().u32(32).u32(0).u32(0x80000000).zeros(20).build(), errno: EINVAL },
  { name: 'GET_REGION_INFO with argsz 0xffffffff (fine: a large buffer)', cmd: Command.DEVICE_GET_REGION_INFO, payload: wb().u32(0xffffffff).u32(0).u32(RegionIndex.CONFIG).zeros(20).build(), errno: OK },
  { name: 'GET_REGION_IO_FDS with argsz 0xffffffff', cmd: Command.DEVICE_GET_REGION_IO_FDS, payload: wb().u32(0xffffffff).u32(0).u32(0).u32(0).build(), errno: EINVAL },
  { name: 'GET_REGION_IO_FDS with count 0xffffffff', cmd: Command.DEVICE_GET_REGION_IO_FDS, payload: wb().u32(16).u32(0).u32(0).u32(0xffffffff).build(), errno: EINVAL },
  { name: 'GET_IRQ_INFO of index 0xffffffff', cmd: Command.DEVICE_GET_IRQ_INFO, payload: wb().u32(16).u32(0).u32(0xffffffff).u32(0).build(), errno: EINVAL },
  { name: 'GET_IRQ_INFO with a 3-byte payload', cmd: Command.DEVICE_GET_IRQ_INFO, payload: new Uint8Array(3), errno: EINVAL },
  // SET_IRQS
  { name: 'SET_IRQS with count 0xffffffff', cmd: Command.DEVICE_SET_IRQS, payload: wb().u32(20).u32(DATA_NONE | ACTION_TRIGGER).u32(IrqIndex.MSIX).u32(0).u32(0xffffffff).build(), errno: EINVAL },
  { name: 'SET_IRQS with start 0xffffffff', cmd: Command.DEVICE_SET_IRQS, payload: wb().u32(20).u32(DATA_NONE | ACTION_TRIGGER).u32(IrqIndex.MSIX).u32(0xffffffff).u32(1).build(), errno: EINVAL },
  { name: 'SET_IRQS BOOL claiming 0xffffffff bytes', cmd: Command.DEVICE_SET_IRQS, payload: wb().u32(20).u32(DATA_BOOL | ACTION_TRIGGER).u32(IrqIndex.MSIX).u32(0).u32(0xffffffff).u8(1).build(), errno: EINVAL },
  { name: 'SET_IRQS EVENTFD count 1 with three fds', cmd: Command.DEVICE_SET_IRQS, payload: wb().u32(20).u32(DATA_EVENTFD | ACTION_TRIGGER).u32(IrqIndex.MSIX).u32(0).u32(1).build(), fds: 3, errno: EINVAL },
  { name: 'SET_IRQS with a 12-byte payload', cmd: Command.DEVICE_SET_IRQS, payload: new Uint8Array(12), errno: EINVAL },
  // region access
  { name: 'REGION_READ wrapping from 2^64-1', cmd: Command.REGION_READ, payload: wb().u64(U64_MAX).u32(RegionIndex.BAR0).u32(2).build(), errno: EINVAL },
  { name: 'REGION_READ of 0xffffffff bytes', cmd: Command.REGION_READ, payload: wb().u64(0).u32(RegionIndex.BAR2).u32(0xffffffff).build(), errno: EINVAL },
  { name: 'REGION_READ of region 0xffffffff', cmd: Command.REGION_READ, payload: wb().u64(0).u32(0xffffffff).u32(4).build(), errno: EINVAL },
  { name: 'REGION_READ with a 4-byte payload', cmd: Command.REGION_READ, payload: new Uint8Array(4), errno: EINVAL },
  { name: 'REGION_READ with a stray fd', cmd: Command.REGION_READ, payload: wb().u64(0).u32(RegionIndex.CONFIG).u32(4).build(), fds: 1, errno: OK },
  { name: 'REGION_WRITE claiming 0xffffffff bytes, sending 4', cmd: Command.REGION_WRITE, payload: wb().u64(0).u32(RegionIndex.BAR2).u32(0xffffffff).u32(0).build(), errno: EINVAL },
  { name: 'REGION_WRITE to config space at 2^63', cmd: Command.REGION_WRITE, payload: wb().u64(1n << 63n).u32(RegionIndex.CONFIG).u32(1).u8(0).build(), errno: EINVAL },
  { name: 'REGION_WRITE_MULTI with wr_cnt 2^64-1', cmd: Command.REGION_WRITE_MULTI, payload: wb().u64(U64_MAX).build(), errno: EINVAL },
  { name: 'REGION_WRITE_MULTI with an entry count 0xffffffff', cmd: Command.REGION_WRITE_MULTI, payload: wb().u64(1).u64(0).u32(0).u32(0xffffffff).zeros(8).build(), errno: EINVAL },
  { name: 'REGION_WRITE_MULTI with a 4-byte payload', cmd: Command.REGION_WRITE_MULTI, payload: new Uint8Array(4), errno: EINVAL },
  { name: 'DEVICE_RESET with a stray fd', cmd: Command.DEVICE_RESET, fds: 1, errno: OK },
  // migration on a device without migration
  { name: 'DEVICE_FEATURE GET MIGRATION', cmd: Command.DEVICE_FEATURE, payload: wb().u32(16).u32(DeviceFeature.MIGRATION | DeviceFeatureFlags.GET).build(), errno: EINVAL },
  { name: 'DEVICE_FEATURE SET MIG_DEVICE_STATE', cmd: Command.DEVICE_FEATURE, payload: feature(DeviceFeature.MIG_DEVICE_STATE, DeviceFeatureFlags.SET, [1, 0, 0, 0, 0, 0, 0, 0]), errno: EINVAL },
  { name: 'DEVICE_FEATURE PROBE LOW_POWER_ENTRY (a feature the device lacks)', cmd: Command.DEVICE_FEATURE, payload: feature(3, DeviceFeatureFlags.PROBE | DeviceFeatureFlags.SET), errno: EINVAL },
  { name: 'DEVICE_FEATURE with a 4-byte payload', cmd: Command.DEVICE_FEATURE, payload: new Uint8Array(4), errno: EINVAL },
  { name: 'MIG_DATA_READ', cmd: Command.MIG_DATA_READ, payload: wb().u32(72).u32(64).build(), errno: EINVAL },
  { name: 'MIG_DATA_WRITE', cmd: Command.MIG_DATA_WRITE, payload: wb().u32(12).u32(4).bytes([1, 2, 3, 4]).build(), errno: EINVAL },
  // commands that are not the client's, or not commands
  { name: 'VERSION again', cmd: Command.VERSION, payload: wb().u16(0).u16(2).build(), errno: EINVAL },
  { name: 'VERSION again with an fd', cmd: Command.VERSION, payload: wb().u16(0).u16(2).build(), fds: 1, errno: EINVAL },
  { name: 'DMA_READ sent by the client', cmd: Command.DMA_READ, payload: new Uint8Array(16), errno: EINVAL },
  { name: 'DMA_WRITE sent by the client, with an fd', cmd: Command.DMA_WRITE, payload: new Uint8Array(20), fds: 1, errno: EINVAL },
  { name: 'command 0', cmd: 0, payload: new Uint8Array(8), errno: EINVAL },
  { name: 'command 14 (old DIRTY_PAGES)', cmd: 14, payload: new Uint8Array(8), errno: EINVAL },
  { name: 'command 0xffff', cmd: 0xffff, payload: new Uint8Array(8), errno: EINVAL },
  { name: 'message type 2', cmd: Command.DEVICE_GET_INFO, payload: getInfo, flags: 0x2, errno: EINVAL },
  { name: 'message type 0xf', cmd: Command.DEVICE_GET_INFO, payload: getInfo, flags: 0xf, errno: EINVAL },
  { name: 'a command carrying the ERROR bit and unknown flag bits (ignored)', cmd: Command.DEVICE_GET_INFO, payload: getInfo, flags: HeaderFlags.ERROR | 0x4000_0000, errno: OK },
  { name: 'DEVICE_GET_INFO with no payload (msg_size 16)', cmd: Command.DEVICE_GET_INFO, errno: EINVAL },
  { name: 'REGION_READ with no payload (msg_size 16)', cmd: Command.REGION_READ, errno: EINVAL },
];

describe('hostile requests: each gets its errno, its fds are closed, the session goes on', () => {
  for (const row of rows) {
    it(`${row.name} → ${row.errno === OK ? 'served' : `errno ${row.errno}`}`, (t) =>
      assertNoFdLeak(() =>
        withDevice(t, async ({ client }) => {
          const fds = Array.from({ length: row.fds ?? 0 }, () => createEventFd());
          try {
            const r = await client.request(row.cmd, row.payload, fds, row.flags ?? 0);
            assert.equal(r.flags & HeaderFlags.TYPE_MASK, HeaderFlags.TYPE_REPLY);
            assert.equal(r.errorNo, row.errno, `errno of ${row.name}`);
            assert.equal(r.flags & HeaderFlags.ERROR, row.errno === OK ? 0 : HeaderFlags.ERROR);
            assert.equal(r.fds.length, 0);
          } finally {
            closeAll(fds);
          }
          await client.ok(Command.DEVICE_GET_INFO, getInfo);
          await client.ok(Command.DEVICE_GET_INFO, getInfo);
        }),
      ));
  }

  it('a stray reply (no server request pending) is dropped without an answer', (t) =>
    withDevice(t, async ({ client }) => {
      const stray = buildMessage({ msgId: 0x7777, cmd: Command.DMA_READ, flags: HeaderFlags.TYPE_REPLY }, new Uint8Array(16));
      assert.equal(native.sendmsg(client.transport.fd, [stray], null), stray.length);
      await client.ok(Command.DEVICE_GET_INFO, getInfo);
      assert.ok(!client.replies.some((r) => r.msgId === 0x7777));
    }));

  it('NO_REPLY on a hostile request: no answer, the session goes on', (t) =>
    withDevice(t, async ({ client }) => {
      const id = client.post(Command.REGION_READ, wb().u64(U64_MAX).u32(0).u32(2).build(), HeaderFlags.NO_REPLY);
      await client.ok(Command.DEVICE_GET_INFO, getInfo);
      assert.ok(!client.replies.some((r) => r.msgId === id));
    }));
});

describe('hostile headers that break the stream: EINVAL, the connection closes, the next client is served', () => {
  const streamRows: { name: string; msgSize: number; fds?: number }[] = [
    { name: 'msg_size 0', msgSize: 0 },
    { name: 'msg_size 8', msgSize: 8 },
    { name: 'msg_size 15 with an fd', msgSize: 15, fds: 1 },
    { name: `msg_size ${SERVER_MAX_MSG_SIZE + 1} (1 MiB + 33)`, msgSize: SERVER_MAX_MSG_SIZE + 1 },
    { name: 'msg_size 0xffffffff with an fd', msgSize: 0xffffffff, fds: 1 },
  ];
  for (const row of streamRows) {
    it(row.name, (t) =>
      assertNoFdLeak(() =>
        withDevice(t, async ({ served, client }) => {
          const fds = Array.from({ length: row.fds ?? 0 }, () => createEventFd());
          const bad = buildMessage({ msgId: 0x4242, cmd: Command.REGION_WRITE, flags: 0, msgSize: row.msgSize }, new Uint8Array(16));
          try {
            assert.equal(native.sendmsg(client.transport.fd, [bad], fds.length > 0 ? fds : null), bad.length);
          } finally {
            closeAll(fds);
          }
          const reply = await client.replyTo(0x4242);
          assert.equal(reply.flags & HeaderFlags.ERROR, HeaderFlags.ERROR);
          assert.equal(reply.errorNo, EINVAL);
          await client.closed;
          await served.server.idle();
          const { client: next } = await StepClient.open(served.path);
          try {
            await next.ok(Command.DEVICE_GET_INFO, getInfo);
          } finally {
            next.close();
          }
          assert.equal(served.server.sessionCount, 2);
        }),
      ));
  }
});
