/**
 * Typed requests of the mediator's own, for any plugin: read and write the
 * upstream device's regions, ask for its region and IRQ information, map and
 * unmap DMA, use its features and migration commands — and, towards the
 * client, DMA_READ/DMA_WRITE of the client's memory. All are built on
 * `ctx.upstreamRequest` / `ctx.clientRequest` (their ids are the mediator's;
 * the other side of the session never sees these messages).
 *
 * Transfers are split to the negotiated `max_data_xfer_size`: the smaller of
 * what the client and the upstream said in VERSION (1 MiB when unsaid), because
 * the upstream holds the client's limit for the replies it sends.
 *
 * Every function rejects with the errors of `upstreamRequest`: RemoteError (the
 * device's errno), ConnectionClosedError (ENOTCONN), TimeoutError (ETIMEDOUT);
 * ProtocolError (EPROTO) when a reply does not answer the request; and
 * StateError (EAGAIN) before the session's VERSION exchange (a device answers
 * nothing else first: `onSessionStart` runs before it).
 */
import { ProtocolError, StateError } from '../errors.js';
import {
  Command,
  commandName,
  DEFAULT_MAX_DATA_XFER_SIZE,
  DEVICE_FEATURE_SIZE,
  DEVICE_INFO_SIZE,
  DeviceFeature,
  DeviceFeatureFlags,
  DMA_BITMAP_SIZE,
  DMA_MAP_SIZE,
  DMA_UNMAP_SIZE,
  DmaUnmapFlags,
  IRQ_INFO_SIZE,
  IRQ_SET_SIZE,
  MIG_DATA_SIZE,
  REGION_INFO_SIZE,
} from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { decodeDeviceInfo, encodeDeviceInfo, type DeviceInfo } from '../protocol/device.js';
import {
  decodeDmaReadReply,
  decodeDmaUnmapReply,
  encodeDmaAccess,
  encodeDmaAccessWithData,
  encodeDmaMapRequest,
  encodeDmaUnmapRequest,
  type DmaUnmapReply,
} from '../protocol/dma.js';
import {
  bitmapBytes,
  decodeDeviceFeature,
  decodeMigDeviceState,
  encodeDeviceFeature,
  encodeMigDeviceState,
  type DeviceFeaturePayload,
} from '../protocol/feature.js';
import { decodeIrqInfo, encodeIrqInfo, encodeIrqSet, type IrqInfo, type IrqSet } from '../protocol/irq.js';
import { decodeMigDataReadReply, encodeMigData, encodeMigDataReadRequest } from '../protocol/migration-data.js';
import { decodeRegionReadReply, encodeRegionAccess, encodeRegionAccessWithData } from '../protocol/region-access.js';
import { decodeRegionInfo, encodeRegionInfoRequest, type RegionInfo } from '../protocol/region.js';
import { native } from '../native/addon.js';
import type { MediatedMessage, MediatorSessionContext } from './types.js';

/** A region's information as the upstream gives it, with its fd for mmap (the caller owns and closes it). */
export interface UpstreamRegionInfo {
  info: RegionInfo;
  fd: number | undefined;
}

/** A DMA_MAP of the mediator's own. */
export interface UpstreamDmaMap {
  addr: bigint;
  size: bigint;
  /** DmaMapFlags bits. */
  flags: number;
  /** Offset of `addr` in the fd (default 0). */
  offset?: bigint;
}

/** Per-call options. */
export interface UpstreamCallOptions {
  /** Reply timeout (default: the mediator's upstreamTimeoutMs). */
  timeoutMs?: number;
}

function capability(json: Record<string, unknown> | undefined, key: string): number | undefined {
  const caps = json?.['capabilities'];
  if (typeof caps !== 'object' || caps === null) return undefined;
  const v = (caps as Record<string, unknown>)[key];
  return typeof v === 'number' && Number.isInteger(v) && v > 0 ? v : undefined;
}

/**
 * The largest data count of one region/DMA/migration-data message in this
 * session: the smaller `max_data_xfer_size` of the client's and the upstream's
 * VERSION (1 MiB for one that said none, and before VERSION).
 */
export function sessionMaxTransfer(ctx: MediatorSessionContext): number {
  const v = ctx.version;
  const client = capability(v?.client, 'max_data_xfer_size') ?? DEFAULT_MAX_DATA_XFER_SIZE;
  const upstream = capability(v?.upstream, 'max_data_xfer_size') ?? DEFAULT_MAX_DATA_XFER_SIZE;
  return Math.max(1, Math.min(client, upstream));
}

/** @throws {StateError} EAGAIN before VERSION. */
function negotiated(ctx: MediatorSessionContext, what: string): void {
  if (ctx.version === undefined) throw new StateError(`${what}: the session has not negotiated VERSION yet`, { errno: Errno.EAGAIN });
}

/** Sends one of the mediator's own requests upstream, after VERSION. */
function ask(ctx: MediatorSessionContext, cmd: number, payload: Uint8Array, fds: readonly number[] | undefined, timeoutMs: number | undefined): Promise<MediatedMessage> {
  try {
    negotiated(ctx, commandName(cmd));
  } catch (error) {
    return Promise.reject(error as Error);
  }
  return ctx.upstreamRequest(cmd, payload, fds, timeoutMs);
}

/** Closes every fd of a reply nobody wants. */
function dropFds(m: MediatedMessage): void {
  for (const fd of m.fds) native.close(fd);
}

/** Sends a request whose reply carries no fd we keep. */
async function call(ctx: MediatorSessionContext, cmd: number, payload: Uint8Array, o: UpstreamCallOptions, fds?: readonly number[]): Promise<Uint8Array> {
  const reply = await ask(ctx, cmd, payload, fds, o.timeoutMs);
  dropFds(reply);
  return reply.payload;
}

function mismatch(what: string): ProtocolError {
  return new ProtocolError(`upstream ${what} reply does not answer the request`, { errno: Errno.EPROTO });
}

/**
 * REGION_READ of `count` bytes at `offset` of `region`, split to {@link sessionMaxTransfer}.
 * @throws {RemoteError} EINVAL for an access the device refuses; ENOTCONN/ETIMEDOUT; EPROTO for a reply of the wrong access.
 */
export async function upstreamRegionRead(ctx: MediatorSessionContext, region: number, offset: bigint, count: number, o: UpstreamCallOptions = {}): Promise<Uint8Array> {
  const chunk = sessionMaxTransfer(ctx);
  const out = new Uint8Array(count);
  for (let done = 0; done < count || (count === 0 && done === 0); done += chunk) {
    const n = Math.min(chunk, count - done);
    const at = offset + BigInt(done);
    const payload = await call(ctx, Command.REGION_READ, encodeRegionAccess({ offset: at, region, count: n }), o);
    const reply = decodeRegionReadReply(payload);
    if (n === 0) break;
    if (!reply || reply.count !== n || reply.offset !== at || reply.region !== region) throw mismatch('REGION_READ');
    out.set(reply.data, done);
  }
  return out;
}

/**
 * REGION_WRITE of `data` at `offset` of `region`, split to {@link sessionMaxTransfer}.
 * @throws {RemoteError} EINVAL for an access the device refuses; ENOTCONN/ETIMEDOUT.
 */
export async function upstreamRegionWrite(ctx: MediatorSessionContext, region: number, offset: bigint, data: Uint8Array, o: UpstreamCallOptions = {}): Promise<void> {
  const chunk = sessionMaxTransfer(ctx);
  for (let done = 0; done < data.length || (data.length === 0 && done === 0); done += chunk) {
    const part = data.subarray(done, done + chunk);
    await call(ctx, Command.REGION_WRITE, encodeRegionAccessWithData({ offset: offset + BigInt(done), region, count: part.length, data: part }), o);
    if (data.length === 0) break;
  }
}

/**
 * DEVICE_GET_REGION_INFO of `index`, asking again with the argsz the upstream
 * says it needs, so the capability chain is whole. The fd, if any, is the caller's.
 * @throws {RemoteError} EINVAL for an index the device does not have; ENOTCONN/ETIMEDOUT.
 */
export async function upstreamRegionInfo(ctx: MediatorSessionContext, index: number, o: UpstreamCallOptions & { argsz?: number } = {}): Promise<UpstreamRegionInfo> {
  let argsz = Math.max(REGION_INFO_SIZE, o.argsz ?? 4096);
  for (let attempt = 0; ; attempt++) {
    const reply = await ask(ctx, Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz, index }), undefined, o.timeoutMs);
    let info: RegionInfo;
    try {
      info = decodeRegionInfo(reply.payload);
    } catch (error) {
      dropFds(reply);
      throw error;
    }
    if (info.argsz > argsz && attempt === 0) {
      dropFds(reply);
      argsz = info.argsz;
      continue;
    }
    const [fd, ...extra] = reply.fds;
    for (const e of extra) native.close(e);
    return { info, fd };
  }
}

/** DEVICE_GET_INFO. @throws {RemoteError} the device's errno; ENOTCONN/ETIMEDOUT. */
export async function upstreamDeviceInfo(ctx: MediatorSessionContext, o: UpstreamCallOptions = {}): Promise<DeviceInfo> {
  return decodeDeviceInfo(await call(ctx, Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: DEVICE_INFO_SIZE, flags: 0, numRegions: 0, numIrqs: 0 }), o));
}

/** DEVICE_GET_IRQ_INFO. @throws {RemoteError} EINVAL for an index beyond the device's; ENOTCONN/ETIMEDOUT. */
export async function upstreamIrqInfo(ctx: MediatorSessionContext, index: number, o: UpstreamCallOptions = {}): Promise<IrqInfo> {
  return decodeIrqInfo(await call(ctx, Command.DEVICE_GET_IRQ_INFO, encodeIrqInfo({ argsz: IRQ_INFO_SIZE, flags: 0, index, count: 0 }), o));
}

/**
 * DEVICE_SET_IRQS of the mediator's own (`fds` borrowed: the mediator sends copies).
 * @throws {RemoteError} EINVAL for a rule the device refuses; ENOTCONN/ETIMEDOUT.
 */
export async function upstreamSetIrqs(ctx: MediatorSessionContext, set: Omit<IrqSet, 'argsz'>, fds: readonly number[] = [], o: UpstreamCallOptions = {}): Promise<void> {
  await call(ctx, Command.DEVICE_SET_IRQS, encodeIrqSet({ ...set, argsz: IRQ_SET_SIZE + (set.data?.length ?? 0) }), o, fds);
}

/**
 * DMA_MAP: with `fd` (borrowed) the upstream maps the memory itself, without it its DMA comes as messages.
 * @throws {RemoteError} EINVAL/EEXIST/ENOSPC as the device refuses; ENOTCONN/ETIMEDOUT.
 */
export async function upstreamDmaMap(ctx: MediatorSessionContext, map: UpstreamDmaMap, fd?: number, o: UpstreamCallOptions = {}): Promise<void> {
  const payload = encodeDmaMapRequest({ argsz: DMA_MAP_SIZE, flags: map.flags, offset: map.offset ?? 0n, addr: map.addr, size: map.size });
  await call(ctx, Command.DMA_MAP, payload, o, fd === undefined ? undefined : [fd]);
}

/**
 * DMA_UNMAP of one mapping (or every mapping with `all`); with `dirtyPageSize` the reply carries its dirty bitmap.
 * @throws {RemoteError} ENOENT when no mapping matches; EINVAL for a bitmap while not logging; ENOTCONN/ETIMEDOUT.
 */
export async function upstreamDmaUnmap(ctx: MediatorSessionContext, addr: bigint, size: bigint, o: UpstreamCallOptions & { all?: boolean; dirtyPageSize?: bigint } = {}): Promise<DmaUnmapReply> {
  if (o.all) {
    const payload = encodeDmaUnmapRequest({ argsz: DMA_UNMAP_SIZE, flags: DmaUnmapFlags.ALL, addr: 0n, size: 0n });
    return decodeDmaUnmapReply(await call(ctx, Command.DMA_UNMAP, payload, o));
  }
  const pgsize = o.dirtyPageSize;
  const bitmap = pgsize === undefined ? undefined : { pgsize, size: bitmapBytes(size, pgsize) };
  const argsz = DMA_UNMAP_SIZE + (bitmap ? DMA_BITMAP_SIZE + Number(bitmap.size) : 0);
  const flags = bitmap ? DmaUnmapFlags.GET_DIRTY_BITMAP : 0;
  const payload = encodeDmaUnmapRequest({ argsz, flags, addr, size, ...(bitmap ? { bitmap } : {}) });
  return decodeDmaUnmapReply(await call(ctx, Command.DMA_UNMAP, payload, o));
}

/**
 * DEVICE_FEATURE: `flags` = feature index | GET/SET/PROBE; `argsz` the largest reply accepted (default 8 + data + 4 KiB).
 * @throws {RemoteError} EINVAL for a feature or operation the device does not have; ENOTCONN/ETIMEDOUT.
 */
export async function upstreamFeature(ctx: MediatorSessionContext, flags: number, data: Uint8Array = new Uint8Array(0), o: UpstreamCallOptions & { argsz?: number } = {}): Promise<DeviceFeaturePayload> {
  const argsz = o.argsz ?? DEVICE_FEATURE_SIZE + data.length + 4096;
  return decodeDeviceFeature(await call(ctx, Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz, flags, data }), o));
}

/** MIG_DEVICE_STATE GET: the device's migration state. @throws {RemoteError} EINVAL without migration support; ENOTCONN/ETIMEDOUT. */
export async function upstreamMigState(ctx: MediatorSessionContext, o: UpstreamCallOptions = {}): Promise<number> {
  const reply = await upstreamFeature(ctx, DeviceFeature.MIG_DEVICE_STATE | DeviceFeatureFlags.GET, new Uint8Array(0), { ...o, argsz: DEVICE_FEATURE_SIZE + 8 });
  return decodeMigDeviceState(reply.data).deviceState;
}

/** MIG_DEVICE_STATE SET. @throws {RemoteError} EINVAL for an arc the device refuses (EBUSY while mappings conflict, M5); ENOTCONN/ETIMEDOUT. */
export async function upstreamSetMigState(ctx: MediatorSessionContext, state: number, o: UpstreamCallOptions = {}): Promise<void> {
  await upstreamFeature(ctx, DeviceFeature.MIG_DEVICE_STATE | DeviceFeatureFlags.SET, encodeMigDeviceState({ deviceState: state, dataFd: -1 }), o);
}

/**
 * MIG_DATA_READ of at most `size` bytes (one message; `size` ≤ {@link sessionMaxTransfer}).
 * @returns the bytes (fewer than `size`, possibly none: no more data now).
 * @throws {RemoteError} EINVAL outside a saving state; ENOTCONN/ETIMEDOUT; EPROTO for more bytes than asked.
 */
export async function upstreamMigDataRead(ctx: MediatorSessionContext, size: number, o: UpstreamCallOptions = {}): Promise<Uint8Array> {
  const payload = await call(ctx, Command.MIG_DATA_READ, encodeMigDataReadRequest({ argsz: MIG_DATA_SIZE + size, size }), o);
  const reply = decodeMigDataReadReply(payload);
  if (reply.size > size) throw mismatch('MIG_DATA_READ');
  return reply.data;
}

/** MIG_DATA_WRITE of `data`, split to {@link sessionMaxTransfer}. @throws {RemoteError} EINVAL outside RESUMING; ENOTCONN/ETIMEDOUT. */
export async function upstreamMigDataWrite(ctx: MediatorSessionContext, data: Uint8Array, o: UpstreamCallOptions = {}): Promise<void> {
  const chunk = sessionMaxTransfer(ctx);
  for (let done = 0; done < data.length; done += chunk) {
    const part = data.subarray(done, done + chunk);
    await call(ctx, Command.MIG_DATA_WRITE, encodeMigData({ argsz: MIG_DATA_SIZE + part.length, size: part.length, data: part }), o);
  }
}

/** DEVICE_RESET. @throws {RemoteError} the device's errno; ENOTCONN/ETIMEDOUT. */
export async function upstreamReset(ctx: MediatorSessionContext, o: UpstreamCallOptions = {}): Promise<void> {
  await call(ctx, Command.DEVICE_RESET, new Uint8Array(0), o);
}

/**
 * DMA_READ of the client's memory (towards the client), split to {@link sessionMaxTransfer}.
 * @throws {RemoteError} EFAULT/EINVAL for memory the client does not have; ENOTCONN/ETIMEDOUT; EPROTO for a reply of the wrong size.
 */
export async function clientDmaRead(ctx: MediatorSessionContext, addr: bigint, count: number, o: UpstreamCallOptions = {}): Promise<Uint8Array> {
  const chunk = sessionMaxTransfer(ctx);
  const out = new Uint8Array(count);
  for (let done = 0; done < count; done += chunk) {
    const n = Math.min(chunk, count - done);
    negotiated(ctx, 'DMA_READ');
    const reply = await ctx.clientRequest(Command.DMA_READ, encodeDmaAccess({ addr: addr + BigInt(done), count: BigInt(n) }), undefined, o.timeoutMs);
    dropFds(reply);
    const access = decodeDmaReadReply(reply.payload);
    if (access.data.length !== n) throw mismatch('DMA_READ');
    out.set(access.data, done);
  }
  return out;
}

/** DMA_WRITE of `data` into the client's memory, split to {@link sessionMaxTransfer}. @throws {RemoteError} EFAULT/EINVAL; ENOTCONN/ETIMEDOUT. */
export async function clientDmaWrite(ctx: MediatorSessionContext, addr: bigint, data: Uint8Array, o: UpstreamCallOptions = {}): Promise<void> {
  const chunk = sessionMaxTransfer(ctx);
  for (let done = 0; done < data.length; done += chunk) {
    const part = data.subarray(done, done + chunk);
    negotiated(ctx, 'DMA_WRITE');
    const reply = await ctx.clientRequest(Command.DMA_WRITE, encodeDmaAccessWithData({ addr: addr + BigInt(done), count: BigInt(part.length), data: part }), undefined, o.timeoutMs);
    dropFds(reply);
  }
}
