/**
 * The vfio-user protocol's numbers in one place: commands, header flags, limits,
 * region and IRQ indexes, flag words, and the size of every fixed struct.
 * Names follow the specification (`docs/interop/vfio-user.rst` in QEMU) and
 * libvfio-user's `include/vfio-user.h`, without the `VFIO_USER_` / `VFIO_` prefix.
 */
import { ProtocolError } from '../errors.js';

/** Command numbers carried in the header's `cmd` field. */
export const Command = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  /** Migration v1 dirty-page command; removed from the protocol. Kept for its name only. */
  DIRTY_PAGES: 14,
  REGION_WRITE_MULTI: 15,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
} as const;
/** One of the command numbers in {@link Command}. */
export type Command = (typeof Command)[keyof typeof Command];

const COMMAND_NAMES = new Map<number, string>(Object.entries(Command).map(([name, n]) => [n, name]));

/**
 * The name of a command number (`2` → `'DMA_MAP'`), or `'UNKNOWN(n)'`.
 * @param n - raw `cmd` from a header.
 * @returns a printable name; never throws.
 */
export function commandName(n: number): string {
  return COMMAND_NAMES.get(n) ?? `UNKNOWN(${n})`;
}

/**
 * Checked conversion of a raw `cmd` to a command this protocol version defines.
 * The obsolete `DIRTY_PAGES` (14) is rejected, as libvfio-user does.
 * @param n - raw `cmd` from a header.
 * @returns `n` typed as {@link Command}.
 * @throws {ProtocolError} EINVAL when `n` is not a live command.
 */
export function toCommand(n: number): Command {
  if (n === Command.DIRTY_PAGES) {
    throw new ProtocolError(`obsolete command DIRTY_PAGES (${n})`);
  }
  if (!COMMAND_NAMES.has(n)) throw new ProtocolError(`unknown command ${n}`);
  return n as Command;
}

/** Bits of the header's `flags` word. Unknown bits are ignored by peers, not cleared. */
export const HeaderFlags = {
  /** Bits 0–3: the message type. */
  TYPE_MASK: 0xf,
  TYPE_COMMAND: 0x0,
  TYPE_REPLY: 0x1,
  /** In a command: the sender wants no reply, success or failure. */
  NO_REPLY: 0x10,
  /** In a reply: the command failed; `error_no` holds the errno. */
  ERROR: 0x20,
} as const;
/** One of the values in {@link HeaderFlags}. */
export type HeaderFlags = (typeof HeaderFlags)[keyof typeof HeaderFlags];
/** Every header flag bit the protocol defines; other bits are unknown. */
export const KNOWN_HEADER_FLAGS = 0x3f;

// ---------------------------------------------------------------- limits

/** Protocol version spoken by libvfio-user (and by us). */
export const PROTOCOL_MAJOR = 0;
/** Highest minor version spoken by libvfio-user (2 since twin-socket). */
export const PROTOCOL_MINOR = 2;
/** Largest request libvfio-user accepts: 1 MiB of data + 16 (header) + 16 (access struct). */
export const SERVER_MAX_MSG_SIZE = 1_048_608;
/** libvfio-user's bound on region access `count` and on `argsz` of DMA_UNMAP / GET_REGION_IO_FDS. */
export const SERVER_MAX_DATA_XFER_SIZE = 1_048_576;
/** `max_data_xfer_size` a peer must assume when none was negotiated. */
export const DEFAULT_MAX_DATA_XFER_SIZE = 1_048_576;
/** `max_msg_fds` a peer must assume when none was negotiated. */
export const DEFAULT_MAX_MSG_FDS = 1;
/** Largest `max_msg_fds` a client may advertise (libvfio-user `VFIO_USER_CLIENT_MAX_MSG_FDS_LIMIT`). */
export const MAX_MSG_FDS_LIMIT = 1024;
/** `max_msg_fds` libvfio-user's server advertises (`SERVER_MAX_FDS`). */
export const SERVER_MAX_FDS = 8;
/** Default `max_dma_maps` (spec: 65535). */
export const DEFAULT_MAX_DMA_MAPS = 65_535;
/** Default `pgsizes` (spec: 4 KiB pages only). */
export const DEFAULT_PGSIZES = 4096n;
/** Largest DMA_MAP size libvfio-user accepts; larger → ENOSPC. */
export const DMA_MAX_SIZE = 8n << 40n;
/** Largest u64 value. */
export const U64_MAX = (1n << 64n) - 1n;

// --------------------------------------------------------- region / irq indexes

/** PCI region indexes (`VFU_PCI_DEV_*_REGION_IDX`). */
export const RegionIndex = {
  BAR0: 0,
  BAR1: 1,
  BAR2: 2,
  BAR3: 3,
  BAR4: 4,
  BAR5: 5,
  ROM: 6,
  CONFIG: 7,
  VGA: 8,
} as const;
/** One of the region indexes in {@link RegionIndex}. */
export type RegionIndex = (typeof RegionIndex)[keyof typeof RegionIndex];
/** Number of standard PCI regions (`VFU_PCI_DEV_NUM_REGIONS`). */
export const NUM_REGIONS = 9;

/** PCI IRQ indexes (`VFIO_PCI_*_IRQ_INDEX`). */
export const IrqIndex = { INTX: 0, MSI: 1, MSIX: 2, ERR: 3, REQ: 4 } as const;
/** One of the IRQ indexes in {@link IrqIndex}. */
export type IrqIndex = (typeof IrqIndex)[keyof typeof IrqIndex];
/** Number of IRQ types (`VFU_DEV_NUM_IRQS`). */
export const NUM_IRQS = 5;

// ---------------------------------------------------------------- flag words

/** `vfio_user_device_info.flags` (`VFIO_DEVICE_FLAGS_*`). */
export const DeviceInfoFlags = { RESET: 1 << 0, PCI: 1 << 1, CAPS: 1 << 7 } as const;
/** `vfio_region_info.flags` (`VFIO_REGION_INFO_FLAG_*`). */
export const RegionInfoFlags = { READ: 1 << 0, WRITE: 1 << 1, MMAP: 1 << 2, CAPS: 1 << 3 } as const;
/** Region info capability ids (`VFIO_REGION_INFO_CAP_*`). */
export const RegionCapId = { SPARSE_MMAP: 1, TYPE: 2 } as const;
/** One of the capability ids in {@link RegionCapId}. */
export type RegionCapId = (typeof RegionCapId)[keyof typeof RegionCapId];
/** Version written in a sparse-mmap capability header. */
export const SPARSE_MMAP_CAP_VERSION = 1;
/** Version written in a region-type capability header. */
export const REGION_TYPE_CAP_VERSION = 1;

/** `vfio_irq_info.flags` (`VFIO_IRQ_INFO_*`). */
export const IrqInfoFlags = { EVENTFD: 1 << 0, MASKABLE: 1 << 1, AUTOMASKED: 1 << 2, NORESIZE: 1 << 3 } as const;

/** `vfio_irq_set.flags` (`VFIO_IRQ_SET_*`). */
export const IrqSetFlags = {
  DATA_NONE: 1 << 0,
  DATA_BOOL: 1 << 1,
  DATA_EVENTFD: 1 << 2,
  ACTION_MASK: 1 << 3,
  ACTION_UNMASK: 1 << 4,
  ACTION_TRIGGER: 1 << 5,
  DATA_TYPE_MASK: 0x7,
  ACTION_TYPE_MASK: 0x38,
} as const;

/** `vfio_user_dma_map.flags`; MMAP and FILE_IO are libvfio-user extensions. */
export const DmaMapFlags = { READ: 1 << 0, WRITE: 1 << 1, MMAP: 1 << 2, FILE_IO: 1 << 3 } as const;
/** `vfio_user_dma_unmap.flags` accepted by libvfio-user (spec: unused). */
export const DmaUnmapFlags = { GET_DIRTY_BITMAP: 1 << 0, ALL: 1 << 1 } as const;

/** DEVICE_FEATURE feature indexes (`VFIO_DEVICE_FEATURE_*`), bits 0–15 of `flags`. */
export const DeviceFeature = {
  MIGRATION: 1,
  MIG_DEVICE_STATE: 2,
  DMA_LOGGING_START: 6,
  DMA_LOGGING_STOP: 7,
  DMA_LOGGING_REPORT: 8,
  MIG_DATA_SIZE: 9,
} as const;
/** One of the feature indexes in {@link DeviceFeature}. */
export type DeviceFeature = (typeof DeviceFeature)[keyof typeof DeviceFeature];
/** Operation bits and index mask of DEVICE_FEATURE `flags`. */
export const DeviceFeatureFlags = { MASK: 0xffff, GET: 1 << 16, SET: 1 << 17, PROBE: 1 << 18 } as const;

/** `VFIO_DEVICE_FEATURE_MIGRATION` flags (a u64 on the wire, hence bigint). */
export const MigrationFlags = { STOP_COPY: 1n << 0n, P2P: 1n << 1n, PRE_COPY: 1n << 2n } as const;

/** Migration v2 device states (`enum vfio_user_device_mig_state`). */
export const MigrationState = {
  ERROR: 0,
  STOP: 1,
  RUNNING: 2,
  STOP_COPY: 3,
  RESUMING: 4,
  RUNNING_P2P: 5,
  PRE_COPY: 6,
  PRE_COPY_P2P: 7,
} as const;
/** One of the states in {@link MigrationState}. */
export type MigrationState = (typeof MigrationState)[keyof typeof MigrationState];
/** Number of migration states (`VFIO_USER_DEVICE_NUM_STATES`). */
export const NUM_MIGRATION_STATES = 8;

/** Sub-region io-fd record types (`VFIO_USER_IO_FD_TYPE_*`). */
export const IoFdType = { IOEVENTFD: 0, IOREGIONFD: 1, IOEVENTFD_SHADOW: 2 } as const;
/** One of the record types in {@link IoFdType}. */
export type IoFdType = (typeof IoFdType)[keyof typeof IoFdType];

// ---------------------------------------------------------------- struct sizes

/** `struct vfio_user_header`. */
export const HEADER_SIZE = 16;
/** Fixed part of `struct vfio_user_version` (major, minor). */
export const VERSION_SIZE = 4;
/** `struct vfio_user_dma_map`. */
export const DMA_MAP_SIZE = 32;
/** `struct vfio_user_dma_unmap` without its bitmap. */
export const DMA_UNMAP_SIZE = 24;
/** `struct vfio_user_bitmap` header (pgsize, size). */
export const DMA_BITMAP_SIZE = 16;
/** `struct vfio_user_device_info`. */
export const DEVICE_INFO_SIZE = 16;
/** `struct vfio_region_info`. */
export const REGION_INFO_SIZE = 32;
/** `struct vfio_info_cap_header` (id, version, next). */
export const CAP_HEADER_SIZE = 8;
/** Sparse-mmap capability without areas: header + nr_areas + reserved. */
export const SPARSE_MMAP_CAP_SIZE = 16;
/** `struct vfio_region_sparse_mmap_area`. */
export const SPARSE_MMAP_AREA_SIZE = 16;
/** `struct vfio_region_info_cap_type`: header + type + subtype. */
export const REGION_TYPE_CAP_SIZE = 16;
/** `vfio_user_region_io_fds_request_t` and the fixed part of its reply. */
export const REGION_IO_FDS_SIZE = 16;
/** libvfio-user's sub-region record, `vfio_user_sub_region_ioeventfd_t`. */
export const SUB_REGION_IO_FD_SIZE = 48;
/** The specification's sub-region record (ioeventfd / ioregionfd). */
export const SUB_REGION_IO_FD_SPEC_SIZE = 40;
/** `struct vfio_irq_info`. */
export const IRQ_INFO_SIZE = 16;
/** `struct vfio_irq_set` without data. */
export const IRQ_SET_SIZE = 20;
/** `struct vfio_user_region_access` without data. */
export const REGION_ACCESS_SIZE = 16;
/** `struct vfio_user_dma_region_access` without data. */
export const DMA_ACCESS_SIZE = 16;
/** QEMU's `VFIOUserDMARW` without data (u64 offset, u32 count). */
export const QEMU_DMA_ACCESS_SIZE = 12;
/** REGION_WRITE_MULTI `wr_cnt` (u64), the request's fixed part and its whole reply. */
export const REGION_WRITE_MULTI_SIZE = 8;
/** One REGION_WRITE_MULTI entry (`VFIOUserWROne`). */
export const REGION_WRITE_MULTI_ENTRY_SIZE = 24;
/** Data bytes in one REGION_WRITE_MULTI entry: larger writes cannot be coalesced. */
export const REGION_WRITE_MULTI_DATA_SIZE = 8;
/** `struct vfio_user_device_feature` without data. */
export const DEVICE_FEATURE_SIZE = 8;
/** `struct vfio_user_device_feature_migration`. */
export const FEATURE_MIGRATION_SIZE = 8;
/** `struct vfio_user_device_feature_mig_state`. */
export const FEATURE_MIG_STATE_SIZE = 8;
/** `struct vfio_user_device_feature_dma_logging_control` without ranges. */
export const DMA_LOGGING_CONTROL_SIZE = 16;
/** `struct vfio_user_device_feature_dma_logging_range`. */
export const DMA_LOGGING_RANGE_SIZE = 16;
/** `struct vfio_user_device_feature_dma_logging_report` without bitmap. */
export const DMA_LOGGING_REPORT_SIZE = 24;
/** `struct vfio_device_feature_mig_data_size`. */
export const FEATURE_MIG_DATA_SIZE_SIZE = 8;
/** `struct vfio_user_mig_data` without data. */
export const MIG_DATA_SIZE = 8;
