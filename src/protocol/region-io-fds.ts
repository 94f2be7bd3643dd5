/**
 * DEVICE_GET_REGION_IO_FDS (6). The reply's sub-region records are 48 bytes in
 * libvfio-user (`vfio_user_sub_region_ioeventfd_t`) and 40 bytes in the
 * specification; the decoder accepts both, deciding by the payload size.
 */
import { InvalidArgumentError } from '../errors.js';
import { REGION_IO_FDS_SIZE, SUB_REGION_IO_FD_SIZE, SUB_REGION_IO_FD_SPEC_SIZE } from './constants.js';
import { WireReader } from './wire-reader.js';
import { WireWriter } from './wire-writer.js';

/** DEVICE_GET_REGION_IO_FDS request; `flags` and `count` must be 0 (server rule). */
export interface RegionIoFdsRequest {
  /** Largest reply payload the client accepts. */
  argsz: number;
  flags: number;
  index: number;
  count: number;
}

/** One sub-region whose accesses go through an fd (`fdIndex` into the reply's fds). */
export interface SubRegionIoFd {
  /** Offset in the region (`gpa_offset`). */
  offset: bigint;
  /** Length; 0 means any access size. */
  size: bigint;
  fdIndex: number;
  /** `IoFdType` value, raw. */
  type: number;
  /** `KVM_IOEVENTFD_FLAG_*` / `KVM_IOREGION_*` bits, raw. */
  flags: number;
  /** libvfio-user only (type IOEVENTFD_SHADOW); 0 in 40-byte records. */
  shadowMemFdIndex: number;
  /** libvfio-user only (type IOEVENTFD_SHADOW); 0 in 40-byte records. */
  shadowOffset: bigint;
  /** Datamatch value (ioeventfd) or `user_data` (ioregionfd). */
  datamatch: bigint;
}

/** DEVICE_GET_REGION_IO_FDS reply. */
export interface RegionIoFdsReply {
  /** Payload size needed for all records. */
  argsz: number;
  flags: number;
  index: number;
  /** Number of sub-regions the region has. */
  count: number;
  /** The records: all `count` of them, or none when the client's argsz was too small. */
  subRegions: SubRegionIoFd[];
}

/** Size of one encoded sub-region record: libvfio-user's 48 or the spec's 40. */
export type IoFdRecordSize = typeof SUB_REGION_IO_FD_SIZE | typeof SUB_REGION_IO_FD_SPEC_SIZE;

/** Encodes a DEVICE_GET_REGION_IO_FDS request (16 bytes). @throws {InvalidArgumentError} EINVAL. */
export function encodeRegionIoFdsRequest(v: RegionIoFdsRequest): Uint8Array {
  return new WireWriter(REGION_IO_FDS_SIZE, 'DEVICE_GET_REGION_IO_FDS')
    .u32(v.argsz, 'argsz')
    .u32(v.flags, 'flags')
    .u32(v.index, 'index')
    .u32(v.count, 'count')
    .finish();
}

/**
 * Decodes a DEVICE_GET_REGION_IO_FDS request; trailing bytes are ignored.
 * @throws {ProtocolError} EINVAL if shorter than 16 bytes.
 */
export function decodeRegionIoFdsRequest(payload: Uint8Array): RegionIoFdsRequest {
  const r = new WireReader(payload, 'DEVICE_GET_REGION_IO_FDS');
  return { argsz: r.u32('argsz'), flags: r.u32('flags'), index: r.u32('index'), count: r.u32('count') };
}

function writeRecord(w: WireWriter, s: SubRegionIoFd, recordSize: IoFdRecordSize): void {
  w.u64(s.offset, 'offset').u64(s.size, 'size').u32(s.fdIndex, 'fd_index').u32(s.type, 'type').u32(s.flags, 'flags');
  if (recordSize === SUB_REGION_IO_FD_SIZE) {
    w.u32(s.shadowMemFdIndex, 'shadow_mem_fd_index').u64(s.shadowOffset, 'shadow_offset');
  } else if (s.shadowMemFdIndex !== 0 || s.shadowOffset !== 0n) {
    throw new InvalidArgumentError('DEVICE_GET_REGION_IO_FDS reply: shadow fields need 48-byte records');
  } else {
    w.zeros(4, 'padding');
  }
  w.u64(s.datamatch, 'datamatch');
}

/**
 * Encodes a DEVICE_GET_REGION_IO_FDS reply.
 * @param options.recordSize - 48 (libvfio-user, default) or 40 (specification).
 * @throws {InvalidArgumentError} EINVAL if `subRegions` is neither empty nor `count` long,
 * a field does not fit, or shadow fields are set with 40-byte records.
 */
export function encodeRegionIoFdsReply(
  v: RegionIoFdsReply,
  options: { recordSize?: IoFdRecordSize } = {},
): Uint8Array {
  const recordSize = options.recordSize ?? SUB_REGION_IO_FD_SIZE;
  if (v.subRegions.length !== 0 && v.subRegions.length !== v.count) {
    throw new InvalidArgumentError(`DEVICE_GET_REGION_IO_FDS reply: ${v.subRegions.length} records but count ${v.count}`);
  }
  const w = new WireWriter(REGION_IO_FDS_SIZE + recordSize * v.subRegions.length, 'DEVICE_GET_REGION_IO_FDS reply');
  w.u32(v.argsz, 'argsz').u32(v.flags, 'flags').u32(v.index, 'index').u32(v.count, 'count');
  for (const s of v.subRegions) writeRecord(w, s, recordSize);
  return w.finish();
}

function readRecord(r: WireReader, recordSize: IoFdRecordSize): SubRegionIoFd {
  const offset = r.u64('offset');
  const size = r.u64('size');
  const fdIndex = r.u32('fd_index');
  const type = r.u32('type');
  const flags = r.u32('flags');
  let shadowMemFdIndex = 0;
  let shadowOffset = 0n;
  if (recordSize === SUB_REGION_IO_FD_SIZE) {
    shadowMemFdIndex = r.u32('shadow_mem_fd_index');
    shadowOffset = r.u64('shadow_offset');
  } else {
    r.skip(4, 'padding');
  }
  return { offset, size, fdIndex, type, flags, shadowMemFdIndex, shadowOffset, datamatch: r.u64('datamatch') };
}

/**
 * Decodes a DEVICE_GET_REGION_IO_FDS reply. After the 16-byte header the payload
 * must hold nothing (records withheld because argsz was too small), exactly
 * `count` 48-byte records, or exactly `count` 40-byte records.
 * @throws {ProtocolError} EINVAL if shorter than 16 bytes or the record bytes fit neither size.
 */
export function decodeRegionIoFdsReply(payload: Uint8Array): RegionIoFdsReply {
  const r = new WireReader(payload, 'DEVICE_GET_REGION_IO_FDS reply');
  const argsz = r.u32('argsz');
  const flags = r.u32('flags');
  const index = r.u32('index');
  const count = r.u32('count');
  const subRegions: SubRegionIoFd[] = [];
  if (r.remaining > 0) {
    const recordSize = recordSizeFor(r, count);
    for (let i = 0; i < count; i++) subRegions.push(readRecord(r, recordSize));
  }
  return { argsz, flags, index, count, subRegions };
}

function recordSizeFor(r: WireReader, count: number): IoFdRecordSize {
  if (r.remaining === count * SUB_REGION_IO_FD_SIZE) return SUB_REGION_IO_FD_SIZE;
  if (r.remaining === count * SUB_REGION_IO_FD_SPEC_SIZE) return SUB_REGION_IO_FD_SPEC_SIZE;
  throw r.error(`${r.remaining} record bytes fit neither ${count}×48 nor ${count}×40`);
}
