/**
 * Comparing what a device answered in a replay with what it answered in the
 * recording: header command, flags and errno, payload length and bytes (the
 * first differing offset with a short hex context of both), fds by count and
 * kind. One {@link ReplayDifference} per message that differs.
 */
import { commandName } from '../protocol/constants.js';
import { errnoName } from '../protocol/errno.js';
import type { MessageHeader } from '../protocol/header.js';
import type { FdKind } from './record-format.js';

/** What kind of mismatch a difference is. */
export const DifferenceKind = {
  /** The reply differs from the recorded one. */
  REPLY: 'reply',
  /** No reply within the timeout. */
  TIMEOUT: 'timeout',
  /** The device closed the connection while the reply was awaited (the rest of the session was not replayed). */
  CLOSED: 'closed',
  /** A request the device sent (DMA_READ/DMA_WRITE) differs from the recorded one. */
  DEVICE_REQUEST: 'device-request',
  /** The recorded device sent a request this one did not send. */
  MISSING_DEVICE_REQUEST: 'missing-device-request',
  /** This device sent a request the recorded one did not. */
  UNEXPECTED_DEVICE_REQUEST: 'unexpected-device-request',
  /** A reply to no command awaiting one. */
  UNEXPECTED_REPLY: 'unexpected-reply',
  /** The recorded client command could not be sent (fds could not be recreated). */
  SEND_FAILED: 'send-failed',
} as const;
/** One difference kind. */
export type DifferenceKind = (typeof DifferenceKind)[keyof typeof DifferenceKind];

/** One field that differs. */
export interface FieldDifference {
  field: 'cmd' | 'flags' | 'errno' | 'length' | 'payload' | 'fds' | 'channel';
  expected: string;
  got: string;
}

/** One message that differs. */
export interface ReplayDifference {
  /** The recorded session. */
  session: number;
  /** The client command's position in its session (0 = the first, VERSION), or the device request's. */
  index: number;
  /** The recording's record (the recorded reply or request), for `--json` readers to look it up. */
  record: number;
  msgId: number;
  /** The command's name (`REGION_READ`). */
  command: string;
  kind: DifferenceKind;
  fields: FieldDifference[];
  /** First payload byte that differs (undefined when one payload is a prefix of the other and only lengths differ). */
  offset?: number;
  /** Hex of the recorded and replayed payloads around {@link offset}: `0010: 01 02 03 …`. */
  expectedHex?: string;
  gotHex?: string;
  /** One line saying it all. */
  summary: string;
}

/** A message as compared: header, payload, fd kinds. */
export interface ComparedMessage {
  header: MessageHeader;
  payload: Uint8Array;
  fds: readonly FdKind[];
  /** The recorded payload was cut (header.msgSize is the real size): compare only what was kept. */
  truncated?: boolean;
}

const CONTEXT_BEFORE = 8;
const CONTEXT_BYTES = 24;

/** `0010: 01 02 03` for bytes [from, from + n). */
export function hexContext(bytes: Uint8Array, from: number, n = CONTEXT_BYTES): string {
  const end = Math.min(bytes.length, from + n);
  const hex = Array.from(bytes.subarray(from, end), (b) => b.toString(16).padStart(2, '0')).join(' ');
  return `${from.toString(16).padStart(4, '0')}: ${hex}${end < bytes.length ? ' …' : ''}`;
}

function errnoText(errno: number): string {
  const name = errnoName(errno);
  return name ? `${errno} (${name})` : String(errno);
}

function firstDifference(a: Uint8Array, b: Uint8Array): number | undefined {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return undefined;
}

/**
 * The fields in which `got` differs from `expected` (empty when they match),
 * plus the payload's first differing offset and its hex context.
 */
export function compareMessages(expected: ComparedMessage, got: ComparedMessage): Pick<ReplayDifference, 'fields' | 'offset' | 'expectedHex' | 'gotHex'> {
  const fields: FieldDifference[] = [];
  const e = expected.header;
  const g = got.header;
  if (e.cmd !== g.cmd) fields.push({ field: 'cmd', expected: commandName(e.cmd), got: commandName(g.cmd) });
  if (e.flags !== g.flags) fields.push({ field: 'flags', expected: `0x${e.flags.toString(16)}`, got: `0x${g.flags.toString(16)}` });
  if (e.errorNo !== g.errorNo) fields.push({ field: 'errno', expected: errnoText(e.errorNo), got: errnoText(g.errorNo) });
  if (e.msgSize !== g.msgSize) fields.push({ field: 'length', expected: String(e.msgSize - 16), got: String(g.msgSize - 16) });
  const gotPayload = expected.truncated ? got.payload.subarray(0, expected.payload.length) : got.payload;
  const offset = firstDifference(expected.payload, gotPayload);
  const out: Pick<ReplayDifference, 'fields' | 'offset' | 'expectedHex' | 'gotHex'> = { fields };
  if (offset !== undefined) {
    const from = Math.max(0, offset - CONTEXT_BEFORE);
    fields.push({ field: 'payload', expected: `byte ${offset} = 0x${hex2(expected.payload[offset]!)}`, got: `0x${hex2(gotPayload[offset]!)}` });
    out.offset = offset;
    out.expectedHex = hexContext(expected.payload, from);
    out.gotHex = hexContext(gotPayload, from);
  }
  const ek = expected.fds.join(',');
  const gk = got.fds.join(',');
  if (ek !== gk) fields.push({ field: 'fds', expected: `${expected.fds.length} [${ek}]`, got: `${got.fds.length} [${gk}]` });
  return out;
}

function hex2(b: number): string {
  return b.toString(16).padStart(2, '0');
}

/** `errno: expected 0, got 22 (EINVAL); payload: expected byte 4 = 0x01, got 0x02` */
export function describeFields(fields: readonly FieldDifference[]): string {
  return fields.map((f) => `${f.field}: expected ${f.expected}, got ${f.got}`).join('; ');
}
