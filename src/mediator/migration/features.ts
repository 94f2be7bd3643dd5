/**
 * The DEVICE_FEATUREs and migration data commands the plugin answers itself,
 * never forwarding them to the (non-migratable) upstream: MIGRATION (1),
 * MIG_DEVICE_STATE (2), DMA_LOGGING_START/STOP/REPORT (6/7/8), MIG_DATA_SIZE
 * (9), x-client-mmaps (0x8005), this library's migration extensions
 * (x-precopy-info, x-deadline-state, x-arc-latency, x-migration-identity:
 * 0x8000–0x8003, advertised to a client that asks), MIG_DATA_READ (17) and
 * MIG_DATA_WRITE (18).
 * The shared DEVICE_FEATURE rules are those of our server
 * (src/server/handlers/feature.ts): only MASK/GET/SET/PROBE bits; PROBE
 * checks the ops and touches nothing; otherwise exactly one of GET and SET;
 * a GET's argsz must hold the reply (checked before a REPORT clears bits).
 */
import { ProtocolError, VfioUserError } from '../../errors.js';
import { checkMigDataRead, checkMigDataWrite } from '../../migration/gating.js';
import { DEFAULT_MAX_DATA_XFER_SIZE, DeviceFeature, DeviceFeatureFlags, U64_MAX } from '../../protocol/constants.js';
import { Errno } from '../../protocol/errno.js';
import {
  bitmapBytes,
  decodeDeviceFeature,
  decodeDmaLoggingControl,
  decodeDmaLoggingReport,
  decodeMigDeviceState,
  encodeDeviceFeature,
  encodeDmaLoggingControl,
  encodeDmaLoggingReportReply,
  encodeMigDataSize,
  encodeMigDeviceState,
  encodeMigrationFeature,
  type DeviceFeaturePayload,
} from '../../protocol/feature.js';
import { decodeMigDataReadRequest, decodeMigDataWriteRequest, encodeMigData } from '../../protocol/migration-data.js';
import {
  DeadlineOutcome,
  DeadlineRequestFlags,
  ExtensionFeature,
  PRECOPY_INFO_SIZE,
  decodeDeadlineStateRequest,
  encodeArcLatencies,
  encodeDeadlineStateReply,
  encodeMigrationIdentity,
  encodePrecopyInfo,
} from '../../protocol/migration-extensions.js';
import { ClientMmapsFeature, decodeClientMmaps, encodeClientMmaps, isSavingState, savingConflicts } from '../../protocol/mmap-saving.js';
import { checkLoggingStart } from './dma-steering.js';
import type { MediatedSession } from './session.js';

const { MASK, GET, SET, PROBE } = DeviceFeatureFlags;
const KNOWN_BITS = MASK | GET | SET | PROBE;
/** The REPORT reply's fixed part (iova, length, page_size) and DEVICE_FEATURE's own header. */
const REPORT_HEAD = 24;
const FEATURE_HEAD = 8;

interface Feature {
  ops: number;
  /** A GET's reply size, known before it acts (a REPORT clears bits). */
  replySize?(s: MediatedSession, data: Uint8Array): number;
  get?(s: MediatedSession, data: Uint8Array): Promise<Uint8Array> | Uint8Array;
  set?(s: MediatedSession, data: Uint8Array): Promise<Uint8Array | undefined> | Uint8Array | undefined;
}

/** The errno of an arc's failure (ours, else EIO). */
export function errnoOf(error: unknown): number {
  return error instanceof VfioUserError && error.errno !== undefined && error.errno > 0 ? error.errno : Errno.EIO;
}

const isPowerOfTwo = (x: bigint): boolean => x > 0n && (x & (x - 1n)) === 0n;

/** The client's max_data_xfer_size from its VERSION (default 1 MiB). */
export function clientMaxTransfer(s: MediatedSession): number {
  const caps = s.ctx.version?.client['capabilities'] as Record<string, unknown> | undefined;
  const n = caps?.['max_data_xfer_size'];
  return typeof n === 'number' && Number.isInteger(n) && n > 0 ? n : DEFAULT_MAX_DATA_XFER_SIZE;
}

/** REPORT's rules, no side effect. @returns the reply data size. @throws {ProtocolError} EINVAL, EOVERFLOW, ENOENT, E2BIG. */
function checkReport(s: MediatedSession, data: Uint8Array): number {
  const r = decodeDmaLoggingReport(data);
  if (r.pageSize < 4096n || !isPowerOfTwo(r.pageSize)) throw new ProtocolError(`DMA_LOGGING_REPORT: page size ${r.pageSize} must be a power of two ≥ 4096`);
  if (r.iova + r.length - 1n > U64_MAX) throw new ProtocolError('DMA_LOGGING_REPORT: range overflows 2^64', { errno: Errno.EOVERFLOW });
  if (!s.steering.mirror.logging) throw new ProtocolError('DMA_LOGGING_REPORT: logging is not started');
  const payload = BigInt(FEATURE_HEAD + REPORT_HEAD) + bitmapBytes(r.length, r.pageSize);
  if (payload > BigInt(clientMaxTransfer(s))) throw new ProtocolError(`DMA_LOGGING_REPORT: a ${payload}-byte reply exceeds max_data_xfer_size: report a smaller range`, { errno: Errno.E2BIG });
  return REPORT_HEAD + s.steering.mirror.reportSize(r.iova, r.length, r.pageSize);
}

const FEATURES = new Map<number, Feature>([
  [DeviceFeature.MIGRATION, { ops: GET, get: async (s) => encodeMigrationFeature({ flags: (await s.ready()).flags }) }],
  [
    DeviceFeature.MIG_DEVICE_STATE,
    {
      ops: GET | SET,
      get: async (s) => encodeMigDeviceState({ deviceState: (await s.ready()).state, dataFd: -1 }),
      async set(s, data) {
        const target = decodeMigDeviceState(data).deviceState;
        const controller = await s.ready();
        s.checkSaving(target);
        await controller.setState(target);
        return undefined;
      },
    },
  ],
  [DeviceFeature.MIG_DATA_SIZE, { ops: GET, get: async (s) => encodeMigDataSize({ stopCopyLength: (await s.ready()).stopCopySize() }) }],
  [
    DeviceFeature.DMA_LOGGING_START,
    {
      ops: SET,
      async set(s, data) {
        const control = decodeDmaLoggingControl(data);
        checkLoggingStart(control.pageSize, control.ranges);
        const { mirror } = s.steering;
        const wasLogging = mirror.logging;
        mirror.startLogging(control.pageSize, control.ranges);
        try {
          await s.whileQuiesced(() => s.steering.steer(s.port, true));
        } catch (error) {
          if (!wasLogging) {
            // Not logging after all: the regions switched so far get their fds back (best effort).
            mirror.stopLogging();
            await s.whileQuiesced(() => s.steering.steer(s.port, false)).catch(() => undefined);
          }
          throw error;
        }
        return encodeDmaLoggingControl({ pageSize: mirror.loggingPageSize ?? control.pageSize, ranges: control.ranges });
      },
    },
  ],
  [
    DeviceFeature.DMA_LOGGING_STOP,
    {
      ops: SET,
      async set(s) {
        s.steering.mirror.stopLogging();
        await s.whileQuiesced(() => s.steering.steer(s.port, false));
        return undefined;
      },
    },
  ],
  [
    DeviceFeature.DMA_LOGGING_REPORT,
    {
      ops: GET,
      replySize: checkReport,
      get(s, data) {
        checkReport(s, data);
        const r = decodeDmaLoggingReport(data);
        return encodeDmaLoggingReportReply({ ...r, bitmap: s.steering.mirror.report(r.iova, r.length, r.pageSize) });
      },
    },
  ],
  [ExtensionFeature.PRECOPY_INFO, { ops: GET, replySize: () => PRECOPY_INFO_SIZE, get: async (s) => encodePrecopyInfo(await (await s.ready()).precopyStatus()) }],
  [
    ExtensionFeature.MIG_STATE_DEADLINE,
    {
      ops: SET,
      async set(s, data) {
        const request = decodeDeadlineStateRequest(data);
        const controller = await s.ready();
        s.checkSaving(request.deviceState);
        const r = await controller.setStateWithDeadline(request.deviceState, request.deadlineNs, { predict: (request.flags & DeadlineRequestFlags.PREDICT) !== 0 });
        const errno = r.outcome === DeadlineOutcome.FAILED ? errnoOf(r.error) : 0;
        return encodeDeadlineStateReply({ reachedState: r.reachedState, outcome: r.outcome, elapsedNs: r.elapsedNs, estimateNs: r.estimateNs, errno, flags: r.flags });
      },
    },
  ],
  [ExtensionFeature.MIG_ARC_LATENCY, { ops: GET, get: async (s) => encodeArcLatencies((await s.ready()).arcLatencyTable()) }],
  [ExtensionFeature.MIG_IDENTITY, { ops: GET, get: async (s) => encodeMigrationIdentity({ ...(await s.ready()).identity, acceptedVersions: [], flags: 0 }) }],
  [
    ClientMmapsFeature.INDEX,
    {
      ops: GET | SET,
      get: (s) => encodeClientMmaps(s.declared),
      set(s, data) {
        const declared = decodeClientMmaps(data);
        if (isSavingState(s.state) && savingConflicts(declared, (r) => s.savingLayout(r)).length > 0) {
          throw new ProtocolError('x-client-mmaps: a mapping the saving layout traps, while saving', { errno: Errno.EBUSY });
        }
        s.declared = declared;
        return undefined;
      },
    },
  ],
]);

/** Whether the plugin answers this DEVICE_FEATURE payload (by its feature index) itself. */
export function ownsFeature(payload: Uint8Array): boolean {
  if (payload.length < 8) return false;
  const flags = payload[4]! | (payload[5]! << 8);
  return FEATURES.has(flags & MASK);
}

/**
 * Answers a DEVICE_FEATURE the plugin owns.
 * @returns the reply payload. @throws {ProtocolError} EINVAL for a broken rule; the feature's errno.
 */
export async function answerFeature(s: MediatedSession, payload: Uint8Array): Promise<Uint8Array> {
  const body: DeviceFeaturePayload = decodeDeviceFeature(payload);
  const { argsz, flags, data } = body;
  const index = flags & MASK;
  const fail = (rule: string): never => {
    throw new ProtocolError(`DEVICE_FEATURE ${index} (flags 0x${flags.toString(16)}): ${rule}`);
  };
  if ((flags & ~KNOWN_BITS) !== 0) fail('unknown flag bits');
  const feature = FEATURES.get(index) as Feature;
  const ops = flags & (GET | SET);
  if (flags & PROBE) {
    if ((ops & ~feature.ops) !== 0) fail('operation not supported');
    if (argsz < 8 + data.length) fail('argsz below the request');
    return encodeDeviceFeature(body);
  }
  if (ops !== GET && ops !== SET) fail('exactly one of GET and SET is required without PROBE');
  if ((feature.ops & ops) === 0) fail(`${ops === GET ? 'GET' : 'SET'} not supported`);
  if (ops === GET) {
    const fits = (n: number): void => {
      if (argsz < 8 + n) fail(`argsz ${argsz} cannot hold the ${8 + n}-byte reply`);
    };
    if (feature.replySize) fits(feature.replySize(s, data));
    const reply = await (feature.get as NonNullable<Feature['get']>)(s, data);
    fits(reply.length);
    return encodeDeviceFeature({ argsz: 8 + reply.length, flags, data: reply });
  }
  if (argsz < 8 + data.length) fail('argsz below the request');
  const echoed = await (feature.set as NonNullable<Feature['set']>)(s, data);
  return encodeDeviceFeature({ argsz, flags, data: echoed ?? data });
}

/** MIG_DATA_READ: a saving state, size ≤ the client's max_data_xfer_size, argsz ≥ 8 + size. */
export async function answerMigDataRead(s: MediatedSession, payload: Uint8Array): Promise<Uint8Array> {
  const { argsz, size } = decodeMigDataReadRequest(payload);
  const controller = await s.ready();
  checkMigDataRead(controller.state as never);
  if (size > clientMaxTransfer(s)) throw new ProtocolError(`MIG_DATA_READ: size ${size} beyond max_data_xfer_size`);
  if (argsz < 8 + size) throw new ProtocolError(`MIG_DATA_READ: argsz ${argsz} below 8 + size`);
  const data = await controller.read(size);
  return encodeMigData({ argsz: 8 + data.length, size: data.length, data });
}

/** MIG_DATA_WRITE: RESUMING, size ≤ max_data_xfer_size, argsz ≥ 8 + size; fed to the resuming stream. */
export async function answerMigDataWrite(s: MediatedSession, payload: Uint8Array): Promise<void> {
  const { argsz, size, data } = decodeMigDataWriteRequest(payload);
  const controller = await s.ready();
  checkMigDataWrite(controller.state as never);
  if (size > clientMaxTransfer(s)) throw new ProtocolError(`MIG_DATA_WRITE: size ${size} beyond max_data_xfer_size`);
  if (argsz < 8 + size) throw new ProtocolError(`MIG_DATA_WRITE: argsz ${argsz} below 8 + size`);
  await controller.write(data.subarray(0, size));
}
