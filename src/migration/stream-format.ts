/**
 * The device-state stream format: the bytes a device hands out through
 * MIG_DATA_READ on the source and takes in through MIG_DATA_WRITE on the
 * destination. vfio-user treats them as opaque and may re-chunk them; this
 * format makes them self-delimiting, versioned and checksummed.
 *
 * Layout (all little-endian):
 * - stream header: magic `"VFUMIGST"`, u16 format version, u8 device-type
 *   length `L`, u8 reserved, u32 flags, u16 PCI vendor, u16 PCI device,
 *   u32 state version, `L` bytes of UTF-8 device type, u32 CRC-32 of all of it;
 * - records: u8 tag, u8 + u16 reserved, u32 sequence number (1, 2, …),
 *   u32 payload length, payload, u32 CRC-32 of header + payload *seeded with
 *   the previous record's CRC* (the header's for record 1), so the checksums
 *   chain over the whole stream and a dropped, repeated or spliced record fails;
 * - an end record (tag 0xff) whose payload is u32 record count and u64 total
 *   payload bytes of the data records before it.
 *
 * This module holds the constants and the pure encode/decode helpers shared by
 * `stream.ts` (writer, source) and `stream-reader.ts`.
 */
import { InvalidArgumentError, ProtocolError } from '../errors.js';
import { WireReader } from '../protocol/wire-reader.js';
import { WireWriter } from '../protocol/wire-writer.js';
import { crc32 } from './crc32.js';

/** The 8 ASCII bytes every stream starts with. */
export const STREAM_MAGIC = 'VFUMIGST';
/** The format version this code writes and the only one it reads. */
export const STREAM_FORMAT_VERSION = 1;
/** Stream header bytes before the device type (magic … state version). */
export const STREAM_HEADER_FIXED_SIZE = 24;
/** Longest device type, in UTF-8 bytes (its length is a u8). */
export const MAX_DEVICE_TYPE_BYTES = 255;
/** Record header: tag, reserved, sequence number, payload length. */
export const RECORD_HEADER_SIZE = 12;
/** The CRC-32 after every header and record payload. */
export const CRC_SIZE = 4;
/** Payload of the end record: u32 record count + u64 payload bytes. */
export const END_PAYLOAD_SIZE = 12;
/** Largest record payload either side accepts (1 GiB); split bigger state into several records. */
export const MAX_RECORD_PAYLOAD = 0x4000_0000;

/** Record tags on the wire. 0 and 4..0x7f are invalid; 0x80..0xfe are device-defined. */
export const RecordTag = { Full: 0x01, Delta: 0x02, Config: 0x03, End: 0xff } as const;
/** One of the tags named in {@link RecordTag}. */
export type RecordTag = (typeof RecordTag)[keyof typeof RecordTag];
/** Lowest device-defined record tag. */
export const CUSTOM_TAG_MIN = 0x80;
/** Highest device-defined record tag. */
export const CUSTOM_TAG_MAX = 0xfe;

/** Stream header flag bits. A reader refuses bits it does not know. */
export const StreamFlag = {
  /** Produced through PRE_COPY: an initial state followed by deltas, to be applied in order. */
  PreCopy: 1 << 0,
} as const;
/** One of the bits named in {@link StreamFlag}. */
export type StreamFlag = (typeof StreamFlag)[keyof typeof StreamFlag];
/** Every flag bit this version understands. */
export const KNOWN_STREAM_FLAGS: number = StreamFlag.PreCopy;

/** Which device (and which version of its state schema) a stream belongs to. */
export interface StreamIdentity {
  /** The device model, e.g. `'dma-engine'` (1..255 UTF-8 bytes). */
  readonly deviceType: string;
  /** PCI vendor ID (u16). */
  readonly pciVendor: number;
  /** PCI device ID (u16). */
  readonly pciDevice: number;
  /** Version of the device's own state layout (u32). */
  readonly stateVersion: number;
}

/** What a record holds: full state, a pre-copy delta, a config-space snapshot, or a device-defined tag (0x80..0xfe). */
export type StreamRecordKind = 'full' | 'delta' | 'config' | number;

/** One decoded data record. */
export interface StreamRecord {
  readonly kind: StreamRecordKind;
  /** The payload, in a buffer of its own. */
  readonly payload: Uint8Array;
  /** Sequence number: 1 for the first data record. */
  readonly index: number;
}

/** What a complete stream carried. */
export interface StreamSummary {
  readonly identity: StreamIdentity;
  readonly flags: number;
  /** Data records (the end record not counted). */
  readonly records: number;
  /** Sum of data record payload lengths. */
  readonly payloadBytes: number;
}

const MAGIC_BYTES = new TextEncoder().encode(STREAM_MAGIC);
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Byte `i` of {@link STREAM_MAGIC}. */
export function magicByte(i: number): number {
  return MAGIC_BYTES[i] ?? -1;
}

/** Stores a little-endian u32 at `offset`. */
export function putU32(bytes: Uint8Array, offset: number, v: number): void {
  bytes[offset] = v;
  bytes[offset + 1] = v >>> 8;
  bytes[offset + 2] = v >>> 16;
  bytes[offset + 3] = v >>> 24;
}

/** Reads a little-endian u32 at `offset` (the caller guarantees the bytes exist). */
export function getU32(bytes: Uint8Array, offset: number): number {
  return (bytes[offset]! | (bytes[offset + 1]! << 8) | (bytes[offset + 2]! << 16) | (bytes[offset + 3]! << 24)) >>> 0;
}

/** `0x1af4` → `'1af4'`. */
export function hex4(v: number): string {
  return v.toString(16).padStart(4, '0');
}

/** `dma-engine (PCI 1af4:1000, state v2)`. */
export function describeIdentity(id: StreamIdentity): string {
  return `'${id.deviceType}' (PCI ${hex4(id.pciVendor)}:${hex4(id.pciDevice)}, state v${id.stateVersion})`;
}

function isUint(v: number, max: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= max;
}

/**
 * Checks an identity given by a caller and returns its device type in UTF-8.
 * @throws {InvalidArgumentError} EINVAL naming the field that does not fit.
 */
export function validateIdentity(id: StreamIdentity, site: string): Uint8Array {
  const type = new TextEncoder().encode(id.deviceType);
  if (type.length < 1 || type.length > MAX_DEVICE_TYPE_BYTES) {
    throw new InvalidArgumentError(`${site}: deviceType must be 1..${MAX_DEVICE_TYPE_BYTES} UTF-8 bytes, got ${type.length}`);
  }
  if (!isUint(id.pciVendor, 0xffff)) throw new InvalidArgumentError(`${site}: pciVendor ${id.pciVendor} is not a u16`);
  if (!isUint(id.pciDevice, 0xffff)) throw new InvalidArgumentError(`${site}: pciDevice ${id.pciDevice} is not a u16`);
  if (!isUint(id.stateVersion, 0xffff_ffff)) {
    throw new InvalidArgumentError(`${site}: stateVersion ${id.stateVersion} is not a u32`);
  }
  return type;
}

/**
 * Encodes the stream header.
 * @throws {InvalidArgumentError} EINVAL on a bad identity or unknown flag bits.
 */
export function encodeStreamHeader(id: StreamIdentity, flags: number): Uint8Array {
  const type = validateIdentity(id, 'migration stream header');
  if (!isUint(flags, 0xffff_ffff) || (flags & ~KNOWN_STREAM_FLAGS) !== 0) {
    throw new InvalidArgumentError(`migration stream header: flags ${flags} have unknown bits`);
  }
  const size = STREAM_HEADER_FIXED_SIZE + type.length + CRC_SIZE;
  const out = new WireWriter(size, 'migration stream header')
    .bytes(MAGIC_BYTES, 'magic')
    .u16(STREAM_FORMAT_VERSION, 'format version')
    .u8(type.length, 'device type length')
    .u8(0, 'reserved')
    .u32(flags, 'flags')
    .u16(id.pciVendor, 'pciVendor')
    .u16(id.pciDevice, 'pciDevice')
    .u32(id.stateVersion, 'stateVersion')
    .bytes(type, 'deviceType')
    .zeros(CRC_SIZE, 'crc')
    .finish();
  putU32(out, size - CRC_SIZE, crc32(out.subarray(0, size - CRC_SIZE)));
  return out;
}

/**
 * Decodes a stream header whose CRC has been checked: `bytes` is the whole
 * header without its CRC.
 * @throws {ProtocolError} EINVAL on a reserved byte, unknown flags or a device type that is not UTF-8.
 */
export function decodeStreamHeader(bytes: Uint8Array): { identity: StreamIdentity; flags: number } {
  const r = new WireReader(bytes, 'migration stream header');
  r.skip(MAGIC_BYTES.length + 2, 'magic and format version');
  const typeLength = r.u8('device type length');
  if (r.u8('reserved') !== 0) throw r.error('reserved byte is not zero');
  const flags = r.u32('flags');
  if ((flags & ~KNOWN_STREAM_FLAGS) !== 0) {
    throw r.error(`unknown flags 0x${((flags & ~KNOWN_STREAM_FLAGS) >>> 0).toString(16)} (written by a newer version?)`);
  }
  const pciVendor = r.u16('pciVendor');
  const pciDevice = r.u16('pciDevice');
  const stateVersion = r.u32('stateVersion');
  let deviceType: string;
  try {
    deviceType = utf8.decode(r.bytes(typeLength, 'deviceType'));
  } catch (cause) {
    if (cause instanceof ProtocolError) throw cause;
    throw r.error('device type is not valid UTF-8');
  }
  return { identity: { deviceType, pciVendor, pciDevice, stateVersion }, flags };
}

/**
 * The wire tag of a record kind.
 * @throws {InvalidArgumentError} EINVAL for a number outside 0x80..0xfe or an unknown name.
 */
export function kindToTag(kind: StreamRecordKind): number {
  switch (kind) {
    case 'full':
      return RecordTag.Full;
    case 'delta':
      return RecordTag.Delta;
    case 'config':
      return RecordTag.Config;
  }
  if (typeof kind === 'number' && isUint(kind, CUSTOM_TAG_MAX) && kind >= CUSTOM_TAG_MIN) return kind;
  throw new InvalidArgumentError(
    `migration stream: record kind ${String(kind)} is not 'full', 'delta', 'config' or a tag in 0x80..0xfe`,
  );
}

/** The record kind of a data tag, or `undefined` if the tag is not a data record's. */
export function tagToKind(tag: number): StreamRecordKind | undefined {
  if (tag === RecordTag.Full) return 'full';
  if (tag === RecordTag.Delta) return 'delta';
  if (tag === RecordTag.Config) return 'config';
  return tag >= CUSTOM_TAG_MIN && tag <= CUSTOM_TAG_MAX ? tag : undefined;
}

/**
 * Encodes one record (header, payload, chained CRC).
 * @param chain - the previous record's CRC (the stream header's for record 1).
 * @returns the bytes and this record's CRC, the next record's `chain`.
 * @throws {InvalidArgumentError} EINVAL if the payload exceeds {@link MAX_RECORD_PAYLOAD}.
 */
export function encodeRecord(tag: number, seq: number, payload: Uint8Array, chain: number): { bytes: Uint8Array; crc: number } {
  const { parts, crc } = encodeRecordParts(tag, seq, payload, chain);
  const out = new Uint8Array(RECORD_HEADER_SIZE + payload.length + CRC_SIZE);
  out.set(parts[0] as Uint8Array, 0);
  out.set(payload, RECORD_HEADER_SIZE);
  out.set(parts[2] as Uint8Array, RECORD_HEADER_SIZE + payload.length);
  return { bytes: out, crc };
}

/**
 * Like {@link encodeRecord}, without copying the payload: the record as three
 * parts (12-byte header, `payload` itself, 4-byte CRC).
 * @throws {InvalidArgumentError} EINVAL for a payload over {@link MAX_RECORD_PAYLOAD}.
 */
export function encodeRecordParts(tag: number, seq: number, payload: Uint8Array, chain: number): { parts: Uint8Array[]; crc: number } {
  if (payload.length > MAX_RECORD_PAYLOAD) {
    throw new InvalidArgumentError(`migration stream: record of ${payload.length} bytes exceeds ${MAX_RECORD_PAYLOAD}`);
  }
  const head = new WireWriter(RECORD_HEADER_SIZE, 'migration stream record')
    .u8(tag, 'tag')
    .zeros(3, 'reserved')
    .u32(seq, 'sequence number')
    .u32(payload.length, 'length')
    .finish();
  const crc = crc32(payload, crc32(head, chain));
  const tail = new Uint8Array(CRC_SIZE);
  putU32(tail, 0, crc);
  return { parts: [head, payload, tail], crc };
}

/** Encodes the end record's payload. @throws {InvalidArgumentError} EINVAL if a total does not fit. */
export function encodeEndPayload(records: number, payloadBytes: number): Uint8Array {
  return new WireWriter(END_PAYLOAD_SIZE, 'migration stream end record')
    .u32(records, 'record count')
    .u64(BigInt(payloadBytes), 'payload bytes')
    .finish();
}

/** Decodes the end record's payload. @throws {ProtocolError} EINVAL if shorter than 12 bytes. */
export function decodeEndPayload(payload: Uint8Array): { records: number; payloadBytes: bigint } {
  const r = new WireReader(payload, 'migration stream end record');
  return { records: r.u32('record count'), payloadBytes: r.u64('payload bytes') };
}
