/**
 * Shared by the stream and CRC tests: an independent bit-at-a-time CRC-32,
 * deterministic noise, a seeded PRNG and a hand-built stream header.
 */
import { WireBuilder } from '../support/wire-builder.js';
import { prngU32 as prng } from '../support/prng.js';

export { prng };

/** Bit-at-a-time CRC-32, written from the definition; shares nothing with the code under test. */
export function bitwiseCrc32(bytes: Uint8Array, previous = 0): number {
  let c = ~previous >>> 0;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

/** Deterministic pseudo-random bytes. */
export function noise(n: number, seed: number): Uint8Array {
  const next = prng(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = next() >>> 24;
  return out;
}

/** Concatenates byte arrays. */
export function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Fields of a hand-built stream header; every one can be set to something hostile. */
export interface HeaderFields {
  magic?: string;
  version?: number;
  typeLength?: number;
  reserved?: number;
  flags?: number;
  vendor: number;
  device: number;
  stateVersion: number;
  deviceType: string;
  /** Raw device-type bytes, instead of `deviceType` in UTF-8. */
  typeBytes?: Uint8Array;
}

/** The stream header built field by field, with a correct CRC over whatever was put in. */
export function buildHeader(f: HeaderFields): Uint8Array {
  const type = f.typeBytes ?? new TextEncoder().encode(f.deviceType);
  const body = new WireBuilder()
    .str(f.magic ?? 'VFUMIGST')
    .u16(f.version ?? 1)
    .u8(f.typeLength ?? type.length)
    .u8(f.reserved ?? 0)
    .u32(f.flags ?? 0)
    .u16(f.vendor)
    .u16(f.device)
    .u32(f.stateVersion)
    .bytes(type)
    .build();
  return new WireBuilder().bytes(body).u32(bitwiseCrc32(body)).build();
}

/** A record header (tag, reserved, sequence number, length) built by hand, without payload or CRC. */
export function buildRecordHeader(tag: number, seq: number, length: number): Uint8Array {
  return new WireBuilder().u8(tag).u8(0).u16(0).u32(seq).u32(length).build();
}

/** A whole record built by hand, its CRC chained from `chain`. */
export function buildRecord(tag: number, seq: number, payload: Uint8Array, chain: number): { bytes: Uint8Array; crc: number } {
  const body = concat([buildRecordHeader(tag, seq, payload.length), payload]);
  const crc = bitwiseCrc32(body, chain);
  return { bytes: new WireBuilder().bytes(body).u32(crc).build(), crc };
}
