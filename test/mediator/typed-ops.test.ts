/**
 * The typed layer's hooks that talk to the upstream or own fds, with a fake
 * session context: GET_REGION_INFO rewritten (sparse areas, capabilities, the
 * fd, the short form for a small argsz), interposed interrupts on real
 * eventfds, and the upstream-ops helpers (splitting to max_data_xfer_size, the
 * region-info argsz retry, replies that do not answer, fds released).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { definePlugin, interposeInterrupts, releaseInterposedInterrupts, sparseAreasOf, subtractRange, withCap, withoutCap, withSparseAreas } from '../../src/mediator/typed.js';
import {
  sessionMaxTransfer,
  upstreamRegionInfo,
  upstreamRegionRead,
  upstreamRegionWrite,
  upstreamDmaUnmap,
  upstreamMigState,
  clientDmaRead,
} from '../../src/mediator/upstream-ops.js';
import { Command, IrqSetFlags, RegionInfoFlags, SPARSE_MMAP_CAP_VERSION } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import {
  decodeRegionInfo,
  decodeRegionInfoRequest,
  decodeRegionReadRequest,
  decodeRegionWriteRequest,
  encodeDeviceFeature,
  encodeDmaAccessWithData,
  encodeDmaUnmapReply,
  encodeIrqSet,
  encodeMigDeviceState,
  encodeRegionAccess,
  encodeRegionAccessWithData,
  encodeRegionInfo,
  encodeRegionInfoRequest,
  type RegionInfo,
} from '../../src/protocol/index.js';
import { createEventFd, memfdCreate, native } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { ProtocolError, RemoteError, StateError } from '../../src/errors.js';
import type { Verdict } from '../../src/mediator/types.js';
import { cmdMsg, fakeCtx, onCommand, replyPayload, type FakeUpstream } from './typed-support.js';

const BAR: RegionInfo = {
  argsz: 0,
  flags: RegionInfoFlags.READ | RegionInfoFlags.WRITE | RegionInfoFlags.MMAP | RegionInfoFlags.CAPS,
  index: 0,
  capOffset: 32,
  size: 0x4000n,
  offset: 0n,
  caps: [{ kind: 'sparse-mmap', version: SPARSE_MMAP_CAP_VERSION, areas: [{ offset: 0n, size: 0x4000n }] }],
};

/** An upstream that answers GET_REGION_INFO with BAR (short form below its argsz) and a fresh memfd. */
function regionUpstream(opened: number[]): FakeUpstream {
  return (req) => {
    if (req.cmd !== Command.DEVICE_GET_REGION_INFO) return { errno: Errno.EINVAL };
    const { argsz } = decodeRegionInfoRequest(req.payload);
    const full = encodeRegionInfo({ ...BAR, argsz: 64 });
    if (argsz < full.length) return { payload: encodeRegionInfo({ ...BAR, argsz: full.length, flags: BAR.flags & ~RegionInfoFlags.CAPS, caps: [] }) };
    const fd = memfdCreate('typed-test-bar', 0x4000);
    opened.push(fd);
    return { payload: full, fds: [fd] };
  };
}

function isOpen(fd: number): boolean {
  const copy = native.dup(fd);
  if (copy < 0) return false;
  native.close(copy);
  return true;
}

describe('region info rewriting', () => {
  it('rewrites the sparse areas (a trapped page taken out) and hands the client the same fd', async () => {
    const opened: number[] = [];
    await assertNoFdLeak(async () => {
      const p = definePlugin({ name: 'trap-page', regionInfo: (e) => (e.index === 0 ? { reply: { info: withSparseAreas(e.info, subtractRange(sparseAreasOf(e.info), 0x1000n, 0x1000n)) } } : undefined) });
      const ctx = fakeCtx({ upstream: regionUpstream(opened) });
      const v = await onCommand(p, cmdMsg(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 256, index: 0 })), ctx);
      const info = decodeRegionInfo(replyPayload(v));
      assert.deepEqual(sparseAreasOf(info), [{ offset: 0n, size: 0x1000n }, { offset: 0x2000n, size: 0x2000n }]);
      assert.equal(info.argsz, 32 + 16 + 32);
      assert.ok(info.flags & RegionInfoFlags.CAPS && info.flags & RegionInfoFlags.MMAP);
      assert.deepEqual((v as { reply: { fds: number[] } }).reply.fds, [opened[0]]);
      assert.ok(decodeRegionInfoRequest(ctx.sent[0]?.payload as Uint8Array).argsz >= 4096, 'asked with room for every capability');
      await sleep(20); // the layer closes its copy after the core took its own
      assert.equal(isOpen(opened[0] as number), false);
    });
  });

  it('answers a client whose argsz is too small with the short form (argsz needed, no caps, no fd)', async () => {
    const opened: number[] = [];
    await assertNoFdLeak(async () => {
      const p = definePlugin({ name: 'cap', regionInfo: (e) => ({ reply: { info: withCap(e.info, { kind: 'type', version: 1, type: 0x8086, subtype: 1 }) } }) });
      const v = await onCommand(p, cmdMsg(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 32, index: 0 })), fakeCtx({ upstream: regionUpstream(opened) }));
      const payload = replyPayload(v);
      assert.equal(payload.length, 32);
      const info = decodeRegionInfo(payload);
      assert.equal(info.argsz, 32 + 32 + 16);
      assert.equal(info.flags & RegionInfoFlags.CAPS, 0);
      assert.deepEqual((v as { reply: { fds: number[] } }).reply.fds, []);
      await sleep(20);
    });
  });

  it('drops the fd and the mmap when asked; a plain forward lets the client\'s own request through', async () => {
    const opened: number[] = [];
    await assertNoFdLeak(async () => {
      const p = definePlugin({ name: 'no-mmap', regionInfo: (e) => (e.index === 0 ? { reply: { info: withoutCap(withSparseAreas(e.info, []), 1), fd: null } } : undefined) });
      const ctx = fakeCtx({ upstream: regionUpstream(opened) });
      const v = await onCommand(p, cmdMsg(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 256, index: 0 })), ctx);
      const info = decodeRegionInfo(replyPayload(v));
      assert.equal(info.flags & (RegionInfoFlags.MMAP | RegionInfoFlags.CAPS), 0);
      assert.equal(info.caps.length, 0);
      assert.deepEqual((v as { reply: { fds: number[] } }).reply.fds, []);
      const q = definePlugin({ name: 'observe', regionInfo: () => undefined });
      assert.equal(await onCommand(q, cmdMsg(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 256, index: 0 })), fakeCtx({ upstream: regionUpstream(opened) })), undefined);
      await sleep(20);
    });
  });

  it('passes the upstream\'s refusal on as its errno (a rejection the core turns into an error reply)', async () => {
    const p = definePlugin({ name: 'x', regionInfo: () => undefined });
    await assert.rejects(Promise.resolve(onCommand(p, cmdMsg(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 256, index: 42 })), fakeCtx({ upstream: () => ({ errno: Errno.EINVAL }) }))), (e: unknown) => e instanceof RemoteError && e.errno === Errno.EINVAL);
  });
});

describe('interposed interrupts', () => {
  it('counts each signal and then signals the client\'s eventfd; released at session end without leaks', async () => {
    await assertNoFdLeak(async () => {
      const signals: { index: number; vector: number; count: bigint }[] = [];
      const p = definePlugin({ name: 'count', setIrqs: (e, ctx) => interposeInterrupts(e, ctx, (s) => void signals.push(s)) });
      const ctx = fakeCtx();
      const clientFds = [createEventFd(), createEventFd()];
      const set = cmdMsg(Command.DEVICE_SET_IRQS, encodeIrqSet({ argsz: 20, flags: IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, index: 2, start: 0, count: 2 }), clientFds);
      const v = onCommand(p, set, ctx) as Verdict;
      const ours = (v as { forward: { fds: number[] } }).forward.fds;
      assert.equal(ours.length, 2);
      assert.ok(!ours.includes(clientFds[0] as number));
      native.eventfdWrite(ours[1] as number, 3n);
      for (let i = 0; i < 200 && signals.length === 0; i++) await sleep(5);
      assert.deepEqual(signals, [{ index: 2, vector: 1, count: 3n }]);
      assert.equal(native.eventfdRead(clientFds[1] as number), 3n);
      // Disabling the index (DATA_NONE, count 0) drops the relays; the session end releases the rest.
      onCommand(p, cmdMsg(Command.DEVICE_SET_IRQS, encodeIrqSet({ argsz: 20, flags: IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, index: 2, start: 0, count: 0 })), ctx);
      p.onSessionEnd?.(ctx, 'test');
      releaseInterposedInterrupts(ctx);
      clientFds.forEach((fd) => native.close(fd));
    });
  });

  it('an observer returning false swallows the interrupt', async () => {
    await assertNoFdLeak(async () => {
      let seen = 0;
      const ctx = fakeCtx();
      const clientFd = createEventFd();
      const event = { index: 0, start: 0, count: 1, flags: IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, action: 'trigger', dataType: 'eventfd', bools: undefined, fds: [clientFd] } as const;
      const d = interposeInterrupts(event, ctx, () => (seen++, false));
      native.eventfdWrite((d as { forward: { fds: number[] } }).forward.fds[0] as number, 1n);
      for (let i = 0; i < 200 && seen === 0; i++) await sleep(5);
      assert.equal(seen, 1);
      assert.equal(native.eventfdRead(clientFd), -Errno.EAGAIN, 'the client was not signalled');
      releaseInterposedInterrupts(ctx);
      native.close(clientFd);
    });
  });
});

describe('upstream-ops', () => {
  it('splits reads and writes to the smaller max_data_xfer_size of the VERSION exchange', async () => {
    const reads: { offset: bigint; count: number }[] = [];
    const ctx = fakeCtx({
      maxXfer: { client: 4096, upstream: 1 << 20 },
      upstream: (req) => {
        if (req.cmd === Command.REGION_WRITE) return { payload: encodeRegionAccess(decodeRegionWriteRequest(req.payload)) };
        const a = decodeRegionReadRequest(req.payload);
        reads.push({ offset: a.offset, count: a.count });
        return { payload: encodeRegionAccessWithData({ ...a, data: new Uint8Array(a.count).fill(Number(a.offset >> 12n)) }) };
      },
    });
    assert.equal(sessionMaxTransfer(ctx), 4096);
    assert.equal(sessionMaxTransfer(fakeCtx()), 1 << 20);
    assert.equal(sessionMaxTransfer(fakeCtx({ beforeVersion: true })), 1 << 20);
    const data = await upstreamRegionRead(ctx, 0, 0n, 10_000);
    assert.deepEqual(reads, [{ offset: 0n, count: 4096 }, { offset: 4096n, count: 4096 }, { offset: 8192n, count: 1808 }]);
    assert.equal(data[0], 0);
    assert.equal(data[9999], 2);
    await upstreamRegionWrite(ctx, 1, 0x100n, new Uint8Array(9000));
    assert.deepEqual(ctx.sent.filter((s) => s.cmd === Command.REGION_WRITE).map((s) => decodeRegionWriteRequest(s.payload).count), [4096, 4096, 808]);
  });

  it('refuses to ask before VERSION (EAGAIN) without sending anything', async () => {
    const ctx = fakeCtx({ beforeVersion: true, upstream: () => ({}) });
    await assert.rejects(upstreamRegionRead(ctx, 0, 0n, 4), (e: unknown) => e instanceof StateError && e.errno === Errno.EAGAIN);
    await assert.rejects(upstreamRegionInfo(ctx, 0), (e: unknown) => e instanceof StateError && e.errno === Errno.EAGAIN);
    await assert.rejects(clientDmaRead(ctx, 0n, 4), (e: unknown) => e instanceof StateError && e.errno === Errno.EAGAIN);
    assert.equal(ctx.sent.length + ctx.clientSent.length, 0);
  });

  it('rejects a reply that does not answer the request (EPROTO) and passes the device\'s errno on', async () => {
    const wrong = fakeCtx({ upstream: () => ({ payload: encodeRegionAccessWithData({ region: 9, offset: 0n, count: 4, data: new Uint8Array(4) }) }) });
    await assert.rejects(upstreamRegionRead(wrong, 0, 0n, 4), (e: unknown) => e instanceof ProtocolError && e.errno === Errno.EPROTO);
    const refused = fakeCtx({ upstream: () => ({ errno: Errno.ENOENT }) });
    await assert.rejects(upstreamDmaUnmap(refused, 0n, 4096n), (e: unknown) => e instanceof RemoteError && e.errno === Errno.ENOENT);
  });

  it('region info: asks again with the argsz the upstream needs; the fd is the caller\'s', async () => {
    const opened: number[] = [];
    const ctx = fakeCtx({ upstream: regionUpstream(opened) });
    const { info, fd } = await upstreamRegionInfo(ctx, 0, { argsz: 32 });
    assert.equal(ctx.sent.length, 2);
    assert.deepEqual(sparseAreasOf(info), [{ offset: 0n, size: 0x4000n }]);
    assert.equal(fd, opened[0]);
    assert.ok(isOpen(fd as number));
    native.close(fd as number);
  });

  it('closes fds of replies it does not keep; typed migration state and DMA towards the client', async () => {
    await assertNoFdLeak(async () => {
      const ctx = fakeCtx({
        upstream: (req) => {
          if (req.cmd === Command.DMA_UNMAP) return { payload: encodeDmaUnmapReply({ argsz: 24, flags: 0, addr: 0n, size: 4096n }), fds: [memfdCreate('stray', 4096)] };
          return { payload: encodeDeviceFeature({ argsz: 16, flags: 2 | (1 << 16), data: encodeMigDeviceState({ deviceState: 2, dataFd: -1 }) }) };
        },
        client: (req) => ({ payload: encodeDmaAccessWithData({ addr: 0n, count: 8n, data: new Uint8Array(8).fill(req.cmd) }) }),
      });
      await upstreamDmaUnmap(ctx, 0n, 4096n);
      assert.equal(await upstreamMigState(ctx), 2);
      assert.deepEqual([...(await clientDmaRead(ctx, 0n, 8))], new Array(8).fill(Command.DMA_READ));
    });
  });
});
