/**
 * Contracts between the server session and the device it serves. The session
 * only speaks to a device through {@link SessionDevice}, so a wrapper (a
 * mediator, a recorder, fault injection) can interpose on region info and
 * region access without forking the server.
 */
import type { DmaController, DmaMessageTransport, DmaRegion } from '../device/dma.js';
import type { IrqController } from '../device/irqs.js';
import type { ResetReason } from '../device/types.js';
import type { Logger } from '../log.js';
import type { ResolvedCapabilities } from '../protocol/capabilities.js';
import type { DecodedRequest } from '../protocol/request.js';
import type { ReceivedFds } from '../transport/fds.js';
import type { FeatureTable } from './features.js';
import type { MigrationController } from '../migration/controller.js';
import type { MmapSavingSession } from './mmap-saving.js';

/** What GET_REGION_INFO reports for one region. */
export interface RegionDescription {
  /** RegionInfoFlags READ/WRITE/MMAP (CAPS is added by the encoder when caps fit). */
  flags: number;
  size: bigint;
  /** Offset of the region in `fd` (mmap offset). */
  fdOffset: bigint;
  /** Fd the client maps the sparse areas from (owned by the device; the session only sends it). */
  fd?: number;
  /** Areas the client may mmap, relative to the region. */
  sparse?: readonly { offset: bigint; size: bigint }[];
  /** Areas that stay mappable while saving (SPARSE_MMAP_SAVING, src/server/mmap-saving.ts); absent: the runtime layout. */
  savingSparse?: readonly { offset: bigint; size: bigint }[];
}

/** One ioeventfd a region offers through GET_REGION_IO_FDS. */
export interface IoEventFdDescription {
  offset: bigint;
  size: bigint;
  fd: number;
  datamatch: bigint;
  /** KVM_IOEVENTFD_FLAG_* bits (datamatch = 1). */
  flags: number;
}

/** The device side of a session. */
export interface SessionDevice {
  readonly name: string;
  readonly logger: Logger;
  /** Number of vfio regions and IRQ indexes, and DEVICE_GET_INFO flags. */
  readonly numRegions: number;
  readonly numIrqs: number;
  readonly infoFlags: number;
  /** GET_REGION_INFO; `undefined` for an index the device does not have (reported as size 0). */
  regionInfo(index: number): RegionDescription | undefined;
  /** GET_REGION_IO_FDS. */
  regionIoEventFds(index: number): readonly IoEventFdDescription[];
  /** REGION_READ (bounds and permissions already checked). */
  regionRead(index: number, offset: number, count: number): Uint8Array | Promise<Uint8Array>;
  /** REGION_WRITE (bounds and permissions already checked). */
  regionWrite(index: number, offset: number, data: Uint8Array): void | Promise<void>;
  readonly irqs: IrqController;
  /** Called when a client is accepted: the device gets its DMA controller. */
  attach(dma: DmaController): void;
  /** The device's migration state machine, when it is migratable. */
  readonly migration?: MigrationController;
  /** Device-specific DEVICE_FEATURE features (migration), over the library's (DMA logging). */
  features?(): FeatureTable;
  /** The client mapped guest memory (after DMA_MAP succeeded). */
  dmaMapped?(region: DmaRegion): void;
  /** Guest memory is being unmapped (before its memory goes away). */
  dmaUnmapping?(region: DmaRegion): void;
  /** DEVICE_RESET (reason CLIENT) or the end of a session (reason LOST_CONNECTION, after DMA is unmapped). */
  reset(reason: ResetReason): void | Promise<void>;
  /** The client is gone: drop the DMA controller. */
  detach(): void;
}

/** What a successful handler returns: the reply payload and any fds to send with it. */
export interface HandlerReply {
  payload?: Uint8Array | readonly Uint8Array[];
  /** Fds sent with the reply; not owned by the session (it does not close them). */
  fds?: readonly number[];
  /** Runs once the reply was handed to the transport, or dropped (NO_REPLY, closed). */
  afterSend?: () => void;
}

/** Everything a command handler may use. */
export interface HandlerContext {
  readonly device: SessionDevice;
  readonly dma: DmaController;
  /** The client's capabilities, defaults applied. */
  readonly client: ResolvedCapabilities;
  /** What this server advertised. */
  readonly server: ServerLimits;
  /** Server→client DMA_READ/DMA_WRITE, chunked to the client's max_data_xfer_size. */
  readonly dmaTransport: DmaMessageTransport;
  readonly logger: Logger;
  /** Features of this session rather than of the device (x-isolation-group), looked up first. */
  readonly sessionFeatures?: FeatureTable;
  /** Declared client mmaps and the saving-layout rules (a migratable device's session; src/server/mmap-saving.ts). */
  readonly mmapSaving?: MmapSavingSession;
}

/** Limits this server advertises and enforces. */
export interface ServerLimits {
  maxDataXferSize: number;
  maxMsgFds: number;
  maxDmaMaps: number;
  writeMultiple: boolean;
}

/**
 * A command handler: validates, then acts. The fds that came with the request
 * are in `fds`; `use` says how many leading ones the command may take
 * (`fds.take(i)`); the session closes the rest afterwards.
 */
export type Handler<R extends DecodedRequest = DecodedRequest> = (
  ctx: HandlerContext,
  request: R,
  fds: ReceivedFds,
  use: number,
) => HandlerReply | undefined | Promise<HandlerReply | undefined>;
