/**
 * The arc part of a projected downtime: the latencies the servers report
 * (extension `x-arc-latency`) for the arcs a switch-over walks — the source
 * into STOP_COPY, the destination from RESUMING to RUNNING. Without the
 * extension, or for arcs not yet measured, an arc counts as 0.
 */
import type { VfioUserClient } from '../client/client.js';
import { MigrationState as S } from '../protocol/constants.js';
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

/** The projected arc time (ms) of a switch-over. */
export async function estimateArcsMs(source: VfioUserClient, destination: VfioUserClient, preCopy: boolean, p2p: boolean): Promise<number> {
  return pathMs(await latencies(source), sourceArcs(preCopy, p2p)) + pathMs(await latencies(destination), destinationArcs(p2p));
}
