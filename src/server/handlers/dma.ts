/**
 * DMA_MAP and DMA_UNMAP: argument rules here, mapping rules in the device's
 * {@link DmaController} (overlap, exact unmap, file size, limits).
 */
import { ProtocolError } from '../../errors.js';
import { Command, DMA_BITMAP_SIZE, DMA_MAP_SIZE, DMA_UNMAP_SIZE, DmaUnmapFlags, SERVER_MAX_DATA_XFER_SIZE } from '../../protocol/constants.js';
import { encodeDmaUnmapReply } from '../../protocol/dma.js';
import { bitmapBytes } from '../../protocol/feature.js';
import type { DecodedRequest } from '../../protocol/request.js';
import type { Handler } from '../types.js';

type Req<C extends number> = Extract<DecodedRequest, { cmd: C }>;

function rule(ok: boolean, what: string): void {
  if (!ok) throw new ProtocolError(what);
}

/**
 * DMA_MAP: argsz ≥ 32; the fd (if any) is handed to the DMA controller, which
 * enforces the `max_dma_maps` this server advertised (EINVAL beyond it).
 */
export const handleDmaMap: Handler<Req<typeof Command.DMA_MAP>> = (ctx, request, fds, use) => {
  rule(request.body.argsz >= DMA_MAP_SIZE, `DMA_MAP: argsz ${request.body.argsz} below ${DMA_MAP_SIZE}`);
  const fd = use > 0 ? fds.take(0) : undefined;
  const region = ctx.dma.map(request.body, fd, { maxRegions: ctx.server.maxDmaMaps });
  try {
    ctx.device.dmaMapped?.(region);
  } catch (err) {
    ctx.logger.error({ err }, 'device DMA map hook failed');
  }
  return undefined;
};

/**
 * DMA_UNMAP: flags exactly 0, GET_DIRTY_BITMAP or ALL (ALL with addr = size = 0);
 * 24 ≤ argsz ≤ 1 MiB (with a bitmap, room for it too); replies with the request
 * echoed (plus the bitmap).
 */
export const handleDmaUnmap: Handler<Req<typeof Command.DMA_UNMAP>> = (ctx, request) => {
  const { argsz, flags, addr, size, bitmap } = request.body;
  rule(flags === 0 || flags === DmaUnmapFlags.GET_DIRTY_BITMAP || flags === DmaUnmapFlags.ALL, `DMA_UNMAP: flags 0x${flags.toString(16)} not supported`);
  rule(argsz >= DMA_UNMAP_SIZE && argsz <= SERVER_MAX_DATA_XFER_SIZE, `DMA_UNMAP: argsz ${argsz} out of range`);
  const echo = { argsz: DMA_UNMAP_SIZE, flags, addr, size };
  if (flags === DmaUnmapFlags.ALL) {
    rule(addr === 0n && size === 0n, 'DMA_UNMAP: ALL requires addr = size = 0');
    ctx.dma.unmapAll();
    return { payload: encodeDmaUnmapReply(echo) };
  }
  if (!bitmap) {
    ctx.dma.unmap(addr, size);
    return { payload: encodeDmaUnmapReply(echo) };
  }
  rule(bitmap.pgsize > 0n && (bitmap.pgsize & (bitmap.pgsize - 1n)) === 0n, `DMA_UNMAP: bitmap page size ${bitmap.pgsize} is not a power of two`);
  const needed = bitmapBytes(size, bitmap.pgsize);
  rule(bitmap.size === needed, `DMA_UNMAP: bitmap size ${bitmap.size} but ${needed} bytes are needed`);
  rule(BigInt(argsz) >= BigInt(DMA_UNMAP_SIZE + DMA_BITMAP_SIZE) + needed, `DMA_UNMAP: argsz ${argsz} has no room for the bitmap`);
  const { bitmap: data } = ctx.dma.unmapWithDirtyBitmap(addr, size, bitmap.pgsize);
  return { payload: encodeDmaUnmapReply({ ...echo, argsz: DMA_UNMAP_SIZE + DMA_BITMAP_SIZE + data.length, bitmap: { pgsize: bitmap.pgsize, size: bitmap.size, data } }) };
};
