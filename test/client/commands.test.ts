/**
 * The client library against our own server: every command, its error paths,
 * batching and chunking (counted through the `trace` hook), server→client DMA,
 * NO_REPLY, pipelining, refused connections and teardown. Numbers (commands,
 * flags, errnos) are spelled out here rather than taken from src/protocol.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import type { ClientOptions, TraceEvent } from '../../src/client/core.js';
import { ConnectionClosedError, InvalidArgumentError, ProtocolError, RemoteError, TimeoutError, VfioUserError } from '../../src/errors.js';
import { createEventFd, mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';
import type { DeviceDefinition } from '../../src/device/types.js';
import type { ServeOptions } from '../../src/server/server.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { serveTestDevice, testDeviceDefinition, type ServedDevice } from '../support/server-fixture.js';
import { pattern } from '../support/wire-builder.js';

const Cmd = { VERSION: 1, DMA_MAP: 2, DMA_UNMAP: 3, GET_REGION_INFO: 5, GET_REGION_IO_FDS: 6, GET_IRQ_INFO: 7, SET_IRQS: 8, REGION_READ: 9, REGION_WRITE: 10, DMA_READ: 11, DMA_WRITE: 12, RESET: 13, WRITE_MULTI: 15, FEATURE: 16, MIG_READ: 17, MIG_WRITE: 18 } as const;
const E = { EPERM: 1, ENOENT: 2, EACCES: 13, EFAULT: 14, EBUSY: 16, EINVAL: 22, ENOTSUP: 95, ENOTCONN: 107, ECONNREFUSED: 111 } as const;
const R = 1, W = 2, MMAP = 4, CAPS = 8; // region info flags
const DMA_RW = 3;
const MSIX = 2;
const EVENTFD_TRIGGER = 0x4 | 0x20;
const NONE_TRIGGER = 0x1 | 0x20;

interface Session {
  served: ServedDevice;
  client: VfioUserClient;
  trace: TraceEvent[];
}

interface SessionOptions {
  def?: DeviceDefinition;
  serve?: Omit<ServeOptions, 'path'>;
  client?: ClientOptions;
}

/** Serves a device, connects a client recording its trace, runs `fn`, then closes both (even on failure). */
async function session(fn: (s: Session) => Promise<void>, options: SessionOptions = {}): Promise<void> {
  const served = serveTestDevice(options.def ?? testDeviceDefinition(), options.serve ?? {});
  const trace: TraceEvent[] = [];
  let client: VfioUserClient | undefined;
  try {
    client = await VfioUserClient.connect(served.path, { ...options.client, trace: (e) => trace.push(e) });
    await fn({ served, client, trace });
  } finally {
    client?.close();
    await served.close();
  }
}

/** The commands the client sent for `cmd`, from its trace. */
const sent = (trace: TraceEvent[], cmd: number): TraceEvent[] => trace.filter((e) => e.direction === 'send' && e.header.cmd === cmd);
const u32 = (b: Uint8Array, at: number): number => new DataView(b.buffer, b.byteOffset).getUint32(at, true);

function isRemote(errno: number, command: number): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof RemoteError, `expected RemoteError, got ${String(e)}`);
    assert.equal(e.errno, errno);
    assert.equal(e.command, command);
    return true;
  };
}

const isClosed = (e: unknown): boolean => e instanceof ConnectionClosedError && e.errno === E.ENOTCONN;

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe('client: connect and VERSION', () => {
  it('negotiates 0.2 and records the server capabilities', () =>
    session(async ({ client, served, trace }) => {
      assert.deepEqual(client.version, { major: 0, minor: 2 });
      assert.equal(client.server.maxMsgFds, 253);
      assert.equal(client.server.maxDataXferSize, 1 << 20);
      assert.equal(client.server.maxDmaMaps, 65535);
      assert.equal(client.server.pgsizes, 4096n);
      assert.equal(client.server.writeMultiple, true);
      assert.equal(client.hasTwinSocket, false);
      assert.equal(client.inFlight, 0);
      assert.equal(served.server.sessionCount, 1);
      const [send, recv] = trace;
      assert.equal(send?.direction, 'send');
      assert.equal(send?.header.cmd, Cmd.VERSION);
      assert.match(new TextDecoder().decode(send?.payload.subarray(4)), /"max_msg_fds":16/);
      assert.equal(recv?.direction, 'recv');
      assert.equal(recv?.header.flags, 1);
      assert.equal(typeof recv?.latencyNs, 'bigint');
    }));

  it('reflects the limits the server advertises', () =>
    session(
      async ({ client }) => {
        assert.equal(client.server.maxMsgFds, 2);
        assert.equal(client.server.maxDataXferSize, 1024);
        assert.equal(client.server.writeMultiple, false);
      },
      { serve: { limits: { maxMsgFds: 2, maxDataXferSize: 1024, writeMultiple: false } } },
    ));

  it('opens a twin socket when asked', () =>
    assertNoFdLeak(() =>
      session(
        async ({ client }) => {
          assert.equal(client.hasTwinSocket, true);
          assert.equal(client.server.twinSocket.supported, true);
          assert.ok((await client.deviceInfo()).numRegions > 0);
        },
        { client: { twinSocket: true } },
      ),
    ));

  it('fails with ENOENT for a missing socket and ECONNREFUSED when nobody listens', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-client-'));
    const fd = native.unixSocket();
    try {
      await assert.rejects(VfioUserClient.connect(join(dir, 'absent.sock')), (e: unknown) => e instanceof VfioUserError && e.errno === E.ENOENT);
      native.bind(fd, join(dir, 'deaf.sock')); // bound, never listening
      await assert.rejects(VfioUserClient.connect(join(dir, 'deaf.sock')), (e: unknown) => e instanceof VfioUserError && e.errno === E.ECONNREFUSED);
    } finally {
      native.close(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('is refused with EBUSY while another client is served; the first keeps working', () =>
    assertNoFdLeak(() =>
      session(
        async ({ client, served }) => {
          await assert.rejects(VfioUserClient.connect(served.path), isRemote(E.EBUSY, Cmd.VERSION));
          assert.equal((await client.deviceInfo()).numIrqs, 5);
        },
        { serve: { busyGraceMs: 20 } },
      ),
    ));

  it('is refused with EPERM when its uid is not allowed', async () => {
    const served = serveTestDevice(testDeviceDefinition(), { allowedUids: [process.getuid!() + 1] });
    try {
      await assert.rejects(VfioUserClient.connect(served.path), isRemote(E.EPERM, Cmd.VERSION));
    } finally {
      await served.close();
    }
  });
});

describe('client: device, region and IRQ info', () => {
  it('deviceInfo: PCI|RESET, 9 regions, 5 IRQ indexes', () =>
    session(async ({ client }) => {
      assert.deepEqual(await client.deviceInfo(), { argsz: 16, flags: 3, numRegions: 9, numIrqs: 5 });
    }));

  it('regionInfo for every index; the shared BAR comes with an fd that maps the region', () =>
    assertNoFdLeak(() =>
      session(async ({ client, served }) => {
        const expected: [number, number, bigint][] = [
          [0, R | W, 4096n],
          [1, 0, 0n],
          [2, R | W | MMAP | CAPS, 0x10000n],
          [3, 0, 0n], // the upper half of 64-bit BAR2
          [4, R | W, 0x2000n],
          [5, 0, 0n],
          [6, 0, 0n],
          [7, R | W, 256n],
          [8, 0, 0n],
        ];
        for (const [index, flags, size] of expected) {
          const { info, fd } = await client.regionInfo(index);
          try {
            assert.equal(info.index, index);
            assert.equal(info.flags, flags, `region ${index} flags`);
            assert.equal(info.size, size, `region ${index} size`);
            assert.equal(fd !== undefined, index === 2, `region ${index} fd`);
            if (index !== 2 || fd === undefined) continue;
            assert.equal(info.capOffset, 32);
            assert.deepEqual(info.caps, [{ kind: 'sparse-mmap', version: 1, areas: [{ offset: 0n, size: 0x10000n }] }]);
            const memory = new Uint8Array(mapFd(fd, Number(info.offset), 0x10000, true));
            memory.set([0xde, 0xad, 0xbe, 0xef], 0x100);
            assert.deepEqual([...served.device.regionMemory(2).subarray(0x100, 0x104)], [0xde, 0xad, 0xbe, 0xef]);
            assert.deepEqual([...(await client.regionRead(2, 0x100n, 4))], [0xde, 0xad, 0xbe, 0xef]);
            unmap(memory.buffer as ArrayBuffer);
          } finally {
            if (fd !== undefined) native.close(fd);
          }
        }
        await assert.rejects(client.regionInfo(9), isRemote(E.EINVAL, Cmd.GET_REGION_INFO));
      }),
    ));

  it('regionInfo retries with the argsz the server asks for (and only then)', () =>
    assertNoFdLeak(() =>
      session(async ({ client, trace }) => {
        const { info, fd } = await client.regionInfo(2, 32);
        try {
          assert.equal(info.flags, R | W | MMAP | CAPS);
          assert.equal(info.argsz, 64);
          assert.ok(fd !== undefined, 'the retry brings the fd');
        } finally {
          if (fd !== undefined) native.close(fd);
        }
        const asked = sent(trace, Cmd.GET_REGION_INFO).map((e) => u32(e.payload, 0));
        assert.deepEqual(asked, [32, 64]);
        await client.regionInfo(0, 32);
        assert.equal(sent(trace, Cmd.GET_REGION_INFO).length, 3, 'no retry for a region without caps');
      }),
    ));

  it('regionIoFds: ioeventfds of a BAR, signalled into its write path; none elsewhere', async () => {
    const writes: [number, number[]][] = [];
    const written = deferred();
    const def = testDeviceDefinition({
      regions: {
        bar0: { size: 4096, ioeventfds: [{ offset: 0x10, size: 4 }, { offset: 0x20, size: 4, datamatch: 7n }], write: (o, d) => void (writes.push([o, [...d]]), written.resolve()) },
        bar2: { size: 0x10000, type: 'mem64', shared: true },
        bar4: { size: 0x2000 },
      },
    });
    await assertNoFdLeak(() =>
      session(
        async ({ client, trace }) => {
          const { reply, fds } = await client.regionIoFds(0);
          try {
            assert.equal(reply.count, 2);
            assert.equal(fds.length, 2);
            assert.deepEqual(
              reply.subRegions.map((s) => [s.offset, s.size, s.fdIndex, s.flags, s.datamatch]),
              [
                [0x10n, 4n, 0, 0, 0n],
                [0x20n, 4n, 1, 1, 7n],
              ],
            );
            native.eventfdWrite(fds[1]!, 1n);
            await written.promise;
            assert.deepEqual(writes, [[0x20, [7, 0, 0, 0]]]);
          } finally {
            for (const fd of fds) native.close(fd);
          }
          assert.equal(sent(trace, Cmd.GET_REGION_IO_FDS).length, 1);
          const none = await client.regionIoFds(2);
          assert.deepEqual([none.reply.count, none.fds.length], [0, 0]);
          await assert.rejects(client.regionIoFds(1), isRemote(E.EINVAL, Cmd.GET_REGION_IO_FDS));
        },
        { def },
      ),
    );
  });

  it('regionIoFds retries when the records do not fit its first argsz', async () => {
    const doorbells = Array.from({ length: 90 }, (_, i) => ({ offset: i * 8, size: 4 as const }));
    const def = testDeviceDefinition({ regions: { bar0: { size: 4096, ioeventfds: doorbells, write: () => {} }, bar4: { size: 0x2000 } } });
    await assertNoFdLeak(() =>
      session(
        async ({ client, trace }) => {
          const { reply, fds } = await client.regionIoFds(0);
          for (const fd of fds) native.close(fd);
          assert.equal(reply.subRegions.length, 90);
          assert.equal(fds.length, 90);
          assert.deepEqual(sent(trace, Cmd.GET_REGION_IO_FDS).map((e) => u32(e.payload, 0)), [4096, 16 + 90 * 48]);
        },
        { def, client: { capabilities: { maxMsgFds: 128 } } },
      ),
    );
  });

  it('irqInfo for every index; EINVAL beyond', () =>
    session(async ({ client }) => {
      const counts = [];
      for (let index = 0; index < 5; index++) {
        const info = await client.irqInfo(index);
        assert.equal(info.index, index);
        assert.equal(info.flags, 1, 'EVENTFD');
        counts.push(info.count);
      }
      assert.deepEqual(counts, [1, 4, 8, 1, 1]);
      await assert.rejects(client.irqInfo(5), isRemote(E.EINVAL, Cmd.GET_IRQ_INFO));
    }));
});

describe('client: SET_IRQS', () => {
  it('sends 8 MSI-X eventfds in batches of the server max_msg_fds (2): 4 messages, all installed', () =>
    assertNoFdLeak(() =>
      session(
        async ({ client, served, trace }) => {
          const fds = Array.from({ length: 8 }, () => createEventFd());
          try {
            await client.setIrqs({ flags: EVENTFD_TRIGGER, index: MSIX, start: 0, count: 8 }, fds);
          } finally {
            for (const fd of fds) native.close(fd); // the caller keeps ownership; the server has its own copies
          }
          const msgs = sent(trace, Cmd.SET_IRQS);
          assert.equal(msgs.length, 4);
          assert.deepEqual(msgs.map((e) => e.fds), [2, 2, 2, 2]);
          assert.deepEqual(msgs.map((e) => [u32(e.payload, 12), u32(e.payload, 16)]), [[0, 2], [2, 2], [4, 2], [6, 2]]);
          for (let v = 0; v < 8; v++) assert.equal(served.device.irqs.hasEventFd(MSIX, v), true, `vector ${v}`);
          await client.setIrqs({ flags: NONE_TRIGGER, index: MSIX, start: 0, count: 0 });
          for (let v = 0; v < 8; v++) assert.equal(served.device.irqs.hasEventFd(MSIX, v), false);
          await assert.rejects(
            client.setIrqs({ flags: EVENTFD_TRIGGER, index: MSIX, start: 0, count: 4 }, [1, 2, 3]),
            (e: unknown) => e instanceof InvalidArgumentError && e.errno === E.EINVAL,
          );
        },
        { serve: { limits: { maxMsgFds: 2 } } },
      ),
    ));

  it('sends a set that fits in one message at once; refusals are RemoteError EINVAL', () =>
    assertNoFdLeak(() =>
      session(async ({ client, served, trace }) => {
        const fds = [createEventFd(), createEventFd()];
        try {
          await client.setIrqs({ flags: EVENTFD_TRIGGER, index: MSIX, start: 3, count: 2 }, fds);
          await assert.rejects(client.setIrqs({ flags: EVENTFD_TRIGGER, index: MSIX, start: 7, count: 2 }, fds), isRemote(E.EINVAL, Cmd.SET_IRQS));
        } finally {
          for (const fd of fds) native.close(fd);
        }
        assert.equal(sent(trace, Cmd.SET_IRQS).length, 2);
        assert.deepEqual([2, 3, 4, 5].map((v) => served.device.irqs.hasEventFd(MSIX, v)), [false, true, true, false]);
      }),
    ));
});

describe('client: region access', () => {
  it('regionWrite then regionRead of a callback BAR and of config space; EINVAL out of bounds', () =>
    session(async ({ client }) => {
      await client.regionWrite(0, 0x40n, pattern(64, 7));
      assert.deepEqual(await client.regionRead(0, 0x40n, 64), pattern(64, 7));
      assert.deepEqual([...(await client.regionRead(7, 0n, 4))], [0xf4, 0x1a, 0xf0, 0x10], 'vendor 1af4, device 10f0');
      await assert.rejects(client.regionRead(0, 4090n, 8), isRemote(E.EINVAL, Cmd.REGION_READ));
      await assert.rejects(client.regionWrite(0, 4096n, pattern(1)), isRemote(E.EINVAL, Cmd.REGION_WRITE));
      await assert.rejects(client.regionRead(1, 0n, 4), isRemote(E.EINVAL, Cmd.REGION_READ));
    }));

  it('splits a 5000-byte write and read of the shared BAR to the server max_data_xfer_size (1024)', () =>
    session(
      async ({ client, served, trace }) => {
        const data = pattern(5000, 3);
        await client.regionWrite(2, 0x800n, data);
        assert.deepEqual(served.device.regionMemory(2).subarray(0x800, 0x800 + 5000), data);
        assert.deepEqual(await client.regionRead(2, 0x800n, 5000), data);
        for (const cmd of [Cmd.REGION_WRITE, Cmd.REGION_READ]) {
          const msgs = sent(trace, cmd);
          assert.deepEqual(msgs.map((e) => u32(e.payload, 12)), [1024, 1024, 1024, 1024, 904], `cmd ${cmd} counts`);
          assert.deepEqual(msgs.map((e) => Number(new DataView(e.payload.buffer, e.payload.byteOffset).getBigUint64(0, true))), [0x800, 0xc00, 0x1000, 0x1400, 0x1800]);
        }
      },
      { serve: { limits: { maxDataXferSize: 1024 } } },
    ));

  it('never asks for a reply larger than it accepts (server max_data_xfer_size above its own)', async () => {
    const def = testDeviceDefinition({ regions: { bar2: { size: 4 << 20, type: 'mem64', shared: true }, bar4: { size: 0x2000 } } });
    await session(
      async ({ client, served }) => {
        served.device.regionMemory(2).set(pattern(4096), (2 << 20) - 4096);
        const data = await client.regionRead(2, 0n, 2 << 20);
        assert.deepEqual(data.subarray((2 << 20) - 4096), pattern(4096));
      },
      { def, serve: { limits: { maxDataXferSize: 4 << 20 } } },
    );
  });

  it('regionWriteMulti: several small writes in one message', () =>
    session(async ({ client, trace }) => {
      const writes = [0, 8, 16].map((offset, i) => ({ offset: BigInt(offset), region: 0, count: 4, data: pattern(4, 0x10 * (i + 1)) }));
      assert.equal(await client.regionWriteMulti(writes), 3n);
      assert.equal(sent(trace, Cmd.WRITE_MULTI).length, 1);
      const back = await client.regionRead(0, 0n, 20);
      assert.deepEqual([...back.subarray(0, 4), ...back.subarray(8, 12), ...back.subarray(16, 20)], [...pattern(4, 0x10), ...pattern(4, 0x20), ...pattern(4, 0x30)]);
    }));

  it('regionWriteMulti: ENOTSUP, without sending, when the server does not advertise it', () =>
    session(
      async ({ client, trace }) => {
        await assert.rejects(
          client.regionWriteMulti([{ offset: 0n, region: 0, count: 1, data: pattern(1) }]),
          (e: unknown) => e instanceof ProtocolError && e.errno === E.ENOTSUP,
        );
        assert.equal(sent(trace, Cmd.WRITE_MULTI).length, 0);
      },
      { serve: { limits: { writeMultiple: false } } },
    ));
});

describe('client: DMA_MAP / DMA_UNMAP', () => {
  it('maps a memfd the device then reads and writes; exact unmap; ENOENT after', () =>
    assertNoFdLeak(() =>
      session(async ({ client, served }) => {
        const fd = memfdCreate('guest', 0x4000);
        const guest = new Uint8Array(mapFd(fd, 0, 0x4000, true));
        try {
          guest.set([1, 2, 3], 0x1000);
          await client.dmaMap({ addr: 0x100000n, size: 0x4000n, flags: DMA_RW }, fd);
          assert.equal(served.device.dma.regions().length, 1);
          assert.equal(served.device.dma.regions()[0]?.mode, 'mmap');
          assert.deepEqual([...served.device.dma.readSync(0x101000n, 3)], [1, 2, 3]);
          served.device.dma.writeSync(0x100010n, Uint8Array.of(9, 8));
          assert.deepEqual([...guest.subarray(0x10, 0x12)], [9, 8]);
          assert.deepEqual(await client.dmaUnmap(0x100000n, 0x4000n), { argsz: 24, flags: 0, addr: 0x100000n, size: 0x4000n });
          assert.equal(served.device.dma.regions().length, 0);
          await assert.rejects(client.dmaUnmap(0x100000n, 0x4000n), isRemote(E.ENOENT, Cmd.DMA_UNMAP));
          await assert.rejects(client.dmaMap({ addr: 0n, size: 0x8000n, flags: DMA_RW }, fd), isRemote(E.EINVAL, Cmd.DMA_MAP));
        } finally {
          unmap(guest.buffer as ArrayBuffer);
          native.close(fd);
        }
      }),
    ));

  it('maps in message mode (no fd) and unmaps everything with dmaUnmapAll', () =>
    session(async ({ client, served }) => {
      await client.dmaMap({ addr: 0x10000n, size: 0x1000n, flags: DMA_RW });
      await client.dmaMap({ addr: 0x20000n, size: 0x1000n, flags: DMA_RW });
      assert.deepEqual(served.device.dma.regions().map((r) => r.mode), ['message', 'message']);
      await client.dmaUnmapAll();
      assert.equal(served.device.dma.regions().length, 0);
      await assert.rejects(client.dmaUnmap(0x10000n, 0x1000n), isRemote(E.ENOENT, Cmd.DMA_UNMAP));
    }));

  it('dmaUnmap with dirtyPageSize returns the pages the device wrote while logging', () =>
    assertNoFdLeak(() =>
      session(async ({ client, served }) => {
        const fd = memfdCreate('guest', 0x10000);
        try {
          await client.dmaMap({ addr: 0x200000n, size: 0x10000n, flags: DMA_RW }, fd);
          served.device.dma.startLogging(4096n);
          served.device.dma.writeSync(0x201000n, pattern(8)); // page 1
          served.device.dma.writeSync(0x205ffen, pattern(4)); // pages 5 and 6
          served.device.dma.writeSync(0x20f000n, pattern(1)); // page 15
          const reply = await client.dmaUnmap(0x200000n, 0x10000n, { dirtyPageSize: 4096n });
          assert.equal(reply.flags, 1);
          assert.equal(reply.bitmap?.pgsize, 4096n);
          assert.equal(reply.bitmap?.size, 8n, '16 pages rounded up to 64 bits');
          assert.deepEqual([...(reply.bitmap?.data ?? [])], [0b0110_0010, 0b1000_0000, 0, 0, 0, 0, 0, 0]);
          assert.equal(served.device.dma.regions().length, 0);
        } finally {
          native.close(fd);
        }
      }),
    ));
});

describe('client: reset and migration commands', () => {
  it('reset() runs the device reset hook with reason "client"', async () => {
    const reasons: string[] = [];
    await session(
      async ({ client }) => {
        await client.reset();
        assert.deepEqual(reasons, ['client']);
      },
      { def: testDeviceDefinition({ reset: (reason) => void reasons.push(reason) }) },
    );
  });

  it('deviceFeature, migDataRead and migDataWrite fail with RemoteError EINVAL (no migration)', () =>
    session(async ({ client }) => {
      const checks: [Promise<unknown>, number, string][] = [
        [client.deviceFeature(1 | (1 << 16)), Cmd.FEATURE, 'DEVICE_FEATURE'],
        [client.migDataRead(4096), Cmd.MIG_READ, 'MIG_DATA_READ'],
        [client.migDataWrite(pattern(16)), Cmd.MIG_WRITE, 'MIG_DATA_WRITE'],
      ];
      for (const [promise, command, name] of checks) {
        await assert.rejects(promise, (e: unknown) => {
          assert.ok(e instanceof RemoteError && e instanceof VfioUserError);
          assert.equal(e.name, 'RemoteError');
          assert.equal(e.errno, E.EINVAL);
          assert.equal(e.code, 'EINVAL');
          assert.equal(e.command, command);
          assert.match(e.message, new RegExp(`${name}.*EINVAL`));
          return true;
        });
      }
      assert.ok((await client.deviceInfo()).numRegions > 0, 'the connection stays up');
    }));
});

describe('client: server→client DMA (message mode)', () => {
  for (const twinSocket of [false, true]) {
    it(`answers the device's DMA reads and writes from the responder, chunked, on the ${twinSocket ? 'twin' : 'main'} socket`, () =>
      session(
        async ({ client, served, trace }) => {
          const guest = pattern(0x4000);
          const calls: string[] = [];
          client.setDmaResponder({
            read: (addr, count) => (calls.push(`r${count}`), guest.slice(Number(addr - 0x40000n), Number(addr - 0x40000n) + count)),
            write: (addr, data) => (calls.push(`w${data.length}`), guest.set(data, Number(addr - 0x40000n))),
          });
          await client.dmaMap({ addr: 0x40000n, size: 0x4000n, flags: DMA_RW });
          const data = await served.device.dma.read(0x40100n, 2500);
          assert.deepEqual(data, pattern(2500, 0x100));
          await served.device.dma.write(0x41000n, new Uint8Array(1500).fill(0xab));
          assert.ok(guest.subarray(0x1000, 0x1000 + 1500).every((b) => b === 0xab));
          assert.equal(guest[0x1000 + 1500], (0x1000 + 1500) & 0xff);
          assert.deepEqual(calls, ['r1024', 'r1024', 'r452', 'w1024', 'w476']);
          const answers = trace.filter((e) => e.direction === 'send' && (e.header.cmd === Cmd.DMA_READ || e.header.cmd === Cmd.DMA_WRITE));
          assert.equal(answers.length, 5);
          assert.ok(answers.every((e) => e.channel === (twinSocket ? 'twin' : 'main') && e.header.flags === 1));
          await client.dmaUnmap(0x40000n, 0x4000n);
        },
        { client: { twinSocket, capabilities: { maxDataXferSize: 1024 } } },
      ));
  }

  it('refuses server DMA with EFAULT when there is no responder, and with the errno the responder throws', () =>
    session(async ({ client, served }) => {
      await client.dmaMap({ addr: 0x40000n, size: 0x1000n, flags: DMA_RW });
      const errnoIs = (errno: number) => (e: unknown) => (e as { errno?: number }).errno === errno;
      await assert.rejects(served.device.dma.read(0x40000n, 8), errnoIs(E.EFAULT));
      await assert.rejects(served.device.dma.write(0x40000n, pattern(8)), errnoIs(E.EFAULT));
      client.setDmaResponder({
        read: () => {
          throw new VfioUserError('no access', { errno: E.EACCES });
        },
        write: () => {
          throw new Error('unexpected');
        },
      });
      await assert.rejects(served.device.dma.read(0x40000n, 8), errnoIs(E.EACCES));
      await assert.rejects(served.device.dma.write(0x40000n, pattern(8)), errnoIs(E.EINVAL));
      client.setDmaResponder(undefined);
      await assert.rejects(served.device.dma.read(0x40000n, 8), errnoIs(E.EFAULT));
      assert.equal((await client.deviceInfo()).numIrqs, 5);
    }));
});

describe('client: NO_REPLY, pipelining, timeouts', () => {
  it('post() sends NO_REPLY: the command runs, nothing comes back, nothing stays pending', async () => {
    const reset = deferred();
    await session(
      async ({ client }) => {
        client.post(Cmd.RESET);
        await reset.promise;
        client.post(Cmd.REGION_READ, Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0)); // region 1 does not exist: fails silently
        assert.equal(client.inFlight, 0);
        assert.equal((await client.deviceInfo()).numRegions, 9, 'the next reply is the one we asked for');
      },
      { def: testDeviceDefinition({ reset: () => reset.resolve() }) },
    );
  });

  it('post() is traced like every other message', () =>
    session(async ({ client, trace }) => {
      client.post(Cmd.RESET);
      await client.deviceInfo();
      assert.equal(sent(trace, Cmd.RESET).length, 1);
      assert.equal(sent(trace, Cmd.RESET)[0]?.header.flags, 0x10);
    }));

  it('200 pipelined regionReads resolve with their own data; in flight returns to 0', () =>
    session(async ({ client }) => {
      await client.regionWrite(0, 0n, pattern(4096));
      const reads = Array.from({ length: 200 }, (_, i) => client.regionRead(0, BigInt(i * 16), 8 + (i % 8)));
      assert.equal(client.inFlight, 200);
      const results = await Promise.all(reads);
      results.forEach((data, i) => assert.deepEqual(data, pattern(8 + (i % 8), i * 16), `read ${i}`));
      assert.equal(client.inFlight, 0);
    }));

  it('a request the device is slow to answer times out (ETIMEDOUT); the late reply is dropped', async () => {
    const release = deferred();
    const def = testDeviceDefinition();
    def.regions!.bar0 = { size: 4096, read: async (_o, n) => (await release.promise, new Uint8Array(n)) };
    await session(
      async ({ client }) => {
        await assert.rejects(client.regionRead(0, 0n, 4), (e: unknown) => e instanceof TimeoutError && e.errno === 110);
        assert.equal(client.inFlight, 0);
        release.resolve();
        await new Promise((r) => setTimeout(r, 20));
        assert.equal((await client.deviceInfo()).numRegions, 9);
      },
      { def, client: { timeoutMs: 50 } },
    );
  });
});

describe('client: teardown', () => {
  it('close() rejects pending requests with ConnectionClosedError; later requests fail ENOTCONN', async () => {
    const release = deferred();
    const def = testDeviceDefinition();
    def.regions!.bar0 = { size: 4096, read: async (_o, n) => (await release.promise, new Uint8Array(n)) };
    await assertNoFdLeak(() =>
      session(
        async ({ client }) => {
          const pending = [client.regionRead(0, 0n, 4), client.deviceInfo()];
          client.close();
          release.resolve();
          for (const p of pending) await assert.rejects(p, isClosed);
          assert.equal(await client.closed, undefined, 'a local close is not an error');
          assert.equal(client.inFlight, 0);
          await assert.rejects(client.deviceInfo(), isClosed);
          assert.throws(() => client.post(Cmd.RESET), isClosed);
        },
        { def },
      ),
    );
  });

  it('the server going away resolves client.closed and fails pending and later requests', async () => {
    const release = deferred();
    const def = testDeviceDefinition();
    def.regions!.bar0 = { size: 4096, read: async (_o, n) => (await release.promise, new Uint8Array(n)) };
    await session(
      async ({ client, served }) => {
        const pending = client.regionRead(0, 0n, 4);
        await new Promise((r) => setTimeout(r, 10));
        const closing = served.server.close();
        await client.closed;
        release.resolve();
        await closing;
        await assert.rejects(pending, isClosed);
        await assert.rejects(client.deviceInfo(), isClosed);
        await assert.rejects(client.regionRead(0, 0n, 4), isClosed);
      },
      { def },
    );
  });
});
