/**
 * The few requests the migration plugin sends to the upstream on its own
 * (ctx.upstreamRequest and the protocol codecs): region reads and writes in
 * chunks, region info with its fd, DMA map and unmap.
 */
import { native } from '../../native/addon.js';
import { Command, DEFAULT_MAX_DATA_XFER_SIZE } from '../../protocol/constants.js';
import { encodeDmaMapRequest, encodeDmaUnmapRequest, type DmaMapRequest } from '../../protocol/dma.js';
import { decodeRegionInfo, encodeRegionInfoRequest, type RegionInfo } from '../../protocol/region.js';
import { decodeRegionReadReply, encodeRegionAccess, encodeRegionAccessWithData } from '../../protocol/region-access.js';
import { ProtocolError } from '../../errors.js';
import { Errno } from '../../protocol/errno.js';
import type { MediatedMessage, MediatorSessionContext } from '../types.js';

/** Largest chunk the plugin moves in one REGION_READ / REGION_WRITE. */
const MAX_CHUNK = 512 * 1024;
/** argsz of our GET_REGION_INFO (room for a long capability chain). */
const REGION_INFO_ARGSZ = 4096;

/** What the plugin asks of the upstream (a seam for tests and for M2's helpers). */
export interface UpstreamPort {
  /** @throws {RemoteError} the upstream's errno; ConnectionClosedError ENOTCONN; TimeoutError ETIMEDOUT. */
  regionRead(region: number, offset: bigint, count: number): Promise<Uint8Array>;
  regionWrite(region: number, offset: bigint, data: Uint8Array): Promise<void>;
  /** The region's info and its fd (the caller owns the fd). */
  regionInfo(index: number): Promise<{ info: RegionInfo; fd: number | undefined }>;
  dmaMap(request: DmaMapRequest, fd?: number): Promise<void>;
  dmaUnmap(addr: bigint, size: bigint): Promise<void>;
  /** Any command as given (its reply's fds closed). */
  raw(cmd: number, payload: Uint8Array): Promise<void>;
}

/** Closes the fds of a reply to one of our own requests (they are ours: ctx.upstreamRequest hands them over). */
function closeFds(m: MediatedMessage): void {
  for (const fd of m.fds) native.close(fd);
}

/** The upstream's max_data_xfer_size from its VERSION reply (default 1 MiB), capped at {@link MAX_CHUNK}. */
function chunkOf(ctx: MediatorSessionContext): number {
  const caps = ctx.version?.upstream['capabilities'] as Record<string, unknown> | undefined;
  const max = caps?.['max_data_xfer_size'];
  const n = typeof max === 'number' && Number.isInteger(max) && max > 0 ? max : DEFAULT_MAX_DATA_XFER_SIZE;
  return Math.min(n, MAX_CHUNK);
}

/** An {@link UpstreamPort} over a session's ctx.upstreamRequest. */
export function upstreamPort(ctx: MediatorSessionContext): UpstreamPort {
  const request = async (cmd: number, payload: Uint8Array, fds: readonly number[] = []): Promise<MediatedMessage> => ctx.upstreamRequest(cmd, payload, fds);
  return {
    async regionRead(region, offset, count) {
      const out = new Uint8Array(count);
      const chunk = chunkOf(ctx);
      for (let at = 0; at < count; at += chunk) {
        const n = Math.min(chunk, count - at);
        const reply = await request(Command.REGION_READ, encodeRegionAccess({ region, offset: offset + BigInt(at), count: n }));
        closeFds(reply);
        const decoded = decodeRegionReadReply(reply.payload);
        if (!decoded || decoded.data.length !== n) throw new ProtocolError(`REGION_READ of region ${region}: short reply`, { errno: Errno.EPROTO });
        out.set(decoded.data, at);
      }
      return out;
    },
    async regionWrite(region, offset, data) {
      const chunk = chunkOf(ctx);
      for (let at = 0; at < data.length; at += chunk) {
        const part = data.subarray(at, Math.min(data.length, at + chunk));
        closeFds(await request(Command.REGION_WRITE, encodeRegionAccessWithData({ region, offset: offset + BigInt(at), count: part.length, data: part })));
      }
    },
    async regionInfo(index) {
      const reply = await request(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: REGION_INFO_ARGSZ, index }));
      const [fd, ...extra] = reply.fds;
      for (const e of extra) native.close(e);
      try {
        return { info: decodeRegionInfo(reply.payload), fd };
      } catch (error) {
        if (fd !== undefined) native.close(fd);
        throw error;
      }
    },
    async dmaMap(req, fd) {
      closeFds(await request(Command.DMA_MAP, encodeDmaMapRequest(req), fd === undefined ? [] : [fd]));
    },
    async raw(cmd, payload) {
      closeFds(await request(cmd, payload));
    },
    async dmaUnmap(addr, size) {
      closeFds(await request(Command.DMA_UNMAP, encodeDmaUnmapRequest({ argsz: 24, flags: 0, addr, size })));
    },
  };
}
