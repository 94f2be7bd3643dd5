/** The device configurations shared by the golden, lspci and lifecycle tests. */
import type { ConfigSpaceOptions } from '../../../src/pci/index.js';

const ids = { vendorId: 0x4e58, deviceId: 0x0001, subsystemVendorId: 0x4e58, subsystemId: 0x0010 };

/** No capabilities, a 4 KiB memory BAR and a 256-byte I/O BAR, INTA. */
export const PLAIN: ConfigSpaceOptions = {
  ...ids,
  classCode: 0x058000,
  revision: 0x01,
  interruptPin: 1,
  pm: false,
  bars: [
    { size: 0x1000, type: 'mem32' },
    { size: 0x100, type: 'io' },
  ],
};

/** 1 MiB 64-bit prefetchable BAR0 (+BAR1), 16-byte BAR2, 64 KiB ROM, PM. */
export const MEM64_ROM: ConfigSpaceOptions = {
  ...ids,
  deviceId: 0x0002,
  classCode: 0x030000,
  bars: [{ size: 0x100000, type: 'mem64', prefetchable: true }, undefined, { size: 16, type: 'mem32' }],
  rom: { size: 0x10000 },
};

/** PM + MSI with 4 vectors, 64-bit, per-vector masking. */
export const MSI4: ConfigSpaceOptions = {
  ...ids,
  deviceId: 0x0003,
  classCode: 0x020000,
  interruptPin: 1,
  bars: [{ size: 0x1000, type: 'mem32' }],
  msi: { vectors: 4 },
};

/** PM + MSI-X with 8 vectors in BAR2 (table at 0, PBA at 0x800). */
export const MSIX8: ConfigSpaceOptions = {
  ...ids,
  deviceId: 0x0004,
  classCode: 0x010802,
  interruptPin: 1,
  bars: [{ size: 0x1000, type: 'mem32' }, undefined, { size: 0x4000, type: 'mem32' }],
  msix: { vectors: 8, bar: 2, tableOffset: 0, pbaOffset: 0x800 },
};

/** PCIe endpoint with PM, a vendor capability, DSN and a VSEC. */
export const EXPRESS: ConfigSpaceOptions = {
  ...ids,
  deviceId: 0x0005,
  classCode: 0x120000,
  bars: [{ size: 0x4000, type: 'mem64' }],
  express: { portType: 'endpoint' },
  vendorCapabilities: [{ payload: Uint8Array.of(0xde, 0xad, 0xbe) }],
  serialNumber: 0x0123456789abcdefn,
  vsecs: [{ id: 0x1234, rev: 1, payload: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8) }],
};
