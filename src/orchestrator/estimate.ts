/**
 * The arc part of a projected downtime: the latencies the servers report
 * (extension `x-arc-latency`) for the arcs a switch-over walks — the source
 * into STOP_COPY, the destination from RESUMING to RUNNING. Without the
 * extension, or for arcs not yet measured, an arc counts as 0 — and the
 * whole projection of a switch-over's downtime ({@link estimateSwitchover}).
 */
import type { VfioUserClient } from '../client/client.js';
import { MigrationState as S } from '../protocol/constants.js';
import type { DeviceChannel } from './destination.js';
import type { ArcLatency } from '../protocol/migration-extensions.js';

type Arc = readonly [from: number, to: number];

/** The arcs the source walks into STOP_COPY. */
export function sourceArcs(preCopy: boolean, p2p: boolean): Arc[] {
  if (preCopy) return p2p ? [[S.PRE_COPY, S.PRE_COPY_P2P], [S.PRE_COPY_P2P, S.STOP_COPY]] : [[S.PRE_COPY, S.STOP_COPY]];
  return p2p ? [[S.RUNNING, S.RUNNING_P2P], [S.RUNNING_P2P, S.STOP], [S.STOP, S.STOP_COPY]] : [[S.RUNNING, S.STOP], [S.STOP, S.STOP_COPY]];
}

/** The arcs the destination walks from RESUMING to RUNNING. */
export function destinationArcs(p2p: boolean): Arc[] {
  return p2p ? [[S.RESUMING, S.STOP], [S.STOP, S.RUNNING_P2P], [S.RUNNING_P2P, S.RUNNING]] : [[S.RESUMING, S.STOP], [S.STOP, S.RUNNING]];
}

/** Sum (ms) of the reported latencies of `path` (estimate, else the mean, else the last run). */
export function pathMs(latencies: readonly ArcLatency[], path: readonly Arc[]): number {
  let ns = 0n;
  for (const [from, to] of path) {
    const a = latencies.find((l) => l.from === from && l.to === to);
    if (a) ns += a.estimateNs || a.meanNs || a.lastNs;
  }
  return Number(ns) / 1e6;
}

async function latencies(client: VfioUserClient): Promise<ArcLatency[]> {
  if (client.migrationExtensions.arcLatency === undefined) return [];
  return client.arcLatencies();
}

/** The projected arc times (ms) of a switch-over: the source's into STOP_COPY, the destination's to RUNNING. */
export async function estimateArcsMs(
  source: VfioUserClient,
  destination: Pick<DeviceChannel, 'arcLatencies'>,
  preCopy: boolean,
  p2p: boolean,
): Promise<{ sourceMs: number; destinationMs: number }> {
  return { sourceMs: pathMs(await latencies(source), sourceArcs(preCopy, p2p)), destinationMs: pathMs(await destination.arcLatencies(), destinationArcs(p2p)) };
}

/**
 * What a switch-over projection is computed from: measurements the pre-copy
 * loop takes as it goes (no requests of their own).
 */
export interface SwitchoverInputs {
  /** Pages the source dirtied per ms over the last interval between two dirty collections. */
  dirtyPagesPerMs: number;
  /** Whether that interval's collection found every page dirty (the rate is then only a lower bound). */
  saturated: boolean;
  /** Time (ms) from the last collection's request until now: the source kept dirtying through it. */
  sinceCollectMs: number;
  /** Guest pages in all (the final dirty set can't be larger). */
  totalPages: number;
  /** Measured cost (ms) of copying one dirty page, on dirty-page copies (not the sequential full copy). */
  pageCopyMs: number;
  /** The last collection: its duration (ms: dirty report round trip over the whole range + bitmap scan) and the pages it returned. */
  lastCollect: { ms: number; pages: number };
  /** Device data still to move, and its measured bandwidth (bytes/ms). */
  deviceBytes: bigint;
  deviceBytesPerMs: number;
  /** The source's arcs into STOP_COPY and the destination's from RESUMING to RUNNING (ms, {@link pathMs}). */
  sourceArcsMs: number;
  destinationArcsMs: number;
  /** Round trip (ms) of one small request. */
  requestMs: number;
  /** Requests of the switch-over besides the dirty report (SETs, stream chunks, the empty read). */
  requests: number;
}

/** A projected switch-over, by part (ms). */
export interface SwitchoverEstimate {
  /** Pages the final dirty report is expected to return. */
  pages: number;
  collectMs: number;
  copyMs: number;
  deviceMs: number;
  arcsMs: number;
  requestsMs: number;
  totalMs: number;
}

/**
 * Headroom on the dirty-memory part (collection + copy). Measured on the
 * orchestrator benchmark (64 MiB guest, processes not pinned): the per-page
 * copy cost varied by about ±20 % between runs (1.0–3.0 µs per page), and the
 * final dirty set came out up to 6 % above the rate × time projection (the
 * device catches up on lag in bursts); with the margin no switch-over missed.
 */
export const MEMORY_MARGIN = 1.25;

/**
 * Projected downtime of a switch-over started now. The final dirty set is what
 * the source dirties from the last collection until it stops — the time since
 * that collection plus the source's stop arc, at the last measured rate (all
 * pages when that rate saturated the memory) — not what the last round found.
 * It is collected (the last collection's time, scaled up with the page count:
 * the report over the whole range is a fixed part) and copied at the measured
 * dirty-page cost (both with {@link MEMORY_MARGIN}); then the device stream,
 * the arcs and the request round trips.
 */
export function estimateSwitchover(i: SwitchoverInputs): SwitchoverEstimate {
  const dirtying = Math.max(0, i.sinceCollectMs) + Math.max(0, i.sourceArcsMs) + i.requestMs;
  const pages = i.saturated ? i.totalPages : Math.min(i.totalPages, Math.ceil(Math.max(0, i.dirtyPagesPerMs) * dirtying));
  const collectMs = MEMORY_MARGIN * i.lastCollect.ms * Math.max(1, pages / Math.max(1, i.lastCollect.pages));
  const copyMs = MEMORY_MARGIN * pages * i.pageCopyMs;
  const deviceMs = i.deviceBytesPerMs > 0 ? Number(i.deviceBytes) / i.deviceBytesPerMs : Number.POSITIVE_INFINITY;
  const arcsMs = i.sourceArcsMs + i.destinationArcsMs;
  const requestsMs = i.requestMs * i.requests;
  return { pages, collectMs, copyMs, deviceMs, arcsMs, requestsMs, totalMs: collectMs + copyMs + deviceMs + arcsMs + requestsMs };
}
