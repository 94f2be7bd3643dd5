/**
 * Fault injection as a mediator plugin (docs/fault-injection.md): delays,
 * error replies, dropped or corrupted messages and disconnects at chosen
 * commands, phases and migration states, decided by a seeded PRNG so a run
 * can be reproduced.
 *
 * Where each rule acts:
 *
 * | target | `on=request` | `on=reply` |
 * |---|---|---|
 * | a client command (REGION_READ, …) | before the device sees it (error/drop/disconnect: it never does) | the device's reply, before the client sees it |
 * | an upstream command (DMA_READ, DMA_WRITE) | before the client sees it | the client's reply, before the device sees it |
 *
 * Rules are tried in order for each message; every rule whose target, phase
 * and state fit counts the message as matched; delays add up and corruptions
 * stack, and the first error, drop or disconnect injected ends the evaluation.
 * Counters (`after`, `count`) are the plugin's, across its sessions.
 */
import { InvalidArgumentError } from '../errors.js';
import type { Logger } from '../log.js';
import { Command, DeviceFeature, DeviceFeatureFlags, HeaderFlags, MigrationState, commandName } from '../protocol/constants.js';
import type { MediatedMessage, MediatorPlugin, MediatorSessionContext, Verdict } from './types.js';
import { ExtensionCapability } from '../protocol/migration-extensions.js';
import { FaultPhase, type FaultRule } from './fault-spec.js';
import { prngU32 } from '../prng.js';

export { parseFaultSpec, FaultKind, FaultPhase, MAX_CORRUPT_BYTES, MAX_DELAY_MS, type Fault, type FaultRule } from './fault-spec.js';

/** Options of {@link createFaultPlugin}. */
export interface FaultPluginOptions {
  /** PRNG seed (a u32): the same seed, rules and message sequence give the same faults. Default: random (see `seed`). */
  seed?: number;
  /** Where injections are logged (debug); default each session's logger. */
  log?: Logger;
}

/** Counters of one rule. */
export interface FaultRuleStats {
  /** The rule's spec. */
  rule: string;
  /** Messages whose target, phase and state fit the rule. */
  matched: number;
  /** Faults injected. */
  injected: number;
}

/** The fault plugin: a {@link MediatorPlugin} with counters. */
export interface FaultPlugin extends MediatorPlugin {
  /** The seed in use (pass it back as `seed` to replay a run). */
  readonly seed: number;
  /** Per-rule counters, in rule order. */
  stats(): FaultRuleStats[];
}

/** A rule with its counters and its own random stream (so rules do not disturb each other's draws). */
interface LiveRule {
  readonly rule: FaultRule;
  readonly random: () => number;
  matched: number;
  injected: number;
}

/** What the rules decided for one message. */
interface Decision {
  delayMs: number;
  payload: Uint8Array | undefined;
  verdict: Verdict;
}

/** Per-session state: the device's migration state as seen here, and delays waiting to release. */
interface SessionFaults {
  state: MigrationState;
  readonly pending: Set<{ timer: NodeJS.Timeout; release: () => void }>;
}

const SESSION_KEY = Symbol('fault-session');

function sessionOf(ctx: MediatorSessionContext): SessionFaults {
  let s = ctx.state.get(SESSION_KEY) as SessionFaults | undefined;
  if (!s) {
    s = { state: MigrationState.RUNNING, pending: new Set() };
    ctx.state.set(SESSION_KEY, s);
  }
  return s;
}

function isError(reply: MediatedMessage): boolean {
  return (reply.header.flags & HeaderFlags.ERROR) !== 0;
}

function member(value: unknown, key: string): unknown {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>)[key] : undefined;
}

/** The feature index the upstream advertised for our `x-deadline-state` extension (a MIG_DEVICE_STATE SET with a budget), if any. */
function deadlineFeature(ctx: MediatorSessionContext): number | undefined {
  const feature = member(member(member(ctx.version?.upstream, 'capabilities'), 'migration'), ExtensionCapability.MIG_STATE_DEADLINE);
  const index = member(feature, 'feature');
  return typeof index === 'number' && Number.isInteger(index) ? index : undefined;
}

function u32(b: Uint8Array, offset: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(offset, true);
}

/**
 * The device's migration state after a reply: a successful MIG_DEVICE_STATE SET
 * or GET reports it, as does the reply of an `x-deadline-state` SET (the state
 * reached, whatever the outcome); a successful DEVICE_RESET puts the device back in RUNNING.
 */
function stateAfter(reply: MediatedMessage, request: MediatedMessage, current: MigrationState, ctx: MediatorSessionContext): MigrationState {
  if (isError(reply)) return current;
  if (request.header.cmd === Command.DEVICE_RESET) return MigrationState.RUNNING;
  if (request.header.cmd !== Command.DEVICE_FEATURE || request.payload.length < 8) return current;
  const flags = u32(request.payload, 4);
  const index = flags & DeviceFeatureFlags.MASK;
  if (index === DeviceFeature.MIG_DEVICE_STATE) {
    if (flags & DeviceFeatureFlags.SET) return request.payload.length >= 12 ? (u32(request.payload, 8) as MigrationState) : current;
    if (flags & DeviceFeatureFlags.GET && reply.payload.length >= 12) return u32(reply.payload, 8) as MigrationState;
  } else if (flags & DeviceFeatureFlags.SET && reply.payload.length >= 12 && index === deadlineFeature(ctx)) {
    return u32(reply.payload, 8) as MigrationState;
  }
  return current;
}

/** `count` distinct positions in 0..length-1 (rejection sampling when few, a partial shuffle when many). */
function positions(length: number, count: number, random: () => number): Iterable<number> {
  if (count * 2 <= length) {
    const chosen = new Set<number>();
    while (chosen.size < count) chosen.add(random() % length);
    return chosen;
  }
  const all = Uint32Array.from({ length }, (_, i) => i);
  for (let i = 0; i < count; i++) {
    const j = i + (random() % (length - i));
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return all.subarray(0, count);
}

/** Flips `n` distinct random bytes of a copy of `payload` (each XORed with a non-zero value, so it changes). */
function corrupt(payload: Uint8Array, n: number, random: () => number): Uint8Array {
  const out = payload.slice();
  for (const p of positions(out.length, Math.min(n, out.length), random)) out[p]! ^= 1 + (random() % 255);
  return out;
}

/** A delay that session end releases early (as a drop: the session is gone anyway). */
function delayed(session: SessionFaults, ms: number, verdict: Verdict): Promise<Verdict> {
  return new Promise((resolve) => {
    const entry = {
      timer: setTimeout(() => {
        session.pending.delete(entry);
        resolve(verdict);
      }, ms),
      release: () => resolve({ drop: true }),
    };
    session.pending.add(entry);
  });
}

/**
 * Creates the fault-injection plugin for `rules` (from {@link parseFaultSpec}).
 * Install it first among the plugins to fault what the client sent as sent.
 * Injections are logged at debug level with the rule, command, msgId and session.
 * @throws {InvalidArgumentError} EINVAL if `seed` is not an integer.
 */
export function createFaultPlugin(rules: readonly FaultRule[], o: FaultPluginOptions = {}): FaultPlugin {
  const seed = o.seed ?? Math.floor(Math.random() * 2 ** 32);
  if (!Number.isInteger(seed)) throw new InvalidArgumentError(`fault: seed ${String(seed)} is not an integer`);
  const live: LiveRule[] = rules.map((rule, i) => ({ rule, random: prngU32((seed + Math.imul(i + 1, 0x9e3779b9)) >>> 0), matched: 0, injected: 0 }));

  function fits(rule: FaultRule, cmd: number, phase: FaultPhase, state: MigrationState): boolean {
    if (rule.on !== phase) return false;
    if (rule.state !== undefined && rule.state !== state) return false;
    return rule.commands === '*' ? cmd !== Command.VERSION : rule.commands.includes(cmd);
  }

  /** Runs the rules over one message; undefined when nothing is injected. */
  function decide(msg: MediatedMessage, cmd: number, phase: FaultPhase, ctx: MediatorSessionContext, session: SessionFaults): Decision | undefined {
    let decision: Decision | undefined;
    for (const r of live) {
      if (!fits(r.rule, cmd, phase, session.state)) continue;
      r.matched++;
      if (r.matched <= r.rule.after || r.injected >= r.rule.count) continue;
      if (r.rule.probability < 1 && r.random() / 2 ** 32 >= r.rule.probability) continue;
      const d: Decision = decision ?? { delayMs: 0, payload: undefined, verdict: undefined };
      const f = r.rule.fault;
      if (f.kind === 'corrupt') {
        const payload = d.payload ?? msg.payload;
        if (payload.length === 0) continue; // nothing to corrupt: the header is not corrupt's business
        d.payload = corrupt(payload, f.bytes, r.random);
      } else if (f.kind === 'delay') d.delayMs += f.ms;
      else d.verdict = f.kind === 'error' ? { error: f.errno } : f.kind === 'drop' ? { drop: true } : { disconnect: true };
      r.injected++;
      decision = d;
      (o.log ?? ctx.log).debug({ rule: r.rule.spec, command: commandName(cmd), msgId: msg.header.msgId, session: ctx.id, phase, fault: f.kind }, 'fault injected');
      if (d.verdict !== undefined) break;
    }
    return decision;
  }

  function apply(msg: MediatedMessage, cmd: number, phase: FaultPhase, ctx: MediatorSessionContext): Verdict | Promise<Verdict> {
    const session = sessionOf(ctx);
    const d = decide(msg, cmd, phase, ctx, session);
    if (d === undefined) return undefined;
    const verdict = d.verdict ?? (d.payload ? { forward: { payload: d.payload } } : undefined);
    return d.delayMs > 0 ? delayed(session, d.delayMs, verdict) : verdict;
  }

  return {
    name: 'fault',
    seed: seed >>> 0,
    onClientCommand: (msg, ctx) => apply(msg, msg.header.cmd, FaultPhase.REQUEST, ctx),
    onUpstreamReply: (reply, request, ctx) => {
      const session = sessionOf(ctx);
      // The reply is judged in the state the device reports with it (a SET's reply: the new state).
      session.state = stateAfter(reply, request, session.state, ctx);
      return apply(reply, request.header.cmd, FaultPhase.REPLY, ctx);
    },
    onUpstreamCommand: (msg, ctx) => apply(msg, msg.header.cmd, FaultPhase.REQUEST, ctx),
    onClientReply: (reply, request, ctx) => apply(reply, request.header.cmd, FaultPhase.REPLY, ctx),
    stats: () => live.map((r) => ({ rule: r.rule.spec, matched: r.matched, injected: r.injected })),
    onSessionEnd: (ctx) => {
      const session = ctx.state.get(SESSION_KEY) as SessionFaults | undefined;
      for (const p of session?.pending ?? []) {
        clearTimeout(p.timer);
        p.release();
      }
      session?.pending.clear();
    },
  };
}
