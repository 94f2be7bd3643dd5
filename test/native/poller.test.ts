import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { memfdCreate, native } from '../../src/native/addon.js';
import type { NativePoller } from '../../src/native/types.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { runChild, withSocketPair } from './util.js';

const { UV_READABLE, UV_WRITABLE, UV_DISCONNECT } = native.constants;

type Event = [status: number, events: number];

/** A poller that records its events; `next()` resolves with the next one. */
function recorder(fd: number, onEvent?: (poller: NativePoller, event: Event) => void) {
  const events: Event[] = [];
  let wake: (() => void) | undefined;
  const poller: NativePoller = new native.Poller(fd, (status, mask) => {
    events.push([status, mask]);
    onEvent?.(poller, [status, mask]);
    wake?.();
  });
  const next = async (): Promise<Event> => {
    const count = events.length;
    while (events.length === count) await new Promise<void>((resolve) => (wake = resolve));
    return events[count] as Event;
  };
  return { poller, events, next };
}

describe('Poller', () => {
  it('reports readability with (0, UV_READABLE)', () =>
    withSocketPair(async (a, b) => {
      const { poller, next } = recorder(a);
      poller.start(UV_READABLE);
      native.write(b, new Uint8Array([1]));
      assert.deepEqual(await next(), [0, UV_READABLE]);
      poller.close();
    }));

  it('reports UV_DISCONNECT when the peer closes', () =>
    withSocketPair(async (a, b) => {
      const { poller, next } = recorder(a);
      poller.start(UV_READABLE | UV_DISCONNECT);
      native.shutdown(b, 2);
      const [status, events] = await next();
      assert.equal(status, 0);
      assert.equal(events & UV_DISCONNECT, UV_DISCONNECT);
      poller.close();
    }));

  it('start/stop are idempotent; close is idempotent and final', () =>
    withSocketPair(async (a) => {
      const { poller, events } = recorder(a);
      poller.stop();
      poller.start(UV_WRITABLE);
      poller.start(UV_WRITABLE);
      poller.stop();
      poller.stop();
      await sleep(20);
      assert.equal(events.length, 0, 'no events while stopped');
      poller.close();
      poller.close();
      assert.throws(() => poller.start(UV_READABLE), { name: 'Error', message: /closed/ });
      assert.throws(() => poller.stop(), { name: 'Error', message: /closed/ });
    }));

  it('start(0) stops', () =>
    withSocketPair(async (a) => {
      const { poller, events } = recorder(a);
      poller.start(UV_WRITABLE);
      poller.start(0);
      await sleep(20);
      assert.equal(events.length, 0);
      poller.close();
    }));

  it('can close itself from inside the callback', () =>
    withSocketPair(async (a, b) => {
      const { poller, events, next } = recorder(a, (self) => self.close());
      poller.start(UV_READABLE);
      native.write(b, new Uint8Array([1]));
      await next();
      native.write(b, new Uint8Array([2]));
      await sleep(20);
      assert.equal(events.length, 1);
      assert.throws(() => poller.start(UV_READABLE), /closed/);
    }));

  it('can restart with other events, and stop, from inside the callback', () =>
    withSocketPair(async (a, b) => {
      const { poller, next } = recorder(a, (self, [, mask]) => {
        if (mask & UV_READABLE) self.start(UV_WRITABLE);
        else self.stop();
      });
      poller.start(UV_READABLE);
      native.write(b, new Uint8Array([1]));
      assert.deepEqual(await next(), [0, UV_READABLE]);
      assert.deepEqual(await next(), [0, UV_WRITABLE]);
      poller.start(UV_WRITABLE);
      assert.deepEqual(await next(), [0, UV_WRITABLE]);
      poller.close();
    }));

  it('drains promise jobs right after the callback (napi_make_callback)', () =>
    withSocketPair(async (a, b) => {
      const order: string[] = [];
      const done = new Promise<void>((resolve) => {
        const poller = new native.Poller(a, () => {
          poller.close();
          order.push('callback');
          setImmediate(() => {
            order.push('immediate');
            resolve();
          });
          process.nextTick(() => order.push('tick'));
          void Promise.resolve().then(() => order.push('promise'));
        });
        poller.start(UV_READABLE);
      });
      native.write(b, new Uint8Array([1]));
      await done;
      assert.deepEqual(order, ['callback', 'tick', 'promise', 'immediate']);
    }));

  it('refuses a second started poller on one fd (libuv: EEXIST)', () =>
    withSocketPair(async (a) => {
      const first = new native.Poller(a, () => undefined);
      first.start(UV_READABLE);
      assert.throws(() => new native.Poller(a, () => undefined), { errno: 17, syscall: 'uv_poll_init' });
      first.close();
      new native.Poller(a, () => undefined).close();
    }));

  it('refuses an fd epoll cannot watch (a regular file: EPERM)', () =>
    assertNoFdLeak(() => {
      const fd = memfdCreate('not-pollable', 0);
      try {
        assert.throws(() => new native.Poller(fd, () => undefined), {
          message: 'uv_poll_init: Operation not permitted',
          errno: 1,
          syscall: 'uv_poll_init',
        });
      } finally {
        native.close(fd);
      }
    }));

  it('throws TypeError for bad arguments and a bad `this`', () =>
    withSocketPair((a) => {
      const Poller = native.Poller as unknown as new (...args: unknown[]) => NativePoller;
      assert.throws(() => new Poller(a), TypeError);
      assert.throws(() => new Poller('1', () => undefined), TypeError);
      assert.throws(() => new Poller(a, 'callback'), TypeError);
      assert.throws(() => (native.Poller as unknown as (...args: unknown[]) => void)(a, () => 0), TypeError);
      const poller = new Poller(a, () => undefined);
      assert.throws(() => poller.start(8 << 4), TypeError);
      assert.throws(() => (poller.start as (events?: unknown) => void)(), TypeError);
      const proto = Object.getPrototypeOf(poller) as NativePoller;
      assert.throws(() => proto.start.call({}, UV_READABLE), TypeError);
      assert.throws(() => proto.close.call(Object.create(proto)), TypeError);
      poller.close();
    }));

  it('a throwing callback kills an unprepared process with the error', async () => {
    const result = await runChild('poll-child.js', ['throw']);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /Error: boom from the poll callback/);
    assert.equal(result.stdout, '');
  });

  it("a throwing callback reaches 'uncaughtException' and nothing is poisoned", async () => {
    const result = await runChild('poll-child.js', ['handled']);
    assert.equal(result.stderr, '');
    assert.equal(result.code, 0);
    assert.deepEqual(JSON.parse(result.stdout), { seen: ['first call throws'], calls: 2 });
  });

  it('lets GC collect a stopped poller, not a started one (child with --expose-gc)', async () => {
    const result = await runChild('gc-child.js', ['poller'], { nodeArgs: ['--expose-gc'] });
    assert.equal(result.stderr, '');
    assert.equal(result.code, 0);
    assert.deepEqual(JSON.parse(result.stdout), { finalized: 2 });
  });
});
