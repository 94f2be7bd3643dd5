/**
 * Container: one guest address space for several device connections, against
 * the sample devices served in-process (two DMA engines and a memory device):
 * map/unmap reach every device, a late device receives the mappings, a
 * refused map leaves nothing behind, dirty pages are merged across the
 * devices' DMA logs and the client's own writes.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Container } from '../../src/client/container.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { InvalidArgumentError, RemoteError, StateError } from '../../src/errors.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { dmaCopy, serveSample, withDevices } from './container-fixture.js';
import { VfioUserClient } from '../../src/client/client.js';
import { silentLogger } from '../../src/log.js';

const MiB = 0x100000n;
const PAGE = 0x1000n;
const DONE = 1;

/** The IOVAs a served device has mapped. */
const mapped = (s: { device: { dma: { regions(): ReadonlyArray<{ addr: bigint; size: bigint }> } } }): string[] =>
  s.device.dma.regions().map((r) => `${r.addr.toString(16)}+${r.size.toString(16)}`);

describe('Container: mappings', () => {
  it('map and unmap reach every attached device; detach unmaps the device', () =>
    assertNoFdLeak(() =>
      withDevices(['dma-engine', 'dma-engine', 'memory'], async (clients, served) => {
        const memory = GuestMemory.create(0x40000);
        const container = new Container();
        try {
          for (const c of clients) await container.attach(c);
          assert.deepEqual(container.devices, clients);
          const low = await container.map(memory, { iova: MiB, size: 0x20000n });
          const high = await container.map(memory, { iova: 4n * MiB, offset: 0x20000n, mode: 'message', writable: false });
          for (const s of served) assert.deepEqual(mapped(s), ['100000+20000', '400000+20000']);
          assert.deepEqual(container.mappings.map((m) => [m.iova, m.offset, m.size, m.mode, m.writable]), [
            [MiB, 0n, 0x20000n, 'fd', true],
            [4n * MiB, 0x20000n, 0x20000n, 'message', false],
          ]);
          await container.unmap(low);
          for (const s of served) assert.deepEqual(mapped(s), ['400000+20000']);
          assert.deepEqual(await container.detach(clients[1] as VfioUserClient), [clients[1]]);
          assert.deepEqual(mapped(served[1] as (typeof served)[number]), []);
          assert.deepEqual(mapped(served[0] as (typeof served)[number]), ['400000+20000']);
          await container.unmap(high);
          await assert.rejects(container.unmap(high), (e) => e instanceof InvalidArgumentError && e.errno === 2);
          await container.close();
          assert.deepEqual(container.devices, []);
        } finally {
          memory.dispose();
        }
      }),
    ));

  it('refuses overlapping, misaligned and duplicate requests with the kernel errnos', () =>
    withDevices(['dma-engine'], async ([client]) => {
      const memory = GuestMemory.create(0x10000);
      const container = new Container();
      try {
        await container.attach(client as VfioUserClient);
        await container.map(memory, { iova: MiB });
        await assert.rejects(container.map(memory, { iova: MiB + 0x8000n, size: 0x1000n }), (e) => e instanceof InvalidArgumentError && e.code === 'EEXIST');
        await assert.rejects(container.map(memory, { iova: MiB * 2n + 1n }), (e) => e instanceof InvalidArgumentError && e.code === 'EINVAL');
        await assert.rejects(container.map(memory, { iova: MiB * 2n, offset: 0x8000n, size: 0x10000n }), (e) => e instanceof InvalidArgumentError && e.code === 'EINVAL');
        await assert.rejects(container.attach(client as VfioUserClient), (e) => e instanceof InvalidArgumentError && /already attached to this container/.test(e.message));
        await assert.rejects(new Container().attach(client as VfioUserClient), (e) => e instanceof InvalidArgumentError && /another container/.test(e.message));
        await assert.rejects(container.attachGroup([]), (e) => e instanceof InvalidArgumentError && e.code === 'EINVAL');
        await assert.rejects(container.takeDirty(), (e) => e instanceof StateError && e.code === 'EINVAL');
        await container.close();
      } finally {
        memory.dispose();
      }
    }));

  it('two containers racing for one connection: exactly one gets it', () =>
    withDevices(['dma-engine'], async ([client]) => {
      const [one, two] = [new Container(), new Container()];
      const results = await Promise.allSettled([one.attach(client as VfioUserClient), two.attach(client as VfioUserClient)]);
      assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
      assert.equal(one.devices.length + two.devices.length, 1);
      const refused = results.find((r) => r.status === 'rejected');
      assert.ok(refused?.status === 'rejected' && refused.reason instanceof InvalidArgumentError && /another container/.test(refused.reason.message));
      await one.close();
      await two.close();
      await two.attach(client as VfioUserClient); // free again once closed
      assert.deepEqual(two.devices, [client]);
      await two.close();
    }));

  it('a device attached later receives the current mappings and can DMA through them', () =>
    withDevices(['memory', 'dma-engine'], async ([early, late], served) => {
      const memory = GuestMemory.create(0x20000);
      const container = new Container();
      try {
        await container.attach(early as VfioUserClient);
        await container.map(memory, { iova: MiB, size: 0x10000n });
        await container.map(memory, { iova: 2n * MiB, offset: 0x10000n, size: 0x10000n });
        assert.deepEqual(mapped(served[1] as (typeof served)[number]), [], 'not attached yet');
        await container.attach(late as VfioUserClient);
        assert.deepEqual(mapped(served[1] as (typeof served)[number]), ['100000+10000', '200000+10000']);
        memory.write(0x1000n, Uint8Array.of(0xde, 0xad, 0xbe, 0xef));
        // Ring in the first mapping, copy into the second.
        assert.equal(await dmaCopy(late as VfioUserClient, memory, MiB, MiB, MiB + 0x1000n, 2n * MiB + 0x2000n, 4), DONE);
        assert.deepEqual([...memory.read(0x12000n, 4)], [0xde, 0xad, 0xbe, 0xef]);
        await container.close();
      } finally {
        memory.dispose();
      }
    }));

  it('a map one device refuses is undone on the others (all or nothing)', () => {
    // The second device accepts one DMA mapping at most.
    const a = serveSample('dma-engine');
    const b = serveSample('dma-engine', { limits: { maxDmaMaps: 1 } });
    return (async () => {
      const memory = GuestMemory.create(0x20000);
      const clients = [await VfioUserClient.connect(a.path, { logger: silentLogger() }), await VfioUserClient.connect(b.path, { logger: silentLogger() })];
      try {
        const container = new Container();
        await container.attachGroup(clients);
        await container.map(memory, { iova: MiB, size: 0x10000n });
        await assert.rejects(container.map(memory, { iova: 2n * MiB, offset: 0x10000n }), (e) => e instanceof RemoteError);
        assert.deepEqual(mapped(a), ['100000+10000'], 'the second mapping was undone on the device that accepted it');
        assert.deepEqual(mapped(b), ['100000+10000']);
        assert.equal(container.mappings.length, 1);
        assert.deepEqual(memory.attachments.map((x) => x.iova), [MiB, MiB]);
        // A device refusing a mapping it would receive on attach is not attached (and keeps nothing).
        const c = serveSample('dma-engine', { limits: { maxDmaMaps: 1 } });
        const third = await VfioUserClient.connect(c.path, { logger: silentLogger() });
        try {
          await container.unmap(container.mappings[0] as (typeof container.mappings)[number]);
          await container.map(memory, { iova: MiB, size: 0x8000n });
          await container.detach(clients[1] as VfioUserClient);
          await container.map(memory, { iova: 2n * MiB, offset: 0x10000n });
          await assert.rejects(container.attach(third), (e) => e instanceof RemoteError);
          assert.deepEqual(mapped(c), []);
          assert.deepEqual(container.devices, [clients[0]]);
        } finally {
          third.close();
          await c.close();
        }
        await container.close();
      } finally {
        for (const c of clients) c.close();
        memory.dispose();
        await a.close();
        await b.close();
      }
    })();
  });
});

describe('Container: connections that go away', () => {
  it('a device whose connection closes leaves the container; the others keep their mappings', () =>
    assertNoFdLeak(() =>
      withDevices(['dma-engine', 'memory'], async ([a, b], served) => {
        const memory = GuestMemory.create(0x10000);
        const container = new Container();
        try {
          await container.attachGroup([a, b] as VfioUserClient[]);
          await container.map(memory, { iova: MiB });
          (b as VfioUserClient).close();
          await (b as VfioUserClient).closed;
          assert.deepEqual(container.devices, [a]);
          assert.deepEqual(memory.attachments.map((x) => x.client), [a], 'its attachment is forgotten');
          await container.map(memory, { iova: 2n * MiB });
          assert.deepEqual(mapped(served[0] as (typeof served)[number]), ['100000+10000', '200000+10000']);
          await assert.rejects(container.detach(b as VfioUserClient), (e) => e instanceof InvalidArgumentError && e.code === 'ENOENT');
          await container.close();
          assert.deepEqual(mapped(served[0] as (typeof served)[number]), [], 'close unmapped everything');
        } finally {
          memory.dispose();
        }
      }),
    ));
});

describe('Container: dirty pages', () => {
  it('merges the DMA logs of every device with the client\'s own writes', () =>
    withDevices(['dma-engine', 'dma-engine', 'memory'], async (clients) => {
      const [a, b] = clients as [VfioUserClient, VfioUserClient];
      const memory = GuestMemory.create(0x40000);
      const container = new Container();
      try {
        await container.attachGroup(clients);
        await container.map(memory, { iova: MiB });
        memory.write(0x5000n, new Uint8Array(64).fill(7)); // before logging: cleared by the start
        await container.startDirtyLogging();
        assert.equal(container.logging, true);
        // Engine A: ring at page 0, copies page 5 to page 10; engine B: ring at page 1, copies to pages 20-21.
        assert.equal(await dmaCopy(a, memory, MiB, MiB, MiB + 5n * PAGE, MiB + 10n * PAGE, 64), DONE);
        assert.equal(await dmaCopy(b, memory, MiB, MiB + PAGE, MiB + 5n * PAGE, MiB + 20n * PAGE + 0xff0n, 64), DONE);
        memory.write(30n * PAGE, Uint8Array.of(1)); // the client's own write
        assert.deepEqual(await container.takeDirty(), [0, 1, 10, 20, 21, 30]);
        assert.deepEqual(await container.takeDirty(memory), [], 'the take cleared everything');
        assert.equal(await dmaCopy(b, memory, MiB, MiB + PAGE, MiB + 5n * PAGE, MiB + 40n * PAGE, 8), DONE);
        const bitmap = await container.takeDirtyBitmap();
        assert.equal(bitmap.length, 8, '64 pages');
        assert.deepEqual([...bitmap], [0b10, 0, 0, 0, 0, 0b1, 0, 0]);
        await container.stopDirtyLogging();
        await assert.rejects(container.takeDirty(), (e) => e instanceof StateError);
        await container.close();
      } finally {
        memory.dispose();
      }
    }));

  it('a logging device whose connection closes counts every page it could write (what it logged is gone with it)', () =>
    withDevices(['dma-engine', 'memory'], async ([a, b]) => {
      const memory = GuestMemory.create(0x20000);
      const container = new Container();
      try {
        await container.attachGroup([a, b] as VfioUserClient[]);
        await container.map(memory, { iova: MiB, size: 0x8000n }); // pages 0-7, writable
        await container.map(memory, { iova: 2n * MiB, offset: 0x10000n, size: 0x4000n, writable: false }); // pages 16-19
        await container.startDirtyLogging();
        assert.deepEqual(await container.takeDirty(), [], 'nothing written yet');
        (b as VfioUserClient).close();
        await (b as VfioUserClient).closed;
        assert.deepEqual(await container.takeDirty(), [0, 1, 2, 3, 4, 5, 6, 7]);
        assert.deepEqual(await container.takeDirty(), []);
        await container.close();
      } finally {
        memory.dispose();
      }
    }));

  it('keeps what a device logged when it leaves or its mapping goes, and logs a device attached while logging', () =>
    withDevices(['dma-engine', 'dma-engine'], async ([a, b]) => {
      const memory = GuestMemory.create(0x40000);
      const container = new Container();
      try {
        await container.attach(a as VfioUserClient);
        const low = await container.map(memory, { iova: MiB, size: 0x20000n });
        await container.map(memory, { iova: 4n * MiB, offset: 0x20000n });
        await container.startDirtyLogging();
        await container.attach(b as VfioUserClient);
        // A writes page 3 of the low mapping; B writes page 0x22 (high mapping).
        assert.equal(await dmaCopy(a as VfioUserClient, memory, MiB, MiB, MiB + 0x1000n, MiB + 3n * PAGE, 16), DONE);
        const highBase = 4n * MiB - 0x20000n; // where the memory's offset 0 would be, for the high mapping
        assert.equal(await dmaCopy(b as VfioUserClient, memory, highBase, 4n * MiB + 0x1000n, 4n * MiB, 4n * MiB + 2n * PAGE, 16), DONE);
        await container.detach(b as VfioUserClient);
        await container.unmap(low);
        assert.deepEqual(await container.takeDirty(), [0, 3, 0x21, 0x22]);
        await container.close();
      } finally {
        memory.dispose();
      }
    }));
});
