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
import { InvalidArgumentError, ProtocolError, VfioUserError } from '../../src/errors.js';
import { createEventFd, mapFd, native, unmap } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { serveTestDevice, testDeviceDefinition } from '../support/server-fixture.js';
import { pattern } from '../support/wire-builder.js';

import { CAPS, Cmd, E, EVENTFD_TRIGGER, MMAP, MSIX, NONE_TRIGGER, R, W, deferred, isRemote, sent, session, u32 } from '../support/client-session.js';

describe('client: connect and VERSION', () => {
  it('negotiates 0.2 and records the server capabilities', () =>
    session(async ({ client, served, trace }) => {
      assert.deepEqual(client.version, { major: 0, minor: 2 });
      assert.equal(client.server.maxMsgFds, 16);
      assert.equal(client.server.maxDataXferSize, 1 << 20);
      assert.equal(client.server.maxDmaMaps, 1024, 'the server advertises the limit its DMA controller enforces');
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
