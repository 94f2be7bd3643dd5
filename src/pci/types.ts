/**
 * The declarative description of an emulated PCI function (what a device author
 * writes) and the events the config space reports to the IRQ layer.
 */

/** Kind of a Base Address Register. */
export const BarType = {
  MEM32: 'mem32',
  /** A 64-bit memory BAR; it consumes the next BAR slot, which must be absent. */
  MEM64: 'mem64',
  IO: 'io',
} as const;
/** One of the values in {@link BarType}. */
export type BarType = (typeof BarType)[keyof typeof BarType];

/** One Base Address Register. */
export interface BarOptions {
  /**
   * Size in bytes: a power of two; memory BARs at least 16 bytes (at most
   * 2 GiB for `mem32`), I/O BARs 4–256 bytes.
   */
  size: number | bigint;
  type: BarType;
  /** Prefetchable memory (bit 3). Memory BARs only. Default false. */
  prefetchable?: boolean;
}

/** The expansion ROM BAR (0x30). */
export interface RomOptions {
  /** Size in bytes: a power of two, at least 2 KiB, at most 2 GiB. */
  size: number | bigint;
}

/** MSI capability (id 0x05). */
export interface MsiOptions {
  /** Multiple Message Capable: how many vectors the function can use. */
  vectors: 1 | 2 | 4 | 8 | 16 | 32;
  /** 64-bit message address. Default true. */
  bits64?: boolean;
  /** Per-vector masking (Mask Bits and Pending Bits registers). Default true. */
  perVectorMask?: boolean;
}

/** MSI-X capability (id 0x11); the table and PBA live in one memory BAR. */
export interface MsixOptions {
  /** Table size, 1–2048 vectors. */
  vectors: number;
  /** The memory BAR holding the table and the PBA (the lower slot of a 64-bit BAR). */
  bar: number;
  /** Offset of the table in the BAR: 8-aligned, 16 bytes per vector. */
  tableOffset: number;
  /** Offset of the Pending Bit Array in the BAR: 8-aligned, 8 bytes per 64 vectors. */
  pbaOffset: number;
}

/** Device/port type in the PCI Express Capabilities register. */
export const ExpressPortType = {
  ENDPOINT: 'endpoint',
  LEGACY_ENDPOINT: 'legacy-endpoint',
  RC_INTEGRATED: 'rc-integrated',
} as const;
/** One of the values in {@link ExpressPortType}. */
export type ExpressPortType = (typeof ExpressPortType)[keyof typeof ExpressPortType];

/** PCI Express capability (id 0x10, version 2). Enabling it makes config space 4 KiB. */
export interface ExpressOptions {
  /** Default `'endpoint'`. */
  portType?: ExpressPortType;
}

/** A vendor-specific capability (id 0x09): id, next, length, then the payload. */
export interface VendorCapabilityOptions {
  /** Bytes after the 3-byte header; at most 252 bytes. */
  payload: Uint8Array;
  /** Let the driver write the payload bytes. Default false (read-only). */
  writable?: boolean;
}

/** A Vendor-Specific Extended Capability (id 0x000b). */
export interface VsecOptions {
  /** VSEC ID (16 bits). */
  id: number;
  /** VSEC revision (4 bits). */
  rev: number;
  /** Bytes after the 8-byte headers; the VSEC length is 8 + payload length (at most 0xfff). */
  payload: Uint8Array;
  /** Let the driver write the payload bytes. Default false (read-only). */
  writable?: boolean;
}

/**
 * The device author's handler for config space nobody else claims (between and
 * after the capabilities). Offsets are absolute config-space offsets.
 */
export interface VendorArea {
  /**
   * @returns exactly `length` bytes.
   * @throws any {@link VfioUserError} to fail the access with its errno.
   */
  read(offset: number, length: number): Uint8Array;
  /** @throws any {@link VfioUserError} to fail the access with its errno. */
  write(offset: number, data: Uint8Array): void;
}

/** Everything needed to build a {@link ConfigSpace}. */
export interface ConfigSpaceOptions {
  vendorId: number;
  deviceId: number;
  /** Default 0. */
  subsystemVendorId?: number;
  /** Default 0. */
  subsystemId?: number;
  /** 24 bits: base class, sub-class, programming interface. Default 0. */
  classCode?: number;
  /** Default 0. */
  revision?: number;
  /** 0 none, 1–4 INTA–INTD. Default 0. */
  interruptPin?: number;
  /** Set bit 7 of Header Type. Default false. */
  multiFunction?: boolean;
  /** BAR0–BAR5; a missing or `undefined` entry is an absent BAR. */
  bars?: ReadonlyArray<BarOptions | undefined>;
  /** Expansion ROM; absent when undefined. */
  rom?: RomOptions;
  /** Power Management capability. Default true. */
  pm?: boolean;
  msi?: MsiOptions;
  msix?: MsixOptions;
  /** PCI Express capability; also enables extended config space (4 KiB). */
  express?: ExpressOptions;
  /** Vendor-specific capabilities, in order. */
  vendorCapabilities?: readonly VendorCapabilityOptions[];
  /** Device Serial Number extended capability (requires `express`). */
  serialNumber?: bigint;
  /** Vendor-specific extended capabilities, in order (require `express`). */
  vsecs?: readonly VsecOptions[];
  /** Handler for unclaimed config space; without it, writes there fail with EINVAL. */
  vendorArea?: VendorArea;
}

/** Which interrupt mechanism the driver has turned on. */
export const InterruptMode = {
  NONE: 'none',
  INTX: 'intx',
  MSI: 'msi',
  MSIX: 'msix',
} as const;
/** One of the values in {@link InterruptMode}. */
export type InterruptMode = (typeof InterruptMode)[keyof typeof InterruptMode];

/**
 * What changed in config space, reported to {@link ConfigSpace.onChange}
 * listeners after the access that caused it has been applied completely.
 * Within one access the order is: `command`, `interrupt-mode`, then unmask events.
 */
export type ConfigSpaceEvent =
  /** The Command register changed (e.g. INTx Disable, Bus Master, Memory Space). */
  | { readonly type: 'command'; readonly previous: number; readonly current: number }
  /** The active interrupt mechanism changed (MSI-X enable, MSI enable, INTx Disable). */
  | { readonly type: 'interrupt-mode'; readonly previous: InterruptMode; readonly current: InterruptMode }
  /** An MSI vector's Mask Bit went from 1 to 0; `pending` is its Pending Bit now. */
  | { readonly type: 'msi-unmask'; readonly vector: number; readonly pending: boolean }
  /**
   * An MSI-X vector became unmasked (its own mask bit cleared while the
   * function is unmasked, or the Function Mask cleared while the vector is
   * unmasked); `pending` is its PBA bit now.
   */
  | { readonly type: 'msix-unmask'; readonly vector: number; readonly pending: boolean };

/** Receives {@link ConfigSpaceEvent}s. Listeners must not throw. */
export type ConfigSpaceListener = (event: ConfigSpaceEvent) => void;
