/**
 * The migration channel's wire format (pure: bytes in, frames out). A remote
 * migration (`vfio-user migrate --to tcp://HOST:PORT` → `vfio-user
 * migrate-listen`) carries guest pages, the device's VFUMIGST stream and the
 * orchestrator's requests in frames:
 *
 * ```
 * offset size  field
 *  0     4     magic    "VFMC"
 *  4     2     version  1 (CHANNEL_VERSION)
 *  6     2     type     ChannelFrame (REQUEST, RESPONSE, MEMORY, DEVICE_DATA, NOTICE, ZERO)
 *  8     4     seq      frames sent before this one in this direction (0, 1, 2, …)
 * 12     4     id       request id (REQUEST/RESPONSE), 0 otherwise
 * 16     4     length   payload bytes (≤ MAX_FRAME_PAYLOAD)
 * 20     4     crc      CRC-32 of bytes 0..19 and the payload, chained from the previous frame's crc
 * 24     …     payload
 * ```
 *
 * The chained CRC makes the checksum end to end: a changed, lost, repeated or
 * reordered frame breaks every check after it. Payloads: MEMORY = gpa (u64 LE)
 * + the bytes; ZERO = gpa (u64 LE) + length (u64 LE) of all-zero memory
 * (feature `zero-pages`); DEVICE_DATA = the stream bytes; REQUEST/RESPONSE/NOTICE = a
 * u32 JSON length, the JSON (64-bit values as `{"$bigint":"…"}`), then binary
 * bytes. Everything little-endian.
 *
 * Several devices migrated as one VM (a container: one guest memory, N device
 * sessions) share one channel: the hello says `channelVersion` 2
 * ({@link HelloVersion}) and names the devices; a DEVICE_DATA frame's `id`
 * field is then its device's index (0 for the only device of a version-1
 * hello, so the frames of one device are the same in both), and the
 * per-device requests carry `device` (the index) in their arguments. The
 * frame header's version stays 1: an older receiver reads the frames and
 * refuses the version-2 hello (EPROTO), before it prepares anything.
 */
import { ProtocolError } from '../errors.js';
import { crc32 } from '../migration/crc32.js';
import { Errno } from '../protocol/errno.js';

/** "VFMC" read as a little-endian u32. */
export const CHANNEL_MAGIC = 0x434d4656;
export const CHANNEL_VERSION = 1;
export const FRAME_HEADER_SIZE = 24;
/** The largest payload a frame may carry (a guest-memory chunk of 16 MiB plus its address). */
export const MAX_FRAME_PAYLOAD = (16 << 20) + 8;

/** The hello's `channelVersion`: one device (1), or several named devices with indexed DEVICE_DATA frames and requests (2). */
export const HelloVersion = {
  SINGLE: 1,
  MULTI: 2,
} as const;

/** The most devices one migration carries. */
export const MAX_CHANNEL_DEVICES = 32;

/** A device's name on the channel: 1..64 of `A-Z a-z 0-9 . _ : -`. */
export const CHANNEL_DEVICE_NAME = /^[A-Za-z0-9._:-]{1,64}$/;

/** Frame types. */
export const ChannelFrame = {
  REQUEST: 1,
  RESPONSE: 2,
  MEMORY: 3,
  DEVICE_DATA: 4,
  /** Unsolicited: the receiver failed to apply a streamed frame (JSON {errno, message}, and `device` for a device's stream). */
  NOTICE: 5,
  /** Guest memory that is all zero: gpa (u64 LE) + length (u64 LE); sent only to a receiver whose hello answer lists `zero-pages`. */
  ZERO: 6,
} as const;

/** Optional channel features, negotiated in the hello (the sender offers, the receiver answers the ones it takes). */
export const ChannelFeature = {
  /** ZERO frames for all-zero guest memory. */
  ZERO_PAGES: 'zero-pages',
} as const;

/** One decoded frame. */
export interface Frame {
  type: number;
  seq: number;
  id: number;
  /** The payload in one piece (joined on first use when it arrived in several reads). */
  payload: Uint8Array;
  /** Payload bytes. */
  length: number;
  /** The payload as it arrived: views of the reads it spans, in order (no copy). */
  parts: readonly Buffer[];
}

/** A frame whose payload is `parts`, joined only if `payload` is asked for. */
function frameOf(h: { type: number; seq: number; id: number; length: number }, parts: Buffer[]): Frame {
  let joined: Uint8Array | undefined = parts.length === 1 ? parts[0] : undefined;
  return {
    type: h.type,
    seq: h.seq,
    id: h.id,
    length: h.length,
    parts,
    get payload(): Uint8Array {
      joined ??= Buffer.concat(parts, h.length);
      return joined;
    },
  };
}

/** Encodes frames for one direction of a channel (keeps the sequence number and the CRC chain). */
export class FrameEncoder {
  #seq = 0;
  #crc = 0;

  /**
   * The header of the next frame; the payload parts are sent after it unchanged.
   * @throws {ProtocolError} EMSGSIZE when the payload exceeds {@link MAX_FRAME_PAYLOAD}.
   */
  header(type: number, id: number, payload: readonly Uint8Array[]): Buffer {
    const length = payload.reduce((n, p) => n + p.length, 0);
    if (length > MAX_FRAME_PAYLOAD) throw new ProtocolError(`channel frame of ${length} bytes exceeds ${MAX_FRAME_PAYLOAD}`, { errno: Errno.EMSGSIZE });
    const h = Buffer.alloc(FRAME_HEADER_SIZE);
    h.writeUInt32LE(CHANNEL_MAGIC, 0);
    h.writeUInt16LE(CHANNEL_VERSION, 4);
    h.writeUInt16LE(type, 6);
    h.writeUInt32LE(this.#seq >>> 0, 8);
    h.writeUInt32LE(id >>> 0, 12);
    h.writeUInt32LE(length, 16);
    let crc = crc32(h.subarray(0, 20), this.#crc);
    for (const p of payload) crc = crc32(p, crc);
    h.writeUInt32LE(crc >>> 0, 20);
    this.#crc = crc;
    this.#seq++;
    return h;
  }
}

interface FrameHeader {
  type: number;
  seq: number;
  id: number;
  length: number;
  crc: number;
  head: Buffer;
}

/**
 * Reassembles frames from a byte stream and checks each one (magic, version,
 * length, sequence, chained CRC). A check that fails is a {@link ProtocolError}
 * (EPROTO, EBADMSG for a checksum, EMSGSIZE for a length): the stream is lost.
 */
export class FrameDecoder {
  readonly #chunks: Buffer[] = [];
  #buffered = 0;
  #seq = 0;
  #crc = 0;
  #header: FrameHeader | undefined;

  /** Adds received bytes; @returns the frames they complete, in order. @throws {ProtocolError} on a bad frame. */
  push(chunk: Buffer): Frame[] {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.#header === undefined) {
        if (this.#buffered < FRAME_HEADER_SIZE) return frames;
        this.#header = this.#parseHeader(this.#take(FRAME_HEADER_SIZE));
      }
      const h = this.#header;
      if (this.#buffered < h.length) return frames;
      const parts = this.#takeParts(h.length);
      let crc = crc32(h.head.subarray(0, 20), this.#crc);
      for (const part of parts) crc = crc32(part, crc);
      if (crc >>> 0 !== h.crc) throw new ProtocolError(`channel frame ${h.seq}: checksum mismatch (0x${(crc >>> 0).toString(16)} ≠ 0x${h.crc.toString(16)})`, { errno: Errno.EBADMSG });
      this.#crc = crc;
      this.#seq++;
      this.#header = undefined;
      frames.push(frameOf(h, parts));
    }
  }

  /** Bytes of an incomplete frame still buffered. */
  get pending(): number {
    return this.#buffered + (this.#header ? FRAME_HEADER_SIZE : 0);
  }

  #parseHeader(head: Buffer): FrameHeader {
    const magic = head.readUInt32LE(0);
    if (magic !== CHANNEL_MAGIC) throw new ProtocolError(`not a migration channel (magic 0x${magic.toString(16)})`, { errno: Errno.EPROTO });
    const version = head.readUInt16LE(4);
    if (version !== CHANNEL_VERSION) throw new ProtocolError(`migration channel version ${version}, this side speaks ${CHANNEL_VERSION}`, { errno: Errno.EPROTO });
    const seq = head.readUInt32LE(8);
    if (seq !== this.#seq >>> 0) throw new ProtocolError(`channel frame ${seq} where ${this.#seq >>> 0} was due`, { errno: Errno.EPROTO });
    const length = head.readUInt32LE(16);
    if (length > MAX_FRAME_PAYLOAD) throw new ProtocolError(`channel frame of ${length} bytes exceeds ${MAX_FRAME_PAYLOAD}`, { errno: Errno.EMSGSIZE });
    return { type: head.readUInt16LE(6), seq, id: head.readUInt32LE(12), length, crc: head.readUInt32LE(20), head };
  }

  /** The next `n` buffered bytes as views of the chunks they lie in (no copy). */
  #takeParts(n: number): Buffer[] {
    this.#buffered -= n;
    const parts: Buffer[] = [];
    let left = n;
    while (left > 0) {
      const c = this.#chunks[0] as Buffer;
      const k = Math.min(c.length, left);
      parts.push(c.subarray(0, k));
      left -= k;
      if (k === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(k);
    }
    if (parts.length === 0) parts.push(Buffer.alloc(0));
    return parts;
  }

  /** The next `n` buffered bytes (a view when they lie in one chunk, else one copy). */
  #take(n: number): Buffer {
    this.#buffered -= n;
    const first = this.#chunks[0];
    if (first !== undefined && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.#chunks[0] as Buffer;
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(k);
    }
    return out;
  }

}

/** JSON with 64-bit values: bigint ↔ `{"$bigint":"…"}`. */
export function encodeJson(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? { $bigint: v.toString() } : v)));
}

/** @throws {ProtocolError} EPROTO for bytes that are not such JSON. */
export function decodeJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('utf8'), (_key, v: unknown) => {
      if (v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 1 && typeof (v as { $bigint?: unknown }).$bigint === 'string') {
        return BigInt((v as { $bigint: string }).$bigint);
      }
      return v;
    });
  } catch (cause) {
    throw new ProtocolError(`channel message is not JSON: ${(cause as Error).message}`, { errno: Errno.EPROTO, cause });
  }
}

/** The payload of a REQUEST, RESPONSE or NOTICE: a JSON head and binary bytes. */
export function encodeMessage(head: unknown, body: Uint8Array = new Uint8Array(0)): Uint8Array[] {
  const json = encodeJson(head);
  const length = Buffer.alloc(4);
  length.writeUInt32LE(json.length, 0);
  return body.length > 0 ? [length, json, body] : [length, json];
}

/** @throws {ProtocolError} EPROTO for a malformed message payload. */
export function decodeMessage(payload: Uint8Array): { head: unknown; body: Uint8Array } {
  if (payload.length < 4) throw new ProtocolError(`channel message of ${payload.length} bytes`, { errno: Errno.EPROTO });
  const n = Buffer.from(payload.buffer, payload.byteOffset, payload.length).readUInt32LE(0);
  if (n > payload.length - 4) throw new ProtocolError(`channel message JSON of ${n} bytes in ${payload.length - 4}`, { errno: Errno.EPROTO });
  return { head: decodeJson(payload.subarray(4, 4 + n)), body: payload.subarray(4 + n) };
}

/** The gpa prefix of a MEMORY frame. */
export function memoryPrefix(gpa: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(gpa, 0);
  return b;
}

/** @throws {ProtocolError} EPROTO for a MEMORY payload shorter than its address. */
export function decodeMemory(payload: Uint8Array): { gpa: bigint; data: Uint8Array } {
  if (payload.length < 8) throw new ProtocolError(`MEMORY frame of ${payload.length} bytes`, { errno: Errno.EPROTO });
  return { gpa: Buffer.from(payload.buffer, payload.byteOffset, 8).readBigUInt64LE(0), data: payload.subarray(8) };
}

/** The payload of a ZERO frame. */
export function zeroPayload(gpa: bigint, length: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(gpa, 0);
  b.writeBigUInt64LE(BigInt(length), 8);
  return b;
}

/** @throws {ProtocolError} EPROTO for a ZERO payload that is not 16 bytes, or a length past 2^53. */
export function decodeZero(payload: Uint8Array): { gpa: bigint; length: number } {
  if (payload.length !== 16) throw new ProtocolError(`ZERO frame of ${payload.length} bytes`, { errno: Errno.EPROTO });
  const b = Buffer.from(payload.buffer, payload.byteOffset, 16);
  const length = b.readBigUInt64LE(8);
  if (length > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError(`ZERO frame of ${length} bytes`, { errno: Errno.EPROTO });
  return { gpa: b.readBigUInt64LE(0), length: Number(length) };
}

/**
 * A MEMORY frame's address and data as the pieces it arrived in (no joined copy).
 * @throws {ProtocolError} EPROTO for a payload shorter than its address.
 */
export function memoryParts(frame: Frame): { gpa: bigint; parts: Buffer[]; length: number } {
  const first = frame.parts[0];
  if (first === undefined || first.length < 8) {
    const { gpa, data } = decodeMemory(frame.payload);
    return { gpa, parts: [Buffer.from(data.buffer, data.byteOffset, data.length)], length: data.length };
  }
  const { gpa } = decodeMemory(first.subarray(0, 8));
  return { gpa, parts: [first.subarray(8), ...frame.parts.slice(1)], length: frame.length - 8 };
}
