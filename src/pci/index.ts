/**
 * PCI configuration-space emulation: the header, BARs, capabilities (PM, MSI,
 * MSI-X, PCI Express, vendor-specific, DSN, VSEC), snapshots, and the
 * `lspci -F` dump format. Pure: no I/O.
 */
export { ConfigSpace } from './config-space.js';
export { BarType, ExpressPortType, InterruptMode } from './types.js';
export { formatLspciDump, parseLspciDump, walkCapabilities } from './lspci.js';
export { applyBarRule, BAR_COUNT } from './bars.js';
export { RegisterFile } from './register-file.js';
export { SNAPSHOT_HEADER_SIZE, SNAPSHOT_MAGIC, SNAPSHOT_VERSION } from './snapshot.js';
export {
  BarFlags,
  CAPABILITIES_START,
  CapabilityId,
  CapHeader,
  COMMAND_WRITABLE,
  CONFIG_SPACE_SIZE,
  EXPRESS_CONFIG_SPACE_SIZE,
  EXT_CAPABILITIES_START,
  ExtCapabilityId,
  HeaderType,
  PciCommand,
  PciHeader,
  PciStatus,
  RomFlags,
  STATUS_RW1C,
  STD_HEADER_SIZE,
} from './registers.js';
export {
  CAPABILITY_TABLE,
  DSN_SIZE,
  EXPRESS_SIZE,
  ExpressReg,
  MSIX_ENTRY_SIZE,
  MSIX_MAX_VECTORS,
  MSIX_SIZE,
  MSIX_VECTOR_MASKED,
  MsiCapability,
  MsiControl,
  MsixCapability,
  MsixControl,
  MsixEntry,
  msiSize,
  pbaSize,
  PM_SIZE,
  PmReg,
  VENDOR_HEADER_SIZE,
  VENDOR_MAX_PAYLOAD,
  VSEC_HEADER_SIZE,
  VSEC_MAX_LENGTH,
} from './capabilities/index.js';

export type { BarInfo, CapabilityInfo } from './config-space.js';
export type {
  BarOptions,
  ConfigSpaceEvent,
  ConfigSpaceListener,
  ConfigSpaceOptions,
  ExpressOptions,
  MsiOptions,
  MsixOptions,
  RomOptions,
  VendorArea,
  VendorCapabilityOptions,
  VsecOptions,
} from './types.js';
export type { LspciDevice, LspciDumpOptions, CapabilityWalk } from './lspci.js';
export type { RegisterMasks } from './register-file.js';
export type { SnapshotParts } from './snapshot.js';
export type { BarWindow, Capability, CapabilityDefinition, MsixVector } from './capabilities/index.js';
