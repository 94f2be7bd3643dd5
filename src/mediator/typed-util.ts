/**
 * Plumbing shared by the typed layer's handlers: synchronous-when-possible
 * chaining (the mediator's fast path needs no Promise when a hook answers
 * synchronously), and turning typed decisions into the core's verdicts.
 */
import { InvalidArgumentError } from '../errors.js';
import { MAX_ERRNO } from '../protocol/errno.js';
import type { MaybePromise, MediatedMessage, MediatorSessionContext, Verdict } from './types.js';

/** A handler of one command number for one direction. */
export type CommandHandler = (msg: MediatedMessage, ctx: MediatorSessionContext) => MaybePromise<Verdict>;

/** A handler of the reply to one command number. */
export type ReplyHandler = (reply: MediatedMessage, request: MediatedMessage, ctx: MediatorSessionContext) => MaybePromise<Verdict>;

/** Whether `v` is a promise (or any thenable). */
export function isPromise<T>(v: MaybePromise<T>): v is Promise<T> {
  return typeof (v as { then?: unknown } | null | undefined)?.then === 'function';
}

/** `f(v)`, after `v` resolves if it is a promise: synchronous values stay synchronous. */
export function then<T, U>(v: MaybePromise<T>, f: (t: T) => MaybePromise<U>): MaybePromise<U> {
  return isPromise(v) ? v.then(f) : f(v);
}

/** `f` over `items` one after the other (each call after the previous result resolved); synchronous while the results are. */
export function mapSequential<T, U>(items: readonly T[], f: (t: T) => MaybePromise<U>): MaybePromise<U[]> {
  const out: U[] = [];
  for (let i = 0; i < items.length; i++) {
    const r = f(items[i] as T);
    if (isPromise(r)) {
      return (async () => {
        out.push(await r);
        for (let j = i + 1; j < items.length; j++) out.push(await f(items[j] as T));
        return out;
      })();
    }
    out.push(r);
  }
  return out;
}

/** Decodes with `decode`, or `undefined` when the bytes are malformed (they are then forwarded untouched: the peer answers them). */
export function tryDecode<T>(decode: (payload: Uint8Array) => T, payload: Uint8Array): T | undefined {
  try {
    return decode(payload);
  } catch {
    return undefined;
  }
}

/** The error a hook's unusable decision becomes (an EINVAL error reply, via the core). */
export function badDecision(plugin: string, hook: string, why: string): InvalidArgumentError {
  return new InvalidArgumentError(`mediator plugin '${plugin}': ${hook} decision ${why}`);
}

/**
 * The verdict of a decision common to every hook (`error`, `drop`,
 * `disconnect`), `null` for an `undefined` decision (forward), or
 * `false` when the decision is a hook-specific one.
 * @throws {InvalidArgumentError} EINVAL for an errno outside 1..4095 or a decision that is not an object.
 */
export function commonVerdict(plugin: string, hook: string, d: unknown): Verdict | null | false {
  if (d === undefined) return null;
  if (typeof d !== 'object' || d === null) throw badDecision(plugin, hook, `is not an object: ${String(d)}`);
  if ('error' in d) {
    const errno = (d as { error: unknown }).error;
    if (typeof errno !== 'number' || !Number.isInteger(errno) || errno <= 0 || errno >= MAX_ERRNO) {
      throw badDecision(plugin, hook, `has errno ${String(errno)}, not an integer in 1..${MAX_ERRNO - 1}`);
    }
    return { error: errno };
  }
  if ('drop' in d && (d as { drop: unknown }).drop === true) return { drop: true };
  if ('disconnect' in d && (d as { disconnect: unknown }).disconnect === true) return { disconnect: true };
  return false;
}

/** An empty reply payload. */
export const EMPTY = new Uint8Array(0);
