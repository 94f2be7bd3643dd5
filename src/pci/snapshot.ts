/**
 * The byte format of a config-space snapshot (for live migration):
 *
 * | off | size | field |
 * |---|---|---|
 * | 0 | 4 | magic `vPCI` (0x76 0x50 0x43 0x49) |
 * | 4 | 2 | format version (1) |
 * | 6 | 2 | reserved, 0 |
 * | 8 | 4 | config space size (256 or 4096) |
 * | 12 | 4 | size of the state kept outside config space (MSI-X table + PBA) |
 * | 16 | 4 | layout fingerprint: FNV-1a of the power-on bytes and the access masks |
 * | 20 | … | config space bytes, then that state |
 *
 * All fields little-endian. The fingerprint tells apart layouts whose bytes
 * can look the same (a BAR of another size programmed to the same address).
 */
import { ProtocolError } from '../errors.js';

/** Magic number at the start of a snapshot (`vPCI` read as a little-endian u32). */
export const SNAPSHOT_MAGIC = 0x49435076;
/** Snapshot format version written and accepted. */
export const SNAPSHOT_VERSION = 1;
/** Size of the fixed snapshot header. */
export const SNAPSHOT_HEADER_SIZE = 20;

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

/**
 * 32-bit FNV-1a over several byte arrays, used as a layout fingerprint.
 * @param parts - the arrays, hashed in order.
 */
export function fingerprint(...parts: readonly Uint8Array[]): number {
  let h = FNV_OFFSET;
  for (const part of parts) {
    for (const b of part) h = Math.imul(h ^ b, FNV_PRIME) >>> 0;
  }
  return h;
}

/** What a snapshot must match: sizes and layout fingerprint. */
export interface SnapshotShape {
  readonly configSize: number;
  readonly extraSize: number;
  readonly fingerprint: number;
}

/** The parts of a decoded snapshot. */
export interface SnapshotParts {
  readonly config: Uint8Array;
  readonly extra: Uint8Array;
}

/**
 * @param config - config space bytes.
 * @param extra - state kept outside config space.
 * @param layout - the layout fingerprint (see {@link fingerprint}).
 * @returns the snapshot bytes.
 */
export function encodeSnapshot(config: Uint8Array, extra: Uint8Array, layout: number): Uint8Array {
  const out = new Uint8Array(SNAPSHOT_HEADER_SIZE + config.length + extra.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, SNAPSHOT_MAGIC, true);
  view.setUint16(4, SNAPSHOT_VERSION, true);
  view.setUint32(8, config.length, true);
  view.setUint32(12, extra.length, true);
  view.setUint32(16, layout, true);
  out.set(config, SNAPSHOT_HEADER_SIZE);
  out.set(extra, SNAPSHOT_HEADER_SIZE + config.length);
  return out;
}

/**
 * Splits a snapshot, checking its header against the expected shape.
 * @param bytes - what {@link encodeSnapshot} produced.
 * @param shape - this config space's sizes and layout fingerprint.
 * @returns views into `bytes`.
 * @throws {ProtocolError} EINVAL for a bad magic or version, sizes or a fingerprint that differ.
 */
export function decodeSnapshot(bytes: Uint8Array, shape: SnapshotShape): SnapshotParts {
  if (bytes.length < SNAPSHOT_HEADER_SIZE) {
    throw new ProtocolError(`config snapshot: ${bytes.length} bytes, header needs ${SNAPSHOT_HEADER_SIZE}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  if (view.getUint32(0, true) !== SNAPSHOT_MAGIC) throw new ProtocolError('config snapshot: bad magic');
  const version = view.getUint16(4, true);
  if (version !== SNAPSHOT_VERSION) throw new ProtocolError(`config snapshot: unknown version ${version}`);
  const config = view.getUint32(8, true);
  const extra = view.getUint32(12, true);
  if (config !== shape.configSize || extra !== shape.extraSize) {
    throw new ProtocolError(`config snapshot: sizes ${config}+${extra}, this device has ${shape.configSize}+${shape.extraSize}`);
  }
  if (view.getUint32(16, true) !== shape.fingerprint) throw new ProtocolError('config snapshot: taken from another layout');
  if (bytes.length !== SNAPSHOT_HEADER_SIZE + config + extra) {
    throw new ProtocolError(`config snapshot: ${bytes.length} bytes, header says ${SNAPSHOT_HEADER_SIZE + config + extra}`);
  }
  const start = SNAPSHOT_HEADER_SIZE;
  return { config: bytes.subarray(start, start + config), extra: bytes.subarray(start + config) };
}
