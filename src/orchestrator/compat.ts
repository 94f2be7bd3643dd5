/**
 * The compatibility check a migration makes before anything stops: both
 * devices must look the same to the guest (device info, region sizes and
 * flags, migration flags, PCI vendor/device ids) and the guest memories must
 * match in size and IOVA. When both servers advertise `x-migration-identity`,
 * the destination must also be the same device type and able to load the
 * source's state version. Read-only: nothing changes on either side.
 */
import { VfioUserError } from '../errors.js';
import { MigrationState } from '../protocol/constants.js';
import { stateName } from '../migration/state-machine.js';
import { MigIdentityFlags, type MigrationIdentity } from '../protocol/migration-extensions.js';
import { containerOfOne, describeSide, type ContainerDestination, type DeviceDescription, type DeviceDestination, type MigrationDestination } from './destination.js';
import type { ContainerSide, MigrationSide } from './types.js';

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

function showIdentity(id: MigrationIdentity): string {
  const older = id.acceptedVersions.length > 0 ? `, also loads ${id.acceptedVersions.map((v) => `v${v}`).join(', ')}` : '';
  return `'${id.deviceType}' state v${id.stateVersion}${older}`;
}

/**
 * With `x-migration-identity` on both sides: same device type, and the source's
 * state version is the destination's own or one it accepts (unless the
 * destination's list was truncated, when the stream check decides).
 */
function checkIdentity(s: MigrationIdentity | undefined, d: MigrationIdentity | undefined): void {
  if (s === undefined || d === undefined) return;
  if (s.deviceType !== d.deviceType) {
    throw new MigrationCompatibilityError(`device types differ (source ${showIdentity(s)}, destination ${showIdentity(d)})`);
  }
  const loadable = s.stateVersion === d.stateVersion || d.acceptedVersions.includes(s.stateVersion) || (d.flags & MigIdentityFlags.ACCEPTED_TRUNCATED) !== 0;
  if (!loadable) {
    throw new MigrationCompatibilityError(`the destination cannot load the source's state version (source ${showIdentity(s)}, destination ${showIdentity(d)})`);
  }
}

function migrationFlagsOf(d: DeviceDescription, name: string): bigint {
  if (d.migrationFlags === null) throw new MigrationCompatibilityError(`the ${name} device does not support migration (${d.migrationError ?? 'no MIGRATION feature'})`);
  return d.migrationFlags;
}

/** The guest memories must match in size and IOVA (checked once per container: the devices share it). */
function checkMemory(s: DeviceDescription['memory'], d: DeviceDescription['memory']): void {
  if (s.size !== d.size) {
    throw new MigrationCompatibilityError(`guest memory sizes differ (source ${s.size}, destination ${d.size} bytes)`);
  }
  if (s.iova !== d.iova) {
    throw new MigrationCompatibilityError(`guest memory IOVAs differ (source 0x${s.iova.toString(16)}, destination 0x${d.iova.toString(16)})`);
  }
}

/** Compares one device pair (`label` prefixes the messages for a container's device). */
function checkDevice(s: DeviceDescription, d: DeviceDescription, label: string): bigint {
  try {
    return checkPair(s, d);
  } catch (error) {
    if (label === '' || !(error instanceof MigrationCompatibilityError)) throw error;
    throw new MigrationCompatibilityError(`${label}${error.message.replace(/^migration refused: /, '')}`);
  }
}

function checkPair(s: DeviceDescription, d: DeviceDescription): bigint {
  const sourceFlags = migrationFlagsOf(s, 'source');
  const destinationFlags = migrationFlagsOf(d, 'destination');
  if (s.state !== MigrationState.RUNNING) throw new MigrationCompatibilityError(`the source device is ${stateName(s.state)}, not RUNNING`);
  checkIdentity(s.identity, d.identity);
  if (s.info.flags !== d.info.flags || s.info.numRegions !== d.info.numRegions || s.info.numIrqs !== d.info.numIrqs) {
    throw new MigrationCompatibilityError(`device info differs (source ${JSON.stringify(s.info)}, destination ${JSON.stringify(d.info)})`);
  }
  s.regions.forEach((r, i) => {
    const o = d.regions[i] ?? null;
    if (r?.size !== o?.size || r?.flags !== o?.flags) {
      const show = (x: typeof r): string => (x ? `size 0x${x.size.toString(16)} flags 0x${x.flags.toString(16)}` : 'absent');
      throw new MigrationCompatibilityError(`region ${i} differs (source ${show(r)}, destination ${show(o)})`);
    }
  });
  if (sourceFlags !== destinationFlags) {
    throw new MigrationCompatibilityError(`migration flags differ (source 0x${sourceFlags.toString(16)}, destination 0x${destinationFlags.toString(16)})`);
  }
  if (s.pciIds !== d.pciIds) throw new MigrationCompatibilityError(`PCI vendor/device ids differ (source ${s.pciIds}, destination ${d.pciIds})`);
  if (d.state !== MigrationState.RUNNING && d.state !== MigrationState.STOP) {
    throw new MigrationCompatibilityError(`the destination device is ${stateName(d.state)}, not RUNNING or STOP`);
  }
  return sourceFlags;
}

/**
 * Compares the two sides.
 * @throws {MigrationCompatibilityError} when they differ, or the source is not RUNNING.
 */
export async function checkCompatibility(source: MigrationSide, destination: MigrationDestination): Promise<DeviceProfile> {
  const [profile] = await checkContainerCompatibility({ memory: source.memory, iova: source.iova, devices: [{ client: source.client }] }, containerOfOne(destination), ['dev0']);
  return profile as DeviceProfile;
}

/**
 * Compares a container's sides: as many devices, the shared guest memory
 * once, then every device against its destination (read-only).
 * @returns each device's migration flags, in order.
 * @throws {MigrationCompatibilityError} naming the first device pair that differs.
 */
export async function checkContainerCompatibility(source: ContainerSide, destination: ContainerDestination, names: readonly string[]): Promise<DeviceProfile[]> {
  if (source.devices.length !== destination.devices.length) {
    throw new MigrationCompatibilityError(`the source has ${source.devices.length} device(s), the destination ${destination.devices.length}`);
  }
  const profiles: DeviceProfile[] = [];
  for (const [i, device] of source.devices.entries()) {
    const s = await describeSide({ client: device.client, memory: source.memory, iova: source.iova });
    const d = await (destination.devices[i] as DeviceDestination).describe();
    if (i === 0) checkMemory(s.memory, d.memory);
    profiles.push({ migrationFlags: checkDevice(s, d, source.devices.length > 1 ? `device ${names[i] ?? i}: ` : '') });
  }
  return profiles;
}
