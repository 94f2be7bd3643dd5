/** Request errors as the session replies them: the errno to send, and errors whose reply carries a payload. */
import { ProtocolError, VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';

/** A request error whose reply carries a payload (a failed DEVICE_FEATURE echoes its request). */
export class ReplyWithPayload extends ProtocolError {
  readonly payload: Uint8Array;
  constructor(message: string, errno: number, payload: Uint8Array) {
    super(message, { errno });
    this.name = 'ReplyWithPayload';
    this.payload = payload;
  }
}

/** The errno to reply with: the error's own, or EIO for anything that is not ours (a device bug). */
export function errnoOf(error: unknown): number {
  if (error instanceof VfioUserError && error.errno !== undefined && error.errno > 0) return error.errno;
  if (typeof error === 'object' && error !== null && 'errno' in error) {
    const errno = Math.abs(Number((error as { errno: unknown }).errno));
    if (Number.isInteger(errno) && errno > 0 && errno < 4096) return errno;
  }
  return Errno.EIO;
}
