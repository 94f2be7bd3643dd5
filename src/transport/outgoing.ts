/** Turning an outgoing header + payload into the byte chunks of one message. */
import { InvalidArgumentError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { HEADER_SIZE } from '../protocol/constants.js';
import { encodeHeader } from '../protocol/header.js';
import type { OutgoingHeader } from './transport.js';

const MAX_U32 = 0xffff_ffff;

/**
 * The 16 header bytes (with `msg_size` computed) followed by the non-empty
 * payload chunks, as views: ready for one gathering `sendmsg`.
 * @throws {InvalidArgumentError} EMSGSIZE when the message exceeds 4 GiB - 1.
 */
export function frameOutgoing(header: OutgoingHeader, payload: Uint8Array | readonly Uint8Array[] | undefined): Uint8Array[] {
  const parts: readonly Uint8Array[] = payload === undefined ? [] : payload instanceof Uint8Array ? [payload] : payload;
  let size = HEADER_SIZE;
  for (const p of parts) size += p.length;
  if (size > MAX_U32) {
    throw new InvalidArgumentError(`cmd ${header.cmd}: message of ${size} bytes exceeds the 32-bit msg_size`, { errno: Errno.EMSGSIZE });
  }
  const head = new Uint8Array(HEADER_SIZE);
  encodeHeader({ msgId: header.msgId, cmd: header.cmd, msgSize: size, flags: header.flags, errorNo: header.errorNo ?? 0 }, head, 0);
  const chunks: Uint8Array[] = [head];
  for (const p of parts) if (p.length > 0) chunks.push(p);
  return chunks;
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
