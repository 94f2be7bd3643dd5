/**
 * REGION_READ, REGION_WRITE and REGION_WRITE_MULTI. Checks (libvfio-user's):
 * count ≤ max_data_xfer_size, an existing region, the access inside it, the
 * region readable/writable; then the device's access path (config space
 * emulation, MSI-X table, shared memory or the author's callbacks).
 */
import { ProtocolError } from '../../errors.js';
import { Command, RegionInfoFlags } from '../../protocol/constants.js';
import { encodeRegionAccess, encodeRegionAccessWithData, encodeRegionWriteMultiReply, type RegionAccess } from '../../protocol/region-access.js';
import type { DecodedRequest } from '../../protocol/request.js';
import type { Handler, HandlerContext, HandlerReply } from '../types.js';

type Req<C extends number> = Extract<DecodedRequest, { cmd: C }>;

/** Region sizes up to this are compared as numbers (exact: offset ≤ size, so offset + count < 2^53). */
const NUMBER_SIZE_LIMIT = 2n ** 52n;

function accessError(a: RegionAccess, what: string, rule: string): ProtocolError {
  return new ProtocolError(`${what} region ${a.region} offset 0x${a.offset.toString(16)} count ${a.count}: ${rule}`);
}

/**
 * Validates one access and returns its offset as a number.
 * @throws {ProtocolError} EINVAL naming the broken rule.
 */
function checkAccess(ctx: HandlerContext, a: RegionAccess, write: boolean, what: string): number {
  if (a.count > ctx.server.maxDataXferSize) throw accessError(a, what, `count beyond max_data_xfer_size ${ctx.server.maxDataXferSize}`);
  if (a.region >= ctx.device.numRegions) throw accessError(a, what, 'no such region');
  const d = ctx.device.regionInfo(a.region);
  if (!d || d.size === 0n) throw accessError(a, what, 'region not implemented');
  // offset + count > size, without allocating bigints when the region is small enough.
  const beyond = d.size <= NUMBER_SIZE_LIMIT ? a.offset > d.size || Number(a.offset) + a.count > Number(d.size) : a.offset + BigInt(a.count) > d.size;
  if (beyond) throw accessError(a, what, `access beyond the region's ${d.size} bytes`);
  if (write && (d.flags & RegionInfoFlags.WRITE) === 0) throw accessError(a, what, 'region is not writable');
  if (!write && (d.flags & RegionInfoFlags.READ) === 0) throw accessError(a, what, 'region is not readable');
  return Number(a.offset);
}

/** The REGION_READ reply: the access echoed and the bytes the device returned (exactly `count`). */
function readReply(a: RegionAccess, data: Uint8Array): HandlerReply {
  if (data.length !== a.count) throw new ProtocolError(`REGION_READ: the device returned ${data.length} bytes for a ${a.count}-byte read`);
  return { payload: encodeRegionAccessWithData({ offset: a.offset, region: a.region, count: a.count, data }) };
}

const NO_DATA = new Uint8Array(0);

/** REGION_READ: replies with the access echoed and `count` bytes. */
export const handleRegionRead: Handler<Req<typeof Command.REGION_READ>> = (ctx, request) => {
  const a = request.body;
  const offset = checkAccess(ctx, a, false, 'REGION_READ');
  if (a.count === 0) return readReply(a, NO_DATA);
  const data = ctx.device.regionRead(a.region, offset, a.count);
  return data instanceof Promise ? data.then((d) => readReply(a, d)) : readReply(a, data);
};

/** REGION_WRITE: replies with the access echoed. */
export const handleRegionWrite: Handler<Req<typeof Command.REGION_WRITE>> = (ctx, request) => {
  const a = request.body;
  const offset = checkAccess(ctx, a, true, 'REGION_WRITE');
  const reply: HandlerReply = { payload: encodeRegionAccess({ offset: a.offset, region: a.region, count: a.count }) };
  if (a.count === 0) return reply;
  const done = ctx.device.regionWrite(a.region, offset, a.data);
  return done instanceof Promise ? done.then(() => reply) : reply;
};

/**
 * REGION_WRITE_MULTI (only when advertised with `write_multiple`): every
 * write validated first, then performed in order; replies with the count.
 */
export const handleRegionWriteMulti: Handler<Req<typeof Command.REGION_WRITE_MULTI>> = async (ctx, request) => {
  if (!ctx.server.writeMultiple) throw new ProtocolError('REGION_WRITE_MULTI was not advertised');
  const writes = request.body.writes;
  const offsets = writes.map((w) => checkAccess(ctx, w, true, 'REGION_WRITE_MULTI'));
  for (let i = 0; i < writes.length; i++) {
    const w = writes[i]!;
    if (w.count > 0) await ctx.device.regionWrite(w.region, offsets[i]!, w.data);
  }
  return { payload: encodeRegionWriteMultiReply({ wrCnt: BigInt(writes.length) }) };
};
