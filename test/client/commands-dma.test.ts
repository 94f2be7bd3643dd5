/**
 * The client library against our own server: every command, its error paths,
 * batching and chunking (counted through the `trace` hook), server→client DMA,
 * NO_REPLY, pipelining, refused connections and teardown. Numbers (commands,
 * flags, errnos) are spelled out here rather than taken from src/protocol.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { RemoteError, TimeoutError, VfioUserError } from '../../src/errors.js';
import { mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { testDeviceDefinition } from '../support/server-fixture.js';
import { pattern } from '../support/wire-builder.js';

import { Cmd, DMA_RW, E, deferred, isClosed, isRemote, sent, session } from '../support/client-session.js';

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
      // the timeout also bounds the connection's VERSION handshake: 50 ms was missed on a loaded machine
      { def, client: { timeoutMs: 1000 } },
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
