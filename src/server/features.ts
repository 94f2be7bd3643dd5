/**
 * DEVICE_FEATURE as a table: each feature declares the operations it supports
 * (GET, SET) and implements them; the handler applies the rules common to all
 * (the kernel's and libvfio-user's): unknown flag bits, unknown features, PROBE,
 * GET xor SET, argsz, and the echoed request on SET and PROBE.
 */
import type { HandlerContext } from './types.js';

/** One device feature (feature index → implementation). */
export interface FeatureHandler {
  /** The DeviceFeatureFlags GET and/or SET bits this feature supports. */
  readonly ops: number;
  /**
   * The length of the GET reply data for this request, found without acting:
   * every rule of the GET is checked here (throwing its errno), so the shared
   * argsz rule refuses a reply that does not fit BEFORE {@link get} runs.
   * Required for a GET with a side effect (clear-on-read logs, a delta taken
   * from the device); a GET without it must be side-effect free, since its
   * reply is measured only after it ran.
   */
  replySize?(ctx: HandlerContext, data: Uint8Array): number;
  /** GET: returns the reply data (exactly {@link replySize} bytes when that is given). */
  get?(ctx: HandlerContext, data: Uint8Array): Uint8Array | Promise<Uint8Array>;
  /** SET: acts; may return the data to echo instead of the request's (e.g. a negotiated value). */
  set?(ctx: HandlerContext, data: Uint8Array): Uint8Array | undefined | void | Promise<Uint8Array | undefined | void>;
}

/** Features by index. */
export type FeatureTable = ReadonlyMap<number, FeatureHandler>;
