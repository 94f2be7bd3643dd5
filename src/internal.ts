/**
 * Building blocks below the public API, for tests, benchmarks and the CLI:
 * the raw native binding and the framing pieces. No stability promise.
 */
export { native, callNative, throwIfErrno } from './native/addon.js';
export { Framer } from './transport/framer.js';
export { frameOutgoing, concatChunks } from './transport/outgoing.js';
export type { NativeBinding, NativeConstants, NativePoller } from './native/types.js';
export type { FramerOptions, FramerOutput } from './transport/framer.js';
