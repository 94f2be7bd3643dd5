/**
 * The summary of `vfio-user migrate` with several `--from` (migrate-container.ts):
 * the container's outcome and figures, as for one device, and one entry per
 * device — its sockets, device-data bytes, P2P time, arcs, and how its source
 * was recovered after an abort.
 */
import type { ContainerMigrationReport } from '../../orchestrator/types.js';
import type { DeviceSpec } from './migrate-devices.js';
import type { MigrateCommandOptions, MigrationRunSummary } from './migrate.js';
import { mb, reportFields, summaryBytesLine, summaryPhaseLine } from './migrate-from.js';

/** One device of the summary. */
export interface ContainerDeviceSummary {
  name: string;
  /** Its source socket. */
  source: string;
  /** Its device data, by phase. */
  bytes: { precopy: bigint; stopCopy: bigint };
  /** Its P2P arcs (ms). */
  p2pMs: number;
  arcs: ContainerMigrationReport['arcs'];
  sourceRecovery?: string;
}

/** The `--json` document of `migrate` with several `--from`. */
export interface MigrateContainerSummary extends MigrationRunSummary {
  /** The P2P phases' cost (ms). */
  p2pMs: number;
  warnings: string[];
  devices: ContainerDeviceSummary[];
  guestRam: { bytes: bigint; iova: bigint; file?: string; sourceSha256?: string; destinationSha256?: string; equal?: boolean };
  /** Destination devices on this host, held by this process after the commit. */
  held?: { pid: number; guestRamPath: string };
}

/** The source container as the summary names it. */
interface SourceView {
  memory: { size: bigint };
  iova: bigint;
  specs: readonly DeviceSpec[];
}

/** The summary of a container migration to `target`. */
export function summarizeContainer(
  r: ContainerMigrationReport, source: SourceView, target: string, options: MigrateCommandOptions, digests: { source?: string; destination?: string },
): MigrateContainerSummary {
  return {
    ...reportFields(r),
    destination: target, budgetMs: options.downtime ?? 300, p2pMs: r.p2pMs, warnings: r.warnings,
    devices: r.devices.map((d, i) => ({
      name: d.name, source: source.specs[i]?.socket ?? '?', bytes: d.bytes, p2pMs: d.p2pMs, arcs: d.arcs,
      ...(d.sourceRecovery === undefined ? {} : { sourceRecovery: d.sourceRecovery }),
    })),
    guestRam: {
      bytes: source.memory.size, iova: source.iova, ...(options.guestRamFile === undefined ? {} : { file: options.guestRamFile }),
      ...(digests.source === undefined ? {} : { sourceSha256: digests.source }),
      ...(digests.destination === undefined ? {} : { destinationSha256: digests.destination, equal: digests.destination === digests.source }),
    },
  };
}

/** The human-readable summary: the container's lines, then one per device. */
export function formatContainerSummary(s: MigrateContainerSummary): string[] {
  const g = s.guestRam;
  const lines = [
    `outcome    ${s.outcome}${s.reason ? `: ${s.reason}` : ''}${s.sourceRecovery ? ` (sources ${s.sourceRecovery})` : ''}`,
    summaryPhaseLine(s),
    `container  ${s.devices.length} devices → ${s.destination}`,
    `downtime   ${s.downtimeMs.toFixed(2)} ms of a ${s.budgetMs} ms budget (projected ${s.projectedDowntimeMs === null ? '-' : s.projectedDowntimeMs.toFixed(2)} ms, P2P ${s.p2pMs.toFixed(2)} ms); total ${s.totalMs.toFixed(1)} ms, ${s.iterations} pre-copy iterations`,
    summaryBytesLine(s),
    `guest RAM  ${g.bytes} bytes at IOVA 0x${g.iova.toString(16)}, shared by every device${g.file ? `, from ${g.file}` : ''}`,
  ];
  for (const d of s.devices) {
    const arcs = d.arcs.map((a) => `${a.side} ${a.from}>${a.to} ${a.ms.toFixed(2)} ms`).join(', ') || '-';
    lines.push(`device     ${d.name} (${d.source}): pre-copy ${mb(d.bytes.precopy)} MB + stop-copy ${mb(d.bytes.stopCopy)} MB, P2P ${d.p2pMs.toFixed(2)} ms${d.sourceRecovery ? `, source ${d.sourceRecovery}` : ''}; ${arcs}`);
  }
  if (g.sourceSha256 !== undefined) lines.push(`source     sha256 ${g.sourceSha256} (stopped: the switch-over snapshot)`);
  if (g.destinationSha256 !== undefined) lines.push(`destination sha256 ${g.destinationSha256} (after the commit): ${g.equal ? 'equals the source' : 'DIFFERS from the source (written since the devices run there?)'}`);
  if (s.held) lines.push(`held       by pid ${s.held.pid}: guest RAM readable at ${s.held.guestRamPath}`);
  for (const w of s.warnings) lines.push(`warning    ${w}`);
  return lines;
}
