/**
 * The PCI identity and the migration section of `vfio-user info`: ids and
 * class from the config header (named from `pci.ids` when it has them), and
 * the device's migration flags, current state, the vendor extensions the
 * server agreed to (it advertises only those the client asked for) and, with
 * `x-migration-identity`, what stream the device saves and loads.
 */
import type { VfioUserClient } from '../client/client.js';
import { RemoteError } from '../errors.js';
import { MigrationFlags, MigrationState, RegionIndex } from '../protocol/constants.js';
import { ExtensionCapability } from '../protocol/migration-extensions.js';
import { PciHeader } from '../pci/registers.js';
import { hex } from './common.js';
import { u16, u32, u8, x } from './pci-bytes.js';
import { formatClass, formatDevice, formatSubsystem, type PciIds } from './pci-ids.js';

/** PCI ids as `info` reports them (names `null` when `pci.ids` lacks them). */
export interface PciIdentity {
  vendorId: number;
  deviceId: number;
  subsystemVendorId: number;
  subsystemId: number;
  classCode: number;
  revision: number;
  names: { vendor: string | null; device: string | null; subsystemVendor: string | null; subsystem: string | null; class: string | null };
  /** `Ethernet controller [0200]: Red Hat, Inc. Device [1af4:10f0] (rev 02)`, as `lspci -nn`. */
  title: string;
  /** `Red Hat, Inc. Device [1af4:1100]`, or `null` when the subsystem vendor is 0. */
  subsystemTitle: string | null;
}

/** The migration section (`supported: false` with the errno name when the device refuses the feature). */
export interface MigrationInfo {
  supported: boolean;
  error?: string;
  flags: string[];
  rawFlags: bigint;
  state?: string;
  /** Extension name → feature index, as the server advertised them. */
  extensions: Record<string, number>;
  identity?: { deviceType: string; stateVersion: number; acceptedVersions: number[] } | { error: string };
}

const errnoName = (error: RemoteError): string => error.code ?? `errno ${error.errno}`;

/**
 * Reads the PCI ids from the first 48 bytes of config space.
 * @returns `null` for a device without a config region.
 * @throws {RemoteError} when the server refuses the read (the caller reports it).
 */
export async function readPciIdentity(client: VfioUserClient, ids: PciIds, configSize: bigint): Promise<PciIdentity | null> {
  if (configSize < 0x30n) return null;
  const b = await client.regionRead(RegionIndex.CONFIG, 0n, 0x30);
  const [vendorId, deviceId] = [u16(b, PciHeader.VENDOR_ID), u16(b, PciHeader.DEVICE_ID)];
  const [subsystemVendorId, subsystemId] = [u16(b, PciHeader.SUBSYSTEM_VENDOR_ID), u16(b, PciHeader.SUBSYSTEM_ID)];
  const classCode = u32(b, PciHeader.REVISION_ID) >>> 8;
  const revision = u8(b, PciHeader.REVISION_ID);
  const hasSubsystem = subsystemVendorId !== 0 && subsystemVendorId !== 0xffff;
  return {
    vendorId,
    deviceId,
    subsystemVendorId,
    subsystemId,
    classCode,
    revision,
    names: {
      vendor: ids.vendor(vendorId) ?? null,
      device: ids.device(vendorId, deviceId) ?? null,
      subsystemVendor: ids.vendor(subsystemVendorId) ?? null,
      subsystem: ids.subsystem(vendorId, deviceId, subsystemVendorId, subsystemId) ?? null,
      class: ids.subClass(classCode >>> 8) ?? ids.baseClass(classCode >>> 16) ?? null,
    },
    title: `${formatClass(ids, classCode >>> 8, 2)}: ${formatDevice(ids, vendorId, deviceId, 2)}${revision === 0 ? '' : ` (rev ${x(revision, 2)})`}`,
    subsystemTitle: hasSubsystem ? formatSubsystem(ids, vendorId, deviceId, subsystemVendorId, subsystemId, 2) : null,
  };
}

function nameOf(table: Readonly<Record<string, number>>, value: number): string {
  return Object.entries(table).find(([, v]) => v === value)?.[0] ?? String(value);
}

async function identityOf(client: VfioUserClient): Promise<MigrationInfo['identity']> {
  try {
    const id = await client.migrationIdentity();
    return { deviceType: id.deviceType, stateVersion: id.stateVersion, acceptedVersions: id.acceptedVersions };
  } catch (error) {
    if (!(error instanceof RemoteError)) throw error;
    return { error: errnoName(error) };
  }
}

/** Queries migration: flags, state, negotiated extensions (a device without migration is reported, not an error). */
export async function readMigrationInfo(client: VfioUserClient): Promise<MigrationInfo> {
  let rawFlags: bigint;
  try {
    rawFlags = await client.migrationFlags();
  } catch (error) {
    if (!(error instanceof RemoteError)) throw error;
    return { supported: false, error: errnoName(error), flags: [], rawFlags: 0n, extensions: {} };
  }
  const flags = Object.entries(MigrationFlags)
    .filter(([, bit]) => (rawFlags & bit) !== 0n)
    .map(([name]) => name);
  const advertised = client.migrationExtensions;
  const members: Array<[string, number | undefined]> = [
    [ExtensionCapability.PRECOPY_INFO, advertised.precopyInfo],
    [ExtensionCapability.MIG_STATE_DEADLINE, advertised.deadlineState],
    [ExtensionCapability.MIG_ARC_LATENCY, advertised.arcLatency],
    [ExtensionCapability.MIG_IDENTITY, advertised.identity],
  ];
  const extensions = Object.fromEntries(members.filter((m): m is [string, number] => m[1] !== undefined));
  const info: MigrationInfo = { supported: true, flags, rawFlags, extensions };
  try {
    info.state = nameOf(MigrationState, await client.migrationState());
  } catch (error) {
    if (!(error instanceof RemoteError)) throw error;
    info.state = `unknown (${errnoName(error)})`;
  }
  if (advertised.identity !== undefined) info.identity = await identityOf(client);
  return info;
}

/** The text lines of the PCI and migration sections (`pci`, `subsystem`, `migration`, `extensions`, `identity`). */
export function formatDeviceSections(pci: PciIdentity | null | { error: string }, migration: MigrationInfo): string[] {
  const lines: string[] = [];
  if (pci === null) lines.push('pci           none (no config space)');
  else if ('error' in pci) lines.push(`pci           config space refused: ${pci.error}`);
  else lines.push(`pci           ${pci.title}`, `subsystem     ${pci.subsystemTitle ?? 'none (0000)'}`);
  if (!migration.supported) {
    lines.push(`migration     not supported (${migration.error ?? 'refused'})`);
    return lines;
  }
  lines.push(`migration     state ${migration.state ?? '?'}, flags ${hex(migration.rawFlags)} (${migration.flags.join(' ') || 'none'})`);
  const ext = Object.entries(migration.extensions).map(([name, feature]) => `${name}=${hex(feature)}`);
  lines.push(`extensions    ${ext.join(' ') || 'none'}`);
  const id = migration.identity;
  if (id !== undefined) {
    const older = 'error' in id ? '' : id.acceptedVersions.length > 0 ? ` (also loads ${id.acceptedVersions.join(', ')})` : '';
    lines.push(`identity      ${'error' in id ? `refused: ${id.error}` : `type ${JSON.stringify(id.deviceType)}, state version ${id.stateVersion}${older}`}`);
  }
  return lines;
}
