/**
 * The recording file format (docs/record-replay.md): a versioned header, then
 * length-prefixed, checksummed binary records, so a file is written as a stream
 * and a file cut short by a crash is readable up to its last whole record.
 *
 * ```text
 * header:  "VFIOUREC" | u32 version | u32 n | n bytes of JSON (RecordingHeader)
 * record:  u32 body length | u32 crc32(body) | body
 * body:    u8 type | u8 0 | u16 0 | u32 session | u64 timeNs | type-specific fields
 * ```
 *
 * All integers little-endian. This module encodes; record-reader.ts decodes
 * with every length checked against the bounds below before anything is
 * allocated.
 */
import { crc32 } from 'node:zlib';
import { InvalidArgumentError } from '../errors.js';
import { encodeHeader, type MessageHeader } from '../protocol/header.js';
import { HEADER_SIZE } from '../protocol/constants.js';
import type { TapSide } from './types.js';

/** The first 8 bytes of every recording. */
export const RECORD_MAGIC = new TextEncoder().encode('VFIOUREC');
/** The format version this package writes and the newest it reads. */
export const RECORD_FORMAT_VERSION = 1;
/** Magic, version, JSON length. */
export const FILE_PREFIX_SIZE = 16;
/** Length and checksum before each body. */
export const RECORD_FRAME_SIZE = 8;
/** Type, reserved, session, time: the start of every body. */
export const RECORD_COMMON_SIZE = 16;

/** Bounds a reader enforces (and a writer respects): a corrupt or hostile file cannot make a reader allocate more. */
export const RecordLimits = {
  /** The header's JSON. */
  headerJson: 64 * 1024,
  /** One message's payload (larger messages are recorded with the payload cut, flag `truncated`). */
  payload: 16 * 1024 * 1024,
  /** Fds described in one message record (Linux's SCM_MAX_FD). */
  fds: 253,
  /** The `/proc/self/fd` link text of one fd. */
  link: 256,
  /** One content chunk. */
  chunk: 1024 * 1024,
  /** Text or JSON of a session-start, session-end or note record. */
  text: 64 * 1024,
  /** Largest fd size a file may claim (a replay recreates memfds of this size, sparse). */
  fdSize: 2 ** 46,
} as const;

/** Fixed bytes of one fd's description (its link follows). */
export const FD_ENTRY_SIZE = 20;

/** Largest body any record may have. */
export const MAX_RECORD_BODY = RECORD_COMMON_SIZE + 24 + RecordLimits.payload + 4 + RecordLimits.fds * (FD_ENTRY_SIZE + RecordLimits.link);

/** Record type codes. */
export const RecordType = { SESSION_START: 1, MESSAGE: 2, CONTENT: 3, SESSION_END: 4, NOTE: 5 } as const;
/** One record type code. */
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

/** What an fd was, as the recorder saw it (fstat + the /proc/self/fd link). */
export const FdKind = { memfd: 1, eventfd: 2, socket: 3, pipe: 4, file: 5, other: 6 } as const;
/** One fd kind's name. */
export type FdKind = keyof typeof FdKind;
const FD_KIND_NAMES = new Map<number, FdKind>(Object.entries(FdKind).map(([name, code]) => [code, name as FdKind]));

/** The name of an fd kind code, or undefined for an unknown code. */
export function fdKindName(code: number): FdKind | undefined {
  return FD_KIND_NAMES.get(code);
}

/** Metadata of one fd that travelled with a message. */
export interface FdMeta {
  kind: FdKind;
  /** st_size (0 for eventfds and sockets). */
  size: number;
  /** F_GET_SEALS, when the file supports sealing. */
  seals: number | undefined;
  /** The `/proc/self/fd` link (`/memfd:guest-ram (deleted)`, `anon_inode:[eventfd]`), cut to 256 bytes. */
  link: string;
  /** Whether content records for this fd follow the message record. */
  content: boolean;
  /**
   * The file's identity within its session (1, 2, …: one number per distinct
   * st_dev/st_ino), so a replay passes one recreated file wherever the
   * recording passed one file (a memfd mapped twice, an eventfd on several
   * vectors); 0 when unknown.
   */
  ident: number;
}

/** The header's JSON. */
export interface RecordingHeader {
  format: 'vfio-user-recording';
  version: number;
  /** ISO time the recording started. */
  created: string;
  /** Milliseconds since the epoch at the same instant (records' timeNs count from it). */
  createdUnixMs: number;
  package: string;
  packageVersion: string;
  /** The mediator's upstream socket, when the recorder was told. */
  upstream?: string;
  /** Whether upstream-side messages were recorded too. */
  upstreamSide: boolean;
  /** Largest memfd/file content captured per fd (0: none). */
  captureMemory: number;
  /** Other members a newer writer added are kept as read. */
  [key: string]: unknown;
}

/** Fields every record has. */
export interface RecordCommon {
  /** Position of the record in the file, from 0. */
  index: number;
  /** Byte offset of the record's frame in the file. */
  offset: number;
  /** The mediator's session number (0: the file as a whole, for notes). */
  session: number;
  /** Nanoseconds since the recording started. */
  timeNs: bigint;
}

/** A message as it crossed the mediator. */
export interface MessageRecord extends RecordCommon {
  type: 'message';
  side: TapSide;
  /** `in`: into the mediator from that side; `out`: from the mediator to that side. */
  direction: 'in' | 'out';
  channel: 'main' | 'twin';
  header: MessageHeader;
  payload: Uint8Array;
  /** The payload was longer than {@link RecordLimits.payload} and was cut (header.msgSize tells the real size). */
  truncated: boolean;
  fds: FdMeta[];
}

/** A chunk of one fd's content (follows its message record). */
export interface ContentRecord extends RecordCommon {
  type: 'content';
  /** Which fd of the preceding message. */
  fd: number;
  /** Byte offset in that fd. */
  at: number;
  data: Uint8Array;
}

/** A session began (the first message of a mediator session). */
export interface SessionStartRecord extends RecordCommon {
  type: 'session-start';
  info: Record<string, unknown>;
}

/** A session ended. */
export interface SessionEndRecord extends RecordCommon {
  type: 'session-end';
  reason: string;
}

/** A remark by the recorder (records dropped, size limit reached). */
export interface NoteRecord extends RecordCommon {
  type: 'note';
  note: Record<string, unknown>;
}

/** Any record. */
export type RecordEntry = MessageRecord | ContentRecord | SessionStartRecord | SessionEndRecord | NoteRecord;

const SIDES: readonly TapSide[] = ['client', 'upstream'];
const DIRECTIONS = ['in', 'out'] as const;
const CHANNELS = ['main', 'twin'] as const;

/** Codes of the message fields (index = code). */
export const WireCodes = { SIDES, DIRECTIONS, CHANNELS } as const;

const utf8 = new TextEncoder();
const NO_LINKS: readonly Uint8Array[] = [];

/** The file's first bytes: magic, version, header JSON. @throws {InvalidArgumentError} EINVAL if the JSON exceeds 64 KiB. */
export function encodeFilePrefix(header: RecordingHeader): Uint8Array {
  const json = utf8.encode(JSON.stringify(header));
  if (json.length > RecordLimits.headerJson) throw new InvalidArgumentError(`recording header: ${json.length} bytes of JSON exceed ${RecordLimits.headerJson}`);
  const out = new Uint8Array(FILE_PREFIX_SIZE + json.length);
  out.set(RECORD_MAGIC, 0);
  const view = new DataView(out.buffer);
  view.setUint32(8, RECORD_FORMAT_VERSION, true);
  view.setUint32(12, json.length, true);
  out.set(json, FILE_PREFIX_SIZE);
  return out;
}

const SLAB_SIZE = 256 * 1024;
const SLAB_MAX_RECORD = 16 * 1024;
let slab = new Uint8Array(0);
let slabUsed = 0;

/**
 * `n` zeroed bytes: small records are cut from a shared slab (never reused:
 * a new slab replaces a full one), so that recording a message costs no
 * buffer allocation of its own and consecutive records stay contiguous for
 * the writer to coalesce.
 */
function allocate(n: number): Uint8Array {
  if (n > SLAB_MAX_RECORD) return new Uint8Array(n);
  if (slab.length - slabUsed < n) {
    slab = new Uint8Array(SLAB_SIZE);
    slabUsed = 0;
  }
  const out = slab.subarray(slabUsed, slabUsed + n);
  slabUsed += n;
  return out;
}

/** Builds a framed record: `bodySize` bytes of body after the common fields, filled by `fill(view, bytes, at)`. */
function frame(type: RecordType, session: number, timeNs: bigint, bodySize: number, fill: (view: DataView, bytes: Uint8Array, at: number) => void): Uint8Array {
  const total = RECORD_FRAME_SIZE + RECORD_COMMON_SIZE + bodySize;
  const bytes = allocate(total);
  const view = new DataView(bytes.buffer, bytes.byteOffset, total);
  view.setUint32(0, RECORD_COMMON_SIZE + bodySize, true);
  view.setUint8(8, type);
  view.setUint32(12, session >>> 0, true);
  view.setBigUint64(16, timeNs < 0n ? 0n : BigInt.asUintN(64, timeNs), true);
  fill(view, bytes, RECORD_FRAME_SIZE + RECORD_COMMON_SIZE);
  view.setUint32(4, crc32(bytes.subarray(RECORD_FRAME_SIZE)), true);
  return bytes;
}

function cutUtf8(text: string, max: number): Uint8Array {
  const bytes = utf8.encode(text);
  if (bytes.length <= max) return bytes;
  // Cut on a character boundary: drop continuation bytes at the cut.
  let end = max;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

/** A message record. Payloads beyond {@link RecordLimits.payload} are cut (flag `truncated`). */
export function encodeMessageRecord(
  session: number,
  timeNs: bigint,
  m: { side: TapSide; direction: 'in' | 'out'; channel: 'main' | 'twin'; header: MessageHeader; payload: Uint8Array },
  fdMetas: readonly FdMeta[],
): Uint8Array {
  const truncated = m.payload.length > RecordLimits.payload;
  const payload = truncated ? m.payload.subarray(0, RecordLimits.payload) : m.payload;
  const fds = fdMetas.length > RecordLimits.fds ? fdMetas.slice(0, RecordLimits.fds) : fdMetas;
  const links = fds.length === 0 ? NO_LINKS : fds.map((f) => cutUtf8(f.link, RecordLimits.link));
  const size = 4 + HEADER_SIZE + 4 + payload.length + 4 + links.reduce((n, l) => n + FD_ENTRY_SIZE + l.length, 0);
  return frame(RecordType.MESSAGE, session, timeNs, size, (view, bytes, at) => {
    view.setUint8(at, SIDES.indexOf(m.side));
    view.setUint8(at + 1, DIRECTIONS.indexOf(m.direction));
    view.setUint8(at + 2, CHANNELS.indexOf(m.channel));
    view.setUint8(at + 3, truncated ? 1 : 0);
    encodeHeader(m.header, bytes, at + 4);
    view.setUint32(at + 20, payload.length, true);
    bytes.set(payload, at + 24);
    let p = at + 24 + payload.length;
    view.setUint16(p, fds.length, true);
    p += 4;
    fds.forEach((f, i) => {
      const link = links[i]!;
      view.setUint8(p, FdKind[f.kind]);
      view.setUint8(p + 1, (f.seals === undefined ? 0 : 1) | (f.content ? 2 : 0));
      view.setUint16(p + 2, link.length, true);
      view.setUint32(p + 4, (f.seals ?? 0) >>> 0, true);
      view.setBigUint64(p + 8, BigInt(f.size), true);
      view.setUint32(p + 16, f.ident >>> 0, true);
      bytes.set(link, p + FD_ENTRY_SIZE);
      p += FD_ENTRY_SIZE + link.length;
    });
  });
}

/** A content chunk of fd `fd` of the preceding message: `data` found at byte `at` of that fd. */
export function encodeContentRecord(session: number, timeNs: bigint, fd: number, at: number, data: Uint8Array): Uint8Array {
  if (data.length > RecordLimits.chunk) throw new InvalidArgumentError(`content chunk of ${data.length} bytes exceeds ${RecordLimits.chunk}`);
  return frame(RecordType.CONTENT, session, timeNs, 16 + data.length, (view, bytes, p) => {
    view.setUint16(p, fd, true);
    view.setUint32(p + 4, data.length, true);
    view.setBigUint64(p + 8, BigInt(at), true);
    bytes.set(data, p + 16);
  });
}

function textRecord(type: RecordType, session: number, timeNs: bigint, text: string): Uint8Array {
  const bytes = cutUtf8(text, RecordLimits.text);
  return frame(type, session, timeNs, 4 + bytes.length, (view, out, p) => {
    view.setUint32(p, bytes.length, true);
    out.set(bytes, p + 4);
  });
}

/** A session-start record carrying `info` as JSON (the client's credentials). */
export function encodeSessionStart(session: number, timeNs: bigint, info: Record<string, unknown>): Uint8Array {
  return textRecord(RecordType.SESSION_START, session, timeNs, JSON.stringify(info));
}

/** A session-end record with its reason. */
export function encodeSessionEnd(session: number, timeNs: bigint, reason: string): Uint8Array {
  return textRecord(RecordType.SESSION_END, session, timeNs, reason);
}

/** A note record (JSON; session 0 for the file as a whole). */
export function encodeNote(session: number, timeNs: bigint, note: Record<string, unknown>): Uint8Array {
  return textRecord(RecordType.NOTE, session, timeNs, JSON.stringify(note));
}
