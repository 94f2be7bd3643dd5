/**
 * `vfio-user info SOCKET [--json]`: what a VMM learns when it attaches — the
 * negotiated version and the capabilities each side advertised, device info,
 * the PCI ids and class (named from `pci.ids`), migration (flags, current
 * state, negotiated extensions), every region (size, flags, mmap offset,
 * sparse areas) and every IRQ index.
 */
import type { VfioUserClient } from '../../client/client.js';
import { RemoteError } from '../../errors.js';
import { DeviceInfoFlags, IrqInfoFlags, RegionIndex, RegionInfoFlags } from '../../protocol/constants.js';
import { formatCapabilitiesJson, type Capabilities, type ResolvedCapabilities } from '../../protocol/capabilities.js';
import type { RegionCap } from '../../protocol/region.js';
import type { IsolationGroupView } from '../../protocol/isolation-group.js';
import { native } from '../../native/addon.js';
import { formatDeviceSections, readMigrationInfo, readPciIdentity, type MigrationInfo, type PciIdentity } from '../info-device.js';
import { loadPciIds, type PciIds } from '../pci-ids.js';
import { flagNames, hex, humanSize, irqName, regionName, stdio, table, toJson, withClient, type GlobalOptions, type Output } from '../common.js';

/** Options of `info`. */
export interface InfoOptions {
  json?: boolean;
}

/** One region as `info` reports it. */
export interface RegionReport {
  index: number;
  name: string;
  size: bigint;
  flags: string[];
  /** mmap offset in the fd (meaningful when MMAP is set). */
  fdOffset: bigint;
  /** Whether the server passed an fd with the reply. */
  fd: boolean;
  sparse: Array<{ offset: bigint; size: bigint }>;
  /** Region type capability, if any. */
  type?: { type: number; subtype: number };
  /** The server refused GET_REGION_INFO for this index (errno name). */
  error?: string;
}

/** One IRQ index as `info` reports it. */
export interface IrqReport {
  index: number;
  name: string;
  count: number;
  flags: string[];
  /** The server refused GET_IRQ_INFO for this index (errno name). */
  error?: string;
}

/** Everything `info` prints (also its `--json` form). */
export interface InfoReport {
  socket: string;
  version: { major: number; minor: number };
  /** Capabilities as each side sent them (`null`: none sent). */
  advertised: { client: unknown; server: unknown };
  /** The server's capabilities with the specification's defaults applied. */
  server: ResolvedCapabilities;
  device: { flags: string[]; rawFlags: number; numRegions: number; numIrqs: number };
  /** PCI ids and class (`null`: no config space; `error`: the server refused the read). */
  pci: PciIdentity | null | { error: string };
  migration: MigrationInfo;
  /** The device's isolation group (`x-isolation-group`; absent when the server does not advertise it; `error`: refused). */
  isolationGroup?: IsolationGroupView | { error: string };
  regions: RegionReport[];
  irqs: IrqReport[];
}

function capsJson(caps: Capabilities | undefined): unknown {
  if (caps === undefined) return null;
  return (JSON.parse(formatCapabilitiesJson(caps)) as { capabilities: unknown }).capabilities;
}

function sparseAreas(caps: readonly RegionCap[]): Array<{ offset: bigint; size: bigint }> {
  return caps.flatMap((c) => (c.kind === 'sparse-mmap' ? c.areas.map((a) => ({ offset: a.offset, size: a.size })) : []));
}

async function regionReport(client: VfioUserClient, index: number): Promise<RegionReport> {
  let result: Awaited<ReturnType<VfioUserClient['regionInfo']>>;
  try {
    result = await client.regionInfo(index);
  } catch (error) {
    if (!(error instanceof RemoteError)) throw error;
    return { index, name: regionName(index), size: 0n, flags: [], fdOffset: 0n, fd: false, sparse: [], error: error.code ?? `errno ${error.errno}` };
  }
  const { info, fd } = result;
  if (fd !== undefined) native.close(fd);
  const typeCap = info.caps.find((c) => c.kind === 'type');
  const flags = flagNames(info.flags, { R: RegionInfoFlags.READ, W: RegionInfoFlags.WRITE, MMAP: RegionInfoFlags.MMAP, CAPS: RegionInfoFlags.CAPS });
  return {
    index,
    name: regionName(index),
    size: info.size,
    flags,
    fdOffset: info.offset,
    fd: fd !== undefined,
    sparse: sparseAreas(info.caps),
    ...(typeCap?.kind === 'type' ? { type: { type: typeCap.type, subtype: typeCap.subtype } } : {}),
  };
}

async function irqReport(client: VfioUserClient, index: number): Promise<IrqReport> {
  try {
    const irq = await client.irqInfo(index);
    const flags = flagNames(irq.flags, { EVENTFD: IrqInfoFlags.EVENTFD, MASKABLE: IrqInfoFlags.MASKABLE, AUTOMASKED: IrqInfoFlags.AUTOMASKED, NORESIZE: IrqInfoFlags.NORESIZE });
    return { index, name: irqName(index), count: irq.count, flags };
  } catch (error) {
    if (!(error instanceof RemoteError)) throw error;
    return { index, name: irqName(index), count: 0, flags: [], error: error.code ?? `errno ${error.errno}` };
  }
}

async function pciReport(client: VfioUserClient, ids: PciIds, regions: readonly RegionReport[]): Promise<InfoReport['pci']> {
  const config = regions.find((g) => g.index === RegionIndex.CONFIG);
  try {
    return await readPciIdentity(client, ids, config?.error === undefined ? (config?.size ?? 0n) : 0n);
  } catch (error) {
    if (!(error instanceof RemoteError)) throw error;
    return { error: error.code ?? `errno ${error.errno}` };
  }
}

async function groupReport(client: VfioUserClient): Promise<InfoReport['isolationGroup']> {
  try {
    return await client.isolationGroup();
  } catch (error) {
    if (!(error instanceof RemoteError)) throw error;
    return { error: error.code ?? `errno ${error.errno}` };
  }
}

/** The `group` line: id, viability, owner, members (this connection's marked `*`). */
function formatGroup(g: InfoReport['isolationGroup']): string[] {
  if (g === undefined) return [];
  if ('error' in g) return [`group         refused: ${g.error}`];
  const owner = g.owner === null ? 'no owner' : `owner pid ${g.owner.pid} uid ${g.owner.uid}`;
  const members = g.members.map((m) => `${m.uuid}${m.uuid === g.self ? '*' : ''} ${m.state}${m.claimed ? ' claimed' : ''}`);
  return [`group         ${g.group}: ${g.viable ? 'viable' : 'NOT viable'}, ${owner}, generation ${g.generation}; members ${members.join(', ')}`];
}

/**
 * Gathers the report over a connected client (a region or IRQ index the server refuses is reported, not fatal).
 * @param ids - names for the PCI ids (default: the system's `pci.ids`, see {@link loadPciIds}).
 */
export async function gatherInfo(client: VfioUserClient, socket: string, ids: PciIds = loadPciIds(undefined)): Promise<InfoReport> {
  const device = await client.deviceInfo();
  const regions: RegionReport[] = [];
  for (let i = 0; i < device.numRegions; i++) regions.push(await regionReport(client, i));
  const pci = await pciReport(client, ids, regions);
  const migration = await readMigrationInfo(client);
  const isolationGroup = await groupReport(client);
  const irqs: IrqReport[] = [];
  for (let i = 0; i < device.numIrqs; i++) irqs.push(await irqReport(client, i));
  return {
    socket,
    version: client.version,
    advertised: { client: capsJson(client.advertised), server: capsJson(client.serverAdvertised) },
    server: client.server,
    device: {
      flags: flagNames(device.flags, { RESET: DeviceInfoFlags.RESET, PCI: DeviceInfoFlags.PCI, CAPS: DeviceInfoFlags.CAPS }),
      rawFlags: device.flags,
      numRegions: device.numRegions,
      numIrqs: device.numIrqs,
    },
    pci,
    migration,
    ...(isolationGroup === undefined ? {} : { isolationGroup }),
    regions,
    irqs,
  };
}

function effectiveCaps(c: ResolvedCapabilities): string {
  const parts = [
    `max_msg_fds=${c.maxMsgFds}`,
    `max_data_xfer_size=${c.maxDataXferSize}`,
    `max_dma_maps=${c.maxDmaMaps}`,
    `pgsizes=${hex(c.pgsizes)}`,
    `migration=${c.migration ? `pgsize ${c.migration.pgsize ?? '?'}` : 'no'}`,
    `twin_socket=${c.twinSocket.supported ? 'yes' : 'no'}`,
    `write_multiple=${c.writeMultiple ? 'yes' : 'no'}`,
  ];
  return parts.join(' ');
}

/** The human-readable form of a report. */
export function formatInfo(r: InfoReport): string[] {
  const lines = [
    `socket        ${r.socket}`,
    `protocol      vfio-user ${r.version.major}.${r.version.minor}`,
    `client sent   ${JSON.stringify(r.advertised.client)}`,
    `server sent   ${JSON.stringify(r.advertised.server)}`,
    `server caps   ${effectiveCaps(r.server)}`,
    `device        flags ${hex(r.device.rawFlags)} (${r.device.flags.join(' ') || 'none'}), ${r.device.numRegions} regions, ${r.device.numIrqs} IRQ indexes`,
    ...formatDeviceSections(r.pci, r.migration),
    ...formatGroup(r.isolationGroup),
    '',
    'regions:',
  ];
  const regionRows = [['idx', 'name', 'size', 'flags', 'fd offset', 'sparse mmap areas']];
  for (const g of r.regions) {
    const size = g.size === 0n ? '-' : `${hex(g.size)} (${humanSize(g.size)})`;
    const fdOffset = g.fd ? hex(g.fdOffset) : '-';
    const sparse = g.sparse.map((a) => `${hex(a.offset)}+${hex(a.size)}`).join(' ');
    const type = g.type ? ` type=${g.type.type}/${g.type.subtype}` : '';
    if (g.error !== undefined) regionRows.push([String(g.index), g.name, `refused: ${g.error}`, '', '', '']);
    else regionRows.push([String(g.index), g.name, size, g.flags.join(' ') || '-', fdOffset, (sparse || '-') + type]);
  }
  lines.push(...table(regionRows).map((l) => `  ${l}`), '', 'irqs:');
  const irqRows = [['idx', 'name', 'count', 'flags']];
  for (const i of r.irqs) irqRows.push([String(i.index), i.name, i.error === undefined ? String(i.count) : `refused: ${i.error}`, i.flags.join(' ') || '-']);
  lines.push(...table(irqRows).map((l) => `  ${l}`));
  return lines;
}

/** Runs `info`. */
export async function runInfo(socket: string, options: InfoOptions, global: GlobalOptions, out: Output = stdio): Promise<void> {
  const ids = loadPciIds(undefined); // a bad $VFIO_USER_PCI_IDS fails before connecting
  const report = await withClient(socket, global, (client) => gatherInfo(client, socket, ids), { out });
  if (options.json) out.line(toJson(report));
  else formatInfo(report).forEach((l) => out.line(l));
}
