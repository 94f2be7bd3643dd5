/**
 * The fault plugin's hooks called directly with hand-made messages and a fake
 * session context: which verdict each fault gives, where it applies (request or
 * reply, client or upstream commands), p/after/count, migration-state tracking,
 * stacking of several rules, seed reproducibility and logging.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createFaultPlugin, parseFaultSpec, type FaultPlugin } from '../../src/mediator/fault.js';
import type { MediatedMessage, MediatorSessionContext, Verdict } from '../../src/mediator/types.js';
import type { Logger } from '../../src/log.js';

const Cmd = { VERSION: 1, DMA_MAP: 2, DEVICE_RESET: 13, REGION_READ: 9, REGION_WRITE: 10, DMA_READ: 11, DMA_WRITE: 12, DEVICE_FEATURE: 16 } as const;
const REPLY = 0x1;
const ERROR = 0x20;
const State = { STOP: 1, RUNNING: 2, STOP_COPY: 3 } as const;

function msg(cmd: number, payload: Uint8Array = new Uint8Array(0), flags = 0, msgId = 7): MediatedMessage {
  return { header: { msgId, cmd, msgSize: 16 + payload.length, flags, errorNo: 0 }, payload, fds: [] };
}

function reply(request: MediatedMessage, payload: Uint8Array = new Uint8Array(0), errorNo = 0): MediatedMessage {
  return { header: { ...request.header, flags: REPLY | (errorNo ? ERROR : 0), errorNo, msgSize: 16 + payload.length }, payload, fds: [] };
}

function u32s(...v: number[]): Uint8Array {
  const b = new Uint8Array(v.length * 4);
  const dv = new DataView(b.buffer);
  v.forEach((x, i) => dv.setUint32(i * 4, x, true));
  return b;
}

/** DEVICE_FEATURE MIG_DEVICE_STATE SET request. */
const setState = (s: number): MediatedMessage => msg(Cmd.DEVICE_FEATURE, u32s(16, 2 | (1 << 17), s, 0));

interface FakeCtx extends MediatorSessionContext {
  debug: Record<string, unknown>[];
}

function fakeCtx(id = 1): FakeCtx {
  const debug: Record<string, unknown>[] = [];
  const log: Logger = { error() {}, warn() {}, info() {}, debug: (o: object) => void debug.push(o as Record<string, unknown>), child: () => log };
  return {
    id,
    client: undefined,
    log,
    debug,
    state: new Map(),
    version: undefined,
    upstreamRequest: () => Promise.reject(new Error('not in this test')),
    clientRequest: () => Promise.reject(new Error('not in this test')),
    close() {},
  };
}

function plugin(specs: string[], seed = 1): FaultPlugin {
  return createFaultPlugin(specs.map(parseFaultSpec), { seed });
}

/** Runs a client command through request and reply hooks; returns both verdicts. */
function roundTrip(p: FaultPlugin, ctx: MediatorSessionContext, request: MediatedMessage, answer = reply(request)): [Verdict | Promise<Verdict>, Verdict | Promise<Verdict> | 'not sent'] {
  const onRequest = p.onClientCommand!(request, ctx);
  if (onRequest !== undefined) return [onRequest, 'not sent'];
  return [onRequest, p.onUpstreamReply!(answer, request, ctx)];
}

describe('fault plugin: verdicts', () => {
  it('error, drop and disconnect on a request; nothing for other commands', () => {
    const ctx = fakeCtx();
    assert.deepEqual(plugin(['REGION_READ:error=EIO']).onClientCommand!(msg(Cmd.REGION_READ), ctx), { error: 5 });
    assert.deepEqual(plugin(['REGION_READ:drop']).onClientCommand!(msg(Cmd.REGION_READ), ctx), { drop: true });
    assert.deepEqual(plugin(['REGION_READ:disconnect']).onClientCommand!(msg(Cmd.REGION_READ), ctx), { disconnect: true });
    assert.equal(plugin(['REGION_READ:error=EIO']).onClientCommand!(msg(Cmd.REGION_WRITE), ctx), undefined);
  });

  it('on=reply acts on the reply only, on=request on the request only', () => {
    const ctx = fakeCtx();
    const p = plugin(['REGION_READ:error=EAGAIN:on=reply']);
    const request = msg(Cmd.REGION_READ);
    assert.equal(p.onClientCommand!(request, ctx), undefined);
    assert.deepEqual(p.onUpstreamReply!(reply(request), request, ctx), { error: 11 });
    const q = plugin(['REGION_READ:error=EAGAIN']);
    assert.equal(q.onUpstreamReply!(reply(request), request, ctx), undefined);
  });

  it('* matches every command but VERSION, and the upstream commands too', () => {
    const ctx = fakeCtx();
    const p = plugin(['*:drop']);
    assert.equal(p.onClientCommand!(msg(Cmd.VERSION), ctx), undefined);
    for (const cmd of [Cmd.DMA_MAP, Cmd.REGION_READ, Cmd.DEVICE_FEATURE]) assert.deepEqual(p.onClientCommand!(msg(cmd), ctx), { drop: true });
    assert.deepEqual(p.onUpstreamCommand!(msg(Cmd.DMA_WRITE), ctx), { drop: true });
  });

  it('upstream commands: DMA_READ request before the client, DMA_WRITE reply before the device', () => {
    const ctx = fakeCtx();
    const p = plugin(['DMA_READ:error=EFAULT', 'DMA_WRITE:error=EIO:on=reply']);
    assert.deepEqual(p.onUpstreamCommand!(msg(Cmd.DMA_READ), ctx), { error: 14 });
    const write = msg(Cmd.DMA_WRITE);
    assert.equal(p.onUpstreamCommand!(write, ctx), undefined);
    assert.deepEqual(p.onClientReply!(reply(write), write, ctx), { error: 5 });
    // A client command of the same number is not the upstream's: REGION_READ rules never see DMA hooks and vice versa.
    assert.equal(plugin(['REGION_READ:drop']).onUpstreamCommand!(msg(Cmd.DMA_READ), ctx), undefined);
  });

  it('corrupt flips exactly N distinct payload bytes of a copy; the header and the original are untouched', () => {
    const ctx = fakeCtx();
    const payload = new Uint8Array(64).fill(0xaa);
    const request = msg(Cmd.REGION_READ, payload);
    for (const n of [1, 3, 64, 100]) {
      const v = plugin([`REGION_READ:corrupt=${n}`], n).onClientCommand!(request, ctx) as { forward: { payload: Uint8Array } };
      const changed = [...v.forward.payload].filter((b, i) => b !== payload[i]).length;
      assert.equal(changed, Math.min(n, 64), `corrupt=${n}`);
      assert.equal(v.forward.payload.length, 64);
    }
    assert.ok(payload.every((b) => b === 0xaa), 'the received payload is never modified');
  });

  it('corrupt=1M of a 1 MiB payload changes every byte (a shuffle, not a slow collection of distinct positions)', () => {
    const payload = new Uint8Array(1 << 20);
    const v = plugin(['REGION_WRITE:corrupt=1048576']).onClientCommand!(msg(Cmd.REGION_WRITE, payload), fakeCtx()) as { forward: { payload: Uint8Array } };
    assert.ok(v.forward.payload.every((b) => b !== 0));
  });

  it('corrupt of an empty payload is not an injection (the header is not corrupted)', () => {
    const ctx = fakeCtx();
    const p = plugin(['DEVICE_RESET:corrupt']);
    assert.equal(p.onClientCommand!(msg(Cmd.DEVICE_RESET), ctx), undefined);
    assert.deepEqual(p.stats(), [{ rule: 'DEVICE_RESET:corrupt', matched: 1, injected: 0 }]);
  });
});

describe('fault plugin: delay', () => {
  it('a delayed verdict is a promise that resolves no earlier than the delay, with the other faults of the message', async () => {
    const ctx = fakeCtx();
    const p = plugin(['REGION_READ:delay=60ms', 'REGION_READ:error=EIO']);
    const started = performance.now();
    const v = p.onClientCommand!(msg(Cmd.REGION_READ), ctx);
    assert.ok(v instanceof Promise);
    assert.deepEqual(await v, { error: 5 });
    assert.ok(performance.now() - started >= 59, `waited ${performance.now() - started} ms`);
  });

  it('delays add up; a plain delay forwards', async () => {
    const ctx = fakeCtx();
    const p = plugin(['REGION_READ:delay=30ms', 'REGION_READ:delay=30ms:on=request']);
    const started = performance.now();
    assert.equal(await p.onClientCommand!(msg(Cmd.REGION_READ), ctx), undefined);
    assert.ok(performance.now() - started >= 59);
  });

  it('session end releases a pending delay as a drop (no timer left behind)', async () => {
    const ctx = fakeCtx();
    const p = plugin(['REGION_READ:delay=1h']);
    const v = p.onClientCommand!(msg(Cmd.REGION_READ), ctx);
    p.onSessionEnd!(ctx, 'test');
    assert.deepEqual(await v, { drop: true });
  });
});

describe('fault plugin: p, after, count', () => {
  it('after=2:count=3 injects on matches 3, 4, 5 only; stats count matches and injections', () => {
    const ctx = fakeCtx();
    const p = plugin(['REGION_READ:error=EIO:after=2:count=3']);
    const got = Array.from({ length: 8 }, () => p.onClientCommand!(msg(Cmd.REGION_READ), ctx));
    assert.deepEqual(got, [undefined, undefined, { error: 5 }, { error: 5 }, { error: 5 }, undefined, undefined, undefined]);
    p.onClientCommand!(msg(Cmd.REGION_WRITE), ctx);
    assert.deepEqual(p.stats(), [{ rule: 'REGION_READ:error=EIO:after=2:count=3', matched: 8, injected: 3 }]);
  });

  it('counters are the plugin’s, across sessions', () => {
    const p = plugin(['REGION_READ:drop:count=1']);
    assert.deepEqual(p.onClientCommand!(msg(Cmd.REGION_READ), fakeCtx(1)), { drop: true });
    assert.equal(p.onClientCommand!(msg(Cmd.REGION_READ), fakeCtx(2)), undefined);
  });

  it('p=0 never injects, p=1 always; p=0.3 injects about 30% of 4000', () => {
    const ctx = fakeCtx();
    const count = (spec: string): number => {
      const p = plugin([spec], 42);
      for (let i = 0; i < 4000; i++) p.onClientCommand!(msg(Cmd.REGION_READ), ctx);
      return p.stats()[0]!.injected;
    };
    assert.equal(count('REGION_READ:drop:p=0'), 0);
    assert.equal(count('REGION_READ:drop:p=1'), 4000);
    const n = count('REGION_READ:drop:p=0.3');
    assert.ok(n > 1000 && n < 1400, `${n} of 4000`); // binomial sd ≈ 29: ±7 sd
  });

  it('the same seed gives the same faults; another seed different ones; each rule has its own stream', () => {
    const pattern = (specs: string[], seed: number): string => {
      const p = plugin(specs, seed);
      const ctx = fakeCtx();
      return Array.from({ length: 200 }, () => (p.onClientCommand!(msg(Cmd.REGION_READ), ctx) ? 'x' : '.')).join('');
    };
    const a = pattern(['REGION_READ:drop:p=0.5'], 7);
    assert.equal(pattern(['REGION_READ:drop:p=0.5'], 7), a);
    assert.notEqual(pattern(['REGION_READ:drop:p=0.5'], 8), a);
    // A rule added after it (for another command) does not change its draws.
    assert.equal(pattern(['REGION_READ:drop:p=0.5', 'DMA_MAP:error=EIO:p=0.5'], 7), a);
    const corrupted = (seed: number): number[] => {
      const v = plugin(['REGION_READ:corrupt=4'], seed).onClientCommand!(msg(Cmd.REGION_READ, new Uint8Array(256)), fakeCtx()) as { forward: { payload: Uint8Array } };
      return [...v.forward.payload];
    };
    assert.deepEqual(corrupted(3), corrupted(3));
    assert.notDeepEqual(corrupted(3), corrupted(4));
  });

  it('a random seed when none is given, exposed to replay the run', () => {
    const p = createFaultPlugin([parseFaultSpec('*:drop')]);
    assert.ok(Number.isInteger(p.seed) && p.seed >= 0 && p.seed < 2 ** 32);
    assert.throws(() => createFaultPlugin([], { seed: 1.5 }), /seed/);
  });
});

describe('fault plugin: migration state', () => {
  it('state=STOP_COPY: only after a successful SET into STOP_COPY, until the next successful SET or a reset', () => {
    const ctx = fakeCtx();
    const p = plugin(['REGION_READ:error=EIO:state=STOP_COPY']);
    const read = (): Verdict | Promise<Verdict> => p.onClientCommand!(msg(Cmd.REGION_READ), ctx);
    assert.equal(read(), undefined); // RUNNING at first
    const toStop = setState(State.STOP_COPY);
    roundTrip(p, ctx, toStop, reply(toStop, new Uint8Array(), 22)); // refused: still RUNNING
    assert.equal(read(), undefined);
    roundTrip(p, ctx, toStop, reply(toStop, u32s(16, 2 | (1 << 17), State.STOP_COPY, 0)));
    assert.deepEqual(read(), { error: 5 });
    const toRunning = setState(State.RUNNING);
    roundTrip(p, ctx, toRunning, reply(toRunning, u32s(16, 2 | (1 << 17), State.RUNNING, 0)));
    assert.equal(read(), undefined);
    roundTrip(p, ctx, toStop, reply(toStop, u32s(16, 2 | (1 << 17), State.STOP_COPY, 0)));
    const reset = msg(Cmd.DEVICE_RESET);
    roundTrip(p, ctx, reset);
    assert.equal(read(), undefined);
  });

  it('a GET reply reports the state; the state is per session', () => {
    const p = plugin(['REGION_READ:drop:state=STOP']);
    const [a, b] = [fakeCtx(1), fakeCtx(2)];
    const get = msg(Cmd.DEVICE_FEATURE, u32s(16, 2 | (1 << 16)));
    p.onUpstreamReply!(reply(get, u32s(16, 2 | (1 << 16), State.STOP, 0)), get, a);
    assert.deepEqual(p.onClientCommand!(msg(Cmd.REGION_READ), a), { drop: true });
    assert.equal(p.onClientCommand!(msg(Cmd.REGION_READ), b), undefined);
  });

  it('a SET request is judged in the old state, its reply in the new one', () => {
    const ctx = fakeCtx();
    const p = plugin(['DEVICE_FEATURE:error=EIO:on=reply:state=STOP_COPY', 'DEVICE_FEATURE:delay=0:state=STOP_COPY']);
    const toStop = setState(State.STOP_COPY);
    const [onRequest, onReply] = roundTrip(p, ctx, toStop, reply(toStop, u32s(16, 2 | (1 << 17), State.STOP_COPY, 0)));
    assert.equal(onRequest, undefined);
    assert.deepEqual(onReply, { error: 5 });
    assert.deepEqual(p.stats().map((s) => s.matched), [1, 0]);
  });
});

describe('fault plugin: several rules and logging', () => {
  it('the first terminal fault wins; later rules do not see the message; corrupt + delay stack', async () => {
    const ctx = fakeCtx();
    const p = plugin(['REGION_READ:drop', 'REGION_READ:error=EIO']);
    assert.deepEqual(p.onClientCommand!(msg(Cmd.REGION_READ), ctx), { drop: true });
    assert.deepEqual(p.stats().map((s) => [s.matched, s.injected]), [[1, 1], [0, 0]]);
    const q = plugin(['REGION_READ:corrupt=2', 'REGION_READ:delay=1ms']);
    const v = (await q.onClientCommand!(msg(Cmd.REGION_READ, new Uint8Array(8)), ctx)) as { forward: { payload: Uint8Array } };
    assert.equal(v.forward.payload.filter((b) => b !== 0).length, 2);
  });

  it('each injection is logged at debug with rule, command, msgId, session', () => {
    const ctx = fakeCtx(3);
    plugin(['REGION_READ:error=EIO']).onClientCommand!(msg(Cmd.REGION_READ, new Uint8Array(), 0, 0x1234), ctx);
    assert.equal(ctx.debug.length, 1);
    assert.deepEqual(
      { ...ctx.debug[0] },
      { rule: 'REGION_READ:error=EIO', command: 'REGION_READ', msgId: 0x1234, session: 3, phase: 'request', fault: 'error' },
    );
    const logged: object[] = [];
    const log: Logger = { error() {}, warn() {}, info() {}, debug: (o) => void logged.push(o), child: () => log };
    createFaultPlugin([parseFaultSpec('REGION_READ:drop')], { seed: 1, log }).onClientCommand!(msg(Cmd.REGION_READ), ctx);
    assert.equal(logged.length, 1, 'o.log replaces the session logger');
    assert.equal(ctx.debug.length, 1);
  });
});
