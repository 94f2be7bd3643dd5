/**
 * What the sample devices share to be migratable: which migration states let
 * a device operate ({@link RunState}), and the checked decoding of their
 * versioned state layouts ({@link openState}).
 *
 * The devices follow one rule set (migration doc §2):
 * - *operating* states — RUNNING, PRE_COPY and their P2P forms — behave as
 *   usual, except that RUNNING_P2P / PRE_COPY_P2P start no DMA (the sample
 *   devices cannot tell peer-to-peer DMA from other DMA, so they start none);
 * - *stopped* states — STOP, STOP_COPY, RESUMING and ERROR — do no DMA, raise
 *   no interrupt and change no device state: register writes are ignored,
 *   reads have no side effects, and what the device would have signalled is
 *   kept and delivered once it operates again.
 */
import { MigrationState } from '../protocol/constants.js';
import { WireReader } from '../protocol/wire-reader.js';

/** RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P: the device operates. */
export function isOperating(state: number): boolean {
  return state === MigrationState.RUNNING || state === MigrationState.RUNNING_P2P || state === MigrationState.PRE_COPY || state === MigrationState.PRE_COPY_P2P;
}

/** RUNNING_P2P, PRE_COPY_P2P: operating, but no new (peer-to-peer) DMA. */
export function isP2p(state: number): boolean {
  return state === MigrationState.RUNNING_P2P || state === MigrationState.PRE_COPY_P2P;
}

/** PRE_COPY, PRE_COPY_P2P: operating while the saving stream is open. */
export function isPreCopy(state: number): boolean {
  return state === MigrationState.PRE_COPY || state === MigrationState.PRE_COPY_P2P;
}

/**
 * The migration state a device behaves as. A device's `transition(from, to)`
 * hook runs *before* the library commits the arc, so the device moves its own
 * copy first; its reset hook re-reads the library's (a DEVICE_RESET out of
 * ERROR lands in RUNNING, a disconnect keeps the state).
 */
export class RunState {
  #state: number = MigrationState.RUNNING;

  /** The state the device behaves as. */
  get state(): number {
    return this.#state;
  }

  /** STOP, STOP_COPY, RESUMING or ERROR: no DMA, no interrupts, no state change. */
  get stopped(): boolean {
    return !isOperating(this.#state);
  }

  /** The device may start DMA (RUNNING or PRE_COPY). */
  get dmaAllowed(): boolean {
    return isOperating(this.#state) && !isP2p(this.#state);
  }

  /** The saving stream of a pre-copy is open. */
  get preCopy(): boolean {
    return isPreCopy(this.#state);
  }

  /**
   * Moves to `state`.
   * @returns whether the device just started operating again (stopped → operating).
   */
  enter(state: number): boolean {
    const resumed = this.stopped && isOperating(state);
    this.#state = state;
    return resumed;
  }
}

/**
 * A bounds-checked reader over a state payload of exactly `size` bytes (or at
 * least `size` when `exact` is false). Every failure is a `ProtocolError`
 * (EINVAL) whose message starts with `what`.
 * @throws {ProtocolError} EINVAL when the payload has the wrong size.
 */
export function openState(what: string, payload: Uint8Array, size: number, exact = true): WireReader {
  if (exact ? payload.length !== size : payload.length < size) {
    throw new WireReader(payload, what).error(`${payload.length} bytes, the layout has ${exact ? '' : 'at least '}${size}`);
  }
  return new WireReader(payload, what);
}

/**
 * Checks that a value uses only the bits of `allowed`.
 * @throws {ProtocolError} EINVAL naming `field` otherwise.
 */
export function checkBits(r: WireReader, field: string, value: number, allowed: number): number {
  if ((value & ~allowed) !== 0) throw r.error(`${field} 0x${value.toString(16)} has bits outside 0x${allowed.toString(16)}`);
  return value;
}

/**
 * Reads `n` reserved bytes, which must be zero.
 * @throws {ProtocolError} EINVAL otherwise.
 */
export function reserved(r: WireReader, n: number, field = 'reserved'): void {
  const at = r.offset;
  if (r.bytes(n, field).some((b) => b !== 0)) throw r.error(`${field} bytes at offset ${at} are not zero`);
}
