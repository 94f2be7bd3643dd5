/**
 * DEVICE_GET_IRQ_INFO (7) and DEVICE_SET_IRQS (8).
 */
import { InvalidArgumentError, ProtocolError } from '../errors.js';
import { IRQ_INFO_SIZE, IRQ_SET_SIZE, IrqSetFlags } from './constants.js';
import { WireReader } from './wire-reader.js';
import { WireWriter } from './wire-writer.js';

/**
 * `struct vfio_irq_info`, used by both the request (argsz, index; others zero)
 * and the reply (libvfio-user: argsz 16, flags EVENTFD, index, count).
 */
export interface IrqInfo {
  argsz: number;
  /** `IrqInfoFlags` bits, raw. */
  flags: number;
  index: number;
  count: number;
}

/** DEVICE_SET_IRQS request (`struct vfio_irq_set`); eventfds travel beside it. */
export interface IrqSet {
  argsz: number;
  /** `IrqSetFlags` bits, raw: one DATA_* and one ACTION_* bit (see {@link validateIrqSetFlags}). */
  flags: number;
  index: number;
  start: number;
  count: number;
  /** DATA_BOOL only: one byte per interrupt in `[start, start + count)`. */
  data?: Uint8Array;
}

/** Encodes a DEVICE_GET_IRQ_INFO request or reply (16 bytes). @throws {InvalidArgumentError} EINVAL. */
export function encodeIrqInfo(v: IrqInfo): Uint8Array {
  return new WireWriter(IRQ_INFO_SIZE, 'DEVICE_GET_IRQ_INFO')
    .u32(v.argsz, 'argsz')
    .u32(v.flags, 'flags')
    .u32(v.index, 'index')
    .u32(v.count, 'count')
    .finish();
}

/**
 * Decodes a DEVICE_GET_IRQ_INFO request or reply; trailing bytes are ignored.
 * @throws {ProtocolError} EINVAL if shorter than 16 bytes.
 */
export function decodeIrqInfo(payload: Uint8Array): IrqInfo {
  const r = new WireReader(payload, 'DEVICE_GET_IRQ_INFO');
  return { argsz: r.u32('argsz'), flags: r.u32('flags'), index: r.u32('index'), count: r.u32('count') };
}

function isBool(flags: number): boolean {
  return (flags & IrqSetFlags.DATA_BOOL) !== 0;
}

/**
 * Encodes a DEVICE_SET_IRQS request: 20 bytes, plus `count` bytes with DATA_BOOL.
 * @throws {InvalidArgumentError} EINVAL if `data` is present without DATA_BOOL, or its
 * length differs from `count` with DATA_BOOL, or a field does not fit.
 */
export function encodeIrqSet(v: IrqSet): Uint8Array {
  const data = v.data;
  if (isBool(v.flags) ? data?.length !== v.count : data !== undefined) {
    throw new InvalidArgumentError('DEVICE_SET_IRQS: data must be given exactly with DATA_BOOL, one byte per IRQ');
  }
  const w = new WireWriter(IRQ_SET_SIZE + (data?.length ?? 0), 'DEVICE_SET_IRQS');
  w.u32(v.argsz, 'argsz').u32(v.flags, 'flags').u32(v.index, 'index').u32(v.start, 'start').u32(v.count, 'count');
  if (data) w.bytes(data, 'data');
  return w.finish();
}

/**
 * Decodes a DEVICE_SET_IRQS request. With DATA_BOOL the payload must be exactly
 * 20 + `count` bytes; otherwise bytes after the struct are ignored (libvfio-user).
 * Flag combinations and index/start/count bounds are validated separately.
 * @throws {ProtocolError} EINVAL if shorter than 20 bytes or the BOOL data length differs from `count`.
 */
export function decodeIrqSet(payload: Uint8Array): IrqSet {
  const r = new WireReader(payload, 'DEVICE_SET_IRQS');
  const argsz = r.u32('argsz');
  const flags = r.u32('flags');
  const index = r.u32('index');
  const start = r.u32('start');
  const count = r.u32('count');
  if (!isBool(flags)) return { argsz, flags, index, start, count };
  if (r.remaining !== count) throw r.error(`DATA_BOOL with count ${count} but ${r.remaining} data bytes`);
  return { argsz, flags, index, start, count, data: r.rest() };
}

function singleBit(bits: number): boolean {
  return bits !== 0 && (bits & (bits - 1)) === 0;
}

/**
 * The structural flag rule of libvfio-user's `device_set_irqs_validate`:
 * exactly one DATA_* bit and exactly one ACTION_* bit. Bits above 0x3f are
 * ignored, as libvfio-user ignores them.
 * @returns `undefined` if valid, else a ProtocolError with errno EINVAL.
 */
export function validateIrqSetFlags(flags: number): ProtocolError | undefined {
  if (!singleBit(flags & IrqSetFlags.DATA_TYPE_MASK)) {
    return new ProtocolError(`DEVICE_SET_IRQS: flags 0x${flags.toString(16)} need exactly one DATA_* bit`);
  }
  if (!singleBit(flags & IrqSetFlags.ACTION_TYPE_MASK)) {
    return new ProtocolError(`DEVICE_SET_IRQS: flags 0x${flags.toString(16)} need exactly one ACTION_* bit`);
  }
  return undefined;
}
