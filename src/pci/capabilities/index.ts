/**
 * The capability table: one row per capability file, in layout order. Standard
 * capabilities are packed from 0x40 upward, extended ones from 0x100 upward,
 * each at the next dword-aligned offset after the previous one.
 */
import type { CapabilityDefinition } from './capability.js';
import { dsnCapability } from './dsn.js';
import { expressCapability } from './express.js';
import { msiCapability } from './msi.js';
import { msixCapability } from './msix.js';
import { pmCapability } from './pm.js';
import { vendorCapability } from './vendor.js';
import { vsecCapability } from './vsec.js';

/**
 * Layout order: PM, MSI, MSI-X, PCI Express, vendor-specific (in the given
 * order); then extended: Device Serial Number, VSECs (in the given order).
 */
export const CAPABILITY_TABLE: readonly CapabilityDefinition[] = [
  pmCapability,
  msiCapability,
  msixCapability,
  expressCapability,
  vendorCapability,
  dsnCapability,
  vsecCapability,
];

export type { Capability, CapabilityContext, CapabilityDefinition, CapabilityPlan } from './capability.js';
export { MsiCapability, MsiControl, msiSize } from './msi.js';
export { MsixCapability, MsixControl, MSIX_SIZE, MSIX_MAX_VECTORS, type BarWindow, type MsixVector } from './msix.js';
export { MSIX_ENTRY_SIZE, MSIX_VECTOR_MASKED, MsixEntry, pbaSize } from './msix-table.js';
export { PM_SIZE, PmReg } from './pm.js';
export { EXPRESS_SIZE, ExpressReg } from './express.js';
export { VENDOR_HEADER_SIZE, VENDOR_MAX_PAYLOAD } from './vendor.js';
export { DSN_SIZE } from './dsn.js';
export { VSEC_HEADER_SIZE, VSEC_MAX_LENGTH } from './vsec.js';
