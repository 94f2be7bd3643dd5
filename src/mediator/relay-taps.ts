/**
 * The taps of one session (record/replay and other passive observers): every
 * message crossing the client-facing sockets, and the upstream-facing ones for
 * taps that ask. A tap that throws is logged and removed from the session.
 */
import { HEADER_SIZE } from '../protocol/constants.js';
import type { MessageHeader } from '../protocol/header.js';
import type { Logger } from '../log.js';
import type { OutgoingHeader } from '../transport/transport.js';
import type { Channel } from './relay-pending.js';
import type { MediatorSessionContext, MediatorTap, TapSide } from './types.js';

/** A session's taps. */
export class SessionTaps {
  #taps: MediatorTap[];
  readonly #log: Logger;

  constructor(taps: readonly MediatorTap[], log: Logger) {
    this.#taps = [...taps];
    this.#log = log;
  }

  get count(): number {
    return this.#taps.length;
  }

  /** A message as received (`in`), with the header it carried. */
  received(ctx: MediatorSessionContext, side: TapSide, channel: Channel, header: MessageHeader, payload: Uint8Array, fds: readonly number[]): void {
    this.#emit(ctx, side, 'in', channel, header, payload, fds);
  }

  /** A message as sent (`out`): its header as it goes on the wire. */
  sent(ctx: MediatorSessionContext, side: TapSide, channel: Channel, h: OutgoingHeader, payload: Uint8Array, fds: readonly number[]): void {
    const header: MessageHeader = { msgId: h.msgId, cmd: h.cmd, msgSize: HEADER_SIZE + payload.length, flags: h.flags, errorNo: h.errorNo ?? 0 };
    this.#emit(ctx, side, 'out', channel, header, payload, fds);
  }

  /** The session ended. */
  end(ctx: MediatorSessionContext, reason: string): void {
    for (const tap of this.#taps) {
      try {
        tap.onSessionEnd?.(ctx, reason);
      } catch (err) {
        this.#log.error({ err }, 'a tap failed at session end');
      }
    }
  }

  #emit(ctx: MediatorSessionContext, side: TapSide, direction: 'in' | 'out', channel: Channel, header: MessageHeader, payload: Uint8Array, fds: readonly number[]): void {
    const event = { side, direction, channel, header, payload, fds, timeNs: process.hrtime.bigint() };
    for (const tap of this.#taps) {
      if (side === 'upstream' && tap.upstream !== true) continue;
      try {
        tap.onMessage(event, ctx);
      } catch (err) {
        this.#log.error({ err }, 'a tap threw: removed from this session');
        this.#taps = this.#taps.filter((t) => t !== tap);
      }
    }
  }
}
