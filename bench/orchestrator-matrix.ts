/**
 * The measurement matrix of the orchestrator benchmark, shared by its
 * transports (bench/orchestrator.ts): the source device in its own process
 * (bench/serve-dirtying.ts) with its guest RAM in this process, and a
 * destination each migration gets from a {@link DestinationFactory} — the
 * local session over a UNIX socket, or a `RemoteDestination` over loopback TCP.
 * - per dirty rate (a share of the transport's reference bandwidth), 3
 *   migrations under each downtime budget: outcome, downtime, projection,
 *   iterations, whole-migration throughput (bytes moved / total time);
 * - time to abort: a 0 ms budget at the 10 % rate, from the call until the
 *   source is RUNNING again.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { VfioUserClient } from '../src/client/client.js';
import { GuestMemory } from '../src/client/guest-memory.js';
import { setCommand } from '../src/client/pci-config.js';
import { migrate, type MigrationReport, type MigrationSide } from '../src/orchestrator/migrate.js';
import type { MigrationDestination } from '../src/orchestrator/destination.js';
import { MigrationState as S, RegionIndex } from '../src/protocol/constants.js';
import { PciCommand } from '../src/pci/registers.js';

/** One migration as measured. */
export interface OrchestratorRun {
  outcome: MigrationReport['outcome'];
  reason?: string;
  downtimeMs: number;
  projectedDowntimeMs: number;
  totalMs: number;
  iterations: number;
  bytes: number;
  /** Of the guest memory bytes, those sent as zero-page markers. */
  zeroBytes: number;
  GBps: number;
  /** The dirty rate the device achieved while running in this run (share of the reference bandwidth). */
  achievedDirtyShare: number;
  /** Time to open the destination before the migration (TCP: connect and the receiver's preparation); not in totalMs. */
  connectMs: number;
}

/** One dirty rate. */
export interface OrchestratorRate {
  /** Target dirty rate, as a share of the reference bandwidth. */
  dirtyShare: number;
  pagesPerMs: number;
  runs: OrchestratorRun[];
  /** Runs where the orchestrator switched over (migrated, or aborted in switch-over). */
  switchedOver: number;
  /** Of those, the runs that migrated with a downtime within the budget. */
  metBudget: number;
  /** Of those, the runs whose source was stopped no longer than the budget (migrated, or aborted in stop-copy and resumed in time). */
  heldBudget: number;
  /** Runs aborted in pre-copy for non-convergence (not misses). */
  notConverged: number;
}

/** Every dirty rate under one downtime budget. */
export interface OrchestratorBudget {
  budgetMs: number;
  rates: OrchestratorRate[];
  /** Share of the switched-over runs (all rates) that met the budget. */
  metBudgetShare: number;
}

/** Time to abort. */
export interface OrchestratorAbort {
  budgetMs: 0;
  runsMs: number[];
  medianMs: number;
  iterations: number;
  sourceRunning: boolean;
}

/** The matrix over one transport. */
export interface OrchestratorTransport {
  /** The reference bandwidth the dirty rates are shares of (GB/s). */
  copyGBps: number;
  /** Bytes moved / total time of the 0 % runs under the first budget (best of 3). */
  migrationGBps: number;
  budgets: OrchestratorBudget[];
  abort: OrchestratorAbort;
  /** Median time to open the destination before a migration (ms). */
  connectMs: number;
}

/** A destination per migration. */
export interface DestinationFactory {
  open(): Promise<{ destination: MigrationSide | MigrationDestination; close(): void }>;
}

const DEVICE = new URL('./serve-dirtying.js', import.meta.url).pathname;
export const IOVA = 0x1_0000_0000n;
const PAGE = 4096;
const SHARES = [0, 0.1, 0.5, 0.9];

/** A device process and this process's session with it. */
export interface Side extends MigrationSide {
  proc: ReturnType<typeof spawn>;
}

/** Starts the dirtying device on `path` (resolves once it serves). */
export async function serveDevice(path: string, guestBytes: number): Promise<ReturnType<typeof spawn>> {
  const proc = spawn(process.execPath, [DEVICE, path, String(guestBytes), String(IOVA)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await once(proc.stdout as NodeJS.ReadableStream, 'data');
  return proc;
}

export async function stop(proc: ReturnType<typeof spawn>): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill('SIGTERM');
  await once(proc, 'exit');
}

export async function open(path: string, guestBytes: number): Promise<Side> {
  const proc = await serveDevice(path, guestBytes);
  const client = await VfioUserClient.connect(path);
  await setCommand(client, PciCommand.MEMORY | PciCommand.MASTER);
  const memory = GuestMemory.create(guestBytes, { name: 'bench-guest' });
  await memory.attach(client, { iova: IOVA, mode: 'fd' });
  return { proc, client, memory, iova: IOVA };
}

export async function close(side: Side): Promise<void> {
  side.client.close();
  side.memory.dispose();
  await stop(side.proc);
}

async function setRate(side: Side, pagesPerMs: number): Promise<void> {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, pagesPerMs >>> 0, true);
  await side.client.regionWrite(RegionIndex.BAR0, 0n, b);
}

async function counters(side: Side): Promise<{ pages: number; us: number }> {
  const b = await side.client.regionRead(RegionIndex.BAR0, 0n, 16);
  const v = new DataView(b.buffer, b.byteOffset, 16);
  return { pages: Number(v.getBigUint64(0, true)), us: Number(v.getBigUint64(8, true)) };
}

/** The source back to RUNNING after a migration (it ends in STOP), the destination left RUNNING. */
async function restore(src: Side): Promise<void> {
  if ((await src.client.migrationState()) !== S.RUNNING) await src.client.setMigrationState(S.RUNNING);
}

const total = (r: MigrationReport): number => Number(r.bytes.precopyMemory + r.bytes.precopyDevice + r.bytes.stopCopyMemory + r.bytes.stopCopyDevice);

/** One migration to a fresh destination (`copyRate`: the reference, bytes per ms). */
export async function migrateOnce(src: Side, to: DestinationFactory, budgetMs: number, copyRate: number): Promise<OrchestratorRun> {
  const t = performance.now();
  const dst = await to.open();
  const connectMs = performance.now() - t;
  const before = await counters(src);
  let r: MigrationReport;
  try {
    r = await migrate({ source: src, destination: dst.destination, downtimeBudgetMs: budgetMs });
  } finally {
    dst.close();
  }
  await restore(src);
  const after = await counters(src);
  const pagesPerMs = after.us > before.us ? ((after.pages - before.pages) / (after.us - before.us)) * 1000 : 0;
  const bytes = total(r);
  return {
    outcome: r.outcome,
    ...(r.reason === undefined ? {} : { reason: r.reason }),
    downtimeMs: round(r.downtimeMs),
    projectedDowntimeMs: round(r.projectedDowntimeMs),
    totalMs: round(r.totalMs),
    iterations: r.iterations,
    bytes,
    zeroBytes: Number(r.zeroBytes),
    GBps: round(bytes / r.totalMs / 1e6),
    achievedDirtyShare: round((pagesPerMs * PAGE) / copyRate),
    connectMs: round(connectMs),
  };
}

/** The whole matrix over one transport: every rate under every budget, then the abort timing. */
export async function runMatrix(src: Side, to: DestinationFactory, budgets: number[], copyRate: number): Promise<OrchestratorTransport> {
  const results: OrchestratorBudget[] = [];
  const connects: number[] = [];
  for (const budget of budgets) {
    const rates: OrchestratorRate[] = [];
    for (const share of SHARES) {
      const pagesPerMs = Math.round((share * copyRate) / PAGE);
      await setRate(src, pagesPerMs);
      await new Promise((resolve) => setTimeout(resolve, 20));
      const runs: OrchestratorRun[] = [];
      for (let i = 0; i < 3; i++) runs.push(await migrateOnce(src, to, budget, copyRate));
      connects.push(...runs.map((r) => r.connectMs));
      const switched = runs.filter((r) => r.outcome === 'migrated' || (r.outcome === 'aborted' && r.downtimeMs > 0));
      rates.push({
        dirtyShare: share,
        pagesPerMs,
        runs,
        switchedOver: switched.length,
        metBudget: switched.filter((r) => r.outcome === 'migrated' && r.downtimeMs <= budget).length,
        heldBudget: switched.filter((r) => r.downtimeMs <= budget).length,
        notConverged: runs.filter((r) => r.outcome === 'aborted' && /did not converge/.test(r.reason ?? '')).length,
      });
    }
    const switchedAll = rates.reduce((n, r) => n + r.switchedOver, 0);
    results.push({ budgetMs: budget, rates, metBudgetShare: switchedAll === 0 ? 0 : round(rates.reduce((n, r) => n + r.metBudget, 0) / switchedAll) });
  }
  // Time to abort: 0 ms budget at the 10 % dirty rate, default iteration limit.
  await setRate(src, Math.round((0.1 * copyRate) / PAGE));
  const runsMs: number[] = [];
  let iterations = 0;
  let sourceRunning = true;
  for (let i = 0; i < 3; i++) {
    const dst = await to.open();
    const t = performance.now();
    const r = await migrate({ source: src, destination: dst.destination, downtimeBudgetMs: 0 });
    const running = (await src.client.migrationState()) === S.RUNNING;
    runsMs.push(round(performance.now() - t));
    dst.close();
    iterations = r.iterations;
    sourceRunning &&= running && r.outcome === 'aborted';
    await restore(src);
  }
  await setRate(src, 0);
  const zero = (results[0] as OrchestratorBudget).rates[0] as OrchestratorRate;
  return {
    copyGBps: round(copyRate / 1e6),
    migrationGBps: Math.max(...zero.runs.map((r) => r.GBps)),
    budgets: results,
    abort: { budgetMs: 0, runsMs, medianMs: median(runsMs), iterations, sourceRunning },
    connectMs: median(connects),
  };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
}

export function round(x: number): number {
  return Math.round(x * 100) / 100;
}

/** Prints one transport's matrix. */
export function printMatrix(t: OrchestratorTransport): void {
  for (const b of t.budgets) {
    console.log(`  budget ${b.budgetMs} ms:`);
    console.log('  dirty (target/achieved)  outcome    downtime ms  projected ms  iterations  total ms  moved MiB  GB/s');
    for (const rate of b.rates) {
      for (const run of rate.runs) {
        const dirty = `${Math.round(rate.dirtyShare * 100)} % / ${Math.round(run.achievedDirtyShare * 100)} %`;
        console.log(
          `  ${dirty.padEnd(23)}  ${run.outcome.padEnd(9)}  ${String(run.downtimeMs).padStart(11)}  ${String(run.projectedDowntimeMs).padStart(12)}  ${String(run.iterations).padStart(10)}  ${String(run.totalMs).padStart(8)}  ${String(Math.round(run.bytes / 2 ** 20)).padStart(9)}  ${run.GBps}`,
        );
        const missed = (run.outcome === 'migrated' && run.downtimeMs > b.budgetMs) || (run.outcome === 'aborted' && run.downtimeMs > 0);
        if (missed || run.outcome === 'failed') console.log(`      ↳ ${run.reason ?? `downtime ${run.downtimeMs} ms > budget ${b.budgetMs} ms`}`);
      }
      console.log(`    → ${rate.metBudget}/${rate.switchedOver} switch-overs met the budget; the source stopped within it in ${rate.heldBudget}/${rate.switchedOver}; ${rate.notConverged} aborted for non-convergence`);
    }
    console.log(`    switch-overs within ${b.budgetMs} ms: ${Math.round(b.metBudgetShare * 100)} %`);
  }
  console.log(`  time to abort (0 ms budget, 10 % dirty, ${t.abort.iterations} iterations): ${t.abort.runsMs.join(' / ')} ms (median ${t.abort.medianMs}); source RUNNING after each: ${t.abort.sourceRunning}`);
}
