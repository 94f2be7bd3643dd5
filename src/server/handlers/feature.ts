/**
 * DEVICE_FEATURE (16): the rules every feature shares, then the feature's own
 * GET or SET. Rules, in order (one check each): only MASK/GET/SET/PROBE bits;
 * a feature this device has; PROBE → the asked GET/SET bits are supported,
 * nothing is touched; otherwise exactly one of GET and SET, supported by the
 * feature; GET → argsz covers the reply, checked before the GET acts when the
 * feature can say its reply size (FeatureHandler.replySize); a feature may instead answer a too small argsz
 * with the header alone and the size needed (FeatureReplyTooSmall, as GET_REGION_INFO). SET and PROBE replies echo the
 * request (argsz unchanged); a failed SET or PROBE echoes it too, with the
 * ERROR flag, as libvfio-user does.
 */
import { ProtocolError } from '../../errors.js';
import { Command, DeviceFeatureFlags } from '../../protocol/constants.js';
import { encodeDeviceFeature, type DeviceFeaturePayload } from '../../protocol/feature.js';
import { ClientMmapsFeature } from '../../protocol/mmap-saving.js';
import type { DecodedRequest } from '../../protocol/request.js';
import type { ReceivedFds } from '../../transport/fds.js';
import { ReplyWithPayload, errnoOf } from '../reply-error.js';
import type { FeatureHandler, FeatureTable } from '../features.js';
import type { Handler, HandlerContext, HandlerReply } from '../types.js';
import { DMA_LOGGING_FEATURES } from './dma-logging.js';

type Req = Extract<DecodedRequest, { cmd: typeof Command.DEVICE_FEATURE }>;

const { MASK, GET, SET, PROBE } = DeviceFeatureFlags;
const KNOWN_BITS = MASK | GET | SET | PROBE;
const LIBRARY_FEATURES: FeatureTable = new Map(DMA_LOGGING_FEATURES);

/**
 * The session's own features (x-isolation-group; x-client-mmaps when negotiated), the device's (migration), then
 * the library's (DMA logging).
 */
function featureFor(ctx: HandlerContext, index: number): FeatureHandler | undefined {
  const session = ctx.sessionFeatures?.get(index) ?? (index === ClientMmapsFeature.INDEX && ctx.mmapSaving?.negotiated ? ctx.mmapSaving.feature() : undefined);
  return session ?? ctx.device.features?.().get(index) ?? LIBRARY_FEATURES.get(index);
}

/** DEVICE_FEATURE. @throws {ReplyWithPayload} for a failed SET/PROBE (the request echoed); {@link ProtocolError} EINVAL otherwise. */
export const handleDeviceFeature: Handler<Req> = async (ctx, request, fds) => {
  const body = request.body;
  const echoOnFailure = (body.flags & (SET | PROBE)) !== 0;
  try {
    return await run(ctx, body, fds);
  } catch (error) {
    if (!echoOnFailure) throw error;
    throw new ReplyWithPayload((error as Error).message, errnoOf(error), encodeDeviceFeature(body));
  }
};

async function run(ctx: HandlerContext, body: DeviceFeaturePayload, fds: ReceivedFds): Promise<HandlerReply> {
  const { argsz, flags, data } = body;
  const index = flags & MASK;
  const fail = (rule: string): never => {
    throw new ProtocolError(`DEVICE_FEATURE ${index} (flags 0x${flags.toString(16)}): ${rule}`);
  };
  if ((flags & ~KNOWN_BITS) !== 0) fail('unknown flag bits');
  const feature = featureFor(ctx, index);
  if (!feature) return fail('the device has no such feature');
  const ops = flags & (GET | SET);
  if (flags & PROBE) {
    if ((ops & ~feature.ops) !== 0) fail('operation not supported');
    if (argsz < 8 + data.length) fail('argsz below the request');
    return { payload: encodeDeviceFeature(body) };
  }
  if (ops !== GET && ops !== SET) fail('exactly one of GET and SET is required without PROBE');
  if ((feature.ops & ops) === 0) fail(`${ops === GET ? 'GET' : 'SET'} not supported`);
  if (ops === GET) {
    const fits = (length: number): void => {
      if (argsz < 8 + length) fail(`argsz ${argsz} cannot hold the ${8 + length}-byte reply`);
    };
    // Validate, then act: a GET that changes state (REPORT clears the log) is measured before it runs.
    if (feature.replySize) fits(feature.replySize(ctx, data));
    const reply = await (feature.get as NonNullable<FeatureHandler['get']>)(ctx, data, argsz);
    if (!(reply instanceof Uint8Array)) return { payload: encodeDeviceFeature({ argsz: reply.needed, flags, data: new Uint8Array(0) }) };
    fits(reply.length);
    return { payload: encodeDeviceFeature({ argsz: 8 + reply.length, flags, data: reply }) };
  }
  if (argsz < 8 + data.length) fail('argsz below the request');
  const echoed = await (feature.set as NonNullable<FeatureHandler['set']>)(ctx, data, fds);
  return { payload: encodeDeviceFeature({ argsz, flags, data: echoed ?? data }) };
}
