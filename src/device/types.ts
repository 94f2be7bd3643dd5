/**
 * What a device author declares: PCI identity, regions, interrupts,
 * capabilities and hooks. `createDevice()` validates it all at once (realize)
 * and returns a {@link VfioUserDevice} that can be served on a socket.
 */
import type { Logger } from '../log.js';
import type { IoEventFdDefinition } from './ioeventfds.js';
import type { DmaRegion } from './dma.js';
import type { MigrationDefinition } from '../migration/types.js';

/** PCI identity of the device (type-0 header). */
export interface PciIdentity {
  vendorId: number;
  deviceId: number;
  subsystemVendorId?: number;
  subsystemId?: number;
  /** 24-bit class code: base class << 16 | sub-class << 8 | programming interface. */
  classCode: number;
  revision?: number;
}

/** Why a device is being reset. */
export const ResetReason = {
  /** The client sent DEVICE_RESET. */
  CLIENT: 'client',
  /** The client disconnected (or its stream broke); the device is being readied for the next one. */
  LOST_CONNECTION: 'lost-connection',
} as const;
/** One of {@link ResetReason}. */
export type ResetReason = (typeof ResetReason)[keyof typeof ResetReason];

/** A result that may be produced synchronously or asynchronously. */
export type MaybePromise<T> = T | Promise<T>;

/**
 * Read/write callbacks for a region (or the part of it that is not shared
 * memory). Offsets are relative to the region; the library has already checked
 * that `[offset, offset + length)` lies inside it. Throwing (or rejecting) makes
 * the access fail: an error carrying an `errno` is replied with that errno,
 * anything else with EIO. Mistakes (a read returning other than `length` bytes,
 * an error without an errno) are logged at `warn`, once per kind and region.
 */
export interface RegionCallbacks {
  /** Returns exactly `length` bytes. */
  read?(offset: number, length: number): MaybePromise<Uint8Array>;
  write?(offset: number, data: Uint8Array): MaybePromise<void>;
}

/** A span of a region, relative to its start. */
export interface RegionSpan {
  offset: number;
  size: number;
}

/** Common to every region the device declares. */
export interface RegionDefinition extends RegionCallbacks {
  /** Size in bytes. BARs and the ROM must be powers of two. */
  size: number;
  /** Client may read (default true). */
  readable?: boolean;
  /** Client may write (default true; the ROM is never writable). */
  writable?: boolean;
  /**
   * Back the region with shared memory: the library creates a memfd of `size`
   * bytes, sealed against resizing (a client's `ftruncate` on it fails with
   * EPERM, so it cannot make the server fault with SIGBUS), maps it for the device (`device.regionMemory(index)`) and offers it
   * to the client for mmap. `sparse` lists the areas the client may map (default:
   * the whole region, minus MSI-X table/PBA pages when they live here); accesses
   * elsewhere go to the callbacks, or to the shared memory when there are none.
   */
  shared?: boolean | { sparse?: readonly RegionSpan[] };
  /**
   * The areas that stay mappable while the device is saving (PRE_COPY, PRE_COPY_P2P, STOP_COPY): sent as the
   * SPARSE_MMAP_SAVING capability (docs/protocol-extensions.md §9). Needs `shared` and `migration`; page aligned,
   * sorted, not overlapping, each inside one runtime sparse area; `[]` = nothing stays mapped. While a client
   * declares a mapping outside these areas, a transition into a saving state is refused with EBUSY.
   */
  savingMmap?: readonly RegionSpan[];
}

/** A Base Address Register. */
export interface BarDefinition extends RegionDefinition {
  /** `mem32` (default), `mem64` (takes the next BAR slot too) or `io`. */
  type?: 'mem32' | 'mem64' | 'io';
  prefetchable?: boolean;
  /**
   * Doorbell registers offered as ioeventfds (DEVICE_GET_REGION_IO_FDS): each
   * signal reaches the region's write path as a write of `datamatch` (or zeros).
   */
  ioeventfds?: readonly IoEventFdDefinition[];
}

/** The device's regions, by vfio-user region index name. */
export interface RegionsDefinition {
  bar0?: BarDefinition;
  bar1?: BarDefinition;
  bar2?: BarDefinition;
  bar3?: BarDefinition;
  bar4?: BarDefinition;
  bar5?: BarDefinition;
  /** Expansion ROM (read-only to the client). */
  rom?: RegionDefinition;
  /** Legacy VGA ranges (region 8): 0xa0000–0xbffff, 0x3b0–0x3bb, 0x3c0–0x3df. */
  vga?: RegionDefinition;
}

/** Interrupt vectors per vfio IRQ index. */
export interface IrqsDefinition {
  /** Legacy INTx (INTA#). */
  intx?: boolean;
  /** MSI vectors: 1, 2, 4, 8, 16 or 32 (adds an MSI capability). */
  msi?: number;
  /** MSI-X vectors: 1–2048 (adds an MSI-X capability; see {@link DeviceDefinition.msix}). */
  msix?: number;
  /**
   * Error-reporting eventfd (vfio ERR index, one vector; {@link VfioUserDevice.reportError}).
   * Default true, as the kernel's vfio-pci and libvfio-user report it: QEMU warns
   * "Could not enable error recovery" when the count is 0.
   */
  err?: boolean;
  /**
   * Device request eventfd (vfio REQ index, one vector; {@link VfioUserDevice.requestRelease}):
   * how a device asks the VMM to release it (QEMU unplugs it). Default true.
   */
  req?: boolean;
}

/** Where the MSI-X table and PBA live. */
export interface MsixPlacement {
  /** BAR holding the table and the PBA (must be declared, memory type). */
  bar: 0 | 1 | 2 | 3 | 4 | 5;
  /** Table offset in the BAR (default 0). */
  tableOffset?: number;
  /** PBA offset in the BAR (default: the first 8-byte boundary after the table, page aligned). */
  pbaOffset?: number;
}

/** Optional PCI capabilities beyond those the IRQs imply. */
export interface CapabilitiesDefinition {
  /** Power Management capability (default true). */
  pm?: boolean;
  /** MSI with 64-bit addresses (default true) and per-vector masking (default true). */
  msi?: { bits64?: boolean; perVectorMask?: boolean };
  /** PCI Express capability (makes config space 4 KiB). */
  express?: { portType?: 'endpoint' | 'legacy-endpoint' | 'rc-integrated' };
  /** Device Serial Number extended capability (needs `express`). */
  serialNumber?: bigint;
  /** Vendor-specific capabilities (id 0x09): payload bytes after the 3-byte header. */
  vendor?: readonly Uint8Array[];
  /** Vendor-specific extended capabilities (needs `express`). */
  vendorExtended?: readonly { id: number; revision: number; data: Uint8Array }[];
}

/** Everything a device author declares. */
export interface DeviceDefinition {
  /** A short name for logs. */
  name?: string;
  pci: PciIdentity;
  regions?: RegionsDefinition;
  irqs?: IrqsDefinition;
  msix?: MsixPlacement;
  capabilities?: CapabilitiesDefinition;
  /**
   * Callbacks for config-space bytes no header register or capability claims
   * (offsets relative to config space). Without them, writes there fail EINVAL.
   */
  configVendorArea?: RegionCallbacks;
  /**
   * DMA hooks: the client mapped guest memory (`onMap`), or is unmapping it
   * (`onUnmap`, called before the memory goes away: drop views and stop DMA
   * into it; the library detaches every view right after anyway).
   */
  dma?: { onMap?(region: DmaRegion): void; onUnmap?(region: DmaRegion): void };
  /** Called on DEVICE_RESET and when a client goes away (after its DMA is unmapped). */
  reset?(reason: ResetReason): MaybePromise<void>;
  /** Make the device migratable (migration v2): its state hooks and optional states. */
  migration?: MigrationDefinition;
  /** Logger (default: silent unless VFIO_USER_LOG is set). */
  logger?: Logger;
}
