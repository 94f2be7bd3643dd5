/**
 * DEVICE_FEATURE and migration for typed plugins: answer a feature here
 * (GET data, SET or PROBE acknowledged, as servers echo them), forward it
 * with other data, rewrite the upstream's answer; MIG_DEVICE_STATE as typed
 * get/set; MIG_DATA_READ / MIG_DATA_WRITE.
 */
import { ProtocolError } from '../errors.js';
import { DEVICE_FEATURE_SIZE, DeviceFeature, DeviceFeatureFlags, MIG_DATA_SIZE } from '../protocol/constants.js';
import { decodeDeviceFeature, decodeMigDeviceState, encodeDeviceFeature, encodeMigDeviceState, type DeviceFeaturePayload } from '../protocol/feature.js';
import { isError } from '../protocol/header.js';
import { decodeMigDataReadRequest, decodeMigDataWriteRequest, encodeMigData } from '../protocol/migration-data.js';
import type { MaybePromise, MediatorSessionContext, Verdict } from './types.js';
import type {
  FeatureDecision,
  FeatureEvent,
  FeatureReplyDecision,
  FeatureReplyEvent,
  Hook,
  MigDataReadDecision,
  MigDataReadEvent,
  MigDataWriteDecision,
  MigDataWriteEvent,
  MigStateDecision,
  MigStateEvent,
} from './typed-types.js';
import { badDecision, commonVerdict, EMPTY, then, tryDecode, type CommandHandler, type ReplyHandler } from './typed-util.js';

const { MASK, GET, SET, PROBE } = DeviceFeatureFlags;

/** The typed event of a decoded DEVICE_FEATURE. */
export function featureEvent(body: DeviceFeaturePayload): FeatureEvent {
  const ops = body.flags & (GET | SET);
  const op: FeatureEvent['op'] = (body.flags & PROBE) !== 0 ? 'probe' : ops === GET ? 'get' : ops === SET ? 'set' : 'invalid';
  return {
    feature: body.flags & MASK,
    op,
    probe: { get: (body.flags & GET) !== 0, set: (body.flags & SET) !== 0 },
    flags: body.flags,
    argsz: body.argsz,
    data: body.data,
  };
}

/**
 * The reply payload answering `body` with `reply` (GET: its data; SET/PROBE: the request echoed).
 * @throws {ProtocolError} EINVAL when a GET's data does not fit the client's argsz (as our server answers).
 * @throws {InvalidArgumentError} EINVAL for a GET answered `true`.
 */
function answer(plugin: string, hook: string, body: DeviceFeaturePayload, reply: unknown): Uint8Array {
  const event = featureEvent(body);
  if (event.op === 'get') {
    if (!(reply instanceof Uint8Array)) throw badDecision(plugin, hook, 'must reply data (a Uint8Array) to a GET');
    if (body.argsz < DEVICE_FEATURE_SIZE + reply.length) {
      throw new ProtocolError(`DEVICE_FEATURE ${event.feature}: argsz ${body.argsz} cannot hold the ${DEVICE_FEATURE_SIZE + reply.length}-byte reply`);
    }
    return encodeDeviceFeature({ argsz: DEVICE_FEATURE_SIZE + reply.length, flags: body.flags, data: reply });
  }
  if (reply === true) return encodeDeviceFeature(body);
  if (reply instanceof Uint8Array) return encodeDeviceFeature({ argsz: body.argsz, flags: body.flags, data: reply });
  throw badDecision(plugin, hook, 'must reply true or data');
}

function featureVerdict(plugin: string, body: DeviceFeaturePayload, d: FeatureDecision): Verdict {
  const common = commonVerdict(plugin, 'feature', d);
  if (common !== false) return common ?? undefined;
  if ('reply' in (d as object)) return { reply: { payload: answer(plugin, 'feature', body, (d as { reply: unknown }).reply) } };
  const data = (d as { forward?: { data?: unknown } }).forward?.data;
  if (!(data instanceof Uint8Array)) throw badDecision(plugin, 'feature', 'must be forward.data, reply, error, drop or disconnect');
  return { forward: { payload: encodeDeviceFeature({ argsz: body.argsz, flags: body.flags, data }) } };
}

function migStateEvent(body: DeviceFeaturePayload, op: FeatureEvent['op']): MigStateEvent | undefined {
  if (op === 'get') return { op: 'get' };
  if (op !== 'set') return undefined;
  const state = tryDecode(decodeMigDeviceState, body.data);
  return state ? { op: 'set', state: state.deviceState } : undefined;
}

function migStateVerdict(plugin: string, body: DeviceFeaturePayload, event: MigStateEvent, d: MigStateDecision): Verdict | null {
  const common = commonVerdict(plugin, 'migState', d);
  if (common === null) return null;
  if (common !== false) return common;
  const r = (d as { reply?: { state?: number } }).reply;
  if (typeof r !== 'object' || r === null) throw badDecision(plugin, 'migState', 'must be reply, error, drop or disconnect');
  if (event.op === 'set') return { reply: { payload: encodeDeviceFeature(body) } };
  if (r.state === undefined) throw badDecision(plugin, 'migState', 'must reply a state to a GET');
  return { reply: { payload: answer(plugin, 'migState', body, encodeMigDeviceState({ deviceState: r.state, dataFd: -1 })) } };
}

/** DEVICE_FEATURE through `migState` (MIG_DEVICE_STATE GET/SET) and then `feature`. */
export function featureHandler(
  plugin: string,
  feature: Hook<FeatureEvent, FeatureDecision> | undefined,
  migState: Hook<MigStateEvent, MigStateDecision> | undefined,
): CommandHandler {
  return (msg, ctx) => {
    const body = tryDecode(decodeDeviceFeature, msg.payload);
    if (!body) return undefined;
    const event = featureEvent(body);
    const general = (): MaybePromise<Verdict> => (feature ? then(feature(event, ctx), (d) => featureVerdict(plugin, body, d)) : undefined);
    const mig = migState && event.feature === DeviceFeature.MIG_DEVICE_STATE ? migStateEvent(body, event.op) : undefined;
    if (!migState || !mig) return general();
    return then(migState(mig, ctx), (d) => migStateVerdict(plugin, body, mig, d) ?? general());
  };
}

/** The upstream's answer to a DEVICE_FEATURE: keep, replace, or turn into an error. */
export function featureReplyHandler(plugin: string, hook: Hook<FeatureReplyEvent, FeatureReplyDecision>): ReplyHandler {
  return (reply, request, ctx: MediatorSessionContext) => {
    const body = tryDecode(decodeDeviceFeature, request.payload);
    if (!body) return undefined;
    const failed = isError(reply.header);
    const replied = failed ? undefined : tryDecode(decodeDeviceFeature, reply.payload);
    if (!failed && !replied) return undefined;
    const event: FeatureReplyEvent = { ...featureEvent(body), replyData: replied?.data, errno: failed ? reply.header.errorNo : 0 };
    return then(hook(event, ctx), (d): Verdict => {
      const common = commonVerdict(plugin, 'featureReply', d);
      if (common !== false) return common ?? undefined;
      if (!('reply' in (d as object))) throw badDecision(plugin, 'featureReply', 'must be reply or error');
      return { reply: { payload: answer(plugin, 'featureReply', body, (d as { reply: unknown }).reply) } };
    });
  };
}

/** MIG_DATA_READ: forward, or answer with at most `size` bytes. */
export function migDataReadHandler(plugin: string, hook: Hook<MigDataReadEvent, MigDataReadDecision>): CommandHandler {
  return (msg, ctx) => {
    const req = tryDecode(decodeMigDataReadRequest, msg.payload);
    if (!req) return undefined;
    return then(hook({ size: req.size, argsz: req.argsz }, ctx), (d): Verdict => {
      const common = commonVerdict(plugin, 'migDataRead', d);
      if (common !== false) return common ?? undefined;
      const data = (d as { reply?: unknown }).reply;
      if (!(data instanceof Uint8Array) || data.length > req.size) throw badDecision(plugin, 'migDataRead', `must reply at most ${req.size} bytes`);
      return { reply: { payload: encodeMigData({ argsz: MIG_DATA_SIZE + data.length, size: data.length, data }) } };
    });
  };
}

/** MIG_DATA_WRITE: forward, forward other bytes, or acknowledge here. */
export function migDataWriteHandler(plugin: string, hook: Hook<MigDataWriteEvent, MigDataWriteDecision>): CommandHandler {
  return (msg, ctx) => {
    const req = tryDecode(decodeMigDataWriteRequest, msg.payload);
    if (!req) return undefined;
    return then(hook({ data: req.data }, ctx), (d): Verdict => {
      const common = commonVerdict(plugin, 'migDataWrite', d);
      if (common !== false) return common ?? undefined;
      if ('reply' in (d as object) && (d as { reply: unknown }).reply === true) return { reply: { payload: EMPTY } };
      const data = (d as { forward?: { data?: unknown } }).forward?.data;
      if (!(data instanceof Uint8Array)) throw badDecision(plugin, 'migDataWrite', 'must be reply: true or forward.data');
      return { forward: { payload: encodeMigData({ argsz: MIG_DATA_SIZE + data.length, size: data.length, data }) } };
    });
  };
}
