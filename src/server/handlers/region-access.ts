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

/**
 * Validates one access and returns its offset as a number.
 * @throws {ProtocolError} EINVAL naming the broken rule.
 */
function checkAccess(ctx: HandlerContext, a: RegionAccess, write: boolean, what: string): number {
  const fail = (rule: string): never => {
    throw new ProtocolError(`${what} region ${a.region} offset 0x${a.offset.toString(16)} count ${a.count}: ${rule}`);
  };
  if (a.count > ctx.server.maxDataXferSize) fail(`count beyond max_data_xfer_size ${ctx.server.maxDataXferSize}`);
  if (a.region >= ctx.device.numRegions) fail('no such region');
  const desc = ctx.device.regionInfo(a.region);
  if (!desc || desc.size === 0n) fail('region not implemented');
  const d = desc as NonNullable<typeof desc>;
  if (a.offset + BigInt(a.count) > d.size) fail(`access beyond the region's ${d.size} bytes`);
  if (write && (d.flags & RegionInfoFlags.WRITE) === 0) fail('region is not writable');
  if (!write && (d.flags & RegionInfoFlags.READ) === 0) fail('region is not readable');
  return Number(a.offset);
}

function checkLength(data: Uint8Array, count: number, what: string): Uint8Array {
  if (data.length !== count) throw new ProtocolError(`${what}: the device returned ${data.length} bytes for a ${count}-byte read`);
  return data;
}

/** REGION_READ: replies with the access echoed and `count` bytes. */
export const handleRegionRead: Handler<Req<typeof Command.REGION_READ>> = (ctx, request) => {
  const a = request.body;
  const offset = checkAccess(ctx, a, false, 'REGION_READ');
  const reply = (data: Uint8Array): HandlerReply => ({ payload: encodeRegionAccessWithData({ ...a, data: checkLength(data, a.count, 'REGION_READ') }) });
  if (a.count === 0) return reply(new Uint8Array(0));
  const data = ctx.device.regionRead(a.region, offset, a.count);
  return data instanceof Promise ? data.then(reply) : reply(data);
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
