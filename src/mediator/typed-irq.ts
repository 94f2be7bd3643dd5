/**
 * DEVICE_SET_IRQS for typed plugins: the decoded request, and
 * {@link interposeInterrupts}, which puts eventfds of the mediator's between
 * the upstream and the client — the upstream signals the mediator's eventfd,
 * the plugin sees the signal (counts it, delays nothing), and the mediator
 * signals the client's eventfd unless the plugin swallows it.
 */
import { IrqSetFlags } from '../protocol/constants.js';
import { decodeIrqSet, type IrqSet } from '../protocol/irq.js';
import { SystemError } from '../errors.js';
import { native } from '../native/addon.js';
import { EventFdWatch } from '../client/eventfd-watch.js';
import type { MediatorSessionContext, Verdict } from './types.js';
import type { Hook, InterruptSignal, SetIrqsDecision, SetIrqsEvent } from './typed-types.js';
import { badDecision, commonVerdict, EMPTY, then, tryDecode, type CommandHandler } from './typed-util.js';

function actionOf(flags: number): SetIrqsEvent['action'] {
  switch (flags & IrqSetFlags.ACTION_TYPE_MASK) {
    case IrqSetFlags.ACTION_MASK:
      return 'mask';
    case IrqSetFlags.ACTION_UNMASK:
      return 'unmask';
    case IrqSetFlags.ACTION_TRIGGER:
      return 'trigger';
    default:
      return 'invalid';
  }
}

function dataTypeOf(flags: number): SetIrqsEvent['dataType'] {
  switch (flags & IrqSetFlags.DATA_TYPE_MASK) {
    case IrqSetFlags.DATA_NONE:
      return 'none';
    case IrqSetFlags.DATA_BOOL:
      return 'bool';
    case IrqSetFlags.DATA_EVENTFD:
      return 'eventfd';
    default:
      return 'invalid';
  }
}

/** The typed event of a decoded DEVICE_SET_IRQS. */
export function setIrqsEvent(set: IrqSet, fds: readonly number[]): SetIrqsEvent {
  return {
    index: set.index,
    start: set.start,
    count: set.count,
    flags: set.flags,
    action: actionOf(set.flags),
    dataType: dataTypeOf(set.flags),
    bools: set.data,
    fds,
  };
}

/** DEVICE_SET_IRQS: forward, forward other eventfds, or answer here. */
export function setIrqsHandler(plugin: string, hook: Hook<SetIrqsEvent, SetIrqsDecision>): CommandHandler {
  return (msg, ctx) => {
    const set = tryDecode(decodeIrqSet, msg.payload);
    if (!set) return undefined;
    const event = setIrqsEvent(set, msg.fds);
    return then(hook(event, ctx), (d): Verdict => {
      const common = commonVerdict(plugin, 'setIrqs', d);
      if (common !== false) return common ?? undefined;
      if ('reply' in (d as object) && (d as { reply: unknown }).reply === true) return { reply: { payload: EMPTY } };
      const fds = (d as { forward?: { fds?: unknown } }).forward?.fds;
      if (!Array.isArray(fds) || !fds.every((fd) => Number.isInteger(fd) && fd >= 0)) throw badDecision(plugin, 'setIrqs', 'must be reply: true or forward.fds (fds)');
      return { forward: { fds } };
    });
  };
}

// -------------------------------------------------------- interposed interrupts

interface Relay {
  watch: EventFdWatch;
  /** Our duplicate of the client's eventfd. */
  clientFd: number;
}

const RELAYS = Symbol('vfio-user typed-irq relays');

function relaysOf(ctx: MediatorSessionContext): Map<string, Relay> {
  let relays = ctx.state.get(RELAYS) as Map<string, Relay> | undefined;
  if (!relays) {
    relays = new Map();
    ctx.state.set(RELAYS, relays);
  }
  return relays;
}

function closeRelay(relay: Relay): void {
  relay.watch.close();
  native.close(relay.clientFd);
}

function dropRelays(ctx: MediatorSessionContext, index: number, start: number, count: number): void {
  const relays = ctx.state.get(RELAYS) as Map<string, Relay> | undefined;
  if (!relays) return;
  for (const [key, relay] of relays) {
    const [i, v] = key.split(':').map(Number) as [number, number];
    if (i === index && v >= start && v < start + count) {
      closeRelay(relay);
      relays.delete(key);
    }
  }
}

/** Callback of {@link interposeInterrupts}: `false` swallows the signal (the client's eventfd is not signalled). */
export type InterruptObserver = (signal: InterruptSignal, ctx: MediatorSessionContext) => boolean | void;

/**
 * A SET_IRQS decision that interposes on the eventfds of `event`: for
 * TRIGGER|DATA_EVENTFD with fds, the upstream gets eventfds of the
 * mediator's, watched here; each signal calls `observe` and then adds the
 * count to the client's eventfd (unless `observe` returns false). Disabling
 * SET_IRQS (TRIGGER with no fds, or DATA_NONE with count 0) drop the relays of
 * the vectors concerned; anything else is forwarded. The relays end with the
 * session (definePlugin's onSessionEnd; call {@link releaseInterposedInterrupts}
 * from a plugin of your own).
 * @throws {SystemError} EMFILE/ENFILE when no eventfd can be made (an error reply).
 */
export function interposeInterrupts(event: SetIrqsEvent, ctx: MediatorSessionContext, observe: InterruptObserver): SetIrqsDecision {
  if (event.action !== 'trigger') return undefined;
  if (event.dataType === 'none' && event.count === 0) {
    dropRelays(ctx, event.index, 0, Number.MAX_SAFE_INTEGER);
    return undefined;
  }
  if (event.dataType !== 'eventfd') return undefined;
  if (event.fds.length === 0) {
    dropRelays(ctx, event.index, event.start, event.count);
    return undefined;
  }
  const made: Relay[] = [];
  try {
    event.fds.forEach((fd, i) => made.push(makeRelay(fd, { index: event.index, vector: event.start + i }, ctx, observe)));
  } catch (error) {
    made.forEach(closeRelay);
    throw error;
  }
  dropRelays(ctx, event.index, event.start, event.fds.length);
  const relays = relaysOf(ctx);
  made.forEach((relay, i) => relays.set(`${event.index}:${event.start + i}`, relay));
  return { forward: { fds: made.map((r) => r.watch.fd) } };
}

function makeRelay(fd: number, at: { index: number; vector: number }, ctx: MediatorSessionContext, observe: InterruptObserver): Relay {
  const clientFd = native.dup(fd);
  if (clientFd < 0) throw new SystemError('dup', -clientFd, 'interposed interrupt');
  try {
    const watch = new EventFdWatch((count) => {
      let forward: boolean | void = true;
      try {
        forward = observe({ index: at.index, vector: at.vector, count }, ctx);
      } catch (error) {
        ctx.log.warn({ err: error, index: at.index, vector: at.vector }, 'interposed interrupt: the observer threw');
      }
      if (forward !== false) native.eventfdWrite(clientFd, count);
    });
    return { watch, clientFd };
  } catch (error) {
    native.close(clientFd);
    throw error;
  }
}

/** Closes every interposed interrupt of the session (idempotent). */
export function releaseInterposedInterrupts(ctx: MediatorSessionContext): void {
  const relays = ctx.state.get(RELAYS) as Map<string, Relay> | undefined;
  if (!relays) return;
  relays.forEach(closeRelay);
  relays.clear();
}
