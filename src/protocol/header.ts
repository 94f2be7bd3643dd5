/**
 * The 16-byte message header: encode, decode (raw, never validated), the
 * validation rules libvfio-user applies, and helpers to build whole messages.
 */
import { InvalidArgumentError, ProtocolError } from '../errors.js';
import { Errno, MAX_ERRNO } from './errno.js';
import {
  Command,
  HEADER_SIZE,
  HeaderFlags,
  KNOWN_HEADER_FLAGS,
  SERVER_MAX_MSG_SIZE,
  commandName,
} from './constants.js';

/** A decoded header. `cmd` and `flags` stay raw numbers until checked (see `toCommand`). */
export interface MessageHeader {
  /** Sender-chosen id, echoed in the reply (u16). */
  msgId: number;
  /** Raw command number (u16). */
  cmd: number;
  /** Whole message size including the header (u32). */
  msgSize: number;
  /** Raw flags word; unknown bits are kept (u32). */
  flags: number;
  /** errno of an error reply; reserved in commands (u32). */
  errorNo: number;
}

/** Fields needed to build a message; `msgSize` is computed. */
export interface MessageInit {
  msgId: number;
  cmd: number;
  /** Defaults to 0 (a command expecting a reply). */
  flags?: number;
  /** Defaults to 0. */
  errorNo?: number;
}

const EMPTY = new Uint8Array(0);

/**
 * Writes `h` as 16 little-endian bytes at `target[offset]`.
 * @throws {InvalidArgumentError} EINVAL if a field does not fit or `target` is too short.
 */
export function encodeHeader(h: MessageHeader, target: Uint8Array, offset = 0): void {
  if (!Number.isInteger(offset) || offset < 0 || target.length - offset < HEADER_SIZE) {
    throw new InvalidArgumentError(`header: no room for 16 bytes at offset ${offset} of ${target.length}`);
  }
  checkField(h.msgId, 0xffff, 'msg_id');
  checkField(h.cmd, 0xffff, 'cmd');
  checkField(h.msgSize, 0xffff_ffff, 'msg_size');
  checkField(h.flags, 0xffff_ffff, 'flags');
  checkField(h.errorNo, 0xffff_ffff, 'error_no');
  put16(target, offset, h.msgId);
  put16(target, offset + 2, h.cmd);
  put32(target, offset + 4, h.msgSize);
  put32(target, offset + 8, h.flags);
  put32(target, offset + 12, h.errorNo);
}

// Byte-wise access: a DataView over a small on-heap buffer would materialise it.
function put16(b: Uint8Array, p: number, v: number): void {
  b[p] = v;
  b[p + 1] = v >>> 8;
}

function put32(b: Uint8Array, p: number, v: number): void {
  b[p] = v;
  b[p + 1] = v >>> 8;
  b[p + 2] = v >>> 16;
  b[p + 3] = v >>> 24;
}

function get16(b: Uint8Array, p: number): number {
  return b[p]! | (b[p + 1]! << 8);
}

function get32(b: Uint8Array, p: number): number {
  return (b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16) | (b[p + 3]! << 24)) >>> 0;
}

function checkField(v: number, max: number, field: string): void {
  if (!Number.isInteger(v) || v < 0 || v > max) {
    throw new InvalidArgumentError(`header: ${field} = ${v} does not fit its field`);
  }
}

/**
 * Reads the 16 header bytes at `bytes[offset]` without judging them.
 * @throws {ProtocolError} EINVAL if fewer than 16 bytes are available.
 */
export function decodeHeader(bytes: Uint8Array, offset = 0): MessageHeader {
  if (!Number.isInteger(offset) || offset < 0 || bytes.length - offset < HEADER_SIZE) {
    throw new ProtocolError(`header: truncated (need 16 bytes at offset ${offset}, have ${bytes.length - offset})`);
  }
  return {
    msgId: get16(bytes, offset),
    cmd: get16(bytes, offset + 2),
    msgSize: get32(bytes, offset + 4),
    flags: get32(bytes, offset + 8),
    errorNo: get32(bytes, offset + 12),
  };
}

/** The type bits (0 command, 1 reply, anything else invalid). */
export function messageType(h: Pick<MessageHeader, 'flags'>): number {
  return h.flags & HeaderFlags.TYPE_MASK;
}

/** True if the type bits say *command*. */
export function isCommand(h: Pick<MessageHeader, 'flags'>): boolean {
  return messageType(h) === HeaderFlags.TYPE_COMMAND;
}

/** True if the type bits say *reply*. */
export function isReply(h: Pick<MessageHeader, 'flags'>): boolean {
  return messageType(h) === HeaderFlags.TYPE_REPLY;
}

/** True if the ERROR bit is set. */
export function isError(h: Pick<MessageHeader, 'flags'>): boolean {
  return (h.flags & HeaderFlags.ERROR) !== 0;
}

/** True if a command expects a reply (NO_REPLY clear). */
export function wantsReply(h: Pick<MessageHeader, 'flags'>): boolean {
  return (h.flags & HeaderFlags.NO_REPLY) === 0;
}

/** Flag bits the protocol does not define; ignored by peers (as libvfio-user does) but exposed here. */
export function unknownFlags(h: Pick<MessageHeader, 'flags'>): number {
  return (h.flags & ~KNOWN_HEADER_FLAGS) >>> 0;
}

function describe(h: MessageHeader): string {
  return `message ${h.msgId} (${commandName(h.cmd)})`;
}

/**
 * The server's header rules (libvfio-user `is_valid_header`): type must be
 * *command*; `16 ≤ msg_size ≤ maxMsgSize`; `msg_size == 16` only for
 * DEVICE_RESET. A failure means the body was not read: the stream is desynchronised.
 * @param maxMsgSize - largest acceptable message (default {@link SERVER_MAX_MSG_SIZE}).
 * @returns `undefined` if valid, else a ProtocolError with errno EINVAL.
 */
export function validateCommandHeader(h: MessageHeader, maxMsgSize = SERVER_MAX_MSG_SIZE): ProtocolError | undefined {
  if (!isCommand(h)) {
    return new ProtocolError(`${describe(h)}: type ${messageType(h)} is not a command`);
  }
  return checkSize(h, maxMsgSize, h.cmd !== Command.DEVICE_RESET);
}

/**
 * The client's header rules for a reply: type must be *reply* and
 * `16 ≤ msg_size ≤ maxMsgSize`. Any command may have an empty payload.
 * @returns `undefined` if valid, else a ProtocolError with errno EINVAL.
 */
export function validateReplyHeader(h: MessageHeader, maxMsgSize = SERVER_MAX_MSG_SIZE): ProtocolError | undefined {
  if (!isReply(h)) {
    return new ProtocolError(`${describe(h)}: type ${messageType(h)} is not a reply`);
  }
  return checkSize(h, maxMsgSize, false);
}

function checkSize(h: MessageHeader, maxMsgSize: number, needsPayload: boolean): ProtocolError | undefined {
  if (h.msgSize < HEADER_SIZE) {
    return new ProtocolError(`${describe(h)}: msg_size ${h.msgSize} is smaller than the header`);
  }
  if (needsPayload && h.msgSize === HEADER_SIZE) {
    return new ProtocolError(`${describe(h)}: msg_size 16 leaves no payload`);
  }
  if (h.msgSize > maxMsgSize) {
    return new ProtocolError(`${describe(h)}: msg_size ${h.msgSize} exceeds ${maxMsgSize}`);
  }
  return undefined;
}

/**
 * The errno of an error reply, clamped as libvfio-user's client does: values
 * outside 1..{@link MAX_ERRNO} become EINVAL.
 */
export function replyErrno(h: Pick<MessageHeader, 'errorNo'>): number {
  return h.errorNo >= 1 && h.errorNo <= MAX_ERRNO ? h.errorNo : Errno.EINVAL;
}

/**
 * Builds a whole message: header (with `msg_size` computed) followed by `payload`.
 * @throws {InvalidArgumentError} EINVAL if a header field does not fit or the message exceeds 2^32-1 bytes.
 */
export function encodeMessage(init: MessageInit, payload: Uint8Array = EMPTY): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  encodeHeader(
    { msgId: init.msgId, cmd: init.cmd, msgSize: out.length, flags: init.flags ?? 0, errorNo: init.errorNo ?? 0 },
    out,
  );
  out.set(payload, HEADER_SIZE);
  return out;
}

/**
 * Builds the success reply to `request`: same `msg_id` and `cmd`, flags = REPLY.
 * @throws {InvalidArgumentError} EINVAL as {@link encodeMessage}.
 */
export function encodeReply(request: Pick<MessageHeader, 'msgId' | 'cmd'>, payload: Uint8Array = EMPTY): Uint8Array {
  return encodeMessage({ msgId: request.msgId, cmd: request.cmd, flags: HeaderFlags.TYPE_REPLY }, payload);
}

/**
 * Builds an error reply to `request`: flags = REPLY|ERROR, `error_no = errno`.
 * Usually without payload; a failed DEVICE_FEATURE echoes its request (libvfio-user).
 * @throws {InvalidArgumentError} EINVAL as {@link encodeMessage}.
 */
export function encodeErrorReply(
  request: Pick<MessageHeader, 'msgId' | 'cmd'>,
  errno: number,
  payload: Uint8Array = EMPTY,
): Uint8Array {
  const flags = HeaderFlags.TYPE_REPLY | HeaderFlags.ERROR;
  return encodeMessage({ msgId: request.msgId, cmd: request.cmd, flags, errorNo: errno }, payload);
}

/**
 * Splits one complete message into header and payload (a view, no copy).
 * @throws {ProtocolError} EINVAL if `bytes` is shorter than 16 bytes or its length differs from `msg_size`.
 */
export function decodeMessage(bytes: Uint8Array): { header: MessageHeader; payload: Uint8Array } {
  const header = decodeHeader(bytes, 0);
  if (header.msgSize !== bytes.length) {
    throw new ProtocolError(`${describe(header)}: msg_size ${header.msgSize} but ${bytes.length} bytes given`);
  }
  return { header, payload: bytes.subarray(HEADER_SIZE) };
}
