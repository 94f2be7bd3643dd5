/**
 * Reads a recording (record-format.ts) as a stream of records. Every length
 * is checked against the format's bounds before anything is allocated, every
 * body against its checksum: a corrupt or hostile file ends in a
 * {@link RecordingFormatError} naming the record index and byte offset, never
 * in an unbounded allocation. A file cut short inside its last record (a crash
 * while recording) reads up to the last whole record; {@link RecordingReader.truncated}
 * then says where it stopped.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { ProtocolError } from '../errors.js';
import { decodeHeader } from '../protocol/header.js';
import { HEADER_SIZE } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import {
  FILE_PREFIX_SIZE, MAX_RECORD_BODY, RECORD_COMMON_SIZE, RECORD_FORMAT_VERSION, RECORD_FRAME_SIZE, RECORD_MAGIC, RecordLimits, RecordType, WireCodes, fdKindName,
  type FdMeta, type MessageRecord, type RecordEntry, type RecordingHeader,
} from './record-format.js';

/** A recording that cannot be read: not one, a newer version, or a corrupt record. errno EINVAL. */
export class RecordingFormatError extends ProtocolError {
  /** The record at fault (undefined for the file header). */
  readonly record: number | undefined;
  /** Its byte offset. */
  readonly offset: number;
  constructor(message: string, record: number | undefined, offset: number) {
    super(`${record === undefined ? 'recording header' : `record ${record} (byte ${offset})`}: ${message}`, { errno: Errno.EINVAL });
    this.name = 'RecordingFormatError';
    this.record = record;
    this.offset = offset;
  }
}

/** Where a file cut short stopped. */
export interface Truncation {
  /** The index the incomplete record would have had. */
  record: number;
  offset: number;
  /** Bytes its frame announced (or 8 for a cut frame) and bytes present. */
  needed: number;
  present: number;
}

const READ_CHUNK = 64 * 1024;
const utf8 = new TextDecoder('utf-8', { fatal: false });

/** A recording opened for reading: its header, then {@link records} once. */
export class RecordingReader {
  readonly header: RecordingHeader;
  /** Set when the file ended inside a record (after {@link records} finished). */
  truncated: Truncation | undefined;
  readonly #file: FileHandle;
  #position: number;
  #buffer = new Uint8Array(0);
  #start = 0;
  #eof = false;
  #closed = false;

  private constructor(file: FileHandle, header: RecordingHeader, position: number) {
    this.#file = file;
    this.header = header;
    this.#position = position;
  }

  /**
   * Opens `path` and reads its header.
   * @throws {RecordingFormatError} EINVAL: not a recording, a newer format version, a bad header.
   * @throws the `fs` error (ENOENT, EACCES, EISDIR) when the file cannot be read.
   */
  static async open(path: string): Promise<RecordingReader> {
    const file = await open(path, 'r');
    try {
      const prefix = new Uint8Array(FILE_PREFIX_SIZE);
      const { bytesRead } = await file.read(prefix, 0, FILE_PREFIX_SIZE, 0);
      if (bytesRead < FILE_PREFIX_SIZE || !RECORD_MAGIC.every((b, i) => prefix[i] === b)) {
        throw new RecordingFormatError(`${path} is not a vfio-user recording (no VFIOUREC magic)`, undefined, 0);
      }
      const view = new DataView(prefix.buffer);
      const version = view.getUint32(8, true);
      if (version < 1 || version > RECORD_FORMAT_VERSION) throw new RecordingFormatError(`format version ${version} (this reader knows 1 to ${RECORD_FORMAT_VERSION})`, undefined, 8);
      const length = view.getUint32(12, true);
      if (length > RecordLimits.headerJson) throw new RecordingFormatError(`header JSON of ${length} bytes exceeds ${RecordLimits.headerJson}`, undefined, 12);
      const json = new Uint8Array(length);
      const got = await file.read(json, 0, length, FILE_PREFIX_SIZE);
      if (got.bytesRead < length) throw new RecordingFormatError(`the file ends inside the header (${got.bytesRead} of ${length} bytes)`, undefined, FILE_PREFIX_SIZE);
      return new RecordingReader(file, parseHeader(json), FILE_PREFIX_SIZE + length);
    } catch (error) {
      await file.close();
      throw error;
    }
  }

  /**
   * The records in file order. Stops at the end of the file, or at a record
   * cut short (see {@link truncated}); closes the file when done or abandoned.
   * @throws {RecordingFormatError} EINVAL for a corrupt record (bad length, checksum, type or field).
   */
  async *records(): AsyncGenerator<RecordEntry> {
    try {
      for (let index = 0; ; index++) {
        const offset = this.#position - (this.#buffer.length - this.#start);
        const head = await this.#take(RECORD_FRAME_SIZE);
        if (head.length === 0) return;
        if (head.length < RECORD_FRAME_SIZE) return this.#cut(index, offset, RECORD_FRAME_SIZE, head.length);
        const view = new DataView(head.buffer, head.byteOffset, RECORD_FRAME_SIZE);
        const length = view.getUint32(0, true);
        if (length < RECORD_COMMON_SIZE || length > MAX_RECORD_BODY) throw new RecordingFormatError(`body length ${length} is outside ${RECORD_COMMON_SIZE}..${MAX_RECORD_BODY}`, index, offset);
        const sum = view.getUint32(4, true);
        const body = await this.#take(length);
        if (body.length < length) return this.#cut(index, offset, RECORD_FRAME_SIZE + length, RECORD_FRAME_SIZE + body.length);
        if (crc32(body) !== sum) throw new RecordingFormatError('checksum mismatch (corrupt record)', index, offset);
        yield decodeBody(body, index, offset);
      }
    } finally {
      await this.close();
    }
  }

  /** Closes the file (idempotent). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#eof = true;
    this.#buffer = new Uint8Array(0);
    this.#start = 0;
    await this.#file.close().catch(() => {});
  }

  #cut(record: number, offset: number, needed: number, present: number): void {
    this.truncated = { record, offset, needed, present };
  }

  /** The next `n` bytes (fewer only at the end of the file). `n` is bounded by the caller. */
  async #take(n: number): Promise<Uint8Array> {
    while (this.#buffer.length - this.#start < n && !this.#eof) {
      const have = this.#buffer.length - this.#start;
      // Grow geometrically: a length field claiming more than the file holds costs what the file holds.
      const want = Math.max(READ_CHUNK, Math.min(n - have, 2 * have));
      const next = new Uint8Array(have + want);
      next.set(this.#buffer.subarray(this.#start), 0);
      const { bytesRead } = await this.#file.read(next, have, want, this.#position);
      this.#position += bytesRead;
      this.#buffer = next.subarray(0, have + bytesRead);
      this.#start = 0;
      if (bytesRead === 0) this.#eof = true;
    }
    const end = Math.min(this.#start + n, this.#buffer.length);
    const out = this.#buffer.subarray(this.#start, end);
    this.#start = end;
    return out;
  }
}

function parseHeader(json: Uint8Array): RecordingHeader {
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(json));
  } catch (error) {
    throw new RecordingFormatError(`header JSON does not parse (${(error as Error).message})`, undefined, FILE_PREFIX_SIZE);
  }
  if (typeof value !== 'object' || value === null || (value as { format?: unknown }).format !== 'vfio-user-recording') {
    throw new RecordingFormatError('header JSON is not a vfio-user-recording object', undefined, FILE_PREFIX_SIZE);
  }
  return value as RecordingHeader;
}

/** Bounds-checked field access over one body; failures name the record. */
class BodyReader {
  readonly view: DataView;
  readonly body: Uint8Array;
  readonly index: number;
  readonly offset: number;
  p = RECORD_COMMON_SIZE;
  constructor(body: Uint8Array, index: number, offset: number) {
    this.body = body;
    this.index = index;
    this.offset = offset;
    this.view = new DataView(body.buffer, body.byteOffset, body.length);
  }
  fail(message: string): never {
    throw new RecordingFormatError(message, this.index, this.offset);
  }
  need(n: number, what: string): void {
    if (this.body.length - this.p < n) this.fail(`${what}: the body ends ${n - (this.body.length - this.p)} bytes early`);
  }
  u8(): number {
    this.need(1, 'u8');
    return this.view.getUint8(this.p++);
  }
  u16(): number {
    this.need(2, 'u16');
    const v = this.view.getUint16(this.p, true);
    this.p += 2;
    return v;
  }
  u32(): number {
    this.need(4, 'u32');
    const v = this.view.getUint32(this.p, true);
    this.p += 4;
    return v;
  }
  u64(): bigint {
    this.need(8, 'u64');
    const v = this.view.getBigUint64(this.p, true);
    this.p += 8;
    return v;
  }
  bytes(n: number, what: string): Uint8Array {
    this.need(n, what);
    const out = this.body.subarray(this.p, this.p + n);
    this.p += n;
    return out;
  }
  /** A u32 length (≤ `max`) and that many bytes. */
  sized(max: number, what: string): Uint8Array {
    const n = this.u32();
    if (n > max) this.fail(`${what}: length ${n} exceeds ${max}`);
    return this.bytes(n, what);
  }
}

function decodeBody(body: Uint8Array, index: number, offset: number): RecordEntry {
  const r = new BodyReader(body, index, offset);
  const type = r.view.getUint8(0);
  const common = { index, offset, session: r.view.getUint32(4, true), timeNs: r.view.getBigUint64(8, true) };
  switch (type) {
    case RecordType.MESSAGE:
      return decodeMessage(r, common);
    case RecordType.CONTENT: {
      const fd = r.u16();
      r.u16();
      const length = r.u32();
      if (length > RecordLimits.chunk) r.fail(`content chunk of ${length} bytes exceeds ${RecordLimits.chunk}`);
      const at = r.u64();
      if (at + BigInt(length) > BigInt(RecordLimits.fdSize)) r.fail(`content at ${at} lies beyond ${RecordLimits.fdSize}`);
      const data = r.bytes(length, 'content data');
      if (r.p !== r.body.length) r.fail(`${r.body.length - r.p} bytes after the content`);
      return { type: 'content', ...common, fd, at: Number(at), data };
    }
    case RecordType.SESSION_START:
      return { type: 'session-start', ...common, info: parseJsonObject(r, r.sized(RecordLimits.text, 'session info')) };
    case RecordType.SESSION_END:
      return { type: 'session-end', ...common, reason: utf8.decode(r.sized(RecordLimits.text, 'reason')) };
    case RecordType.NOTE:
      return { type: 'note', ...common, note: parseJsonObject(r, r.sized(RecordLimits.text, 'note')) };
    default:
      return r.fail(`unknown record type ${type}`);
  }
}

function parseJsonObject(r: BodyReader, bytes: Uint8Array): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(utf8.decode(bytes));
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch {
    // reported below
  }
  return r.fail('JSON member is not an object');
}

function decodeMessage(r: BodyReader, common: Pick<MessageRecord, 'index' | 'offset' | 'session' | 'timeNs'>): MessageRecord {
  const side = WireCodes.SIDES[r.u8()];
  const direction = WireCodes.DIRECTIONS[r.u8()];
  const channel = WireCodes.CHANNELS[r.u8()];
  const flags = r.u8();
  if (side === undefined || direction === undefined || channel === undefined || flags > 1) r.fail('bad side, direction, channel or flags');
  const header = decodeHeader(r.bytes(HEADER_SIZE, 'header'));
  const payload = r.sized(RecordLimits.payload, 'payload');
  const truncated = flags === 1;
  if (truncated ? header.msgSize <= HEADER_SIZE + payload.length : header.msgSize !== HEADER_SIZE + payload.length) {
    r.fail(`msg_size ${header.msgSize} does not match the ${payload.length}-byte payload`);
  }
  const count = r.u16();
  r.u16();
  if (count > RecordLimits.fds) r.fail(`${count} fds exceed ${RecordLimits.fds}`);
  const fds: FdMeta[] = [];
  for (let i = 0; i < count; i++) fds.push(decodeFd(r, i));
  if (r.p !== r.body.length) r.fail(`${r.body.length - r.p} bytes after the last field`);
  return { type: 'message', ...common, side, direction, channel, header, payload, truncated, fds };
}

function decodeFd(r: BodyReader, i: number): FdMeta {
  const kind = fdKindName(r.u8());
  const flags = r.u8();
  const linkLength = r.u16();
  const seals = r.u32();
  const size = r.u64();
  const ident = r.u32();
  if (kind === undefined || flags > 3) r.fail(`fd ${i}: bad kind or flags`);
  if (linkLength > RecordLimits.link) r.fail(`fd ${i}: link of ${linkLength} bytes exceeds ${RecordLimits.link}`);
  if (size > BigInt(RecordLimits.fdSize)) r.fail(`fd ${i}: size ${size} exceeds ${RecordLimits.fdSize}`);
  const link = utf8.decode(r.bytes(linkLength, `fd ${i} link`));
  return { kind, size: Number(size), seals: (flags & 1) !== 0 ? seals : undefined, link, content: (flags & 2) !== 0, ident };
}
