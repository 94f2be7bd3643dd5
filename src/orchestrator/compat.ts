/**
 * The compatibility check a migration makes before anything stops: both
 * devices must look the same to the guest (device info, region sizes and
 * flags, migration flags, PCI vendor/device ids) and the guest memories must
 * match in size and IOVA. When both servers advertise `x-migration-identity`,
 * the destination must also be the same device type and able to load the
 * source's state version. Read-only: nothing changes on either side.
 */
import { VfioUserError } from '../errors.js';
import { closeFd } from '../native/addon.js';
import { MigrationState, RegionIndex } from '../protocol/constants.js';
import { stateName } from '../migration/state-machine.js';
import { MigIdentityFlags, type MigrationIdentity } from '../protocol/migration-extensions.js';
import type { MigrationSide } from './types.js';

/** The two sides cannot be migrated between (the message says why); nothing was changed. */
export class MigrationCompatibilityError extends VfioUserError {
  constructor(message: string) {
    super(`migration refused: ${message}`);
    this.name = 'MigrationCompatibilityError';
  }
}

/** What the check learned about the (common) device. */
export interface DeviceProfile {
  migrationFlags: bigint;
}

interface Described {
  info: { flags: number; numRegions: number; numIrqs: number };
  regions: Array<{ size: bigint; flags: number } | undefined>;
  migrationFlags: bigint;
  pciIds: string;
  state: number;
}

async function describe(side: MigrationSide, name: string): Promise<Described> {
  const { client } = side;
  const info = await client.deviceInfo();
  const regions: Described['regions'] = [];
  for (let i = 0; i < info.numRegions; i++) {
    try {
      const r = await client.regionInfo(i);
      if (r.fd !== undefined) closeFd(r.fd);
      regions.push({ size: r.info.size, flags: r.info.flags });
    } catch {
      regions.push(undefined); // an index the device does not implement: must be absent on both sides
    }
  }
  let migrationFlags: bigint;
  try {
    migrationFlags = await client.migrationFlags();
  } catch (cause) {
    throw new MigrationCompatibilityError(`the ${name} device does not support migration (${(cause as Error).message})`);
  }
  const ids = await client.regionRead(RegionIndex.CONFIG, 0n, 4);
  const pciIds = Buffer.from(ids).toString('hex');
  return { info, regions, migrationFlags, pciIds, state: await client.migrationState() };
}

function showIdentity(id: MigrationIdentity): string {
  const older = id.acceptedVersions.length > 0 ? `, also loads ${id.acceptedVersions.map((v) => `v${v}`).join(', ')}` : '';
  return `'${id.deviceType}' state v${id.stateVersion}${older}`;
}

/**
 * With `x-migration-identity` on both sides: same device type, and the source's
 * state version is the destination's own or one it accepts (unless the
 * destination's list was truncated, when the stream check decides).
 */
async function checkIdentity(source: MigrationSide, destination: MigrationSide): Promise<void> {
  if (source.client.migrationExtensions.identity === undefined || destination.client.migrationExtensions.identity === undefined) return;
  const s = await source.client.migrationIdentity();
  const d = await destination.client.migrationIdentity();
  if (s.deviceType !== d.deviceType) {
    throw new MigrationCompatibilityError(`device types differ (source ${showIdentity(s)}, destination ${showIdentity(d)})`);
  }
  const loadable = s.stateVersion === d.stateVersion || d.acceptedVersions.includes(s.stateVersion) || (d.flags & MigIdentityFlags.ACCEPTED_TRUNCATED) !== 0;
  if (!loadable) {
    throw new MigrationCompatibilityError(`the destination cannot load the source's state version (source ${showIdentity(s)}, destination ${showIdentity(d)})`);
  }
}

/**
 * Compares the two sides.
 * @throws {MigrationCompatibilityError} when they differ, or the source is not RUNNING.
 */
export async function checkCompatibility(source: MigrationSide, destination: MigrationSide): Promise<DeviceProfile> {
  if (source.memory.size !== destination.memory.size) {
    throw new MigrationCompatibilityError(`guest memory sizes differ (source ${source.memory.size}, destination ${destination.memory.size} bytes)`);
  }
  if (source.iova !== destination.iova) {
    throw new MigrationCompatibilityError(`guest memory IOVAs differ (source 0x${source.iova.toString(16)}, destination 0x${destination.iova.toString(16)})`);
  }
  const s = await describe(source, 'source');
  const d = await describe(destination, 'destination');
  if (s.state !== MigrationState.RUNNING) throw new MigrationCompatibilityError(`the source device is ${stateName(s.state)}, not RUNNING`);
  await checkIdentity(source, destination);
  if (s.info.flags !== d.info.flags || s.info.numRegions !== d.info.numRegions || s.info.numIrqs !== d.info.numIrqs) {
    throw new MigrationCompatibilityError(`device info differs (source ${JSON.stringify(s.info)}, destination ${JSON.stringify(d.info)})`);
  }
  s.regions.forEach((r, i) => {
    const o = d.regions[i];
    if (r?.size !== o?.size || r?.flags !== o?.flags) {
      const show = (x: typeof r): string => (x ? `size 0x${x.size.toString(16)} flags 0x${x.flags.toString(16)}` : 'absent');
      throw new MigrationCompatibilityError(`region ${i} differs (source ${show(r)}, destination ${show(o)})`);
    }
  });
  if (s.migrationFlags !== d.migrationFlags) {
    throw new MigrationCompatibilityError(`migration flags differ (source 0x${s.migrationFlags.toString(16)}, destination 0x${d.migrationFlags.toString(16)})`);
  }
  if (s.pciIds !== d.pciIds) throw new MigrationCompatibilityError(`PCI vendor/device ids differ (source ${s.pciIds}, destination ${d.pciIds})`);
  return { migrationFlags: s.migrationFlags };
}
