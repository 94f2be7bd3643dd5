/** The client library: connect to any vfio-user server and drive its device. */
export { VfioUserClient } from './client.js';
export { ClientCore } from './core.js';
export { GuestMemory, GUEST_PAGE_SIZE, GUEST_WINDOW_SIZE } from './guest-memory.js';
export { Interrupts } from './interrupts.js';
export { Container } from './container.js';
export { MappedRegion } from './regions.js';
export { declaredMmaps, prepareForSaving, restoreAfterSaving } from './mmap-saving.js';
export { assignBars, barDecodes } from './bar-setup.js';
export { recoverMigration, type RecoveryResult, type RecoveryStep } from './migration-recovery.js';
export {
  barSizes,
  romSize,
  disableMsix,
  enableBusMaster,
  enableMsi,
  enableMsix,
  findCapability,
  findExtendedCapability,
  listCapabilities,
  listExtendedCapabilities,
  maskMsixVector,
  msiInfo,
  msixInfo,
  readConfig,
  setCommand,
  unmaskMsixVector,
  writeConfig,
} from './pci-config.js';
export type { AssignBarsOptions, AssignedBar, BarAssignment, BarWindow } from './bar-setup.js';
export type { RegionInfoResult, RegionIoFdsResult, DmaMapOptions } from './client.js';
export type { ClientOptions, DmaResponder, TraceEvent, RequestOptions } from './core.js';
export type { GuestMemoryAttachment, GuestMemoryAttachOptions, GuestMemoryMode, GuestMemoryOptions } from './guest-memory.js';
export type { InterruptEvent, InterruptsEvents, InterruptsOptions } from './interrupts.js';
export type { ContainerMapOptions, ContainerMapping } from './container.js';
export type { ReleaseRequest } from './release.js';
export type { SavingPreparation } from './mmap-saving.js';
export type { MappedArea, MappedRegionOptions, RegionAccessPath, RegionAccessStats, SkippedArea } from './regions.js';
export type { BarSize, RomSize, CapabilityListing, CapabilityWalkEnd, ConfigAccess, ConfigCapability, ConfigWidth, MsiInfo, MsixInfo } from './pci-config.js';
