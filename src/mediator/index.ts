/** The mediator's public API (docs/mediation.md). */
export { Mediator, DEFAULT_MEDIATOR_LIMITS, type MediatorSessionInfo } from './mediator.js';
export { loadPlugins } from './plugin-loader.js';
export type {
  MediatedMessage,
  Verdict,
  MaybePromise,
  MediatorSessionContext,
  MediatorPlugin,
  TapSide,
  MediatorTap,
  MediatorLimits,
  MediatorOptions,
} from './types.js';
