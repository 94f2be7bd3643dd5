/**
 * The destination side of the device-state stream: an incremental parser that
 * accepts the bytes of MIG_DATA_WRITE at any chunking (one byte at a time, odd
 * sizes, everything at once), checks them as they come and returns each data
 * record once its CRC has been verified. Layout in `stream-format.ts`.
 *
 * It buffers at most the stream header or one record; a record's declared
 * length is checked against the limit before any of its payload is stored, and
 * the payload buffer grows with the bytes that actually arrive.
 */
import { InvalidArgumentError, ProtocolError } from '../errors.js';
import { crc32 } from './crc32.js';
import {
  CRC_SIZE,
  END_PAYLOAD_SIZE,
  MAX_DEVICE_TYPE_BYTES,
  MAX_RECORD_PAYLOAD,
  RECORD_HEADER_SIZE,
  RecordTag,
  STREAM_FORMAT_VERSION,
  STREAM_HEADER_FIXED_SIZE,
  decodeEndPayload,
  decodeStreamHeader,
  describeIdentity,
  getU32,
  hex4,
  magicByte,
  tagToKind,
  validateIdentity,
  type StreamIdentity,
  type StreamRecord,
  type StreamRecordKind,
  type StreamSummary,
} from './stream-format.js';

/** Options of {@link StreamReader}. */
export interface StreamReaderOptions {
  /** This device: type and PCI IDs must match; its `stateVersion` is the newest accepted. */
  readonly expected: StreamIdentity;
  /** Older state versions the device can still load (a list, or a predicate). None by default. */
  readonly acceptStateVersions?: readonly number[] | ((version: number) => boolean);
  /** Largest record payload accepted; at most (and by default) `MAX_RECORD_PAYLOAD`, 1 GiB. */
  readonly maxRecordBytes?: number;
}

const Phase = { Header: 0, Identity: 1, RecordHeader: 2, Payload: 3, Crc: 4, Done: 5 } as const;
type Phase = (typeof Phase)[keyof typeof Phase];

const MAGIC_SIZE = 8;
const INITIAL_PAYLOAD_CAPACITY = 1 << 20;

/**
 * Incremental stream parser. Feed it with {@link push}; call {@link finish}
 * when the source says the stream is over. Once it has thrown, it throws the
 * same error on every later call.
 */
export class StreamReader {
  readonly #expected: StreamIdentity;
  readonly #accept: (version: number) => boolean;
  readonly #maxRecord: number;
  readonly #scratch = new Uint8Array(STREAM_HEADER_FIXED_SIZE + MAX_DEVICE_TYPE_BYTES + CRC_SIZE);
  #phase: Phase = Phase.Header;
  #have = 0;
  #need = STREAM_HEADER_FIXED_SIZE;
  #chain = 0;
  #tag = 0;
  #payload = new Uint8Array(0);
  #length = 0;
  #filled = 0;
  #records = 0;
  #payloadBytes = 0;
  #identity: StreamIdentity | undefined;
  #flags = 0;
  #error: ProtocolError | undefined;

  /**
   * @throws {InvalidArgumentError} EINVAL if `expected` does not fit the format or
   * `maxRecordBytes` is not an integer in 0..`MAX_RECORD_PAYLOAD`.
   */
  constructor(options: StreamReaderOptions) {
    validateIdentity(options.expected, 'migration stream reader: expected');
    const max = options.maxRecordBytes ?? MAX_RECORD_PAYLOAD;
    if (!Number.isInteger(max) || max < 0 || max > MAX_RECORD_PAYLOAD) {
      throw new InvalidArgumentError(`migration stream reader: maxRecordBytes ${max} is not in 0..${MAX_RECORD_PAYLOAD}`);
    }
    this.#expected = options.expected;
    this.#maxRecord = max;
    const accept = options.acceptStateVersions ?? [];
    this.#accept = typeof accept === 'function' ? accept : (v) => accept.includes(v);
  }

  /** The stream's identity, once its header has been checked. */
  get identity(): StreamIdentity | undefined {
    return this.#identity;
  }

  /** The stream header's flags (0 until it has been checked). */
  get flags(): number {
    return this.#flags;
  }

  /** The end record has arrived and matched: the stream is complete. */
  get complete(): boolean {
    return this.#phase === Phase.Done && this.#error === undefined;
  }

  /** Data records returned so far. */
  get records(): number {
    return this.#records;
  }

  /**
   * Consumes the next bytes of the stream.
   * @returns the data records completed by these bytes, in order (often none).
   * @throws {ProtocolError} EINVAL when the stream is refused: not a migration stream,
   * an unsupported format version, another device or a newer state version, a corrupted
   * header or record (CRC mismatch), a record over the length limit, a record out of
   * sequence, inconsistent totals, or bytes after the end record. Records completed
   * earlier in the same chunk are then not returned; the reader stays failed.
   */
  push(chunk: Uint8Array): StreamRecord[] {
    if (this.#error) throw this.#error;
    const out: StreamRecord[] = [];
    try {
      for (let pos = 0; pos < chunk.length; ) pos = this.#step(chunk, pos, out);
    } catch (e) {
      this.#error = e instanceof ProtocolError ? e : new ProtocolError('migration stream: internal error', { cause: e });
      throw this.#error;
    }
    return out;
  }

  /**
   * Declares the stream over.
   * @returns what the stream carried.
   * @throws {ProtocolError} EINVAL if the stream was refused earlier, or is truncated
   * (the end record has not arrived).
   */
  finish(): StreamSummary {
    if (this.#error) throw this.#error;
    if (this.#phase !== Phase.Done || !this.#identity) {
      this.#error = new ProtocolError(`migration stream truncated: ${this.#where()} (no end record)`);
      throw this.#error;
    }
    return { identity: this.#identity, flags: this.#flags, records: this.#records, payloadBytes: this.#payloadBytes };
  }

  #step(chunk: Uint8Array, pos: number, out: StreamRecord[]): number {
    switch (this.#phase) {
      case Phase.Payload:
        return this.#fillPayload(chunk, pos);
      case Phase.Done:
        throw new ProtocolError(`migration stream: ${chunk.length - pos} bytes after the end record`);
      default:
        return this.#fillScratch(chunk, pos, out);
    }
  }

  #fillScratch(chunk: Uint8Array, pos: number, out: StreamRecord[]): number {
    const take = Math.min(this.#need - this.#have, chunk.length - pos);
    this.#scratch.set(chunk.subarray(pos, pos + take), this.#have);
    const before = this.#have;
    this.#have += take;
    if (this.#phase === Phase.Header) this.#checkMagic(before);
    if (this.#have === this.#need) this.#scratchFull(out);
    return pos + take;
  }

  #scratchFull(out: StreamRecord[]): void {
    if (this.#phase === Phase.Header) this.#onHeaderFixed();
    else if (this.#phase === Phase.Identity) this.#onIdentity();
    else if (this.#phase === Phase.RecordHeader) this.#onRecordHeader();
    else this.#onRecordCrc(out);
  }

  #checkMagic(from: number): void {
    for (let i = from; i < Math.min(this.#have, MAGIC_SIZE); i++) {
      if (this.#scratch[i] !== magicByte(i)) {
        throw new ProtocolError('not a vfio-user migration stream (bad magic)');
      }
    }
  }

  #onHeaderFixed(): void {
    const version = this.#scratch[8]! | (this.#scratch[9]! << 8);
    if (version !== STREAM_FORMAT_VERSION) {
      throw new ProtocolError(
        `migration stream format version ${version} not supported (this reader supports ${STREAM_FORMAT_VERSION})`,
      );
    }
    const typeLength = this.#scratch[10]!;
    if (typeLength === 0) throw new ProtocolError('migration stream header: empty device type');
    this.#phase = Phase.Identity;
    this.#need = STREAM_HEADER_FIXED_SIZE + typeLength + CRC_SIZE;
  }

  #onIdentity(): void {
    const body = this.#scratch.subarray(0, this.#need - CRC_SIZE);
    const stored = getU32(this.#scratch, this.#need - CRC_SIZE);
    const computed = crc32(body);
    if (stored !== computed) throw new ProtocolError(`corrupted migration stream header (${crcMismatch(stored, computed)})`);
    const { identity, flags } = decodeStreamHeader(body);
    this.#checkIdentity(identity);
    this.#identity = identity;
    this.#flags = flags;
    this.#chain = computed;
    this.#expectRecordHeader();
  }

  #checkIdentity(got: StreamIdentity): void {
    const want = this.#expected;
    if (got.deviceType !== want.deviceType || got.pciVendor !== want.pciVendor || got.pciDevice !== want.pciDevice) {
      throw new ProtocolError(
        `migration stream is for device ${describeIdentity(got)}, this device is ${describeIdentity(want)}`,
      );
    }
    if (got.stateVersion > want.stateVersion) {
      throw new ProtocolError(
        `migration stream state version ${got.stateVersion} is newer than the ${want.stateVersion} ` +
          `this '${want.deviceType}' device supports`,
      );
    }
    if (got.stateVersion < want.stateVersion && !this.#accept(got.stateVersion)) {
      throw new ProtocolError(
        `migration stream state version ${got.stateVersion} is older than ${want.stateVersion} ` +
          `and this '${want.deviceType}' device does not accept it`,
      );
    }
  }

  #expectRecordHeader(): void {
    this.#phase = Phase.RecordHeader;
    this.#have = 0;
    this.#need = RECORD_HEADER_SIZE;
  }

  #onRecordHeader(): void {
    const s = this.#scratch;
    const index = this.#records + 1;
    const tag = s[0]!;
    const seq = getU32(s, 4);
    const length = getU32(s, 8);
    if (s[1] !== 0 || s[2] !== 0 || s[3] !== 0) throw recordError(index, 'reserved bytes are not zero');
    if (seq !== index) {
      throw recordError(index, `carries sequence number ${seq} (records lost, reordered or corrupted)`);
    }
    if (tag !== RecordTag.End && tagToKind(tag) === undefined) throw recordError(index, `unknown tag 0x${tag.toString(16)}`);
    if (tag === RecordTag.End) {
      if (length !== END_PAYLOAD_SIZE) throw recordError(index, `end record of ${length} bytes (expected ${END_PAYLOAD_SIZE})`);
    } else if (length > this.#maxRecord) {
      throw recordError(index, `length ${length} exceeds the ${this.#maxRecord}-byte limit`);
    }
    this.#chain = crc32(s.subarray(0, RECORD_HEADER_SIZE), this.#chain);
    this.#tag = tag;
    this.#length = length;
    this.#filled = 0;
    this.#payload = new Uint8Array(Math.min(length, INITIAL_PAYLOAD_CAPACITY));
    if (length === 0) this.#expectCrc();
    else this.#phase = Phase.Payload;
  }

  #fillPayload(chunk: Uint8Array, pos: number): number {
    const take = Math.min(this.#length - this.#filled, chunk.length - pos);
    const part = chunk.subarray(pos, pos + take);
    this.#reserve(this.#filled + take);
    this.#payload.set(part, this.#filled);
    this.#filled += take;
    this.#chain = crc32(part, this.#chain);
    if (this.#filled === this.#length) this.#expectCrc();
    return pos + take;
  }

  /**
   * Grows the payload buffer to hold `needed` bytes, by four (never past the
   * record length): memory follows the bytes that actually arrived, and a big
   * record is copied only a fraction of its size while it grows.
   */
  #reserve(needed: number): void {
    if (needed <= this.#payload.length) return;
    const grown = new Uint8Array(Math.min(this.#length, Math.max(needed, this.#payload.length * 4)));
    grown.set(this.#payload.subarray(0, this.#filled));
    this.#payload = grown;
  }

  #expectCrc(): void {
    this.#phase = Phase.Crc;
    this.#have = 0;
    this.#need = CRC_SIZE;
  }

  #onRecordCrc(out: StreamRecord[]): void {
    const index = this.#records + 1;
    const stored = getU32(this.#scratch, 0);
    if (stored !== this.#chain) throw new ProtocolError(`corrupted record #${index} (${crcMismatch(stored, this.#chain)})`);
    const payload = this.#payload;
    this.#payload = new Uint8Array(0);
    if (this.#tag === RecordTag.End) {
      this.#onEnd(payload);
      return;
    }
    out.push({ kind: tagToKind(this.#tag) as StreamRecordKind, payload, index });
    this.#records = index;
    this.#payloadBytes += payload.length;
    this.#expectRecordHeader();
  }

  #onEnd(payload: Uint8Array): void {
    const end = decodeEndPayload(payload);
    if (end.records !== this.#records || end.payloadBytes !== BigInt(this.#payloadBytes)) {
      throw new ProtocolError(
        `migration stream end record says ${end.records} records / ${end.payloadBytes} payload bytes, ` +
          `the stream carried ${this.#records} / ${this.#payloadBytes}`,
      );
    }
    this.#phase = Phase.Done;
  }

  /** Where the stream stopped, for the truncation error. */
  #where(): string {
    const index = this.#records + 1;
    switch (this.#phase) {
      case Phase.Header:
      case Phase.Identity:
        return `inside the stream header (${this.#have} of ${this.#need} bytes)`;
      case Phase.RecordHeader:
        return this.#have === 0
          ? `after record #${this.#records}`
          : `inside the header of record #${index} (${this.#have} of ${this.#need} bytes)`;
      case Phase.Payload:
        return `inside record #${index} (${this.#filled} of ${this.#length} payload bytes)`;
      default:
        return `inside the checksum of record #${index}`;
    }
  }
}

function recordError(index: number, what: string): ProtocolError {
  return new ProtocolError(`migration stream record #${index}: ${what}`);
}

function crcMismatch(stored: number, computed: number): string {
  return `CRC-32 0x${hex(stored)} stored, 0x${hex(computed)} computed`;
}

function hex(v: number): string {
  return hex4(v >>> 16) + hex4(v & 0xffff);
}
