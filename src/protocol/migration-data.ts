/**
 * MIG_DATA_READ (17) and MIG_DATA_WRITE (18): migration data moved over the
 * socket instead of VFIO's data fd. `struct vfio_user_mig_data {u32 argsz, u32 size, data[]}`.
 */
import { InvalidArgumentError } from '../errors.js';
import { MIG_DATA_SIZE } from './constants.js';
import { WireReader } from './wire-reader.js';
import { WireWriter } from './wire-writer.js';

/** MIG_DATA_READ request. */
export interface MigDataReadRequest {
  /** Largest reply payload accepted (≥ 8 + size). */
  argsz: number;
  /** Bytes wanted (≤ the server's view of the client's max_data_xfer_size). */
  size: number;
}

/** MIG_DATA_READ reply and MIG_DATA_WRITE request: header plus `size` bytes. */
export interface MigData {
  /** Reply: 8 + size. Write request: largest reply accepted. */
  argsz: number;
  size: number;
  data: Uint8Array;
}

/** Encodes a MIG_DATA_READ request (8 bytes). @throws {InvalidArgumentError} EINVAL. */
export function encodeMigDataReadRequest(v: MigDataReadRequest): Uint8Array {
  return new WireWriter(MIG_DATA_SIZE, 'MIG_DATA_READ').u32(v.argsz, 'argsz').u32(v.size, 'size').finish();
}

/**
 * Decodes a MIG_DATA_READ request; trailing bytes are ignored.
 * @throws {ProtocolError} EINVAL if shorter than 8 bytes.
 */
export function decodeMigDataReadRequest(payload: Uint8Array): MigDataReadRequest {
  const r = new WireReader(payload, 'MIG_DATA_READ');
  return { argsz: r.u32('argsz'), size: r.u32('size') };
}

/**
 * Encodes a MIG_DATA_READ reply or MIG_DATA_WRITE request (8 + size bytes).
 * @throws {InvalidArgumentError} EINVAL if `size` differs from `data.length` or a field does not fit.
 */
export function encodeMigData(v: MigData): Uint8Array {
  if (v.size !== v.data.length) {
    throw new InvalidArgumentError(`migration data: size ${v.size} differs from ${v.data.length} data bytes`);
  }
  return new WireWriter(MIG_DATA_SIZE + v.data.length, 'migration data')
    .u32(v.argsz, 'argsz')
    .u32(v.size, 'size')
    .bytes(v.data, 'data')
    .finish();
}

function decodeMigData(payload: Uint8Array, what: string): MigData {
  const r = new WireReader(payload, what);
  const argsz = r.u32('argsz');
  const size = r.u32('size');
  return { argsz, size, data: r.bytes(size, `data (size ${size})`) };
}

/**
 * Decodes a MIG_DATA_READ reply. Trust `size`, not the payload length:
 * libvfio-user pads the reply to the *requested* size, so bytes after
 * `8 + size` are ignored. `size` smaller than requested means no more data now
 * (0 in libvfio-user's reading).
 * @throws {ProtocolError} EINVAL if shorter than 8 + `size` bytes.
 */
export function decodeMigDataReadReply(payload: Uint8Array): MigData {
  return decodeMigData(payload, 'MIG_DATA_READ reply');
}

/**
 * Decodes a MIG_DATA_WRITE request: at least 8 + `size` bytes (libvfio-user
 * rule); bytes after that are ignored.
 * @throws {ProtocolError} EINVAL if shorter than 8 + `size` bytes.
 */
export function decodeMigDataWriteRequest(payload: Uint8Array): MigData {
  return decodeMigData(payload, 'MIG_DATA_WRITE');
}
