/** Turning an outgoing header + payload into the byte chunks of one message. */
import { InvalidArgumentError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { HEADER_SIZE } from '../protocol/constants.js';
import { encodeHeader } from '../protocol/header.js';
import type { OutgoingHeader } from './transport.js';

const MAX_U32 = 0xffff_ffff;

/** The parts of a payload argument, as a list. */
function partsOf(payload: Uint8Array | readonly Uint8Array[] | undefined): readonly Uint8Array[] {
  return payload === undefined ? [] : payload instanceof Uint8Array ? [payload] : payload;
}

/**
 * The size of the message `header` + `payload` would make (its `msg_size`).
 * @throws {InvalidArgumentError} EMSGSIZE when the message exceeds 4 GiB - 1.
 */
export function messageSize(header: OutgoingHeader, payload: Uint8Array | readonly Uint8Array[] | undefined): number {
  let size = HEADER_SIZE;
  if (payload instanceof Uint8Array) size += payload.length;
  else if (payload !== undefined) for (const p of payload) size += p.length;
  if (size > MAX_U32) {
    throw new InvalidArgumentError(`cmd ${header.cmd}: message of ${size} bytes exceeds the 32-bit msg_size`, { errno: Errno.EMSGSIZE });
  }
  return size;
}

/**
 * The 16 header bytes (with `msg_size` computed) followed by the non-empty
 * payload chunks, as views: ready for one gathering `sendmsg`.
 * @throws {InvalidArgumentError} EMSGSIZE when the message exceeds 4 GiB - 1;
 *   EINVAL when a header field does not fit.
 */
export function frameOutgoing(header: OutgoingHeader, payload: Uint8Array | readonly Uint8Array[] | undefined): Uint8Array[] {
  const size = messageSize(header, payload);
  const head = new Uint8Array(HEADER_SIZE);
  encodeHeader({ msgId: header.msgId, cmd: header.cmd, msgSize: size, flags: header.flags, errorNo: header.errorNo ?? 0 }, head, 0);
  const chunks: Uint8Array[] = [head];
  for (const p of partsOf(payload)) if (p.length > 0) chunks.push(p);
  return chunks;
}

/**
 * Writes the whole message (header with `msg_size` = `size`, then the payload)
 * into `target` at `offset`: nothing is written if a header field does not fit.
 * @param size - from {@link messageSize}; `target` must have room for it.
 * @throws {InvalidArgumentError} EINVAL when a header field does not fit.
 */
export function writeMessage(
  target: Uint8Array,
  offset: number,
  header: OutgoingHeader,
  size: number,
  payload: Uint8Array | readonly Uint8Array[] | undefined,
): void {
  encodeHeader({ msgId: header.msgId, cmd: header.cmd, msgSize: size, flags: header.flags, errorNo: header.errorNo ?? 0 }, target, offset);
  let at = offset + HEADER_SIZE;
  if (payload instanceof Uint8Array) {
    target.set(payload, at);
    return;
  }
  for (const p of partsOf(payload)) {
    target.set(p, at);
    at += p.length;
  }
}

/** Concatenates chunks into one buffer. */
export function concatChunks(chunks: readonly Uint8Array[]): Uint8Array {
  let size = 0;
  for (const c of chunks) size += c.length;
  const out = new Uint8Array(size);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}
