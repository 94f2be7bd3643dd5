/**
 * DEVICE_GET_INFO (4). (DEVICE_RESET (13) has no payload either way: see `empty.ts`.)
 */
import { DEVICE_INFO_SIZE } from './constants.js';
import { WireReader } from './wire-reader.js';
import { WireWriter } from './wire-writer.js';

/**
 * `struct vfio_user_device_info`, used by both the request (argsz = largest
 * reply accepted, other fields zero) and the reply (libvfio-user: argsz 16,
 * flags PCI|RESET, 9 regions, 5 IRQ types).
 */
export interface DeviceInfo {
  argsz: number;
  /** `DeviceInfoFlags` bits, raw. */
  flags: number;
  numRegions: number;
  numIrqs: number;
}

/** Encodes a DEVICE_GET_INFO request or reply (16 bytes). @throws {InvalidArgumentError} EINVAL. */
export function encodeDeviceInfo(v: DeviceInfo): Uint8Array {
  return new WireWriter(DEVICE_INFO_SIZE, 'DEVICE_GET_INFO')
    .u32(v.argsz, 'argsz')
    .u32(v.flags, 'flags')
    .u32(v.numRegions, 'num_regions')
    .u32(v.numIrqs, 'num_irqs')
    .finish();
}

/**
 * Decodes a DEVICE_GET_INFO request or reply; trailing bytes are ignored.
 * @throws {ProtocolError} EINVAL if shorter than 16 bytes.
 */
export function decodeDeviceInfo(payload: Uint8Array): DeviceInfo {
  const r = new WireReader(payload, 'DEVICE_GET_INFO');
  return {
    argsz: r.u32('argsz'),
    flags: r.u32('flags'),
    numRegions: r.u32('num_regions'),
    numIrqs: r.u32('num_irqs'),
  };
}
