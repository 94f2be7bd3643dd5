/**
 * DMA for typed plugins: the client's DMA_MAP (observe, strip or replace the
 * fd, refuse, answer) and DMA_UNMAP, and the upstream's DMA_READ / DMA_WRITE
 * towards the client (answer locally, forward, forward other bytes).
 */
import { DmaUnmapFlags } from '../protocol/constants.js';
import {
  decodeDmaMapRequest,
  decodeDmaReadRequest,
  decodeDmaUnmapRequest,
  decodeDmaWriteRequest,
  encodeDmaAccess,
  encodeDmaAccessWithData,
  encodeDmaMapRequest,
  encodeDmaUnmapReply,
} from '../protocol/dma.js';
import { DMA_UNMAP_SIZE, DMA_BITMAP_SIZE } from '../protocol/constants.js';
import type { Verdict } from './types.js';
import type {
  DmaMapDecision,
  DmaMapEvent,
  DmaReadDecision,
  DmaReadEvent,
  DmaUnmapDecision,
  DmaUnmapEvent,
  DmaWriteDecision,
  DmaWriteEvent,
  Hook,
} from './typed-types.js';
import { badDecision, commonVerdict, EMPTY, then, tryDecode, type CommandHandler } from './typed-util.js';

/** DMA_MAP: forward (possibly without or with another fd, other flags or offset), answer, or refuse. */
export function dmaMapHandler(plugin: string, hook: Hook<DmaMapEvent, DmaMapDecision>): CommandHandler {
  return (msg, ctx) => {
    const map = tryDecode(decodeDmaMapRequest, msg.payload);
    if (!map) return undefined;
    const event: DmaMapEvent = { addr: map.addr, size: map.size, offset: map.offset, flags: map.flags, fd: msg.fds[0] };
    return then(hook(event, ctx), (d): Verdict => {
      const common = commonVerdict(plugin, 'dmaMap', d);
      if (common !== false) return common ?? undefined;
      if ('reply' in (d as object) && (d as { reply: unknown }).reply === true) return { reply: { payload: EMPTY } };
      const f = (d as { forward?: { fd?: number | null; flags?: number; offset?: bigint } }).forward;
      if (typeof f !== 'object' || f === null) throw badDecision(plugin, 'dmaMap', 'must be forward, reply: true, error, drop or disconnect');
      const changed = f.flags !== undefined || f.offset !== undefined;
      const payload = changed ? encodeDmaMapRequest({ ...map, flags: f.flags ?? map.flags, offset: f.offset ?? map.offset }) : undefined;
      const fds = f.fd === null ? [] : f.fd === undefined ? undefined : [f.fd];
      return { forward: { ...(payload ? { payload } : {}), ...(fds ? { fds } : {}) } };
    });
  };
}

/** DMA_UNMAP: forward, or answer (with the bitmap asked for; all clean by default). */
export function dmaUnmapHandler(plugin: string, hook: Hook<DmaUnmapEvent, DmaUnmapDecision>): CommandHandler {
  return (msg, ctx) => {
    const unmap = tryDecode(decodeDmaUnmapRequest, msg.payload);
    if (!unmap) return undefined;
    const event: DmaUnmapEvent = {
      addr: unmap.addr,
      size: unmap.size,
      flags: unmap.flags,
      all: (unmap.flags & DmaUnmapFlags.ALL) !== 0,
      bitmap: unmap.bitmap ? { pgsize: unmap.bitmap.pgsize, size: unmap.bitmap.size } : undefined,
    };
    return then(hook(event, ctx), (d): Verdict => {
      const common = commonVerdict(plugin, 'dmaUnmap', d);
      if (common !== false) return common ?? undefined;
      const r = (d as { reply?: { bitmap?: Uint8Array } }).reply;
      if (typeof r !== 'object' || r === null) throw badDecision(plugin, 'dmaUnmap', 'must be reply, error, drop or disconnect');
      const echo = { argsz: DMA_UNMAP_SIZE, flags: unmap.flags, addr: unmap.addr, size: unmap.size };
      if (!unmap.bitmap) return { reply: { payload: encodeDmaUnmapReply(echo) } };
      const data = r.bitmap ?? new Uint8Array(Number(unmap.bitmap.size));
      if (BigInt(data.length) !== unmap.bitmap.size) throw badDecision(plugin, 'dmaUnmap', `bitmap of ${data.length} bytes, ${unmap.bitmap.size} asked for`);
      const bitmap = { pgsize: unmap.bitmap.pgsize, size: unmap.bitmap.size, data };
      return { reply: { payload: encodeDmaUnmapReply({ ...echo, argsz: DMA_UNMAP_SIZE + DMA_BITMAP_SIZE + data.length, bitmap }) } };
    });
  };
}

/** The upstream's DMA_READ: forward to the client, or answer with `count` bytes. */
export function dmaReadHandler(plugin: string, hook: Hook<DmaReadEvent, DmaReadDecision>): CommandHandler {
  return (msg, ctx) => {
    const access = tryDecode(decodeDmaReadRequest, msg.payload);
    if (!access) return undefined;
    return then(hook(access, ctx), (d): Verdict => {
      const common = commonVerdict(plugin, 'dmaRead', d);
      if (common !== false) return common ?? undefined;
      const data = (d as { reply?: unknown }).reply;
      if (!(data instanceof Uint8Array) || BigInt(data.length) !== access.count) throw badDecision(plugin, 'dmaRead', `must reply exactly ${access.count} bytes`);
      return { reply: { payload: encodeDmaAccessWithData({ addr: access.addr, count: access.count, data }) } };
    });
  };
}

/** The upstream's DMA_WRITE: forward, forward other bytes (same length), or acknowledge here. */
export function dmaWriteHandler(plugin: string, hook: Hook<DmaWriteEvent, DmaWriteDecision>): CommandHandler {
  return (msg, ctx) => {
    const access = tryDecode(decodeDmaWriteRequest, msg.payload);
    if (!access) return undefined;
    return then(hook({ addr: access.addr, data: access.data }, ctx), (d): Verdict => {
      const common = commonVerdict(plugin, 'dmaWrite', d);
      if (common !== false) return common ?? undefined;
      if ('reply' in (d as object) && (d as { reply: unknown }).reply === true) return { reply: { payload: encodeDmaAccess({ addr: access.addr, count: access.count }) } };
      const data = (d as { forward?: { data?: unknown } }).forward?.data;
      if (!(data instanceof Uint8Array) || data.length !== access.data.length) throw badDecision(plugin, 'dmaWrite', `must be reply: true or forward ${access.data.length} bytes`);
      return { forward: { payload: encodeDmaAccessWithData({ addr: access.addr, count: access.count, data }) } };
    });
  };
}
