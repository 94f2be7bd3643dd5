/**
 * Running one kind of plugin hook over a message: plugins in registration
 * order, the first verdict other than a plain forward wins, a `forward` with
 * changes becomes the message the next plugin sees. Synchronous hooks run
 * without a Promise (the relay's fast path); the first hook that returns a
 * Promise turns the rest of the chain asynchronous.
 */
import { HEADER_SIZE } from '../protocol/constants.js';
import type { MaybePromise, MediatedMessage, Verdict } from './types.js';

/** What a chain of hooks decided. */
export type Outcome =
  /** Forward `msg` (the original, or as the last `forward` verdict changed it). */
  | { kind: 'forward'; msg: MediatedMessage }
  | { kind: 'reply'; payload: Uint8Array | undefined; fds: readonly number[] | undefined }
  | { kind: 'error'; errno: number }
  | { kind: 'drop' }
  | { kind: 'disconnect' }
  /** A hook threw or rejected (or returned something that is no verdict). */
  | { kind: 'thrown'; error: unknown; plugin: string };

/** One step: calls the hook of `index`-th plugin on `msg`. */
export type HookCall = (index: number, msg: MediatedMessage) => MaybePromise<Verdict>;

/** A hook's result that is not a verdict. */
export class BadVerdictError extends Error {
  readonly errno = 5; // EIO
  constructor(what: unknown) {
    super(`hook returned ${typeof what === 'object' ? JSON.stringify(what) : String(what)}, which is no verdict`);
    this.name = 'BadVerdictError';
  }
}

/**
 * Runs hooks `0..count-1` (only those `call` knows) on `msg`.
 * @param names - plugin names, for the `thrown` outcome.
 */
export function runChain(count: number, names: readonly string[], msg: MediatedMessage, call: HookCall): MaybePromise<Outcome> {
  return step(0, count, names, msg, call);
}

function step(start: number, count: number, names: readonly string[], msg: MediatedMessage, call: HookCall): MaybePromise<Outcome> {
  for (let i = start; i < count; i++) {
    let result: MaybePromise<Verdict>;
    try {
      result = call(i, msg);
    } catch (error) {
      return { kind: 'thrown', error, plugin: names[i] ?? '?' };
    }
    if (isPromise(result)) {
      return result.then(
        (verdict) => {
          const next = apply(verdict, msg, names[i] ?? '?');
          return next.kind === 'continue' ? step(i + 1, count, names, next.msg, call) : next;
        },
        (error: unknown) => ({ kind: 'thrown', error, plugin: names[i] ?? '?' }) as const,
      );
    }
    const next = apply(result, msg, names[i] ?? '?');
    if (next.kind !== 'continue') return next;
    msg = next.msg;
  }
  return { kind: 'forward', msg };
}

function isPromise<T>(value: MaybePromise<T>): value is Promise<T> {
  return typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function';
}

/** A verdict's effect: continue with a (possibly new) message, or a final outcome. */
function apply(verdict: Verdict, msg: MediatedMessage, plugin: string): Outcome | { kind: 'continue'; msg: MediatedMessage } {
  if (verdict === undefined) return { kind: 'continue', msg };
  if (typeof verdict !== 'object' || verdict === null) return { kind: 'thrown', error: new BadVerdictError(verdict), plugin };
  if ('forward' in verdict) {
    const f = verdict.forward ?? {};
    if (f.payload === undefined && f.fds === undefined) return { kind: 'continue', msg };
    const payload = f.payload ?? msg.payload;
    return { kind: 'continue', msg: { header: { ...msg.header, msgSize: HEADER_SIZE + payload.length }, payload, fds: f.fds ?? msg.fds } };
  }
  if ('reply' in verdict) return { kind: 'reply', payload: verdict.reply?.payload, fds: verdict.reply?.fds };
  if ('error' in verdict && Number.isInteger(verdict.error) && verdict.error > 0) return { kind: 'error', errno: verdict.error };
  if ('drop' in verdict && verdict.drop === true) return { kind: 'drop' };
  if ('disconnect' in verdict && verdict.disconnect === true) return { kind: 'disconnect' };
  return { kind: 'thrown', error: new BadVerdictError(verdict), plugin };
}
