/**
 * The typed layer's hooks called directly with hand-made messages and a fake
 * session context: what each hook sees (decoded) and which verdict each
 * decision becomes; malformed messages forwarded untouched; hook errors and
 * bad decisions surfacing (never swallowed); synchronous hooks staying synchronous.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { definePlugin } from '../../src/mediator/typed.js';
import { Command, DeviceFeature, DeviceFeatureFlags, DmaMapFlags, DmaUnmapFlags, MigrationState } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import {
  decodeDeviceFeature,
  decodeDmaMapRequest,
  decodeDmaUnmapReply,
  decodeMigDataReadReply,
  decodeMigDeviceState,
  decodeRegionReadReply,
  decodeRegionWriteMulti,
  decodeRegionWriteMultiReply,
  decodeRegionWriteReply,
  decodeRegionWriteRequest,
  decodeDmaReadReply,
  decodeDmaWriteReply,
  decodeDmaWriteRequest,
  encodeDeviceFeature,
  encodeDmaAccess,
  encodeDmaAccessWithData,
  encodeDmaMapRequest,
  encodeDmaUnmapRequest,
  encodeMigData,
  encodeMigDataReadRequest,
  encodeMigDeviceState,
  encodeRegionAccess,
  encodeRegionAccessWithData,
  encodeRegionWriteMulti,
  encodeRegionWriteMultiReply,
} from '../../src/protocol/index.js';
import { InvalidArgumentError, ProtocolError } from '../../src/errors.js';
import type { Verdict } from '../../src/mediator/types.js';
import { cmdMsg, fakeCtx, forwardPayload, onCommand, replyMsg, replyPayload } from './typed-support.js';

const read = (region: number, offset: bigint, count: number) => cmdMsg(Command.REGION_READ, encodeRegionAccess({ region, offset, count }));
const write = (region: number, offset: bigint, data: Uint8Array) => cmdMsg(Command.REGION_WRITE, encodeRegionAccessWithData({ region, offset, count: data.length, data }));
const bytes = (...v: number[]) => new Uint8Array(v);

describe('definePlugin', () => {
  it('refuses a spec without a name or with a hook that is not a function (EINVAL)', () => {
    assert.throws(() => definePlugin({ name: '' }), (e: unknown) => e instanceof InvalidArgumentError && e.errno === Errno.EINVAL);
    assert.throws(() => definePlugin({ name: 'x', regionRead: 3 as never }), /regionRead is not a function/);
    assert.throws(() => definePlugin({ name: 'x', regionread: () => undefined } as never), (e: unknown) => e instanceof InvalidArgumentError && /regionread is not a hook/.test(e.message));
  });

  it('calls hooks with this = the spec', () => {
    const spec = {
      name: 'self',
      value: new Uint8Array([9, 9, 9, 9]),
      regionRead(this: { value: Uint8Array }) {
        return { reply: this.value };
      },
    };
    const v = onCommand(definePlugin(spec), read(0, 0n, 4), fakeCtx()) as Verdict;
    assert.deepEqual([...(decodeRegionReadReply(replyPayload(v))?.data ?? [])], [9, 9, 9, 9]);
  });

  it('installs only the generic hooks it needs', () => {
    const p = definePlugin({ name: 'reads', regionRead: () => undefined });
    assert.equal(typeof p.onClientCommand, 'function');
    assert.equal(p.onUpstreamReply, undefined);
    assert.equal(p.onUpstreamCommand, undefined);
    const q = definePlugin({ name: 'dma', dmaWrite: () => undefined });
    assert.equal(q.onClientCommand, undefined);
    assert.equal(typeof q.onUpstreamCommand, 'function');
  });

  it('leaves commands without a hook alone, undecoded', () => {
    const p = definePlugin({ name: 'reads', regionRead: () => ({ reply: bytes(1, 2, 3, 4) }) });
    assert.equal(onCommand(p, cmdMsg(Command.DEVICE_RESET), fakeCtx()), undefined);
    assert.equal(onCommand(p, write(2, 0n, bytes(1)), fakeCtx()), undefined);
  });
});

describe('region access hooks', () => {
  it('emulates a register read synchronously (no promise) with the access echoed', () => {
    const seen: unknown[] = [];
    const p = definePlugin({
      name: 'trap',
      regionRead: (e) => {
        seen.push(e);
        return e.region === 2 && e.offset === 0x14n ? { reply: bytes(0xef, 0xbe, 0xad, 0xde) } : undefined;
      },
    });
    const v = onCommand(p, read(2, 0x14n, 4), fakeCtx());
    assert.ok(!(v instanceof Promise));
    const r = decodeRegionReadReply(replyPayload(v as Verdict));
    assert.deepEqual({ region: r?.region, offset: r?.offset, count: r?.count, data: [...(r?.data ?? [])] }, { region: 2, offset: 0x14n, count: 4, data: [0xef, 0xbe, 0xad, 0xde] });
    assert.equal(onCommand(p, read(2, 0x10n, 4), fakeCtx()), undefined, 'other registers forwarded');
    assert.deepEqual(seen[0], { region: 2, offset: 0x14n, count: 4 });
  });

  it('an emulated read of the wrong length is EINVAL; a hook that throws is not caught', () => {
    const p = definePlugin({ name: 'short', regionRead: () => ({ reply: bytes(1) }) });
    assert.throws(() => onCommand(p, read(0, 0n, 4), fakeCtx()), (e: unknown) => e instanceof InvalidArgumentError && /1 bytes for a 4-byte read/.test(e.message));
    const boom = Object.assign(new Error('device says no'), { errno: Errno.EACCES });
    const q = definePlugin({ name: 'thrower', regionRead: () => { throw boom; } });
    assert.throws(() => onCommand(q, read(0, 0n, 4), fakeCtx()), (e: unknown) => e === boom);
    const r = definePlugin({ name: 'rejecter', regionRead: () => Promise.reject(boom) });
    return assert.rejects(Promise.resolve(onCommand(r, read(0, 0n, 4), fakeCtx())), (e: unknown) => e === boom);
  });

  it('forwards a malformed REGION_READ untouched without calling the hook', () => {
    let called = false;
    const p = definePlugin({ name: 'trap', regionRead: () => { called = true; return { error: Errno.EIO }; } });
    assert.equal(onCommand(p, cmdMsg(Command.REGION_READ, bytes(1, 2, 3)), fakeCtx()), undefined);
    assert.equal(called, false);
  });

  it('maps error, drop and disconnect decisions; refuses a bad errno', async () => {
    const p = (d: unknown) => definePlugin({ name: 'd', regionRead: () => d as never });
    assert.deepEqual(onCommand(p({ error: Errno.EPERM }), read(0, 0n, 4), fakeCtx()), { error: Errno.EPERM });
    assert.deepEqual(onCommand(p({ drop: true }), read(0, 0n, 4), fakeCtx()), { drop: true });
    assert.deepEqual(onCommand(p({ disconnect: true }), read(0, 0n, 4), fakeCtx()), { disconnect: true });
    assert.throws(() => onCommand(p({ error: 0 }), read(0, 0n, 4), fakeCtx()), InvalidArgumentError);
    assert.throws(() => onCommand(p({ what: 1 }), read(0, 0n, 4), fakeCtx()), InvalidArgumentError);
    assert.deepEqual(await onCommand(p(Promise.resolve({ error: Errno.EIO })), read(0, 0n, 4), fakeCtx()), { error: Errno.EIO });
  });

  it('rewrites the data of the upstream\'s REGION_READ reply', () => {
    const p = definePlugin({ name: 'mask', regionReadReply: (e) => ({ reply: e.data.map((b) => b & 0x0f) }) });
    const req = read(1, 8n, 2);
    const rep = replyMsg(req, encodeRegionAccessWithData({ region: 1, offset: 8n, count: 2, data: bytes(0xab, 0xcd) }));
    const v = p.onUpstreamReply?.(rep, req, fakeCtx()) as Verdict;
    assert.deepEqual([...(decodeRegionReadReply(replyPayload(v))?.data ?? [])], [0x0b, 0x0d]);
    assert.equal(p.onUpstreamReply?.(replyMsg(req, new Uint8Array(0), Errno.EINVAL), req, fakeCtx()), undefined, 'error replies pass');
  });

  it('forwards a write with modified data, or emulates it with the usual acknowledgement', () => {
    const p = definePlugin({
      name: 'w',
      regionWrite: (e) => (e.offset === 0n ? { forward: { data: e.data.map((b) => b | 0x80) } } : e.offset === 4n ? { reply: true } : undefined),
    });
    const fwd = decodeRegionWriteRequest(forwardPayload(onCommand(p, write(2, 0n, bytes(1, 2)), fakeCtx()) as Verdict) as Uint8Array);
    assert.deepEqual([...fwd.data], [0x81, 0x82]);
    const ack = decodeRegionWriteReply(replyPayload(onCommand(p, write(2, 4n, bytes(1, 2, 3, 4)), fakeCtx()) as Verdict));
    assert.deepEqual(ack, { region: 2, offset: 4n, count: 4 });
    assert.equal(onCommand(p, write(2, 8n, bytes(9)), fakeCtx()), undefined);
    const bad = definePlugin({ name: 'bad', regionWrite: () => ({ forward: { data: bytes(1) } }) });
    assert.throws(() => onCommand(bad, write(0, 0n, bytes(1, 2)), fakeCtx()), InvalidArgumentError);
  });

  it('REGION_WRITE_MULTI goes write by write through regionWrite: forwarded, emulated, or split', async () => {
    const multi = cmdMsg(Command.REGION_WRITE_MULTI, encodeRegionWriteMulti({ writes: [0n, 4n, 8n].map((offset, i) => ({ region: 2, offset, count: 1, data: bytes(i + 1) })) }));
    const forwardAll = definePlugin({ name: 'f', regionWrite: () => undefined });
    assert.equal(onCommand(forwardAll, multi, fakeCtx()), undefined);
    const emulateAll = definePlugin({ name: 'e', regionWrite: () => ({ reply: true }) });
    assert.equal(decodeRegionWriteMultiReply(replyPayload(onCommand(emulateAll, multi, fakeCtx()) as Verdict)).wrCnt, 3n);
    const order: bigint[] = [];
    const mixed = definePlugin({
      name: 'm',
      regionWrite: async (e) => {
        order.push(e.offset);
        return e.offset === 4n ? { reply: true } : undefined;
      },
    });
    const ctx = fakeCtx({ upstream: () => ({ payload: encodeRegionWriteMultiReply({ wrCnt: 2n }) }) });
    const v = await onCommand(mixed, multi, ctx);
    assert.deepEqual(order, [0n, 4n, 8n], 'the hook saw the writes in order, one after the other');
    assert.equal(decodeRegionWriteMultiReply(replyPayload(v)).wrCnt, 3n);
    assert.equal(ctx.sent.length, 1);
    assert.deepEqual(decodeRegionWriteMulti(ctx.sent[0]?.payload as Uint8Array).writes.map((w) => w.offset), [0n, 8n]);
    const refused = definePlugin({ name: 'r', regionWrite: (e) => (e.offset === 8n ? { error: Errno.EROFS } : undefined) });
    assert.deepEqual(onCommand(refused, multi, fakeCtx()), { error: Errno.EROFS });
  });

  it('a regionWriteMulti hook sees the whole batch and can answer it', () => {
    const p = definePlugin({ name: 'wm', regionWriteMulti: (e) => ({ reply: { wrCnt: BigInt(e.writes.length - 1) } }) });
    const multi = cmdMsg(Command.REGION_WRITE_MULTI, encodeRegionWriteMulti({ writes: [{ region: 0, offset: 0n, count: 2, data: bytes(1, 2) }, { region: 0, offset: 8n, count: 1, data: bytes(3) }] }));
    assert.equal(decodeRegionWriteMultiReply(replyPayload(onCommand(p, multi, fakeCtx()) as Verdict)).wrCnt, 1n);
  });
});

describe('DMA hooks', () => {
  const map = (fds: number[] = [42]) => cmdMsg(Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags: DmaMapFlags.READ | DmaMapFlags.WRITE, offset: 0n, addr: 0x10000n, size: 0x4000n }), fds);

  it('observes a DMA_MAP with its fd, strips the fd, refuses with EPERM, or answers', () => {
    const seen: unknown[] = [];
    const strip = definePlugin({ name: 's', dmaMap: (e) => (seen.push(e), { forward: { fd: null } }) });
    assert.deepEqual(onCommand(strip, map(), fakeCtx()), { forward: { fds: [] } });
    assert.deepEqual(seen[0], { addr: 0x10000n, size: 0x4000n, offset: 0n, flags: 3, fd: 42 });
    const refuse = definePlugin({ name: 'r', dmaMap: () => ({ error: Errno.EPERM }) });
    assert.deepEqual(onCommand(refuse, map(), fakeCtx()), { error: Errno.EPERM });
    const readOnly = definePlugin({ name: 'ro', dmaMap: () => ({ forward: { flags: DmaMapFlags.READ } }) });
    const v = onCommand(readOnly, map(), fakeCtx()) as Verdict;
    assert.equal(decodeDmaMapRequest(forwardPayload(v) as Uint8Array).flags, DmaMapFlags.READ);
    assert.equal((v as { forward: { fds?: unknown } }).forward.fds, undefined, 'fd kept');
    assert.deepEqual(onCommand(definePlugin({ name: 'a', dmaMap: () => ({ reply: true }) }), map(), fakeCtx()), { reply: { payload: new Uint8Array(0) } });
  });

  it('answers a DMA_UNMAP, with an all-clean bitmap of the size asked for by default', () => {
    const p = definePlugin({ name: 'u', dmaUnmap: () => ({ reply: {} }) });
    const req = cmdMsg(Command.DMA_UNMAP, encodeDmaUnmapRequest({ argsz: 24 + 16 + 8, flags: DmaUnmapFlags.GET_DIRTY_BITMAP, addr: 0n, size: 0x40000n, bitmap: { pgsize: 4096n, size: 8n } }));
    const r = decodeDmaUnmapReply(replyPayload(onCommand(p, req, fakeCtx()) as Verdict));
    assert.equal(r.bitmap?.data.length, 8);
    assert.ok(r.bitmap?.data.every((b) => b === 0));
  });

  it('answers the upstream\'s DMA_READ locally, rewrites or acknowledges its DMA_WRITE', () => {
    const p = definePlugin({
      name: 'dma',
      dmaRead: (e) => ({ reply: new Uint8Array(Number(e.count)).fill(0x5a) }),
      dmaWrite: (e) => (e.addr === 0n ? { reply: true } : { forward: { data: e.data.map((b) => b + 1) } }),
    });
    const rd = p.onUpstreamCommand?.(cmdMsg(Command.DMA_READ, encodeDmaAccess({ addr: 0x1000n, count: 3n })), fakeCtx()) as Verdict;
    assert.deepEqual([...decodeDmaReadReply(replyPayload(rd)).data], [0x5a, 0x5a, 0x5a]);
    const ack = p.onUpstreamCommand?.(cmdMsg(Command.DMA_WRITE, encodeDmaAccessWithData({ addr: 0n, count: 2n, data: bytes(1, 2) })), fakeCtx()) as Verdict;
    assert.deepEqual(decodeDmaWriteReply(replyPayload(ack)), { addr: 0n, count: 2n });
    const fwd = p.onUpstreamCommand?.(cmdMsg(Command.DMA_WRITE, encodeDmaAccessWithData({ addr: 8n, count: 2n, data: bytes(1, 2) })), fakeCtx()) as Verdict;
    assert.deepEqual([...decodeDmaWriteRequest(forwardPayload(fwd) as Uint8Array).data], [2, 3]);
  });
});

describe('feature and migration hooks', () => {
  const { GET, SET, PROBE } = DeviceFeatureFlags;
  const feature = (flags: number, data: Uint8Array = new Uint8Array(0), argsz = 8 + data.length + 64) => cmdMsg(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz, flags, data }));

  it('answers a GET locally, echoes SET and PROBE, and refuses a reply larger than argsz (EINVAL)', () => {
    const p = definePlugin({
      name: 'mig',
      feature: (e) => (e.feature === DeviceFeature.MIGRATION ? (e.op === 'get' ? { reply: bytes(3, 0, 0, 0, 0, 0, 0, 0) } : { reply: true }) : undefined),
    });
    const get = decodeDeviceFeature(replyPayload(onCommand(p, feature(DeviceFeature.MIGRATION | GET), fakeCtx()) as Verdict));
    assert.deepEqual({ argsz: get.argsz, flags: get.flags, data: [...get.data] }, { argsz: 16, flags: DeviceFeature.MIGRATION | GET, data: [3, 0, 0, 0, 0, 0, 0, 0] });
    const probeReq = feature(DeviceFeature.MIGRATION | GET | PROBE);
    assert.deepEqual(replyPayload(onCommand(p, probeReq, fakeCtx()) as Verdict), probeReq.payload);
    assert.equal(onCommand(p, feature(DeviceFeature.DMA_LOGGING_START | SET), fakeCtx()), undefined);
    assert.throws(() => onCommand(p, feature(DeviceFeature.MIGRATION | GET, new Uint8Array(0), 12), fakeCtx()), (e: unknown) => e instanceof ProtocolError && e.errno === Errno.EINVAL);
  });

  it('gives MIG_DEVICE_STATE to migState first, then to feature when it forwards', () => {
    const seen: unknown[] = [];
    const p = definePlugin({
      name: 'state',
      migState: (e) => (seen.push(e), e.op === 'get' ? { reply: { state: MigrationState.RUNNING } } : e.state === MigrationState.STOP_COPY ? { error: Errno.EBUSY } : undefined),
      feature: () => ({ reply: true }),
    });
    const get = decodeDeviceFeature(replyPayload(onCommand(p, feature(DeviceFeature.MIG_DEVICE_STATE | GET), fakeCtx()) as Verdict));
    assert.equal(decodeMigDeviceState(get.data).deviceState, MigrationState.RUNNING);
    assert.deepEqual(onCommand(p, feature(DeviceFeature.MIG_DEVICE_STATE | SET, encodeMigDeviceState({ deviceState: MigrationState.STOP_COPY, dataFd: -1 })), fakeCtx()), { error: Errno.EBUSY });
    const stopReq = feature(DeviceFeature.MIG_DEVICE_STATE | SET, encodeMigDeviceState({ deviceState: MigrationState.STOP, dataFd: -1 }));
    assert.deepEqual(replyPayload(onCommand(p, stopReq, fakeCtx()) as Verdict), stopReq.payload, 'forwarded by migState, answered by feature');
    assert.deepEqual(seen, [{ op: 'get' }, { op: 'set', state: MigrationState.STOP_COPY }, { op: 'set', state: MigrationState.STOP }]);
  });

  it('rewrites the upstream\'s answer: an error becomes success', () => {
    const p = definePlugin({ name: 'probe', featureReply: (e) => (e.errno === Errno.EINVAL && e.op === 'probe' ? { reply: true } : undefined) });
    const req = feature(DeviceFeature.MIGRATION | GET | PROBE);
    const v = p.onUpstreamReply?.(replyMsg(req, new Uint8Array(0), Errno.EINVAL), req, fakeCtx()) as Verdict;
    assert.deepEqual(replyPayload(v), req.payload);
    assert.equal(p.onUpstreamReply?.(replyMsg(req, req.payload), req, fakeCtx()), undefined);
  });

  it('answers MIG_DATA_READ and acknowledges MIG_DATA_WRITE', () => {
    const p = definePlugin({ name: 'data', migDataRead: (e) => ({ reply: new Uint8Array(Math.min(e.size, 5)).fill(7) }), migDataWrite: () => ({ reply: true }) });
    const r = decodeMigDataReadReply(replyPayload(onCommand(p, cmdMsg(Command.MIG_DATA_READ, encodeMigDataReadRequest({ argsz: 8 + 100, size: 100 })), fakeCtx()) as Verdict));
    assert.deepEqual({ size: r.size, argsz: r.argsz, data: [...r.data] }, { size: 5, argsz: 13, data: [7, 7, 7, 7, 7] });
    const w = onCommand(p, cmdMsg(Command.MIG_DATA_WRITE, encodeMigData({ argsz: 11, size: 3, data: bytes(1, 2, 3) })), fakeCtx()) as Verdict;
    assert.deepEqual(replyPayload(w), new Uint8Array(0));
  });
});
