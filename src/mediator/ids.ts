/**
 * Message ids the mediator assigns on one side of a session: 16-bit, handed
 * out in sequence, skipping ids still in flight, so a reply can never be
 * matched to the wrong request.
 */
import { StateError } from '../errors.js';

/** The msg_id space of one connection direction. */
export class IdAllocator {
  #next = 1;

  /**
   * The next id not in `inFlight`.
   * @throws {StateError} EBUSY if all 65,536 ids are in flight (never, with the mediator's bounds).
   */
  next(inFlight: ReadonlyMap<number, unknown>): number {
    for (let tries = 0; tries <= 0xffff; tries++) {
      const id = this.#next;
      this.#next = (id + 1) & 0xffff;
      if (!inFlight.has(id)) return id;
    }
    throw new StateError('every msg_id is in flight', { errno: 16 });
  }
}
