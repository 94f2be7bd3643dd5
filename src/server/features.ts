/**
 * DEVICE_FEATURE as a table: each feature declares the operations it supports
 * (GET, SET) and implements them; the handler applies the rules common to all
 * (the kernel's and libvfio-user's): unknown flag bits, unknown features, PROBE,
 * GET xor SET, argsz, and the echoed request on SET and PROBE.
 */
import type { ReceivedFds } from '../transport/fds.js';
import type { HandlerContext } from './types.js';

/**
 * A GET reply that does not fit the request's `argsz`, for a feature that answers that the way
 * GET_REGION_INFO does: the reply is the feature header alone, its `argsz` the size needed.
 */
export interface FeatureReplyTooSmall {
  /** The `argsz` (8 + data) the client must send to get the whole reply. */
  readonly needed: number;
}

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
  /**
   * GET: returns the reply data (exactly {@link replySize} bytes when that is given), or, for a feature that
   * answers a too small `argsz` with the size needed instead of EINVAL, a {@link FeatureReplyTooSmall}.
   */
  get?(ctx: HandlerContext, data: Uint8Array, argsz: number): Uint8Array | FeatureReplyTooSmall | Promise<Uint8Array | FeatureReplyTooSmall>;
  /**
   * SET: acts; may return the data to echo instead of the request's (e.g. a negotiated value). `fds` are those
   * that came with the request: the feature takes what it keeps, the session closes the rest.
   */
  set?(ctx: HandlerContext, data: Uint8Array, fds: ReceivedFds): Uint8Array | undefined | void | Promise<Uint8Array | undefined | void>;
}

/** Features by index. */
export type FeatureTable = ReadonlyMap<number, FeatureHandler>;
