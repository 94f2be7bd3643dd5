/**
 * The typed interposition API (docs/mediation-plugins.md): {@link definePlugin}
 * turns decoded, typed hooks — region info, region access, SET_IRQS, DMA map
 * and unmap, device features, migration, the upstream's DMA — into a
 * {@link MediatorPlugin} for `Mediator.listen({ plugins })` or `--plugin`.
 *
 * Only commands that have a hook are decoded; everything else is forwarded
 * untouched, and a hook that answers synchronously keeps the mediator's
 * synchronous fast path. A message that does not decode is forwarded as it
 * came (its receiver answers it as it would without a mediator). A hook that
 * throws, or returns a decision that cannot be encoded (EINVAL), becomes an
 * error reply through the core: the typed layer never swallows an error.
 */
import { InvalidArgumentError } from '../errors.js';
import { Command } from '../protocol/constants.js';
import type { MediatorPlugin, MediatorSessionContext } from './types.js';
import type { TypedPluginSpec } from './typed-types.js';
import type { CommandHandler, ReplyHandler } from './typed-util.js';
import { regionInfoHandler, regionReadHandler, regionReadReplyHandler, regionWriteHandler, regionWriteMultiHandler, regionWriteMultiViaWrite } from './typed-region.js';
import { releaseInterposedInterrupts, setIrqsHandler } from './typed-irq.js';
import { dmaMapHandler, dmaReadHandler, dmaUnmapHandler, dmaWriteHandler } from './typed-dma.js';
import { featureHandler, featureReplyHandler, migDataReadHandler, migDataWriteHandler } from './typed-feature.js';

export type * from './typed-types.js';
export {
  sparseAreasOf,
  withSparseAreas,
  subtractRange,
  withCap,
  withoutCap,
  capIdOf,
  encodeRegionInfoFor,
} from './typed-region.js';
export { interposeInterrupts, releaseInterposedInterrupts, type InterruptObserver } from './typed-irq.js';

/** Every hook a spec may have (functions under other names are refused: a misspelt hook would never run). */
const HOOKS: ReadonlySet<string> = new Set([
  'onSessionStart',
  'onSessionEnd',
  'regionInfo',
  'regionRead',
  'regionReadReply',
  'regionWrite',
  'regionWriteMulti',
  'setIrqs',
  'dmaMap',
  'dmaUnmap',
  'feature',
  'featureReply',
  'migState',
  'migDataRead',
  'migDataWrite',
  'dmaRead',
  'dmaWrite',
] satisfies ReadonlyArray<keyof TypedPluginSpec>);

function clientHandlers(s: TypedPluginSpec): Map<number, CommandHandler> {
  const n = s.name;
  const m = new Map<number, CommandHandler>();
  if (s.regionInfo) m.set(Command.DEVICE_GET_REGION_INFO, regionInfoHandler(n, s.regionInfo));
  if (s.regionRead) m.set(Command.REGION_READ, regionReadHandler(n, s.regionRead));
  if (s.regionWrite) m.set(Command.REGION_WRITE, regionWriteHandler(n, s.regionWrite));
  if (s.regionWriteMulti) m.set(Command.REGION_WRITE_MULTI, regionWriteMultiHandler(n, s.regionWriteMulti));
  else if (s.regionWrite) m.set(Command.REGION_WRITE_MULTI, regionWriteMultiViaWrite(n, s.regionWrite));
  if (s.setIrqs) m.set(Command.DEVICE_SET_IRQS, setIrqsHandler(n, s.setIrqs));
  if (s.dmaMap) m.set(Command.DMA_MAP, dmaMapHandler(n, s.dmaMap));
  if (s.dmaUnmap) m.set(Command.DMA_UNMAP, dmaUnmapHandler(n, s.dmaUnmap));
  if (s.feature || s.migState) m.set(Command.DEVICE_FEATURE, featureHandler(n, s.feature, s.migState));
  if (s.migDataRead) m.set(Command.MIG_DATA_READ, migDataReadHandler(n, s.migDataRead));
  if (s.migDataWrite) m.set(Command.MIG_DATA_WRITE, migDataWriteHandler(n, s.migDataWrite));
  return m;
}

function replyHandlers(s: TypedPluginSpec): Map<number, ReplyHandler> {
  const m = new Map<number, ReplyHandler>();
  if (s.regionReadReply) m.set(Command.REGION_READ, regionReadReplyHandler(s.name, s.regionReadReply));
  if (s.featureReply) m.set(Command.DEVICE_FEATURE, featureReplyHandler(s.name, s.featureReply));
  return m;
}

function upstreamHandlers(s: TypedPluginSpec): Map<number, CommandHandler> {
  const m = new Map<number, CommandHandler>();
  if (s.dmaRead) m.set(Command.DMA_READ, dmaReadHandler(s.name, s.dmaRead));
  if (s.dmaWrite) m.set(Command.DMA_WRITE, dmaWriteHandler(s.name, s.dmaWrite));
  return m;
}

/**
 * Builds a mediator plugin from typed hooks. Each hook gets a decoded event
 * and the session context, and returns a decision (or a promise of one):
 * `undefined` forwards the message as received; `reply` answers it here;
 * `forward` with changes sends a rewritten message on; `{ error: errno }`
 * answers with that errno; `drop` and `disconnect` as in the core.
 * Hooks that throw become error replies (the error's errno, EIO without one);
 * an undecodable decision is EINVAL. See each hook in {@link TypedPluginSpec}.
 * Hooks are called with `this` = `spec`.
 * @throws {InvalidArgumentError} EINVAL when `spec.name` is empty, a hook is not a function, or a function is no hook's name.
 */
export function definePlugin(spec: TypedPluginSpec): MediatorPlugin {
  if (typeof spec?.name !== 'string' || spec.name === '') throw new InvalidArgumentError('definePlugin: spec.name must be a non-empty string');
  const bound: Record<string, unknown> = { name: spec.name };
  for (const [key, value] of Object.entries(spec)) {
    if (key === 'name' || value === undefined) continue;
    const known = HOOKS.has(key);
    if (known && typeof value !== 'function') throw new InvalidArgumentError(`definePlugin '${spec.name}': ${key} is not a function`);
    if (!known && typeof value === 'function') throw new InvalidArgumentError(`definePlugin '${spec.name}': ${key} is not a hook (${[...HOOKS].join(', ')})`);
    if (known) bound[key] = (value as (...args: unknown[]) => unknown).bind(spec);
  }
  return build(bound as unknown as TypedPluginSpec);
}

function build(spec: TypedPluginSpec): MediatorPlugin {
  const commands = clientHandlers(spec);
  const replies = replyHandlers(spec);
  const upstream = upstreamHandlers(spec);
  const userEnd = spec.onSessionEnd;
  const plugin: MediatorPlugin = {
    name: spec.name,
    ...(spec.onSessionStart ? { onSessionStart: spec.onSessionStart } : {}),
    ...(commands.size > 0 ? { onClientCommand: (msg, ctx) => commands.get(msg.header.cmd)?.(msg, ctx) } : {}),
    ...(replies.size > 0 ? { onUpstreamReply: (reply, request, ctx) => replies.get(request.header.cmd)?.(reply, request, ctx) } : {}),
    ...(upstream.size > 0 ? { onUpstreamCommand: (msg, ctx) => upstream.get(msg.header.cmd)?.(msg, ctx) } : {}),
    onSessionEnd(ctx: MediatorSessionContext, reason: string): void {
      releaseInterposedInterrupts(ctx);
      userEnd?.(ctx, reason);
    },
  };
  return plugin;
}
