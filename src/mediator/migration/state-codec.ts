/**
 * The device state the migration plugin puts in the records of the stream
 * (src/migration's format carries them as `full` / `delta` records): a
 * sequence of sections, each a 16-byte header and its bytes, little-endian:
 *
 * | off | size | field |
 * |-----|------|-------|
 * | 0   | 1    | kind: 1 MEMORY, 2 REGISTER, 3 RUN |
 * | 1   | 1    | reserved (0) |
 * | 2   | 2    | MEMORY: region index; REGISTER: index in the spec's `registers`; RUN: 0 |
 * | 4   | 4    | length of the bytes that follow |
 * | 8   | 8    | MEMORY: offset in the region; otherwise 0 |
 *
 * RUN carries the quiesce control register's running value (4 bytes). Config
 * space travels in the stream's own `config` record.
 */
import { ProtocolError } from '../../errors.js';

/** Section kinds. */
export const SectionKind = { MEMORY: 1, REGISTER: 2, RUN: 3 } as const;
/** One of {@link SectionKind}. */
export type SectionKind = (typeof SectionKind)[keyof typeof SectionKind];

/** One decoded section. */
export interface Section {
  kind: SectionKind;
  index: number;
  offset: bigint;
  data: Uint8Array;
}

const HEAD = 16;

/** Encodes sections into one record payload. */
export function encodeSections(sections: readonly Section[]): Uint8Array {
  const total = sections.reduce((n, s) => n + HEAD + s.data.length, 0);
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const s of sections) {
    view.setUint8(at, s.kind);
    view.setUint16(at + 2, s.index, true);
    view.setUint32(at + 4, s.data.length, true);
    view.setBigUint64(at + 8, s.offset, true);
    out.set(s.data, at + HEAD);
    at += HEAD + s.data.length;
  }
  return out;
}

/**
 * Decodes a record payload (views into it, no copies).
 * @throws {ProtocolError} EINVAL for a truncated section, an unknown kind or a non-zero reserved byte.
 */
export function decodeSections(payload: Uint8Array): Section[] {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const out: Section[] = [];
  for (let at = 0; at < payload.length; ) {
    if (payload.length - at < HEAD) throw new ProtocolError(`mediated device state: truncated section header at ${at}`);
    const kind = view.getUint8(at);
    if (kind !== SectionKind.MEMORY && kind !== SectionKind.REGISTER && kind !== SectionKind.RUN) {
      throw new ProtocolError(`mediated device state: unknown section kind ${kind} at ${at}`);
    }
    if (view.getUint8(at + 1) !== 0) throw new ProtocolError(`mediated device state: reserved byte set at ${at + 1}`);
    const length = view.getUint32(at + 4, true);
    if (length > payload.length - at - HEAD) throw new ProtocolError(`mediated device state: section at ${at} overruns the record`);
    out.push({ kind, index: view.getUint16(at + 2, true), offset: view.getBigUint64(at + 8, true), data: payload.subarray(at + HEAD, at + HEAD + length) });
    at += HEAD + length;
  }
  return out;
}

/** A little-endian unsigned value of 1, 2 or 4 bytes. */
export function readUint(bytes: Uint8Array): number {
  let v = 0;
  for (let i = bytes.length - 1; i >= 0; i--) v = v * 256 + (bytes[i] as number);
  return v;
}

/** `value` as `size` little-endian bytes. */
export function uintBytes(value: number, size: number): Uint8Array {
  const out = new Uint8Array(size);
  let v = value >>> 0;
  for (let i = 0; i < size; i++) {
    out[i] = v & 0xff;
    v = Math.floor(v / 256);
  }
  return out;
}
