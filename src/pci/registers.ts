/**
 * PCI configuration-space numbers in one place: header register offsets, the
 * Command and Status bits, BAR flag bits, capability ids and sizes. Names follow
 * the PCI Local Bus / PCI Express specifications and Linux's
 * `include/uapi/linux/pci_regs.h`, without the `PCI_` prefix.
 */

/** Size of a conventional config space (and of the emulated space without PCI Express). */
export const CONFIG_SPACE_SIZE = 256;
/** Size of a PCI Express config space (extended capabilities live in 0x100–0xfff). */
export const EXPRESS_CONFIG_SPACE_SIZE = 4096;
/** Size of the type 0 header at the start of config space. */
export const STD_HEADER_SIZE = 64;
/** Where standard capabilities start (right after the header). */
export const CAPABILITIES_START = 0x40;
/** Where extended capabilities start. */
export const EXT_CAPABILITIES_START = 0x100;

/** Offsets of the type 0 header registers. */
export const PciHeader = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION_ID: 0x08,
  /** Three bytes: programming interface (0x09), sub-class (0x0a), base class (0x0b). */
  CLASS_PROG: 0x09,
  CACHE_LINE_SIZE: 0x0c,
  LATENCY_TIMER: 0x0d,
  HEADER_TYPE: 0x0e,
  BIST: 0x0f,
  BASE_ADDRESS_0: 0x10,
  CARDBUS_CIS: 0x28,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  ROM_ADDRESS: 0x30,
  CAPABILITY_LIST: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
  MIN_GNT: 0x3e,
  MAX_LAT: 0x3f,
} as const;
/** One of the offsets in {@link PciHeader}. */
export type PciHeader = (typeof PciHeader)[keyof typeof PciHeader];

/** Bits of the Command register (0x04). */
export const PciCommand = {
  IO: 0x0001,
  MEMORY: 0x0002,
  MASTER: 0x0004,
  SPECIAL: 0x0008,
  INVALIDATE: 0x0010,
  VGA_PALETTE: 0x0020,
  PARITY: 0x0040,
  WAIT: 0x0080,
  SERR: 0x0100,
  FAST_BACK: 0x0200,
  INTX_DISABLE: 0x0400,
} as const;
/** One of the bits in {@link PciCommand}. */
export type PciCommand = (typeof PciCommand)[keyof typeof PciCommand];

/**
 * Command bits a driver can change: I/O, memory, bus master, parity error
 * response, SERR# enable and INTx disable. The others are hardwired to 0, as
 * PCI Express requires.
 */
export const COMMAND_WRITABLE =
  PciCommand.IO | PciCommand.MEMORY | PciCommand.MASTER | PciCommand.PARITY | PciCommand.SERR | PciCommand.INTX_DISABLE;

/** Bits of the Status register (0x06). */
export const PciStatus = {
  /** Read-only: the function is asserting INTx. */
  INTERRUPT: 0x0008,
  /** Read-only: 0x34 points at a capability list. */
  CAP_LIST: 0x0010,
  MASTER_DATA_PARITY: 0x0100,
  SIG_TARGET_ABORT: 0x0800,
  REC_TARGET_ABORT: 0x1000,
  REC_MASTER_ABORT: 0x2000,
  SIG_SYSTEM_ERROR: 0x4000,
  DETECTED_PARITY: 0x8000,
} as const;
/** One of the bits in {@link PciStatus}. */
export type PciStatus = (typeof PciStatus)[keyof typeof PciStatus];

/** Status bits that are write-1-to-clear (bits 8 and 11–15). */
export const STATUS_RW1C =
  PciStatus.MASTER_DATA_PARITY |
  PciStatus.SIG_TARGET_ABORT |
  PciStatus.REC_TARGET_ABORT |
  PciStatus.REC_MASTER_ABORT |
  PciStatus.SIG_SYSTEM_ERROR |
  PciStatus.DETECTED_PARITY;

/** Header Type register values. */
export const HeaderType = {
  NORMAL: 0x00,
  MULTI_FUNCTION: 0x80,
} as const;
/** One of the values in {@link HeaderType}. */
export type HeaderType = (typeof HeaderType)[keyof typeof HeaderType];

/** Read-only flag bits in the low dword of a BAR. */
export const BarFlags = {
  IO: 0x1,
  MEM_TYPE_32: 0x0,
  MEM_TYPE_64: 0x4,
  PREFETCH: 0x8,
} as const;
/** One of the bits in {@link BarFlags}. */
export type BarFlags = (typeof BarFlags)[keyof typeof BarFlags];

/** Bits of the Expansion ROM Base Address register. */
export const RomFlags = {
  ENABLE: 0x1,
  /** Address bits 31:11. */
  ADDRESS_MASK: 0xfffff800,
} as const;
/** One of the values in {@link RomFlags}. */
export type RomFlags = (typeof RomFlags)[keyof typeof RomFlags];

/** Standard capability ids (byte 0 of a capability). */
export const CapabilityId = {
  PM: 0x01,
  MSI: 0x05,
  VENDOR: 0x09,
  EXPRESS: 0x10,
  MSIX: 0x11,
} as const;
/** One of the ids in {@link CapabilityId}. */
export type CapabilityId = (typeof CapabilityId)[keyof typeof CapabilityId];

/** Extended capability ids (bits 15:0 of an extended capability header). */
export const ExtCapabilityId = {
  DSN: 0x0003,
  VENDOR: 0x000b,
} as const;
/** One of the ids in {@link ExtCapabilityId}. */
export type ExtCapabilityId = (typeof ExtCapabilityId)[keyof typeof ExtCapabilityId];

/** Offsets inside every standard capability. */
export const CapHeader = {
  ID: 0,
  NEXT: 1,
} as const;
/** One of the offsets in {@link CapHeader}. */
export type CapHeader = (typeof CapHeader)[keyof typeof CapHeader];
