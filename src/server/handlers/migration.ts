/**
 * Migration over vfio-user: the MIGRATION (1), MIG_DEVICE_STATE (2) and
 * MIG_DATA_SIZE (9) features of a migratable device, this library's vendor
 * extensions (pre-copy info 0x8000, deadline-carrying SET 0x8001, arc latency
 * 0x8002, migration identity 0x8003; docs/protocol-extensions.md), and MIG_DATA_READ (17) /
 * MIG_DATA_WRITE (18) with their checks (state, size ≤ the client's
 * max_data_xfer_size, argsz).
 */
import { ProtocolError } from '../../errors.js';
import { Command, DeviceFeature, DeviceFeatureFlags } from '../../protocol/constants.js';
import { decodeMigDeviceState, encodeMigDataSize, encodeMigDeviceState, encodeMigrationFeature } from '../../protocol/feature.js';
import { encodeMigDataReadRequest } from '../../protocol/migration-data.js';
import {
  DeadlineOutcome,
  DeadlineRequestFlags,
  ExtensionFeature,
  decodeDeadlineStateRequest,
  encodeArcLatencies,
  encodeDeadlineStateReply,
  encodeMigrationIdentity,
  encodePrecopyInfo,
  MAX_ACCEPTED_VERSIONS,
  MigIdentityFlags,
  PRECOPY_INFO_SIZE,
} from '../../protocol/migration-extensions.js';
import type { DecodedRequest } from '../../protocol/request.js';
import { checkMigDataRead, checkMigDataWrite } from '../../migration/gating.js';
import { noMigration, type MigrationController } from '../../migration/controller.js';
import { errnoOf } from '../reply-error.js';
import type { FeatureHandler, FeatureTable } from '../features.js';
import type { Handler, HandlerContext } from '../types.js';

type Req<C extends number> = Extract<DecodedRequest, { cmd: C }>;

/**
 * The migration features of a device with a migration controller, the vendor
 * extensions included (the server advertises them in VERSION for every
 * migratable device, see negotiate.ts).
 */
export function migrationFeatures(migration: MigrationController): FeatureTable {
  const state: FeatureHandler = {
    ops: DeviceFeatureFlags.GET | DeviceFeatureFlags.SET,
    get: () => encodeMigDeviceState({ deviceState: migration.state, dataFd: -1 }),
    async set(ctx, data) {
      const target = decodeMigDeviceState(data).deviceState;
      ctx.mmapSaving?.checkTransition(ctx, target); // EBUSY while a client mmap conflicts with a saving layout
      await migration.setState(target);
    },
  };
  return new Map<number, FeatureHandler>([
    [DeviceFeature.MIGRATION, { ops: DeviceFeatureFlags.GET, get: () => encodeMigrationFeature({ flags: migration.flags }) }],
    [DeviceFeature.MIG_DEVICE_STATE, state],
    [DeviceFeature.MIG_DATA_SIZE, { ops: DeviceFeatureFlags.GET, get: () => encodeMigDataSize({ stopCopyLength: migration.stopCopySize() }) }],
    ...extensionFeatures(migration),
  ]);
}

/** The identity GET data: own version first excluded, duplicates dropped, ascending; beyond 64 versions, the newest 64 and TRUNCATED. */
function identityOf(migration: MigrationController): Uint8Array {
  const { identity } = migration;
  const older = [...new Set(migration.acceptStateVersions)].filter((v) => v !== identity.stateVersion).sort((a, b) => a - b);
  const truncated = older.length > MAX_ACCEPTED_VERSIONS;
  return encodeMigrationIdentity({
    ...identity,
    acceptedVersions: truncated ? older.slice(-MAX_ACCEPTED_VERSIONS) : older,
    flags: truncated ? MigIdentityFlags.ACCEPTED_TRUNCATED : 0,
  });
}

/** The vendor extensions: pre-copy info (GET), deadline-carrying state SET, arc latency (GET), identity (GET). */
function extensionFeatures(migration: MigrationController): Array<[number, FeatureHandler]> {
  const precopyInfo: FeatureHandler = {
    ops: DeviceFeatureFlags.GET,
    // Taking the status records the device's delta in the stream: the reply size is known before it is taken.
    replySize: () => PRECOPY_INFO_SIZE,
    get: async () => encodePrecopyInfo(await migration.precopyStatus()),
  };
  const deadline: FeatureHandler = {
    ops: DeviceFeatureFlags.SET,
    // The request is as long as the reply (32 bytes), so the shared "argsz covers the request" rule makes room for it.
    async set(ctx, data) {
      const request = decodeDeadlineStateRequest(data);
      ctx.mmapSaving?.checkTransition(ctx, request.deviceState);
      const r = await migration.setStateWithDeadline(request.deviceState, request.deadlineNs, {
        predict: (request.flags & DeadlineRequestFlags.PREDICT) !== 0,
      });
      const errno = r.outcome === DeadlineOutcome.FAILED ? errnoOf(r.error) : 0;
      if (r.outcome !== DeadlineOutcome.DONE) {
        ctx.logger.info(
          { target: request.deviceState, budgetNs: request.deadlineNs, outcome: r.outcome, reached: r.reachedState, elapsedNs: r.elapsedNs, errno, err: r.error },
          'deadline-bounded migration state change did not complete',
        );
      }
      return encodeDeadlineStateReply({ reachedState: r.reachedState, outcome: r.outcome, elapsedNs: r.elapsedNs, estimateNs: r.estimateNs, errno, flags: r.flags });
    },
  };
  const latency: FeatureHandler = { ops: DeviceFeatureFlags.GET, get: () => encodeArcLatencies(migration.arcLatencyTable()) };
  const identity: FeatureHandler = { ops: DeviceFeatureFlags.GET, get: () => identityOf(migration) };
  return [
    [ExtensionFeature.PRECOPY_INFO, precopyInfo],
    [ExtensionFeature.MIG_STATE_DEADLINE, deadline],
    [ExtensionFeature.MIG_ARC_LATENCY, latency],
    [ExtensionFeature.MIG_IDENTITY, identity],
  ];
}

function controllerOf(ctx: HandlerContext, what: string): MigrationController {
  const migration = ctx.device.migration;
  if (!migration) throw noMigration(what);
  return migration;
}

/** MIG_DATA_READ: size ≤ the client's max_data_xfer_size, argsz ≥ 8 + size, a saving state. */
export const handleMigDataRead: Handler<Req<typeof Command.MIG_DATA_READ>> = async (ctx, request) => {
  const migration = controllerOf(ctx, 'MIG_DATA_READ');
  const { argsz, size } = request.body;
  checkMigDataRead(migration.state as never);
  if (size > ctx.client.maxDataXferSize) throw new ProtocolError(`MIG_DATA_READ: size ${size} beyond the client's max_data_xfer_size ${ctx.client.maxDataXferSize}`);
  if (argsz < 8 + size) throw new ProtocolError(`MIG_DATA_READ: argsz ${argsz} below 8 + size`);
  const data = await migration.read(size);
  // {argsz, size} then the data as a second chunk of the same sendmsg: the stream bytes are not copied.
  const head = encodeMigDataReadRequest({ argsz: 8 + data.length, size: data.length }); // same {argsz, size} layout
  return { payload: [head, data] };
};

/** MIG_DATA_WRITE: RESUMING, size ≤ max_data_xfer_size, argsz ≥ 8 + size; the bytes are fed to the resuming stream. */
export const handleMigDataWrite: Handler<Req<typeof Command.MIG_DATA_WRITE>> = async (ctx, request) => {
  const migration = controllerOf(ctx, 'MIG_DATA_WRITE');
  const { argsz, size, data } = request.body;
  checkMigDataWrite(migration.state as never);
  if (size > ctx.client.maxDataXferSize) throw new ProtocolError(`MIG_DATA_WRITE: size ${size} beyond the client's max_data_xfer_size ${ctx.client.maxDataXferSize}`);
  if (argsz < 8 + size) throw new ProtocolError(`MIG_DATA_WRITE: argsz ${argsz} below 8 + size`);
  await migration.write(data.subarray(0, size));
  return undefined;
};
