/**
 * Producing the device-state stream: {@link StreamWriter} encodes the stream
 * header, data records and end record one call at a time (layout in
 * `stream-format.ts`); {@link StreamSource} queues what the writer produces
 * and hands it out in MIG_DATA_READ-sized pieces, keeping count of the
 * pending bytes a server reports as pre-copy "initial" and "dirty" bytes.
 */
import { concatChunks } from '../transport/outgoing.js';
import { InvalidArgumentError, StateError } from '../errors.js';
import { StreamReader, type StreamReaderOptions } from './stream-reader.js';
import {
  RecordTag,
  encodeEndPayload,
  encodeRecord,
  encodeRecordParts,
  encodeStreamHeader,
  getU32,
  kindToTag,
  type StreamIdentity,
  type StreamRecord,
  type StreamRecordKind,
  type StreamSummary,
} from './stream-format.js';

/** Where a {@link StreamWriter} is: before `begin()`, between `begin()` and `end()`, after `end()`. */
export const StreamWriterState = { Idle: 'idle', Open: 'open', Ended: 'ended' } as const;
/** One of the values of {@link StreamWriterState}. */
export type StreamWriterState = (typeof StreamWriterState)[keyof typeof StreamWriterState];

/**
 * Encodes one stream. Call `begin()` once, `record()` any number of times,
 * then `end()` once; each returns the bytes to send next, in a buffer of its
 * own (the payload is copied, so the caller may reuse it).
 */
export class StreamWriter {
  #state: StreamWriterState = StreamWriterState.Idle;
  #chain = 0;
  #records = 0;
  #payloadBytes = 0;

  /** Where the writer is in its begin → record* → end sequence. */
  get state(): StreamWriterState {
    return this.#state;
  }

  /** Data records written so far. */
  get records(): number {
    return this.#records;
  }

  /** Sum of the data record payload lengths written so far. */
  get payloadBytes(): number {
    return this.#payloadBytes;
  }

  /**
   * Encodes the stream header.
   * @param identity - the device the stream belongs to.
   * @param flags - bits of `StreamFlag` (default none).
   * @throws {StateError} EINVAL if `begin()` was already called.
   * @throws {InvalidArgumentError} EINVAL if the identity or the flags do not fit the format.
   */
  begin(identity: StreamIdentity, flags = 0): Uint8Array {
    this.#expect(StreamWriterState.Idle, 'begin()');
    const bytes = encodeStreamHeader(identity, flags);
    this.#chain = getU32(bytes, bytes.length - 4);
    this.#state = StreamWriterState.Open;
    return bytes;
  }

  /**
   * Encodes one data record.
   * @param kind - `'full'`, `'delta'`, `'config'`, or a device-defined tag in 0x80..0xfe.
   * @param payload - the record's bytes (at most `MAX_RECORD_PAYLOAD`); copied.
   * @throws {StateError} EINVAL unless called between `begin()` and `end()`.
   * @throws {InvalidArgumentError} EINVAL for an unknown kind or an oversized payload.
   */
  record(kind: StreamRecordKind, payload: Uint8Array): Uint8Array {
    return concatChunks(this.recordParts(kind, payload));
  }

  /**
   * Like {@link record}, without copying `payload`: the record as parts
   * (header, the payload itself, CRC). Do not modify `payload` until the parts are consumed.
   */
  recordParts(kind: StreamRecordKind, payload: Uint8Array): Uint8Array[] {
    this.#expect(StreamWriterState.Open, 'record()');
    const { parts, crc } = encodeRecordParts(kindToTag(kind), this.#records + 1, payload, this.#chain);
    this.#chain = crc;
    this.#records++;
    this.#payloadBytes += payload.length;
    return parts;
  }

  /**
   * Encodes the end record, which marks the stream complete.
   * @throws {StateError} EINVAL unless called after `begin()`, once.
   */
  end(): Uint8Array {
    this.#expect(StreamWriterState.Open, 'end()');
    const payload = encodeEndPayload(this.#records, this.#payloadBytes);
    const { bytes } = encodeRecord(RecordTag.End, this.#records + 1, payload, this.#chain);
    this.#state = StreamWriterState.Ended;
    return bytes;
  }

  #expect(state: StreamWriterState, call: string): void {
    if (this.#state !== state) {
      throw new StateError(`migration stream writer: ${call} called in state '${this.#state}' (needs '${state}')`);
    }
  }
}

/** Options of {@link StreamSource}. */
export interface StreamSourceOptions {
  /** Stream header flags (bits of `StreamFlag`). */
  readonly flags?: number;
}

interface QueuedChunk {
  readonly bytes: Uint8Array;
  /** Counts towards `pendingDirtyBytes` rather than `pendingInitialBytes`. */
  readonly dirty: boolean;
}

const EMPTY = new Uint8Array(0);

/**
 * A pull-style stream for a server's MIG_DATA_READ: the device queues records,
 * the server reads up to `maxBytes` at a time. Bytes of `'delta'` records count
 * as *dirty*, everything else (header, full state, config, custom records, the
 * end record) as *initial*.
 */
export class StreamSource {
  readonly #writer = new StreamWriter();
  readonly #queue: QueuedChunk[] = [];
  #head = 0;
  #offset = 0;
  #pending = 0;
  #pendingDirty = 0;

  /**
   * Queues the stream header at once.
   * @throws {InvalidArgumentError} EINVAL if the identity or the flags do not fit the format.
   */
  constructor(identity: StreamIdentity, options: StreamSourceOptions = {}) {
    this.#push(this.#writer.begin(identity, options.flags ?? 0), false);
  }

  /** Encoded bytes queued and not read yet. */
  get pendingBytes(): number {
    return this.#pending;
  }

  /** Pending bytes of `'delta'` records (pre-copy `dirty_bytes`). */
  get pendingDirtyBytes(): number {
    return this.#pendingDirty;
  }

  /** Pending bytes of everything else (pre-copy `initial_bytes`). */
  get pendingInitialBytes(): number {
    return this.#pending - this.#pendingDirty;
  }

  /** `end()` has been called: no record can be added. */
  get ended(): boolean {
    return this.#writer.state === StreamWriterState.Ended;
  }

  /** The end record has been queued and everything has been read (EOF). */
  get done(): boolean {
    return this.ended && this.#pending === 0;
  }

  /** Data records queued so far. */
  get records(): number {
    return this.#writer.records;
  }

  /**
   * Queues one data record.
   * @throws {StateError} EINVAL after `end()`.
   * @throws {InvalidArgumentError} EINVAL for an unknown kind or an oversized payload.
   */
  record(kind: StreamRecordKind, payload: Uint8Array): void {
    for (const part of this.#writer.recordParts(kind, payload)) if (part.length > 0) this.#push(part, kind === 'delta');
  }

  /** Queues the end record. @throws {StateError} EINVAL if called twice. */
  end(): void {
    this.#push(this.#writer.end(), false);
  }

  /**
   * Takes up to `maxBytes` of the pending bytes, in order. A short result
   * means nothing more is pending *now*; an empty one that nothing is. The
   * result may be a view into the queue: do not modify it.
   * @throws {InvalidArgumentError} EINVAL if `maxBytes` is not a non-negative safe integer.
   */
  read(maxBytes: number): Uint8Array {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
      throw new InvalidArgumentError(`migration stream source: read(${maxBytes}) needs a non-negative integer`);
    }
    const n = Math.min(maxBytes, this.#pending);
    if (n === 0) return EMPTY;
    const first = this.#queue[this.#head]!;
    if (first.bytes.length - this.#offset >= n) return this.#take(n);
    const out = new Uint8Array(n);
    for (let filled = 0; filled < n; ) {
      const part = this.#take(n - filled);
      out.set(part, filled);
      filled += part.length;
    }
    return out;
  }

  #push(bytes: Uint8Array, dirty: boolean): void {
    this.#queue.push({ bytes, dirty });
    this.#pending += bytes.length;
    if (dirty) this.#pendingDirty += bytes.length;
  }

  /** Up to `n` bytes from the head chunk, as a view. */
  #take(n: number): Uint8Array {
    const chunk = this.#queue[this.#head]!;
    const start = this.#offset;
    const end = Math.min(chunk.bytes.length, start + n);
    this.#pending -= end - start;
    if (chunk.dirty) this.#pendingDirty -= end - start;
    if (end === chunk.bytes.length) this.#dropHead();
    else this.#offset = end;
    return chunk.bytes.subarray(start, end);
  }

  #dropHead(): void {
    this.#head++;
    this.#offset = 0;
    if (this.#head >= 64 && this.#head * 2 >= this.#queue.length) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
  }
}

/**
 * Encodes a whole stream in one buffer.
 * @throws {InvalidArgumentError} EINVAL as {@link StreamWriter.begin} and {@link StreamWriter.record} do.
 */
export function encodeStream(
  identity: StreamIdentity,
  records: Iterable<{ readonly kind: StreamRecordKind; readonly payload: Uint8Array }>,
  flags = 0,
): Uint8Array {
  const w = new StreamWriter();
  const parts = [w.begin(identity, flags)];
  for (const r of records) parts.push(w.record(r.kind, r.payload));
  parts.push(w.end());
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Decodes and checks a whole stream held in one buffer.
 * @throws {ProtocolError} EINVAL as {@link StreamReader.push} and {@link StreamReader.finish} do.
 */
export function decodeStream(
  bytes: Uint8Array,
  options: StreamReaderOptions,
): { records: StreamRecord[]; summary: StreamSummary } {
  const reader = new StreamReader(options);
  const records = reader.push(bytes);
  return { records, summary: reader.finish() };
}
