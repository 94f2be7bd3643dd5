/**
 * DEVICE_GET_INFO, DEVICE_GET_REGION_INFO (with the argsz-retry protocol and
 * the sparse-mmap capability plus its fd), DEVICE_GET_REGION_IO_FDS and
 * DEVICE_GET_IRQ_INFO. Validate, then act; each rejection names its rule.
 */
import { ProtocolError } from '../../errors.js';
import {
  CAP_HEADER_SIZE,
  SPARSE_MMAP_CAP_SIZE,
  Command,
  DEVICE_INFO_SIZE,
  IRQ_INFO_SIZE,
  IrqInfoFlags,
  REGION_INFO_SIZE,
  REGION_IO_FDS_SIZE,
  RegionInfoFlags,
  SERVER_MAX_DATA_XFER_SIZE,
  SPARSE_MMAP_AREA_SIZE,
  SPARSE_MMAP_CAP_VERSION,
  SUB_REGION_IO_FD_SIZE,
  IoFdType,
} from '../../protocol/constants.js';
import { encodeDeviceInfo } from '../../protocol/device.js';
import { encodeRegionInfo, type RegionCap, type RegionInfo } from '../../protocol/region.js';
import { encodeRegionIoFdsReply, type SubRegionIoFd } from '../../protocol/region-io-fds.js';
import { encodeIrqInfo } from '../../protocol/irq.js';
import type { DecodedRequest } from '../../protocol/request.js';
import type { Handler, HandlerReply } from '../types.js';

type Req<C extends number> = Extract<DecodedRequest, { cmd: C }>;

function rule(ok: boolean, what: string): void {
  if (!ok) throw new ProtocolError(what);
}

/** DEVICE_GET_INFO: argsz ≥ 16. */
export const handleDeviceGetInfo: Handler<Req<typeof Command.DEVICE_GET_INFO>> = (ctx, request) => {
  rule(request.body.argsz >= DEVICE_INFO_SIZE, `DEVICE_GET_INFO: argsz ${request.body.argsz} below ${DEVICE_INFO_SIZE}`);
  const { device } = ctx;
  return { payload: encodeDeviceInfo({ argsz: DEVICE_INFO_SIZE, flags: device.infoFlags, numRegions: device.numRegions, numIrqs: device.numIrqs }) };
};

/**
 * DEVICE_GET_REGION_INFO: argsz ≥ 32, index < num_regions. When the
 * capabilities do not fit in the client's argsz, the reply says how much is
 * needed (argsz), without CAPS and without the fd, and the client retries.
 */
export const handleGetRegionInfo: Handler<Req<typeof Command.DEVICE_GET_REGION_INFO>> = (ctx, request): HandlerReply => {
  const { argsz, index } = request.body;
  rule(argsz >= REGION_INFO_SIZE, `GET_REGION_INFO: argsz ${argsz} below ${REGION_INFO_SIZE}`);
  rule(index < ctx.device.numRegions, `GET_REGION_INFO: no region ${index}`);
  const desc = ctx.device.regionInfo(index);
  const base: RegionInfo = { argsz: REGION_INFO_SIZE, flags: 0, index, capOffset: 0, size: 0n, offset: 0n, caps: [] };
  if (!desc) return { payload: encodeRegionInfo(base) };
  // A client that takes no fds (max_msg_fds 0) cannot map anything: it gets the region without caps.
  const canSendFd = desc.fd !== undefined && ctx.client.maxMsgFds > 0;
  const areas = canSendFd ? (desc.sparse ?? [{ offset: 0n, size: desc.size }]) : [];
  // SPARSE_MMAP_SAVING (src/server/mmap-saving.ts): only next to the sparse-mmap cap, only to a client that negotiated it.
  const saving = areas.length > 0 ? ctx.mmapSaving?.savingCap(desc) : undefined;
  const savingSize = saving ? CAP_HEADER_SIZE + saving.data.length : 0;
  const needed = REGION_INFO_SIZE + (areas.length > 0 ? SPARSE_MMAP_CAP_SIZE + SPARSE_MMAP_AREA_SIZE * areas.length : 0) + savingSize;
  const info: RegionInfo = { ...base, argsz: needed, flags: desc.flags, size: desc.size, offset: desc.fdOffset };
  if (areas.length === 0 || argsz < needed) {
    const flags = desc.flags & ~RegionInfoFlags.CAPS & (canSendFd ? ~0 : ~RegionInfoFlags.MMAP);
    return { payload: padTo(encodeRegionInfo({ ...info, flags }), Math.min(argsz, needed)) };
  }
  const caps: RegionCap[] = [{ kind: 'sparse-mmap' as const, version: SPARSE_MMAP_CAP_VERSION, areas: [...areas] }];
  if (saving) caps.push(saving);
  ctx.mmapSaving?.fdGiven(index);
  return {
    payload: encodeRegionInfo({ ...info, flags: desc.flags | RegionInfoFlags.CAPS | RegionInfoFlags.MMAP, capOffset: REGION_INFO_SIZE, caps }),
    fds: [desc.fd as number],
  };
};

/** Zero-pads a reply to `length` bytes (what libvfio-user sends when caps do not fit). */
function padTo(bytes: Uint8Array, length: number): Uint8Array {
  if (bytes.length >= length) return bytes;
  const out = new Uint8Array(length);
  out.set(bytes);
  return out;
}

/**
 * DEVICE_GET_REGION_IO_FDS: 16 ≤ argsz ≤ 1 MiB, flags = count = 0, a readable or
 * writable region. Records (48-byte, libvfio-user's) and their fds only if they fit.
 */
export const handleGetRegionIoFds: Handler<Req<typeof Command.DEVICE_GET_REGION_IO_FDS>> = (ctx, request): HandlerReply => {
  const { argsz, flags, index, count } = request.body;
  rule(argsz >= REGION_IO_FDS_SIZE && argsz <= SERVER_MAX_DATA_XFER_SIZE, `GET_REGION_IO_FDS: argsz ${argsz} out of range`);
  rule(flags === 0, 'GET_REGION_IO_FDS: flags must be 0');
  rule(count === 0, 'GET_REGION_IO_FDS: count must be 0');
  rule(index < ctx.device.numRegions, `GET_REGION_IO_FDS: no region ${index}`);
  const desc = ctx.device.regionInfo(index);
  rule(desc !== undefined && (desc.flags & (RegionInfoFlags.READ | RegionInfoFlags.WRITE)) !== 0, `GET_REGION_IO_FDS: region ${index} is not accessible`);
  const ioFds = ctx.device.regionIoEventFds(index);
  const needed = REGION_IO_FDS_SIZE + SUB_REGION_IO_FD_SIZE * ioFds.length;
  const header = { argsz: needed, flags: 0, index, count: ioFds.length };
  if (argsz < needed) return { payload: encodeRegionIoFdsReply({ ...header, subRegions: [] }) };
  const fds: number[] = [];
  const distinct = new Set(ioFds.map((io) => io.fd)).size;
  rule(distinct <= ctx.client.maxMsgFds, `GET_REGION_IO_FDS: ${distinct} fds exceed the client's max_msg_fds ${ctx.client.maxMsgFds}`);
  const subRegions: SubRegionIoFd[] = ioFds.map((io) => {
    let fdIndex = fds.indexOf(io.fd);
    if (fdIndex < 0) fdIndex = fds.push(io.fd) - 1;
    return { offset: io.offset, size: io.size, fdIndex, type: IoFdType.IOEVENTFD, flags: io.flags, shadowMemFdIndex: 0, shadowOffset: 0n, datamatch: io.datamatch };
  });
  return { payload: encodeRegionIoFdsReply({ ...header, subRegions }), fds };
};

/** DEVICE_GET_IRQ_INFO: argsz ≥ 16, index < num_irqs; flags EVENTFD, the configured count. */
export const handleGetIrqInfo: Handler<Req<typeof Command.DEVICE_GET_IRQ_INFO>> = (ctx, request) => {
  const { argsz, index } = request.body;
  rule(argsz >= IRQ_INFO_SIZE, `GET_IRQ_INFO: argsz ${argsz} below ${IRQ_INFO_SIZE}`);
  rule(index < ctx.device.numIrqs, `GET_IRQ_INFO: no IRQ index ${index}`);
  return { payload: encodeIrqInfo({ argsz: IRQ_INFO_SIZE, flags: IrqInfoFlags.EVENTFD, index, count: ctx.device.irqs.count(index) }) };
};

/** DEVICE_SET_IRQS: the IRQ controller's rules, then install/disable/trigger/mask. */
export const handleSetIrqs: Handler<Req<typeof Command.DEVICE_SET_IRQS>> = (ctx, request, fds, use) => {
  ctx.device.irqs.validate(request.body);
  const taken = Array.from({ length: use }, (_, i) => fds.take(i));
  ctx.device.irqs.apply(request.body, taken);
  return undefined;
};
