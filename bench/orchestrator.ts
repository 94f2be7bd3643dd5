/**
 * Live migration through the orchestrator (`migrate()`), with a reference from
 * the same run: a device in its own process (bench/serve-dirtying.ts) whose
 * DMA dirties guest memory at a set rate, source and destination over UNIX
 * sockets, the guest RAM in this process (GuestMemory, fd mode, one per side).
 * - reference: the guest-memory copy bandwidth (GuestMemory read → write in
 *   1 MiB chunks, as the orchestrator copies; best of 5, after a warm-up migration);
 * - per dirty rate (0 / 10 / 50 / 90 % of that bandwidth), 3 migrations within
 *   the downtime budget (300 ms, then a tight 25 ms where the rate decides
 *   convergence): outcome, downtime, projected downtime, iterations,
 *   whole-migration throughput (bytes moved / total time);
 * - time to abort: a 0 ms budget, from the call until the source is RUNNING again.
 * Processes are not pinned (three processes move data; 2+ CPUs needed).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { VfioUserClient } from '../src/client/client.js';
import { GuestMemory } from '../src/client/guest-memory.js';
import { setCommand } from '../src/client/pci-config.js';
import { migrate, type MigrationReport, type MigrationSide } from '../src/orchestrator/migrate.js';
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
  GBps: number;
  /** The dirty rate the device achieved while running in this run (share of the reference bandwidth). */
  achievedDirtyShare: number;
}

/** One dirty rate. */
export interface OrchestratorRate {
  /** Target dirty rate, as a share of the reference copy bandwidth. */
  dirtyShare: number;
  pagesPerMs: number;
  runs: OrchestratorRun[];
  /** Runs where the orchestrator switched over (migrated, or aborted in switch-over). */
  switchedOver: number;
  /** Of those, the runs whose downtime met the budget. */
  metBudget: number;
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

/** What this section reports. */
export interface OrchestratorResult {
  guestBytes: number;
  copyGBps: number;
  /** Bytes moved / total time of the 0 % runs under the first budget (best of 3). */
  migrationGBps: number;
  /** The given budget (default 300 ms), then a tight one (25 ms) where the dirty rate decides convergence. */
  budgets: OrchestratorBudget[];
  abort: { budgetMs: 0; runsMs: number[]; medianMs: number; iterations: number; sourceRunning: boolean };
}

const DEVICE = new URL('./serve-dirtying.js', import.meta.url).pathname;
const IOVA = 0x1_0000_0000n;
const PAGE = 4096;
const SHARES = [0, 0.1, 0.5, 0.9];

interface Side extends MigrationSide {
  proc: ReturnType<typeof spawn>;
}

async function open(path: string, guestBytes: number): Promise<Side> {
  const proc = spawn(process.execPath, [DEVICE, path, String(guestBytes), String(IOVA)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await once(proc.stdout as NodeJS.ReadableStream, 'data');
  const client = await VfioUserClient.connect(path);
  await setCommand(client, PciCommand.MEMORY | PciCommand.MASTER);
  const memory = GuestMemory.create(guestBytes, { name: 'bench-guest' });
  await memory.attach(client, { iova: IOVA, mode: 'fd' });
  return { proc, client, memory, iova: IOVA };
}

async function close(side: Side): Promise<void> {
  side.client.close();
  side.memory.dispose();
  side.proc.kill('SIGTERM');
  await once(side.proc, 'exit');
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

/** Reference: copy all guest memory src → dst in 1 MiB chunks, as the orchestrator does (bytes per ms). */
function copyBandwidth(src: GuestMemory, dst: GuestMemory): number {
  let best = Infinity;
  const chunk = 1 << 20;
  for (let round = 0; round < 5; round++) {
    const t = performance.now();
    for (let gpa = 0n; gpa < src.size; gpa += BigInt(chunk)) dst.write(gpa, src.read(gpa, chunk));
    best = Math.min(best, performance.now() - t);
  }
  return Number(src.size) / best;
}

const total = (r: MigrationReport): number => Number(r.bytes.precopyMemory + r.bytes.precopyDevice + r.bytes.stopCopyMemory + r.bytes.stopCopyDevice);

async function once1(src: Side, dst: Side, budgetMs: number, copyRate: number): Promise<OrchestratorRun> {
  const before = await counters(src);
  const r = await migrate({ source: src, destination: dst, downtimeBudgetMs: budgetMs });
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
    GBps: round(bytes / r.totalMs / 1e6),
    achievedDirtyShare: round((pagesPerMs * PAGE) / copyRate),
  };
}

/** Runs the section. */
export async function runOrchestratorBench(o: { dir: string; guestBytes: number; budgetMs?: number; log: boolean }): Promise<OrchestratorResult> {
  const budgetMs = o.budgetMs ?? 300;
  const sides: Side[] = [];
  try {
    sides.push(await open(join(o.dir, 'orch-src.sock'), o.guestBytes), await open(join(o.dir, 'orch-dst.sock'), o.guestBytes));
    const [src, dst] = sides as [Side, Side];
    await once1(src, dst, budgetMs, 1); // warm-up (also faults in both memfds)
    const copyRate = copyBandwidth(src.memory, dst.memory);
    const budgets: OrchestratorBudget[] = [];
    for (const budget of [budgetMs, 25]) {
      const rates: OrchestratorRate[] = [];
      for (const share of SHARES) {
        const pagesPerMs = Math.round((share * copyRate) / PAGE);
        await setRate(src, pagesPerMs);
        await new Promise((resolve) => setTimeout(resolve, 20));
        const runs: OrchestratorRun[] = [];
        for (let i = 0; i < 3; i++) runs.push(await once1(src, dst, budget, copyRate));
        const switched = runs.filter((r) => r.outcome === 'migrated' || (r.outcome === 'aborted' && r.downtimeMs > 0));
        rates.push({
          dirtyShare: share,
          pagesPerMs,
          runs,
          switchedOver: switched.length,
          metBudget: switched.filter((r) => r.outcome === 'migrated' && r.downtimeMs <= budget).length,
          notConverged: runs.filter((r) => r.outcome === 'aborted' && /did not converge/.test(r.reason ?? '')).length,
        });
      }
      const switchedAll = rates.reduce((n, r) => n + r.switchedOver, 0);
      budgets.push({ budgetMs: budget, rates, metBudgetShare: switchedAll === 0 ? 0 : round(rates.reduce((n, r) => n + r.metBudget, 0) / switchedAll) });
    }
    // Time to abort: 0 ms budget at the 10 % dirty rate, default iteration limit.
    await setRate(src, Math.round((0.1 * copyRate) / PAGE));
    const runsMs: number[] = [];
    let iterations = 0;
    let sourceRunning = true;
    for (let i = 0; i < 3; i++) {
      const t = performance.now();
      const r = await migrate({ source: src, destination: dst, downtimeBudgetMs: 0 });
      const running = (await src.client.migrationState()) === S.RUNNING;
      runsMs.push(round(performance.now() - t));
      iterations = r.iterations;
      sourceRunning &&= running && r.outcome === 'aborted';
      await restore(src);
    }
    await setRate(src, 0);
    const zero = (budgets[0] as OrchestratorBudget).rates[0] as OrchestratorRate;
    const result: OrchestratorResult = {
      guestBytes: o.guestBytes,
      copyGBps: round(copyRate / 1e6),
      migrationGBps: Math.max(...zero.runs.map((r) => r.GBps)),
      budgets,
      abort: { budgetMs: 0, runsMs, medianMs: [...runsMs].sort((a, b) => a - b)[1] as number, iterations, sourceRunning },
    };
    if (o.log) print(result);
    return result;
  } finally {
    for (const s of sides) await close(s);
  }
}

function round(x: number): number {
  return Math.round(x * 100) / 100;
}

function print(r: OrchestratorResult): void {
  console.log(`\nLive migration (orchestrator): ${r.guestBytes >> 20} MiB guest RAM (fd mode) + a dirtying device in its own process, over UNIX sockets (processes not pinned; 3 runs per rate)`);
  console.log(`  reference: guest-memory copy (GuestMemory read → write, 1 MiB chunks, best of 5)  ${r.copyGBps} GB/s`);
  console.log(`  whole migration at 0 % dirty rate (bytes moved / total time, best of 3)           ${r.migrationGBps} GB/s`);
  for (const b of r.budgets) {
    console.log(`  budget ${b.budgetMs} ms:`);
    console.log('  dirty (target/achieved)  outcome    downtime ms  projected ms  iterations  total ms  moved MiB  GB/s');
    for (const rate of b.rates) {
      for (const run of rate.runs) {
        const dirty = `${Math.round(rate.dirtyShare * 100)} % / ${Math.round(run.achievedDirtyShare * 100)} %`;
        console.log(
          `  ${dirty.padEnd(23)}  ${run.outcome.padEnd(9)}  ${String(run.downtimeMs).padStart(11)}  ${String(run.projectedDowntimeMs).padStart(12)}  ${String(run.iterations).padStart(10)}  ${String(run.totalMs).padStart(8)}  ${String(Math.round(run.bytes / 2 ** 20)).padStart(9)}  ${run.GBps}`,
        );
      }
      console.log(`    → ${rate.metBudget}/${rate.switchedOver} switch-overs met the budget; ${rate.notConverged} aborted for non-convergence`);
    }
    console.log(`    switch-overs within ${b.budgetMs} ms: ${Math.round(b.metBudgetShare * 100)} %`);
  }
  console.log(`  time to abort (0 ms budget, 10 % dirty, ${r.abort.iterations} iterations): ${r.abort.runsMs.join(' / ')} ms (median ${r.abort.medianMs}); source RUNNING after each: ${r.abort.sourceRunning}`);
}
