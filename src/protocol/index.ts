/**
 * The vfio-user wire codec: pure bytes ↔ typed values, no I/O.
 * Every `decodeX` takes a payload (no header) and throws `ProtocolError` with an
 * errno (EINVAL unless stated); every `encodeX` returns a payload and throws
 * `InvalidArgumentError` (EINVAL) for values that do not fit the wire.
 */
export {
  Command,
  commandName,
  toCommand,
  HeaderFlags,
  KNOWN_HEADER_FLAGS,
  PROTOCOL_MAJOR,
  PROTOCOL_MINOR,
  SERVER_MAX_MSG_SIZE,
  SERVER_MAX_DATA_XFER_SIZE,
  DEFAULT_MAX_DATA_XFER_SIZE,
  DEFAULT_MAX_MSG_FDS,
  MAX_MSG_FDS_LIMIT,
  SERVER_MAX_FDS,
  DEFAULT_MAX_DMA_MAPS,
  DEFAULT_PGSIZES,
  DMA_MAX_SIZE,
  U64_MAX,
  RegionIndex,
  NUM_REGIONS,
  IrqIndex,
  NUM_IRQS,
  DeviceInfoFlags,
  RegionInfoFlags,
  RegionCapId,
  SPARSE_MMAP_CAP_VERSION,
  REGION_TYPE_CAP_VERSION,
  IrqInfoFlags,
  IrqSetFlags,
  DmaMapFlags,
  DmaUnmapFlags,
  DeviceFeature,
  DeviceFeatureFlags,
  MigrationFlags,
  MigrationState,
  NUM_MIGRATION_STATES,
  IoFdType,
  HEADER_SIZE,
  VERSION_SIZE,
  DMA_MAP_SIZE,
  DMA_UNMAP_SIZE,
  DMA_BITMAP_SIZE,
  DEVICE_INFO_SIZE,
  REGION_INFO_SIZE,
  CAP_HEADER_SIZE,
  SPARSE_MMAP_CAP_SIZE,
  SPARSE_MMAP_AREA_SIZE,
  REGION_TYPE_CAP_SIZE,
  REGION_IO_FDS_SIZE,
  SUB_REGION_IO_FD_SIZE,
  SUB_REGION_IO_FD_SPEC_SIZE,
  IRQ_INFO_SIZE,
  IRQ_SET_SIZE,
  REGION_ACCESS_SIZE,
  DMA_ACCESS_SIZE,
  QEMU_DMA_ACCESS_SIZE,
  REGION_WRITE_MULTI_SIZE,
  REGION_WRITE_MULTI_ENTRY_SIZE,
  REGION_WRITE_MULTI_DATA_SIZE,
  DEVICE_FEATURE_SIZE,
  FEATURE_MIGRATION_SIZE,
  FEATURE_MIG_STATE_SIZE,
  DMA_LOGGING_CONTROL_SIZE,
  DMA_LOGGING_RANGE_SIZE,
  DMA_LOGGING_REPORT_SIZE,
  FEATURE_MIG_DATA_SIZE_SIZE,
  MIG_DATA_SIZE,
} from './constants.js';
export { Errno, errnoName, MAX_ERRNO } from './errno.js';
export { WireReader } from './wire-reader.js';
export { WireWriter } from './wire-writer.js';
export {
  encodeHeader,
  decodeHeader,
  messageType,
  isCommand,
  isReply,
  isError,
  wantsReply,
  unknownFlags,
  validateCommandHeader,
  validateReplyHeader,
  replyErrno,
  encodeMessage,
  encodeReply,
  encodeErrorReply,
  decodeMessage,
} from './header.js';
export { encodeEmpty, decodeEmpty } from './empty.js';
export {
  parseCapabilitiesJson,
  capabilitiesFromJson,
  formatCapabilitiesJson,
  resolveCapabilities,
} from './capabilities.js';
export { encodeVersion, decodeVersion, VERSION_REQUEST_PAD } from './version.js';
export {
  encodeDmaMapRequest,
  decodeDmaMapRequest,
  encodeDmaUnmapRequest,
  decodeDmaUnmapRequest,
  encodeDmaUnmapReply,
  decodeDmaUnmapReply,
  encodeDmaAccess,
  decodeDmaReadRequest,
  encodeDmaAccessWithData,
  decodeDmaWriteRequest,
  decodeDmaReadReply,
  decodeDmaWriteReply,
} from './dma.js';
export { encodeDeviceInfo, decodeDeviceInfo } from './device.js';
export {
  encodeRegionInfoRequest,
  decodeRegionInfoRequest,
  encodeRegionInfo,
  decodeRegionInfo,
} from './region.js';
export {
  encodeRegionIoFdsRequest,
  decodeRegionIoFdsRequest,
  encodeRegionIoFdsReply,
  decodeRegionIoFdsReply,
} from './region-io-fds.js';
export {
  encodeRegionAccess,
  encodeRegionAccessWithData,
  decodeRegionReadRequest,
  decodeRegionWriteRequest,
  decodeRegionReadReply,
  decodeRegionWriteReply,
  encodeRegionWriteMulti,
  decodeRegionWriteMulti,
  encodeRegionWriteMultiReply,
  decodeRegionWriteMultiReply,
} from './region-access.js';
export { encodeIrqInfo, decodeIrqInfo, encodeIrqSet, decodeIrqSet, validateIrqSetFlags } from './irq.js';
export {
  featureIndex,
  featureOps,
  encodeDeviceFeature,
  decodeDeviceFeature,
  encodeMigrationFeature,
  decodeMigrationFeature,
  encodeMigDeviceState,
  decodeMigDeviceState,
  encodeDmaLoggingControl,
  decodeDmaLoggingControl,
  encodeDmaLoggingReport,
  decodeDmaLoggingReport,
  encodeDmaLoggingReportReply,
  decodeDmaLoggingReportReply,
  encodeMigDataSize,
  decodeMigDataSize,
  bitmapBytes,
} from './feature.js';
export {
  encodeMigDataReadRequest,
  decodeMigDataReadRequest,
  encodeMigData,
  decodeMigDataReadReply,
  decodeMigDataWriteRequest,
} from './migration-data.js';

export type { MessageHeader, MessageInit } from './header.js';
export type {
  Capabilities,
  ResolvedCapabilities,
  MigrationCapability,
  TwinSocketCapability,
  ExtraMembers,
} from './capabilities.js';
export type { Version } from './version.js';
export type {
  DmaMapRequest,
  DmaUnmapRequest,
  DmaUnmapReply,
  DmaBitmapHeader,
  DmaBitmap,
  DmaAccess,
  DmaAccessWithData,
  DmaLayout,
} from './dma.js';
export type { DeviceInfo } from './device.js';
export type {
  RegionInfoRequest,
  RegionInfo,
  RegionCap,
  SparseMmapCap,
  SparseMmapArea,
  RegionTypeCap,
  UnknownRegionCap,
} from './region.js';
export type { RegionIoFdsRequest, RegionIoFdsReply, SubRegionIoFd, IoFdRecordSize } from './region-io-fds.js';
export type {
  RegionAccess,
  RegionAccessWithData,
  RegionWriteMulti,
  RegionWriteMultiReply,
} from './region-access.js';
export type { IrqInfo, IrqSet } from './irq.js';
export type {
  DeviceFeaturePayload,
  MigrationFeature,
  MigDeviceState,
  DmaLoggingRange,
  DmaLoggingControl,
  DmaLoggingReport,
  DmaLoggingReportReply,
  MigDataSize,
} from './feature.js';
export type { MigDataReadRequest, MigData } from './migration-data.js';

export { decodeRequest, checkRequestFds } from './request.js';
export type { DecodedRequest, RequestBodies, RequestCommand, FdRule } from './request.js';
export * from './migration-extensions.js';
export * from './isolation-group.js';
export * from './mmap-saving.js';
