/**
 * Helpers of the typed layer's unit tests: hand-made messages and a fake
 * session context whose upstream answers from a script.
 */
import type { Logger } from '../../src/log.js';
import type { MediatedMessage, MediatorPlugin, MediatorSessionContext, Verdict } from '../../src/mediator/types.js';
import { RemoteError } from '../../src/errors.js';

export const REPLY = 0x1;
export const ERROR = 0x20;

/** A command as a plugin sees it. */
export function cmdMsg(cmd: number, payload: Uint8Array = new Uint8Array(0), fds: readonly number[] = [], msgId = 7): MediatedMessage {
  return { header: { msgId, cmd, msgSize: 16 + payload.length, flags: 0, errorNo: 0 }, payload, fds };
}

/** A reply to `request`. */
export function replyMsg(request: MediatedMessage, payload: Uint8Array = new Uint8Array(0), errorNo = 0, fds: readonly number[] = []): MediatedMessage {
  return { header: { ...request.header, flags: REPLY | (errorNo ? ERROR : 0), errorNo, msgSize: 16 + payload.length }, payload, fds };
}

/** An upstream request the fake context saw. */
export interface SentRequest {
  cmd: number;
  payload: Uint8Array;
  fds: readonly number[];
}

/** The fake upstream: answers each request (payload + fds, or an errno to reject with). */
export type FakeUpstream = (req: SentRequest) => { payload?: Uint8Array; fds?: number[] } | { errno: number };

/** A fake session context. */
export interface FakeCtx extends MediatorSessionContext {
  sent: SentRequest[];
  clientSent: SentRequest[];
  warnings: object[];
}

/** A fake context; `upstream` answers the mediator's own requests, `client` its requests towards the client. */
export function fakeCtx(o: { upstream?: FakeUpstream; client?: FakeUpstream; maxXfer?: { client?: number; upstream?: number }; beforeVersion?: boolean } = {}): FakeCtx {
  const warnings: object[] = [];
  const log: Logger = { error() {}, warn: (obj: object) => void warnings.push(obj), info() {}, debug() {}, child: () => log };
  const sent: SentRequest[] = [];
  const clientSent: SentRequest[] = [];
  const answer = (answerer: FakeUpstream | undefined, list: SentRequest[], cmd: number, payload: Uint8Array = new Uint8Array(0), fds: readonly number[] = []): Promise<MediatedMessage> => {
    const req = { cmd, payload, fds: [...fds] };
    list.push(req);
    if (!answerer) return Promise.reject(new Error('no upstream in this test'));
    const a = answerer(req);
    if ('errno' in a) return Promise.reject(new RemoteError(`fake upstream: errno ${a.errno}`, cmd, a.errno));
    const p = a.payload ?? new Uint8Array(0);
    return Promise.resolve({ header: { msgId: 1000, cmd, msgSize: 16 + p.length, flags: REPLY, errorNo: 0 }, payload: p, fds: a.fds ?? [] });
  };
  const caps = (n: number | undefined): Record<string, unknown> => (n === undefined ? {} : { capabilities: { max_data_xfer_size: n } });
  return {
    id: 1,
    client: undefined,
    log,
    state: new Map(),
    version: o.beforeVersion ? undefined : { client: caps(o.maxXfer?.client), upstream: caps(o.maxXfer?.upstream) },
    upstreamRequest: (cmd, payload, fds) => answer(o.upstream, sent, cmd, payload, fds),
    clientRequest: (cmd, payload, fds) => answer(o.client, clientSent, cmd, payload, fds),
    close() {},
    sent,
    clientSent,
    warnings,
  };
}

/** Calls a plugin's onClientCommand (must exist). */
export function onCommand(p: MediatorPlugin, msg: MediatedMessage, ctx: MediatorSessionContext): Verdict | Promise<Verdict> {
  if (!p.onClientCommand) throw new Error(`${p.name} has no onClientCommand`);
  return p.onClientCommand(msg, ctx);
}

/** The payload of a `reply` verdict. */
export function replyPayload(v: Verdict): Uint8Array {
  if (!v || !('reply' in v)) throw new Error(`not a reply verdict: ${JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x))}`);
  return v.reply.payload ?? new Uint8Array(0);
}

/** The forwarded payload of a `forward` verdict. */
export function forwardPayload(v: Verdict): Uint8Array | undefined {
  if (!v || !('forward' in v)) throw new Error('not a forward verdict');
  return v.forward.payload;
}
