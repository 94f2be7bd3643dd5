/**
 * DEVICE_FEATURE (16): the `{argsz, flags, data}` envelope (request and reply)
 * and the codecs of each migration feature's `data`.
 */
import { ProtocolError } from '../errors.js';
import {
  DEVICE_FEATURE_SIZE,
  DMA_LOGGING_CONTROL_SIZE,
  DMA_LOGGING_RANGE_SIZE,
  DMA_LOGGING_REPORT_SIZE,
  DeviceFeatureFlags,
  FEATURE_MIGRATION_SIZE,
  FEATURE_MIG_DATA_SIZE_SIZE,
  FEATURE_MIG_STATE_SIZE,
} from './constants.js';
import { WireReader } from './wire-reader.js';
import { WireWriter } from './wire-writer.js';

/** `struct vfio_user_device_feature`: request and reply share it. */
export interface DeviceFeaturePayload {
  /** Request: largest reply payload accepted. Reply: payload size. */
  argsz: number;
  /** Feature index (bits 0–15) | GET | SET | PROBE, raw. */
  flags: number;
  /** Feature-specific bytes (a view into the payload when decoded). */
  data: Uint8Array;
}

/** MIGRATION (1) GET data: `VFIO_MIGRATION_*` bits as a u64. */
export interface MigrationFeature {
  flags: bigint;
}

/** MIG_DEVICE_STATE (2) GET/SET data. */
export interface MigDeviceState {
  /** `MigrationState` value, raw. */
  deviceState: number;
  /** s32 in VFIO; unused in vfio-user (send 0 or -1). */
  dataFd: number;
}

/** One IOVA range of DMA_LOGGING_START. */
export interface DmaLoggingRange {
  iova: bigint;
  length: bigint;
}

/** DMA_LOGGING_START (6) SET data; `num_ranges` is `ranges.length` (0 = log everything, per the spec). */
export interface DmaLoggingControl {
  pageSize: bigint;
  ranges: DmaLoggingRange[];
}

/** DMA_LOGGING_REPORT (8) GET request data. */
export interface DmaLoggingReport {
  iova: bigint;
  length: bigint;
  pageSize: bigint;
}

/** DMA_LOGGING_REPORT reply data: the request plus the dirty bitmap (bit i of byte j = page 8j+i). */
export interface DmaLoggingReportReply extends DmaLoggingReport {
  bitmap: Uint8Array;
}

/** MIG_DATA_SIZE (9) GET data (kernel VFIO; not offered by libvfio-user). */
export interface MigDataSize {
  stopCopyLength: bigint;
}

/** The feature index of a DEVICE_FEATURE `flags` word. */
export function featureIndex(flags: number): number {
  return flags & DeviceFeatureFlags.MASK;
}

/** The GET/SET/PROBE bits of a DEVICE_FEATURE `flags` word. */
export function featureOps(flags: number): number {
  return (flags & (DeviceFeatureFlags.GET | DeviceFeatureFlags.SET | DeviceFeatureFlags.PROBE)) >>> 0;
}

/** Encodes a DEVICE_FEATURE request or reply (8 + data bytes). @throws {InvalidArgumentError} EINVAL. */
export function encodeDeviceFeature(v: DeviceFeaturePayload): Uint8Array {
  return new WireWriter(DEVICE_FEATURE_SIZE + v.data.length, 'DEVICE_FEATURE')
    .u32(v.argsz, 'argsz')
    .u32(v.flags, 'flags')
    .bytes(v.data, 'data')
    .finish();
}

/**
 * Decodes a DEVICE_FEATURE request or reply; `data` is every byte after the
 * 8-byte header. Feature/op policy is the server's.
 * @throws {ProtocolError} EINVAL if shorter than 8 bytes.
 */
export function decodeDeviceFeature(payload: Uint8Array): DeviceFeaturePayload {
  const r = new WireReader(payload, 'DEVICE_FEATURE');
  return { argsz: r.u32('argsz'), flags: r.u32('flags'), data: r.rest() };
}

/** Encodes MIGRATION data (8 bytes). @throws {InvalidArgumentError} EINVAL if not a u64. */
export function encodeMigrationFeature(v: MigrationFeature): Uint8Array {
  return new WireWriter(FEATURE_MIGRATION_SIZE, 'MIGRATION').u64(v.flags, 'flags').finish();
}

/** Decodes MIGRATION data. @throws {ProtocolError} EINVAL if shorter than 8 bytes. */
export function decodeMigrationFeature(data: Uint8Array): MigrationFeature {
  return { flags: new WireReader(data, 'MIGRATION').u64('flags') };
}

/** Encodes MIG_DEVICE_STATE data (8 bytes). @throws {InvalidArgumentError} EINVAL. */
export function encodeMigDeviceState(v: MigDeviceState): Uint8Array {
  return new WireWriter(FEATURE_MIG_STATE_SIZE, 'MIG_DEVICE_STATE')
    .u32(v.deviceState, 'device_state')
    .i32(v.dataFd, 'data_fd')
    .finish();
}

/**
 * Decodes MIG_DEVICE_STATE data; `data_fd` is read as s32.
 * @throws {ProtocolError} EINVAL if shorter than 8 bytes.
 */
export function decodeMigDeviceState(data: Uint8Array): MigDeviceState {
  const r = new WireReader(data, 'MIG_DEVICE_STATE');
  return { deviceState: r.u32('device_state'), dataFd: r.i32('data_fd') };
}

/** Encodes DMA_LOGGING_START data (16 + 16 × ranges). @throws {InvalidArgumentError} EINVAL. */
export function encodeDmaLoggingControl(v: DmaLoggingControl): Uint8Array {
  const n = v.ranges.length;
  const w = new WireWriter(DMA_LOGGING_CONTROL_SIZE + n * DMA_LOGGING_RANGE_SIZE, 'DMA_LOGGING_START');
  w.u64(v.pageSize, 'page_size').u32(n, 'num_ranges').zeros(4, 'reserved');
  for (const range of v.ranges) w.u64(range.iova, 'range.iova').u64(range.length, 'range.length');
  return w.finish();
}

/**
 * Decodes DMA_LOGGING_START data: all `num_ranges` ranges must be present
 * (trailing bytes ignored); `reserved` is ignored.
 * @throws {ProtocolError} EINVAL if truncated or `num_ranges` exceeds the bytes present.
 */
export function decodeDmaLoggingControl(data: Uint8Array): DmaLoggingControl {
  const r = new WireReader(data, 'DMA_LOGGING_START');
  const pageSize = r.u64('page_size');
  const n = r.u32('num_ranges');
  r.skip(4, 'reserved');
  r.need(n * DMA_LOGGING_RANGE_SIZE, `ranges (num_ranges ${n})`);
  const ranges: DmaLoggingRange[] = [];
  for (let i = 0; i < n; i++) ranges.push({ iova: r.u64('range.iova'), length: r.u64('range.length') });
  return { pageSize, ranges };
}

function writeReport(w: WireWriter, v: DmaLoggingReport): WireWriter {
  return w.u64(v.iova, 'iova').u64(v.length, 'length').u64(v.pageSize, 'page_size');
}

function readReport(r: WireReader): DmaLoggingReport {
  return { iova: r.u64('iova'), length: r.u64('length'), pageSize: r.u64('page_size') };
}

/** Encodes DMA_LOGGING_REPORT request data (24 bytes). @throws {InvalidArgumentError} EINVAL. */
export function encodeDmaLoggingReport(v: DmaLoggingReport): Uint8Array {
  return writeReport(new WireWriter(DMA_LOGGING_REPORT_SIZE, 'DMA_LOGGING_REPORT'), v).finish();
}

/** Decodes DMA_LOGGING_REPORT request data; trailing bytes ignored. @throws {ProtocolError} EINVAL if < 24 bytes. */
export function decodeDmaLoggingReport(data: Uint8Array): DmaLoggingReport {
  return readReport(new WireReader(data, 'DMA_LOGGING_REPORT'));
}

/** Encodes DMA_LOGGING_REPORT reply data (24 + bitmap bytes). @throws {InvalidArgumentError} EINVAL. */
export function encodeDmaLoggingReportReply(v: DmaLoggingReportReply): Uint8Array {
  const w = new WireWriter(DMA_LOGGING_REPORT_SIZE + v.bitmap.length, 'DMA_LOGGING_REPORT reply');
  return writeReport(w, v).bytes(v.bitmap, 'bitmap').finish();
}

/**
 * Decodes DMA_LOGGING_REPORT reply data; the bitmap is every byte after 24
 * (compare with {@link bitmapBytes} of the request).
 * @throws {ProtocolError} EINVAL if shorter than 24 bytes.
 */
export function decodeDmaLoggingReportReply(data: Uint8Array): DmaLoggingReportReply {
  const r = new WireReader(data, 'DMA_LOGGING_REPORT reply');
  return { iova: r.u64('iova'), length: r.u64('length'), pageSize: r.u64('page_size'), bitmap: r.rest() };
}

/** Encodes MIG_DATA_SIZE data (8 bytes). @throws {InvalidArgumentError} EINVAL if not a u64. */
export function encodeMigDataSize(v: MigDataSize): Uint8Array {
  return new WireWriter(FEATURE_MIG_DATA_SIZE_SIZE, 'MIG_DATA_SIZE').u64(v.stopCopyLength, 'stop_copy_length').finish();
}

/** Decodes MIG_DATA_SIZE data. @throws {ProtocolError} EINVAL if shorter than 8 bytes. */
export function decodeMigDataSize(data: Uint8Array): MigDataSize {
  return { stopCopyLength: new WireReader(data, 'MIG_DATA_SIZE').u64('stop_copy_length') };
}

/**
 * Dirty bitmap size in bytes for `length` bytes at `pageSize` granularity:
 * `ceil(length / pageSize)` bits rounded up to a multiple of 64, divided by 8
 * (libvfio-user `get_bitmap_size`). Whether `length < pageSize` is acceptable
 * is the caller's policy (libvfio-user rejects it).
 * @throws {ProtocolError} EINVAL if `pageSize` is 0 or either argument is negative.
 */
export function bitmapBytes(length: bigint, pageSize: bigint): bigint {
  if (pageSize <= 0n || length < 0n) {
    throw new ProtocolError(`bitmap: invalid length ${length} / page size ${pageSize}`);
  }
  const pages = (length + pageSize - 1n) / pageSize;
  return ((pages + 63n) / 64n) * 8n;
}
