/**
 * The typed layer's region hooks: DEVICE_GET_REGION_INFO (rewrite the reply:
 * flags, size, sparse-mmap areas, capabilities, the fd), REGION_READ (emulate,
 * or rewrite the data the client reads), REGION_WRITE (emulate, forward other
 * bytes) and REGION_WRITE_MULTI (as a whole, or write by write through the
 * REGION_WRITE hook), plus pure helpers to edit a RegionInfo.
 */
import { Command, REGION_INFO_SIZE, RegionCapId, RegionInfoFlags, SPARSE_MMAP_CAP_VERSION } from '../protocol/constants.js';
import {
  decodeRegionReadReply,
  decodeRegionReadRequest,
  decodeRegionWriteMulti,
  decodeRegionWriteMultiReply,
  decodeRegionWriteRequest,
  encodeRegionAccess,
  encodeRegionAccessWithData,
  encodeRegionWriteMulti,
  encodeRegionWriteMultiReply,
  type RegionAccessWithData,
} from '../protocol/region-access.js';
import { decodeRegionInfoRequest, encodeRegionInfo, type RegionCap, type RegionInfo, type SparseMmapArea } from '../protocol/region.js';
import { isError } from '../protocol/header.js';
import { native } from '../native/addon.js';
import { upstreamRegionInfo } from './upstream-ops.js';
import type { MediatorSessionContext, Verdict } from './types.js';
import type {
  Hook,
  RegionAccessEvent,
  RegionInfoDecision,
  RegionInfoEvent,
  RegionReadDecision,
  RegionReadReplyDecision,
  RegionReadReplyEvent,
  RegionWriteDecision,
  RegionWriteEvent,
  RegionWriteMultiDecision,
  RegionWriteMultiEvent,
} from './typed-types.js';
import { badDecision, commonVerdict, mapSequential, then, tryDecode, type CommandHandler, type ReplyHandler } from './typed-util.js';

// ------------------------------------------------------------ RegionInfo edits

/** The sparse-mmap areas of `info` (empty when it has no such capability). */
export function sparseAreasOf(info: RegionInfo): SparseMmapArea[] {
  return info.caps.flatMap((c) => (c.kind === 'sparse-mmap' ? c.areas : []));
}

/**
 * `info` with its sparse-mmap areas replaced by `areas` (the capability added
 * when missing). With no area left, the capability is removed and the MMAP
 * flag cleared: the client maps nothing and uses messages for every access.
 */
export function withSparseAreas(info: RegionInfo, areas: readonly SparseMmapArea[]): RegionInfo {
  const others = info.caps.filter((c) => c.kind !== 'sparse-mmap');
  if (areas.length === 0) return { ...info, flags: info.flags & ~RegionInfoFlags.MMAP, caps: others };
  const cap: RegionCap = { kind: 'sparse-mmap', version: SPARSE_MMAP_CAP_VERSION, areas: areas.map((a) => ({ offset: a.offset, size: a.size })) };
  const at = info.caps.findIndex((c) => c.kind === 'sparse-mmap');
  const caps = at < 0 ? [...info.caps, cap] : info.caps.map((c, i) => (i === at ? cap : c));
  return { ...info, flags: info.flags | RegionInfoFlags.MMAP, caps };
}

/**
 * The sparse areas of `areas` minus the byte range `[offset, offset + size)`
 * (areas split around it): what stays mappable when that range is trapped.
 */
export function subtractRange(areas: readonly SparseMmapArea[], offset: bigint, size: bigint): SparseMmapArea[] {
  const end = offset + size;
  return areas.flatMap((a) => {
    const aEnd = a.offset + a.size;
    if (aEnd <= offset || a.offset >= end) return [{ offset: a.offset, size: a.size }];
    const left = offset > a.offset ? [{ offset: a.offset, size: offset - a.offset }] : [];
    const right = aEnd > end ? [{ offset: end, size: aEnd - end }] : [];
    return [...left, ...right];
  });
}

/** The numeric id of a capability. */
export function capIdOf(cap: RegionCap): number {
  if (cap.kind === 'sparse-mmap') return RegionCapId.SPARSE_MMAP;
  if (cap.kind === 'type') return RegionCapId.TYPE;
  return cap.id;
}

/** `info` with `cap` appended (after removing any capability of the same id). */
export function withCap(info: RegionInfo, cap: RegionCap): RegionInfo {
  const id = capIdOf(cap);
  return { ...info, caps: [...info.caps.filter((c) => capIdOf(c) !== id), cap] };
}

/** `info` without the capabilities of id `id`. */
export function withoutCap(info: RegionInfo, id: number): RegionInfo {
  return { ...info, caps: info.caps.filter((c) => capIdOf(c) !== id) };
}

/**
 * Encodes a rewritten reply for a client that asked with `clientArgsz`:
 * `argsz` = the bytes needed, CAPS set iff there are capabilities; when that
 * exceeds `clientArgsz`, the short form servers send (no capabilities, no
 * fd, zero-padded to the client's argsz) so the client asks again.
 */
export function encodeRegionInfoFor(info: RegionInfo, clientArgsz: number): { payload: Uint8Array; fits: boolean } {
  const hasCaps = info.caps.length > 0;
  const flags = hasCaps ? info.flags | RegionInfoFlags.CAPS : info.flags & ~RegionInfoFlags.CAPS;
  const body = { ...info, flags, capOffset: hasCaps ? REGION_INFO_SIZE : 0 };
  const needed = encodeRegionInfo({ ...body, argsz: 0 }).length;
  if (needed <= clientArgsz) return { payload: encodeRegionInfo({ ...body, argsz: needed }), fits: true };
  const short = encodeRegionInfo({ ...info, argsz: needed, flags: flags & ~RegionInfoFlags.CAPS, capOffset: 0, caps: [] });
  const payload = new Uint8Array(Math.max(short.length, Math.min(clientArgsz, needed)));
  payload.set(short);
  return { payload, fits: false };
}

// -------------------------------------------------------------------- hooks

/** Closes a borrowed-then-owned fd once the core has taken its copy (it dups in the hook's continuation). */
function closeLater(fd: number | undefined): void {
  if (fd !== undefined) setImmediate(() => native.close(fd));
}

/** DEVICE_GET_REGION_INFO: the typed layer asks the upstream itself (argsz large enough for every capability). */
export function regionInfoHandler(plugin: string, hook: Hook<RegionInfoEvent, RegionInfoDecision>): CommandHandler {
  return async (msg, ctx) => {
    const req = tryDecode(decodeRegionInfoRequest, msg.payload);
    // Malformed, or before VERSION: the upstream answers it as it would without us.
    if (!req || req.argsz < REGION_INFO_SIZE || ctx.version === undefined) return undefined;
    const { info, fd } = await upstreamRegionInfo(ctx, req.index, { argsz: Math.max(req.argsz, 4096) });
    try {
      const d = await hook({ index: req.index, info, fd, clientArgsz: req.argsz }, ctx);
      const common = commonVerdict(plugin, 'regionInfo', d);
      // A plain forward: the client's own request goes upstream, so its reply is the upstream's, byte for byte.
      if (common !== false) return common ?? undefined;
      if (!('reply' in (d as object))) throw badDecision(plugin, 'regionInfo', 'is neither reply, error, drop nor disconnect');
      const r = (d as { reply: { info?: RegionInfo; fd?: number | null } }).reply ?? {};
      const out = encodeRegionInfoFor(r.info ?? info, req.argsz);
      const outFd = r.fd === null ? undefined : (r.fd ?? fd);
      return { reply: { payload: out.payload, fds: out.fits && outFd !== undefined ? [outFd] : [] } };
    } finally {
      closeLater(fd);
    }
  };
}

/** REGION_READ: emulate (`reply` with `count` bytes) or forward. */
export function regionReadHandler(plugin: string, hook: Hook<RegionAccessEvent, RegionReadDecision>): CommandHandler {
  return (msg, ctx) => {
    const access = tryDecode(decodeRegionReadRequest, msg.payload);
    if (!access) return undefined;
    return then(hook(access, ctx), (d): Verdict => {
      const common = commonVerdict(plugin, 'regionRead', d);
      if (common !== false) return common ?? undefined;
      if (!('reply' in (d as object))) throw badDecision(plugin, 'regionRead', 'is neither reply, error, drop nor disconnect');
      const data = (d as { reply: Uint8Array }).reply;
      if (!(data instanceof Uint8Array) || data.length !== access.count) {
        throw badDecision(plugin, 'regionRead', `replies ${data instanceof Uint8Array ? data.length : 'no'} bytes for a ${access.count}-byte read`);
      }
      return { reply: { payload: encodeRegionAccessWithData({ ...access, data }) } };
    });
  };
}

/** The upstream's REGION_READ reply: replace its data. */
export function regionReadReplyHandler(plugin: string, hook: Hook<RegionReadReplyEvent, RegionReadReplyDecision>): ReplyHandler {
  return (reply, _request, ctx) => {
    if (isError(reply.header)) return undefined;
    const access = tryDecode(decodeRegionReadReply, reply.payload);
    if (!access) return undefined;
    return then(hook(access, ctx), (d): Verdict => {
      const common = commonVerdict(plugin, 'regionReadReply', d);
      if (common !== false) return common ?? undefined;
      const data = (d as { reply?: unknown }).reply;
      if (!(data instanceof Uint8Array) || data.length !== access.count) throw badDecision(plugin, 'regionReadReply', `must reply exactly ${access.count} bytes`);
      return { reply: { payload: encodeRegionAccessWithData({ ...access, data }) } };
    });
  };
}

type WriteOutcome = { kind: 'forward'; data: Uint8Array } | { kind: 'emulated' } | { kind: 'verdict'; verdict: Verdict };

function writeOutcome(plugin: string, w: RegionWriteEvent, d: RegionWriteDecision): WriteOutcome {
  const common = commonVerdict(plugin, 'regionWrite', d);
  if (common === null) return { kind: 'forward', data: w.data };
  if (common !== false) return { kind: 'verdict', verdict: common };
  if ('reply' in (d as object) && (d as { reply: unknown }).reply === true) return { kind: 'emulated' };
  const data = (d as { forward?: { data?: unknown } }).forward?.data;
  if (!(data instanceof Uint8Array) || data.length !== w.count) throw badDecision(plugin, 'regionWrite', `must be reply: true or forward ${w.count} bytes`);
  return { kind: 'forward', data };
}

/** REGION_WRITE: emulate, forward other bytes, or forward. */
export function regionWriteHandler(plugin: string, hook: Hook<RegionWriteEvent, RegionWriteDecision>): CommandHandler {
  return (msg, ctx) => {
    const access = tryDecode(decodeRegionWriteRequest, msg.payload);
    if (!access) return undefined;
    const event: RegionWriteEvent = { ...access, multi: false };
    return then(hook(event, ctx), (d): Verdict => {
      const o = writeOutcome(plugin, event, d);
      if (o.kind === 'verdict') return o.verdict;
      if (o.kind === 'emulated') return { reply: { payload: encodeRegionAccess(access) } };
      return o.data === access.data ? undefined : { forward: { payload: encodeRegionAccessWithData({ ...access, data: o.data }) } };
    });
  };
}

/** REGION_WRITE_MULTI through its own hook. */
export function regionWriteMultiHandler(plugin: string, hook: Hook<RegionWriteMultiEvent, RegionWriteMultiDecision>): CommandHandler {
  return (msg, ctx) => {
    const multi = tryDecode(decodeRegionWriteMulti, msg.payload);
    if (!multi) return undefined;
    const writes = multi.writes.map((w): RegionWriteEvent => ({ ...w, multi: true }));
    return then(hook({ writes }, ctx), (d): Verdict => {
      const common = commonVerdict(plugin, 'regionWriteMulti', d);
      if (common !== false) return common ?? undefined;
      if ('reply' in (d as object)) {
        const wrCnt = (d as { reply?: { wrCnt?: bigint } }).reply?.wrCnt ?? BigInt(writes.length);
        return { reply: { payload: encodeRegionWriteMultiReply({ wrCnt }) } };
      }
      const fwd = (d as { forward?: { writes?: ReadonlyArray<{ region: number; offset: bigint; data: Uint8Array }> } }).forward?.writes;
      if (!Array.isArray(fwd)) throw badDecision(plugin, 'regionWriteMulti', 'must be forward.writes, reply, error, drop or disconnect');
      const out: RegionAccessWithData[] = fwd.map((w) => ({ region: w.region, offset: w.offset, count: w.data.length, data: w.data }));
      return { forward: { payload: encodeRegionWriteMulti({ writes: out }) } };
    });
  };
}

/**
 * REGION_WRITE_MULTI write by write through the REGION_WRITE hook: all
 * forwarded → forwarded as sent (or with the changed bytes); all emulated →
 * answered here; some of each → the rest written upstream by the mediator
 * (after the emulated ones) and the client told the total.
 */
export function regionWriteMultiViaWrite(plugin: string, hook: Hook<RegionWriteEvent, RegionWriteDecision>): CommandHandler {
  return (msg, ctx) => {
    const multi = tryDecode(decodeRegionWriteMulti, msg.payload);
    if (!multi) return undefined;
    const writes = multi.writes.map((w): RegionWriteEvent => ({ ...w, multi: true }));
    const decided = mapSequential(writes, (w) => then(hook(w, ctx), (d) => writeOutcome(plugin, w, d)));
    return then(decided, (outcomes) => combineWrites(writes, outcomes, ctx));
  };
}

function combineWrites(writes: readonly RegionWriteEvent[], outcomes: readonly WriteOutcome[], ctx: MediatorSessionContext): Verdict | Promise<Verdict> {
  const final = outcomes.find((o): o is Extract<WriteOutcome, { kind: 'verdict' }> => o.kind === 'verdict');
  if (final) return final.verdict;
  const kept: RegionAccessWithData[] = [];
  let changed = false;
  outcomes.forEach((o, i) => {
    const w = writes[i] as RegionWriteEvent;
    if (o.kind !== 'forward') return;
    kept.push({ region: w.region, offset: w.offset, count: w.count, data: o.data });
    changed ||= o.data !== w.data;
  });
  if (kept.length === writes.length) return changed ? { forward: { payload: encodeRegionWriteMulti({ writes: kept }) } } : undefined;
  const emulated = BigInt(writes.length - kept.length);
  if (kept.length === 0) return { reply: { payload: encodeRegionWriteMultiReply({ wrCnt: emulated }) } };
  return ctx.upstreamRequest(Command.REGION_WRITE_MULTI, encodeRegionWriteMulti({ writes: kept })).then((reply) => {
    for (const fd of reply.fds) native.close(fd);
    const { wrCnt } = decodeRegionWriteMultiReply(reply.payload);
    return { reply: { payload: encodeRegionWriteMultiReply({ wrCnt: emulated + wrCnt }) } };
  });
}
