/**
 * Interrupts over a real socket against the test device: eventfds installed
 * (in batches when the server takes few fds per message), interrupts seen as
 * events, iterators and waitFor; coalescing bounded queues; loopback trigger;
 * mask/unmask; MSI; disable of the whole index and of a sub-range; teardown
 * when the connection closes — with no fd left open.
 */
import assert from 'node:assert/strict';
import { readlinkSync } from 'node:fs';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import type { ClientOptions, TraceEvent } from '../../src/client/core.js';
import { Interrupts, type InterruptEvent } from '../../src/client/interrupts.js';
import { enableMsi, enableMsix, unmaskMsixVector } from '../../src/client/pci-config.js';
import { ConnectionClosedError, InvalidArgumentError, RemoteError, StateError, TimeoutError } from '../../src/errors.js';
import { Command, IrqIndex } from '../../src/protocol/constants.js';
import type { ServeOptions } from '../../src/server/server.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { serveTestDevice, testDeviceDefinition, type ServedDevice } from '../support/server-fixture.js';

const MSIX = IrqIndex.MSIX;

/** Serves the test device (8 MSI-X, 4 MSI vectors), connects; closes everything and checks for leaked fds. */
async function withDevice(fn: (served: ServedDevice, client: VfioUserClient) => Promise<void>, serve: Omit<ServeOptions, 'path'> = {}, options: ClientOptions = {}): Promise<void> {
  await assertNoFdLeak(async () => {
    const served = serveTestDevice(testDeviceDefinition(), serve);
    let client: VfioUserClient | undefined;
    try {
      client = await VfioUserClient.connect(served.path, options);
      await fn(served, client);
    } finally {
      client?.close();
      await served.close();
    }
  });
}

/** MSI-X on, function mask off, every vector unmasked. */
async function msixOn(client: VfioUserClient): Promise<void> {
  const info = await enableMsix(client);
  for (let v = 0; v < info.tableSize; v++) await unmaskMsixVector(client, v, info);
}

/** Whether `fd` is an open eventfd of this process. */
function fdOpen(fd: number): boolean {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`).includes('eventfd');
  } catch {
    return false;
  }
}

describe('Interrupts', () => {
  it('installs one eventfd per vector and surfaces device interrupts as events, iterators and waitFor', () =>
    withDevice(async (served, client) => {
      const irq = await Interrupts.enable(client, MSIX);
      assert.equal(irq.count, 8);
      assert.equal(irq.fds.length, 8);
      for (let v = 0; v < 8; v++) assert.ok(served.device.irqs.hasEventFd(MSIX, v));
      await msixOn(client);
      const events: InterruptEvent[] = [];
      irq.on('interrupt', (e) => events.push(e));
      const it3 = irq.vector(3);
      const wait = irq.waitFor(3, 2000);
      assert.equal(served.device.interrupt(3), true);
      assert.equal(await wait, 1n);
      assert.deepEqual(await it3.next(), { value: 1n, done: false });
      assert.deepEqual(events, [{ index: MSIX, vector: 3, count: 1n }]);
      assert.equal(irq.total(3), 1n);
      assert.equal(irq.total(0), 0n);
      await it3.return?.();
      await irq.disable();
      for (let v = 0; v < 8; v++) assert.equal(served.device.irqs.hasEventFd(MSIX, v), false);
    }));

  it('sends eventfds in batches of the server max_msg_fds', () => {
    const sets: TraceEvent[] = [];
    const trace = (e: TraceEvent): void => void (e.direction === 'send' && e.header.cmd === Command.DEVICE_SET_IRQS && sets.push(e));
    return withDevice(
      async (served, client) => {
        assert.equal(client.server.maxMsgFds, 3);
        const irq = await Interrupts.enable(client, MSIX);
        assert.deepEqual(sets.map((s) => s.fds), [3, 3, 2]);
        for (let v = 0; v < 8; v++) assert.ok(served.device.irqs.hasEventFd(MSIX, v));
        const fired = irq.waitFor(7, 2000); // armed before the cause
        await irq.trigger(7);
        assert.equal(await fired, 1n);
        await irq.disable();
      },
      { limits: { maxMsgFds: 3 } },
      { trace },
    );
  });

  it('loops back a TRIGGER from the server and yields counts through for-await', () =>
    withDevice(async (_served, client) => {
      const irq = await Interrupts.enable(client, MSIX, { start: 2, vectors: 2 });
      const seen: bigint[] = [];
      const consumer = (async () => {
        for await (const n of irq.vector(3)) {
          seen.push(n);
          if (seen.length === 2) break;
        }
      })();
      const first = irq.waitFor(3, 2000);
      await irq.trigger(3);
      await first;
      await irq.trigger(3);
      await consumer;
      assert.deepEqual(seen, [1n, 1n]);
      assert.throws(() => irq.vector(1), InvalidArgumentError);
      await assert.rejects(irq.trigger(4), InvalidArgumentError);
      await irq.disable();
    }));

  it('bounds an unread iterator queue by coalescing counts', () =>
    withDevice(async (_served, client) => {
      const irq = await Interrupts.enable(client, MSIX, { vectors: 1, queueLimit: 2 });
      const iter = irq.vector(0);
      for (let i = 0; i < 5; i++) {
        const fired = irq.waitFor(0, 2000);
        await irq.trigger(0);
        await fired; // one delivery per trigger
      }
      assert.deepEqual(await iter.next(), { value: 1n, done: false });
      assert.deepEqual(await iter.next(), { value: 4n, done: false });
      const pending = iter.next();
      await irq.disable();
      assert.deepEqual(await pending, { value: undefined, done: true });
      assert.equal(irq.total(0), 5n);
    }));

  it('replays to a new iterator the interrupts nobody took (an iterator created after the doorbell)', () =>
    withDevice(async (served, client) => {
      const irq = await Interrupts.enable(client, MSIX);
      await msixOn(client);
      const events: InterruptEvent[] = [];
      irq.on('interrupt', (e) => events.push(e)); // an observer: it does not consume
      const delivered = new Promise((resolve) => irq.once('interrupt', resolve));
      assert.equal(served.device.interrupt(3), true); // as a write callback would, before the caller iterates
      await delivered;
      assert.equal(irq.backlog(3), 1n);
      const late = irq.vector(3);
      assert.equal(irq.backlog(3), 0n, 'the new iterator took the backlog');
      assert.deepEqual(await late.next(), { value: 1n, done: false });
      const second = irq.vector(3); // created after the backlog was taken: sees only what comes next
      const pending = second.next();
      const fired = irq.waitFor(3, 2000);
      assert.equal(served.device.interrupt(3), true);
      assert.equal(await fired, 1n);
      assert.deepEqual(await pending, { value: 1n, done: false });
      assert.deepEqual(await late.next(), { value: 1n, done: false });
      assert.equal(irq.backlog(3), 0n);
      assert.equal(events.length, 2);
      await irq.disable();
    }));

  it('keeps the backlog as one count per vector, and never replays what a waiter or iterator took', () =>
    withDevice(async (_served, client) => {
      const irq = await Interrupts.enable(client, MSIX, { vectors: 2 });
      let seen = 0n;
      irq.on('interrupt', (e) => void (seen += e.count));
      for (let i = 0; i < 20; i++) await irq.trigger(1);
      while (seen < 20n) await new Promise((resolve) => irq.once('interrupt', resolve));
      assert.equal(irq.backlog(1), 20n);
      assert.equal(irq.backlog(0), 0n, 'other vectors untouched');
      await assert.rejects(irq.waitFor(1, 30), TimeoutError, 'a waiter waits for the next interrupt: it does not take the backlog');
      assert.equal(irq.backlog(1), 20n);
      const iter = irq.vector(1);
      assert.deepEqual(await iter.next(), { value: 20n, done: false }, 'the whole backlog, as one count');
      await iter.return?.();
      const fired = irq.waitFor(1, 2000); // ...and what a waiter takes is not replayed
      await irq.trigger(1);
      assert.equal(await fired, 1n);
      assert.equal(irq.backlog(1), 0n);
      const next = irq.vector(1).next();
      await irq.trigger(1);
      assert.deepEqual(await next, { value: 1n, done: false });
      assert.equal(irq.total(1), 22n);
      await irq.disable();
    }));

  it('times out waitFor, and rejects waiters and ends iterators on disable', () =>
    withDevice(async (_served, client) => {
      const irq = await Interrupts.enable(client, MSIX, { vectors: 2 });
      await assert.rejects(irq.waitFor(1, 20), TimeoutError);
      const waiting = irq.waitFor(1, 0);
      const iter = irq.vector(0);
      const fds = [...irq.fds];
      assert.ok(fds.every(fdOpen));
      let closed = 0;
      irq.on('close', () => closed++);
      await Promise.all([irq.disable(), irq.disable()]);
      await assert.rejects(waiting, StateError);
      assert.deepEqual(await iter.next(), { value: undefined, done: true });
      assert.equal(closed, 1);
      assert.deepEqual(irq.fds, []);
      assert.ok(!fds.some(fdOpen), 'eventfds closed');
      assert.throws(() => irq.vector(0), StateError);
      await irq.disable();
    }));

  it('disables a sub-range with EVENTFD and no fds, leaving other vectors installed', () =>
    withDevice(async (served, client) => {
      const low = await Interrupts.enable(client, MSIX, { vectors: 2 });
      const high = await Interrupts.enable(client, MSIX, { start: 4, vectors: 3 });
      await high.disable();
      assert.deepEqual([0, 1, 4, 5, 6].map((v) => served.device.irqs.hasEventFd(MSIX, v)), [true, true, false, false, false]);
      const fired = low.waitFor(1, 2000);
      await low.trigger(1);
      assert.equal(await fired, 1n);
      await low.disable();
      assert.equal(served.device.irqs.hasEventFd(MSIX, 0), false);
    }));

  it('masks and unmasks a vector: a masked interrupt stays pending and fires on unmask', () =>
    withDevice(async (served, client) => {
      const irq = await Interrupts.enable(client, MSIX);
      await msixOn(client);
      await irq.mask(5);
      assert.equal(served.device.interrupt(5), false);
      await assert.rejects(irq.waitFor(5, 30), TimeoutError);
      const fired = irq.waitFor(5, 2000);
      await irq.unmask(5);
      assert.equal(await fired, 1n);
      await irq.disable();
    }));

  it('delivers MSI after enableMsi', () =>
    withDevice(async (served, client) => {
      const irq = await Interrupts.enable(client, IrqIndex.MSI);
      assert.equal(irq.count, 4);
      await enableMsi(client, 4);
      const fired = irq.waitFor(2, 2000);
      assert.equal(served.device.interrupt(2), true);
      assert.equal(await fired, 1n);
      await irq.disable();
    }));

  it('tears everything down when the connection closes', () =>
    withDevice(async (_served, client) => {
      const irq = await Interrupts.enable(client, MSIX, { vectors: 3 });
      const fds = [...irq.fds];
      const waiting = irq.waitFor(0, 0);
      const iter = irq.vector(1);
      const closedWith = new Promise<Error | undefined>((resolve) => irq.once('close', resolve));
      client.close();
      await assert.rejects(waiting, ConnectionClosedError);
      assert.ok((await closedWith) instanceof ConnectionClosedError);
      assert.deepEqual(await iter.next(), { value: undefined, done: true });
      assert.equal(irq.closed, true);
      assert.ok(!fds.some(fdOpen));
      await irq.disable(); // a no-op now
    }));

  it('refuses a range outside the index, leaving nothing open', () =>
    withDevice(async (_served, client) => {
      await assert.rejects(Interrupts.enable(client, MSIX, { start: 6, vectors: 3 }), InvalidArgumentError);
      await assert.rejects(Interrupts.enable(client, MSIX, { vectors: 0 }), InvalidArgumentError);
      await assert.rejects(Interrupts.enable(client, 9), RemoteError); // DEVICE_GET_IRQ_INFO refuses the index
    }));
});
