/**
 * The vfio-user client (the VMM side): typed methods for every client→server
 * command over {@link ClientCore}'s generic `request()`. Large region accesses
 * are split to the server's `max_data_xfer_size`; eventfd sets to its
 * `max_msg_fds`; GET_REGION_INFO retries with the argsz the server asks for.
 */
import { InvalidArgumentError, ProtocolError, RemoteError } from '../errors.js';
import {
  Command,
  DEVICE_INFO_SIZE,
  DeviceFeature,
  DeviceFeatureFlags,
  DMA_BITMAP_SIZE,
  DMA_MAP_SIZE,
  DMA_UNMAP_SIZE,
  DmaUnmapFlags,
  IRQ_INFO_SIZE,
  IRQ_SET_SIZE,
  IrqSetFlags,
  REGION_INFO_SIZE,
  REGION_IO_FDS_SIZE,
} from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { decodeDeviceInfo, encodeDeviceInfo, type DeviceInfo } from '../protocol/device.js';
import { decodeRegionInfo, encodeRegionInfoRequest, type RegionInfo } from '../protocol/region.js';
import { decodeRegionIoFdsReply, encodeRegionIoFdsRequest, type RegionIoFdsReply } from '../protocol/region-io-fds.js';
import { decodeIrqInfo, encodeIrqInfo, encodeIrqSet, type IrqInfo, type IrqSet } from '../protocol/irq.js';
import {
  decodeRegionReadReply,
  decodeRegionWriteMultiReply,
  encodeRegionAccess,
  encodeRegionAccessWithData,
  encodeRegionWriteMulti,
  type RegionAccessWithData,
} from '../protocol/region-access.js';
import { decodeDmaUnmapReply, encodeDmaMapRequest, encodeDmaUnmapRequest, type DmaUnmapReply } from '../protocol/dma.js';
import {
  bitmapBytes,
  decodeDeviceFeature,
  decodeDmaLoggingControl,
  decodeDmaLoggingReportReply,
  encodeDeviceFeature,
  encodeDmaLoggingControl,
  encodeDmaLoggingReport,
  decodeMigrationFeature,
  decodeMigDeviceState,
  encodeMigDeviceState,
  decodeMigDataSize,
  type DeviceFeaturePayload,
  type DmaLoggingRange,
} from '../protocol/feature.js';
import { decodeMigDataReadReply, encodeMigDataReadRequest } from '../protocol/migration-data.js';
import {
  ARC_LATENCY_ENTRY_SIZE,
  ARC_LATENCY_HEADER_SIZE,
  DEADLINE_STATE_SIZE,
  DeadlineRequestFlags,
  ExtensionCapability,
  MAX_DIRECT_ARCS,
  MAX_MIG_IDENTITY_SIZE,
  PRECOPY_INFO_SIZE,
  decodeArcLatencies,
  decodeDeadlineStateReply,
  decodeMigrationIdentity,
  decodePrecopyInfo,
  encodeDeadlineStateRequest,
  migrationExtensionsOf,
  notAdvertised,
  type ArcLatency,
  type DeadlineStateReply,
  type MigrationExtensions,
  type MigrationIdentity,
  type PrecopyInfo,
} from '../protocol/migration-extensions.js';
import type { IsolationGroupView } from '../protocol/isolation-group.js';
import type { Message } from '../transport/transport.js';
import { ClientCore, type ClientOptions } from './core.js';
import { explainRefusal, isolationGroupFeature, readIsolationGroup, watchIsolationGroup } from './group.js';
import { onReleaseRequest, type ReleaseRequest } from './release.js';
import { prepareForSaving, restoreAfterSaving, savingTransition, type SavingPreparation } from './mmap-saving.js';

/** GET_REGION_INFO's answer: the info and, when the region can be mmapped, the fd (the caller owns it). */
export interface RegionInfoResult {
  info: RegionInfo;
  fd: number | undefined;
}

/** GET_REGION_IO_FDS's answer: the records and their fds (the caller owns them). */
export interface RegionIoFdsResult {
  reply: RegionIoFdsReply;
  fds: number[];
}

/** A DMA_MAP request. */
export interface DmaMapOptions {
  addr: bigint;
  size: bigint;
  /** DmaMapFlags bits (READ/WRITE, optionally MMAP/FILE_IO). */
  flags: number;
  /** Offset of `addr` in `fd` (default 0). */
  offset?: bigint;
}

/** A connected, negotiated vfio-user client. */
export class VfioUserClient extends ClientCore {
  /**
   * Connects to a vfio-user server and negotiates VERSION.
   * @throws {SystemError} ENOENT/ECONNREFUSED/EACCES; {@link RemoteError} EBUSY/EPERM when refused
   *   (the device is in use or its isolation group owned by another client / the user is not
   *   allowed or the group is not viable: the message says so); {@link ProtocolError} EPROTO for a malformed VERSION reply.
   */
  static async connect(path: string, options: ClientOptions = {}): Promise<VfioUserClient> {
    const client = new VfioUserClient(await ClientCore.connectTransport(path, options), options);
    try {
      await client.negotiate();
    } catch (error) {
      client.close();
      throw explainRefusal(error, path);
    }
    return client;
  }

  /** The feature index the server advertised for `x-isolation-group` (docs/protocol-extensions.md), or undefined. */
  get isolationGroupFeature(): number | undefined {
    return isolationGroupFeature(this);
  }

  /**
   * The device's isolation group (extension `x-isolation-group`): id, generation, viability, owner, members, `self`.
   * @returns undefined when the server did not advertise the extension (the device is its own group).
   * @throws {ProtocolError} EPROTO for a malformed reply. @throws {RemoteError} the server's errno.
   */
  isolationGroup(): Promise<IsolationGroupView | undefined> {
    return readIsolationGroup(this);
  }

  /**
   * Calls `listener` with the group after each change the server signals (an eventfd registered with SET; see group.ts).
   * @returns a disposer (the last one unregisters and closes the eventfd; closing the client does too).
   * @throws {ProtocolError} ENOTSUP when the extension was not advertised. @throws {RemoteError} EINVAL from the SET.
   */
  onGroupChange(listener: (group: IsolationGroupView) => void): Promise<() => Promise<void>> {
    return watchIsolationGroup(this, listener, this.logger);
  }

  /**
   * Calls `listener({ count })` each time the server asks for the device back (REQ IRQ, index 4: the device is being
   * removed; `count` = requests so far). A cooperating client finishes its work and closes; one that does not is
   * disconnected by force when the server's timeout passes. See release.ts.
   * @returns a disposer (the last one uninstalls and closes the eventfd; closing the client does too).
   * @throws {ProtocolError} ENOTSUP without a request IRQ. @throws {RemoteError} EINVAL from SET_IRQS.
   */
  onReleaseRequest(listener: (request: ReleaseRequest) => void): Promise<() => Promise<void>> {
    return onReleaseRequest(this, listener, this.logger);
  }

  /** DEVICE_GET_INFO. @throws {RemoteError} the server's errno. */
  async deviceInfo(): Promise<DeviceInfo> {
    const m = await this.request(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: DEVICE_INFO_SIZE, flags: 0, numRegions: 0, numIrqs: 0 }));
    return decodeReply(m, decodeDeviceInfo);
  }

  /**
   * DEVICE_GET_REGION_INFO, retrying once with the argsz the server needs for
   * its capabilities. The sparse-mmap fd, if any, is returned (caller closes it).
   * @throws {RemoteError} EINVAL for an index the device does not have.
   */
  async regionInfo(index: number, argsz = 256): Promise<RegionInfoResult> {
    let m = await this.request(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: Math.max(argsz, REGION_INFO_SIZE), index }));
    let info = decodeReply(m, decodeRegionInfo, true);
    if (info.argsz > Math.max(argsz, REGION_INFO_SIZE)) {
      m.fds.closeRemaining();
      m = await this.request(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: info.argsz, index }));
      info = decodeReply(m, decodeRegionInfo, true);
    }
    const fd = m.fds.count > 0 ? m.fds.take(0) : undefined;
    m.fds.closeRemaining();
    return { info, fd };
  }

  /** DEVICE_GET_REGION_IO_FDS, with the argsz retry; the fds belong to the caller. */
  async regionIoFds(index: number): Promise<RegionIoFdsResult> {
    const ask = (argsz: number): Promise<Message> => this.request(Command.DEVICE_GET_REGION_IO_FDS, encodeRegionIoFdsRequest({ argsz, flags: 0, index, count: 0 }));
    let m = await ask(4096);
    let reply = decodeReply(m, decodeRegionIoFdsReply, true);
    if (reply.count > 0 && reply.subRegions.length === 0) {
      m.fds.closeRemaining();
      m = await ask(Math.max(reply.argsz, REGION_IO_FDS_SIZE));
      reply = decodeReply(m, decodeRegionIoFdsReply, true);
    }
    return { reply, fds: m.fds.takeAll() };
  }

  /** DEVICE_GET_IRQ_INFO. @throws {RemoteError} EINVAL for an index beyond the device's. */
  async irqInfo(index: number): Promise<IrqInfo> {
    const m = await this.request(Command.DEVICE_GET_IRQ_INFO, encodeIrqInfo({ argsz: IRQ_INFO_SIZE, flags: 0, index, count: 0 }));
    return decodeReply(m, decodeIrqInfo);
  }

  /**
   * DEVICE_SET_IRQS. With DATA_EVENTFD, `fds` (one per vector; the caller keeps
   * ownership) are sent in batches of the server's `max_msg_fds`.
   * @throws {RemoteError} the server's errno (EINVAL for a rule it refuses).
   */
  async setIrqs(set: Omit<IrqSet, 'argsz'>, fds: readonly number[] = []): Promise<void> {
    const batch = Math.max(1, this.server.maxMsgFds);
    if ((set.flags & IrqSetFlags.DATA_EVENTFD) === 0 || fds.length <= batch) {
      await this.request(Command.DEVICE_SET_IRQS, encodeIrqSet({ ...set, argsz: IRQ_SET_SIZE + (set.data?.length ?? 0) }), { fds });
      return;
    }
    if (fds.length !== set.count) throw new InvalidArgumentError(`setIrqs: ${fds.length} fds for ${set.count} vectors`);
    for (let i = 0; i < fds.length; i += batch) {
      const part = fds.slice(i, i + batch);
      await this.request(Command.DEVICE_SET_IRQS, encodeIrqSet({ ...set, argsz: IRQ_SET_SIZE, start: set.start + i, count: part.length }), { fds: part });
    }
  }

  /**
   * Reads `count` bytes of region `index` at `offset` through REGION_READ messages
   * (split to {@link maxTransferSize}).
   * @throws {RemoteError} EINVAL for an access the device refuses (bounds, region).
   */
  async regionRead(index: number, offset: bigint, count: number): Promise<Uint8Array> {
    const chunk = this.maxTransferSize;
    if (count <= chunk) return this.#readChunk(index, offset, count);
    const out = new Uint8Array(count);
    for (let done = 0; done < count; done += chunk) {
      out.set(await this.#readChunk(index, offset + BigInt(done), Math.min(chunk, count - done)), done);
    }
    return out;
  }

  async #readChunk(index: number, offset: bigint, count: number): Promise<Uint8Array> {
    const m = await this.request(Command.REGION_READ, encodeRegionAccess({ offset, region: index, count }));
    const reply = decodeReply(m, decodeRegionReadReply);
    if (count === 0) return new Uint8Array(0);
    if (!reply || reply.count !== count || reply.offset !== offset || reply.region !== index) {
      throw new ProtocolError(`REGION_READ reply does not answer region ${index} 0x${offset.toString(16)}+${count}`, { errno: Errno.EPROTO });
    }
    return reply.data;
  }

  /** Writes `data` to region `index` at `offset` (split to {@link maxTransferSize}). @throws {RemoteError} EINVAL when refused. */
  async regionWrite(index: number, offset: bigint, data: Uint8Array): Promise<void> {
    const chunk = this.maxTransferSize;
    for (let done = 0; done < data.length || (done === 0 && data.length === 0); done += chunk) {
      const part = data.subarray(done, done + chunk);
      const m = await this.request(Command.REGION_WRITE, encodeRegionAccessWithData({ offset: offset + BigInt(done), region: index, count: part.length, data: part }));
      m.fds.closeRemaining();
      if (data.length === 0) break;
    }
  }

  /**
   * REGION_WRITE_MULTI: several writes of ≤ 8 bytes in one message, only if the
   * server advertised `write_multiple`. @returns the number of writes done.
   * @throws {ProtocolError} ENOTSUP when the server did not advertise it.
   */
  async regionWriteMulti(writes: readonly RegionAccessWithData[]): Promise<bigint> {
    if (!this.server.writeMultiple) throw new ProtocolError('the server did not advertise write_multiple', { errno: Errno.ENOTSUP });
    const m = await this.request(Command.REGION_WRITE_MULTI, encodeRegionWriteMulti({ writes: [...writes] }));
    return decodeReply(m, decodeRegionWriteMultiReply).wrCnt;
  }

  /** DMA_MAP of guest memory: with `fd` (caller keeps it) the server maps it, without it the server uses DMA_READ/WRITE messages. */
  async dmaMap(map: DmaMapOptions, fd?: number): Promise<void> {
    const m = await this.request(Command.DMA_MAP, encodeDmaMapRequest({ argsz: DMA_MAP_SIZE, flags: map.flags, offset: map.offset ?? 0n, addr: map.addr, size: map.size }), fd === undefined ? {} : { fds: [fd] });
    m.fds.closeRemaining();
  }

  /**
   * DMA_UNMAP of exactly one mapping; with `dirtyPageSize` the reply carries its dirty bitmap,
   * which exists only while dirty logging runs ({@link startDirtyLogging}, at that page size).
   * @throws {RemoteError} ENOENT when no mapping matches exactly; EINVAL for `dirtyPageSize`
   *   while the server is not logging (or logs at another page size).
   */
  async dmaUnmap(addr: bigint, size: bigint, options: { dirtyPageSize?: bigint } = {}): Promise<DmaUnmapReply> {
    const pgsize = options.dirtyPageSize;
    const bitmap = pgsize === undefined ? undefined : { pgsize, size: bitmapBytes(size, pgsize) };
    const argsz = DMA_UNMAP_SIZE + (bitmap ? DMA_BITMAP_SIZE + Number(bitmap.size) : 0);
    const flags = bitmap ? DmaUnmapFlags.GET_DIRTY_BITMAP : 0;
    const m = await this.request(Command.DMA_UNMAP, encodeDmaUnmapRequest({ argsz, flags, addr, size, ...(bitmap ? { bitmap } : {}) }));
    return decodeReply(m, decodeDmaUnmapReply);
  }

  /** DMA_UNMAP with ALL: every mapping. */
  async dmaUnmapAll(): Promise<void> {
    const m = await this.request(Command.DMA_UNMAP, encodeDmaUnmapRequest({ argsz: DMA_UNMAP_SIZE, flags: DmaUnmapFlags.ALL, addr: 0n, size: 0n }));
    m.fds.closeRemaining();
  }

  /** DEVICE_RESET. */
  async reset(): Promise<void> {
    (await this.request(Command.DEVICE_RESET)).fds.closeRemaining();
  }

  /**
   * DEVICE_FEATURE: `flags` = feature index | GET/SET/PROBE bits; `data` its payload;
   * `argsz` the largest reply accepted (default 8 + data + 4 KiB).
   * @throws {RemoteError} the server's errno (its echoed payload attached).
   */
  async deviceFeature(flags: number, data: Uint8Array = new Uint8Array(0), argsz = 8 + data.length + 4096): Promise<DeviceFeaturePayload> {
    const m = await this.request(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz, flags, data }));
    return decodeReply(m, decodeDeviceFeature);
  }

  /**
   * DEVICE_FEATURE PROBE: whether the device supports feature `index` with the
   * given DeviceFeatureFlags GET/SET bits.
   * @throws {RemoteError} for errors other than the EINVAL that means "unsupported".
   */
  async probeFeature(index: number, ops: number): Promise<boolean> {
    try {
      await this.deviceFeature(index | ops | DeviceFeatureFlags.PROBE);
      return true;
    } catch (error) {
      if (error instanceof RemoteError && error.errno === Errno.EINVAL) return false;
      throw error;
    }
  }

  /**
   * DMA_LOGGING_START: log the device's DMA writes within `ranges` (none = all
   * of guest memory, per the spec) at `pageSize`.
   * @returns the page size the device chose (its tracking granularity).
   * @throws {RemoteError} E2BIG (over 256 ranges), EINVAL (unaligned, overlapping, already logging at another size), EOVERFLOW.
   */
  async startDirtyLogging(pageSize: bigint, ranges: readonly DmaLoggingRange[] = []): Promise<bigint> {
    const data = encodeDmaLoggingControl({ pageSize, ranges: [...ranges] });
    const reply = await this.deviceFeature(DeviceFeature.DMA_LOGGING_START | DeviceFeatureFlags.SET, data, 8 + data.length);
    return decodeDmaLoggingControl(reply.data).pageSize;
  }

  /** DMA_LOGGING_STOP. */
  async stopDirtyLogging(): Promise<void> {
    await this.deviceFeature(DeviceFeature.DMA_LOGGING_STOP | DeviceFeatureFlags.SET, new Uint8Array(0), 8);
  }

  /**
   * DMA_LOGGING_REPORT: the dirty bitmap of `[iova, iova + length)` at
   * `pageSize` (bit i of byte j = page 8j + i), cleared on read by the device.
   * @throws {RemoteError} EINVAL (not logging, bad page size), ENOENT (nothing in the range is mapped), EOVERFLOW; a libvfio-user server also refuses part of a region (ENOTSUP).
   */
  async dirtyReport(iova: bigint, length: bigint, pageSize: bigint): Promise<Uint8Array> {
    const request = encodeDmaLoggingReport({ iova, length, pageSize });
    const argsz = 8 + request.length + Number(bitmapBytes(length, pageSize));
    const reply = await this.deviceFeature(DeviceFeature.DMA_LOGGING_REPORT | DeviceFeatureFlags.GET, request, argsz);
    const decoded = decodeOrEproto(reply.data, Command.DEVICE_FEATURE, decodeDmaLoggingReportReply);
    if (decoded.iova !== iova || decoded.length !== length || decoded.pageSize !== pageSize) {
      throw new ProtocolError('DMA_LOGGING_REPORT reply describes another range', { errno: Errno.EPROTO });
    }
    return decoded.bitmap;
  }

  /** VFIO_DEVICE_FEATURE_MIGRATION: the device's migration flags (MigrationFlags bits). @throws {RemoteError} EINVAL without migration. */
  async migrationFlags(): Promise<bigint> {
    const reply = await this.deviceFeature(DeviceFeature.MIGRATION | DeviceFeatureFlags.GET, new Uint8Array(8), 16);
    return decodeOrEproto(reply.data, Command.DEVICE_FEATURE, decodeMigrationFeature).flags;
  }

  /** MIG_DEVICE_STATE GET: the current MigrationState. */
  async migrationState(): Promise<number> {
    const reply = await this.deviceFeature(DeviceFeature.MIG_DEVICE_STATE | DeviceFeatureFlags.GET, new Uint8Array(8), 16);
    return decodeOrEproto(reply.data, Command.DEVICE_FEATURE, decodeMigDeviceState).deviceState;
  }

  /**
   * MIG_DEVICE_STATE SET: moves the device to `state` (the server walks the arcs). Before a saving target, mapped
   * regions are switched to their SPARSE_MMAP_SAVING layout; on RUNNING they are mapped again (mmap-saving.ts).
   * @throws {RemoteError} EINVAL for a refused target; EBUSY while a mapping conflicts with a saving layout; the
   *   device's errno when an arc fails (it may then be in an intermediate state or ERROR).
   */
  async setMigrationState(state: number): Promise<void> {
    const set = (): Promise<DeviceFeaturePayload> => this.deviceFeature(DeviceFeature.MIG_DEVICE_STATE | DeviceFeatureFlags.SET, encodeMigDeviceState({ deviceState: state, dataFd: -1 }), 16);
    await savingTransition(this, this.logger, state, set, () => state); // SPARSE_MMAP_SAVING: mmap-saving.ts
  }

  /** Mapped regions to their SPARSE_MMAP_SAVING layout, declared (done by {@link setMigrationState}; mmap-saving.ts). @throws {RemoteError} EINVAL. */
  prepareForSaving(): Promise<SavingPreparation> {
    return prepareForSaving(this);
  }

  /** Maps the runtime layout again (declared first; done by {@link setMigrationState} on RUNNING). @throws {RemoteError} EINVAL. */
  restoreAfterSaving(): Promise<void> {
    return restoreAfterSaving(this);
  }

  /** MIG_DATA_SIZE: the device's estimate of the STOP_COPY data. @throws {RemoteError} EINVAL (libvfio-user has none). */
  async migrationDataSize(): Promise<bigint> {
    const reply = await this.deviceFeature(DeviceFeature.MIG_DATA_SIZE | DeviceFeatureFlags.GET, new Uint8Array(8), 16);
    return decodeOrEproto(reply.data, Command.DEVICE_FEATURE, decodeMigDataSize).stopCopyLength;
  }

  /**
   * The vendor migration extensions the server advertised in VERSION
   * (docs/protocol-extensions.md): their feature indexes. Only advertised
   * extensions may be used; a libvfio-user server advertises none.
   */
  get migrationExtensions(): MigrationExtensions {
    return migrationExtensionsOf(this.serverAdvertised);
  }

  /**
   * Pre-copy info (extension `x-precopy-info`): bytes of initial and of dirty
   * state still to read, and the REINIT flag. Valid only in PRE_COPY/PRE_COPY_P2P.
   * @throws {ProtocolError} ENOTSUP when the server did not advertise it.
   * @throws {RemoteError} EINVAL outside a pre-copy state.
   */
  async precopyInfo(): Promise<PrecopyInfo> {
    const index = this.migrationExtensions.precopyInfo;
    if (index === undefined) throw notAdvertised(ExtensionCapability.PRECOPY_INFO);
    const reply = await this.deviceFeature(index | DeviceFeatureFlags.GET, new Uint8Array(PRECOPY_INFO_SIZE), 8 + PRECOPY_INFO_SIZE);
    return decodeOrEproto(reply.data, Command.DEVICE_FEATURE, decodePrecopyInfo);
  }

  /**
   * Deadline-carrying state change (extension `x-deadline-state`): the device
   * reaches `state` within `budgetNs` (0 = no budget) or walks back towards
   * where it started, and says which (`outcome`, `reachedState`, `elapsedNs`,
   * its `estimateNs`; `errno` for a failed arc). With `predict` the device
   * declines up front when its estimate exceeds the budget. Arc failures are
   * reported in the outcome, not thrown. The request waits up to
   * `timeoutMs` (default: the client's timeout): allow for the budget, an arc
   * that overruns it and the walk back.
   * @throws {ProtocolError} ENOTSUP when the server did not advertise it.
   * @throws {RemoteError} EINVAL for a target the state machine refuses (nothing was done).
   */
  async setMigrationStateWithDeadline(state: number, budgetNs: bigint, options: { predict?: boolean; timeoutMs?: number } = {}): Promise<DeadlineStateReply> {
    const index = this.migrationExtensions.deadlineState;
    if (index === undefined) throw notAdvertised(ExtensionCapability.MIG_STATE_DEADLINE);
    const data = encodeDeadlineStateRequest({ deviceState: state, flags: options.predict ? DeadlineRequestFlags.PREDICT : 0, deadlineNs: budgetNs });
    const payload = encodeDeviceFeature({ argsz: 8 + DEADLINE_STATE_SIZE, flags: index | DeviceFeatureFlags.SET, data });
    const set = async (): Promise<DeadlineStateReply> => {
      const m = await this.request(Command.DEVICE_FEATURE, payload, options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs });
      const reply = decodeReply(m, decodeDeviceFeature);
      return decodeOrEproto(reply.data, Command.DEVICE_FEATURE, decodeDeadlineStateReply);
    };
    return savingTransition(this, this.logger, state, set, (r) => r.reachedState);
  }

  /**
   * Arc latency (extension `x-arc-latency`): for every direct arc of the
   * device, the measured runs (count, last, mean, max) and the estimate a
   * deadline-bounded SET plans with.
   * @throws {ProtocolError} ENOTSUP when the server did not advertise it.
   */
  async arcLatencies(): Promise<ArcLatency[]> {
    const index = this.migrationExtensions.arcLatency;
    if (index === undefined) throw notAdvertised(ExtensionCapability.MIG_ARC_LATENCY);
    const reply = await this.deviceFeature(index | DeviceFeatureFlags.GET, new Uint8Array(0), 8 + ARC_LATENCY_HEADER_SIZE + MAX_DIRECT_ARCS * ARC_LATENCY_ENTRY_SIZE);
    return decodeOrEproto(reply.data, Command.DEVICE_FEATURE, decodeArcLatencies);
  }

  /**
   * Migration identity (extension `x-migration-identity`): the device type,
   * PCI ids and state version the device stamps its stream with, and the older
   * state versions it also loads. Read-only, valid in every state.
   * @throws {ProtocolError} ENOTSUP when the server did not advertise it.
   */
  async migrationIdentity(): Promise<MigrationIdentity> {
    const index = this.migrationExtensions.identity;
    if (index === undefined) throw notAdvertised(ExtensionCapability.MIG_IDENTITY);
    const reply = await this.deviceFeature(index | DeviceFeatureFlags.GET, new Uint8Array(0), 8 + MAX_MIG_IDENTITY_SIZE);
    return decodeOrEproto(reply.data, Command.DEVICE_FEATURE, decodeMigrationIdentity);
  }

  /** MIG_DATA_READ of up to `size` bytes; an empty result means no data right now. */
  async migDataRead(size: number): Promise<Uint8Array> {
    const m = await this.request(Command.MIG_DATA_READ, encodeMigDataReadRequest({ argsz: 8 + size, size }));
    const reply = decodeReply(m, decodeMigDataReadReply);
    if (reply.size > size) throw new ProtocolError(`MIG_DATA_READ returned ${reply.size} bytes for ${size} asked`, { errno: Errno.EPROTO });
    return reply.data;
  }

  /** MIG_DATA_WRITE of `data` (the caller chunks to `max_data_xfer_size`). */
  async migDataWrite(data: Uint8Array): Promise<void> {
    // The 8-byte {argsz, size} header and the data go out as two chunks of one sendmsg: no copy of the data.
    const head = new Uint8Array(8);
    const view = new DataView(head.buffer);
    view.setUint32(0, 8 + data.length, true); // argsz
    view.setUint32(4, data.length, true); // size
    (await this.request(Command.MIG_DATA_WRITE, [head, data])).fds.closeRemaining();
  }
}

/** Decodes reply bytes; anything malformed becomes ProtocolError EPROTO. */
function decodeOrEproto<T>(bytes: Uint8Array, cmd: number, decode: (payload: Uint8Array) => T): T {
  try {
    return decode(bytes);
  } catch (cause) {
    throw new ProtocolError(`malformed reply to command ${cmd}: ${(cause as Error).message}`, { errno: Errno.EPROTO, cause });
  }
}

/**
 * Decodes a reply's payload; a bad payload is EPROTO. Fds the reply should not
 * carry are closed unless `keepFds` (the caller then takes what it uses).
 */
function decodeReply<T>(m: Message, decode: (payload: Uint8Array) => T, keepFds = false): T {
  try {
    return decodeOrEproto(m.payload, m.header.cmd, decode);
  } catch (error) {
    m.fds.closeRemaining();
    throw error;
  } finally {
    if (!keepFds) m.fds.closeRemaining();
  }
}
