/**
 * Container migration (`--only container`): 1, 2 and 4 devices sharing one
 * guest RAM (256 MiB in a full run) migrated as one VM by `migrateContainer()`
 * under one downtime budget (300 ms), over UNIX sockets to a local destination
 * container. Every device runs in its own process (bench/container-device.ts;
 * sources and destinations), the guest RAM of each side is one memfd in this
 * process attached to every device of that side.
 * Per device count, 5 migrations per case after warm-ups (one idle, one
 * dirtying: a device's first DMA writes fault in its mapping), the cases' runs interleaved:
 * - idle devices, then devices whose DMA dirties guest memory (disjoint
 *   slices) at 10 % of the guest-memory copy bandwidth in total (measured in
 *   the same run): outcome, total time, downtime against the budget, the P2P
 *   phases' time (`report.p2pMs`: every source into RUNNING_P2P before any
 *   stops, the destinations STOP → RUNNING_P2P), pre-copy iterations;
 * - the cost of the P2P phase: the same idle migration of devices without
 *   the P2P flag (`withoutP2P: 'warn'`), so no P2P phase; the downtime
 *   difference against the P2P runs.
 * Processes are not pinned: 2N device processes and this one move the data.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { VfioUserClient } from '../src/client/client.js';
import { GuestMemory } from '../src/client/guest-memory.js';
import { setCommand } from '../src/client/pci-config.js';
import { migrateContainer } from '../src/orchestrator/migrate.js';
import type { ContainerMigrationReport, ContainerSide } from '../src/orchestrator/types.js';
import { PciCommand } from '../src/pci/registers.js';
import { MigrationState as S, RegionIndex } from '../src/protocol/constants.js';
import { median, round } from './orchestrator-matrix.js';

/** Inputs of {@link runContainerBench}. */
export interface ContainerBenchOptions {
  dir: string;
  guestBytes: number;
  /** Device counts (default 1, 2, 4). */
  counts?: number[];
  /** Migrations per case after the warm-up (default 5). */
  runs?: number;
  /** Downtime budget (default 300 ms). */
  budgetMs?: number;
  /** Device state bytes per device (default 256 KiB). */
  stateBytes?: number;
  log: boolean;
}

/** One container migration as measured. */
export interface ContainerRun {
  outcome: ContainerMigrationReport['outcome'];
  reason?: string;
  totalMs: number;
  downtimeMs: number;
  projectedDowntimeMs: number;
  p2pMs: number;
  iterations: number;
  /** Guest memory and device data moved (MiB). */
  movedMiB: number;
  warnings: number;
}

/** Several runs of one case. */
export interface ContainerCase {
  devices: number;
  p2p: boolean;
  /** Total dirty rate of the sources, share of the copy bandwidth. */
  dirtyShare: number;
  /** The rate they achieved together while running (same unit). */
  achievedDirtyShare: number;
  runs: ContainerRun[];
  /** Runs that switched over (migrated, or aborted after stopping the sources). */
  switchedOver: number;
  /** Of those, migrated within the budget. */
  withinBudget: number;
  medianTotalMs: number;
  medianDowntimeMs: number;
  medianP2pMs: number;
}

/** What the section reports. */
export interface ContainerResult {
  guestBytes: number;
  budgetMs: number;
  stateBytes: number;
  /** Reference: guest-memory copy bandwidth, source memfd → destination memfd, 1 MiB chunks (GB/s, best of 5). */
  copyGBps: number;
  cases: ContainerCase[];
  /** Per device count ≥ 2: median downtime with the P2P phase, without it, and the P2P phase's median time. */
  p2pCost: { devices: number; downtimeWithMs: number; downtimeWithoutMs: number; p2pMs: number }[];
  /** Every switch-over of every case within the budget. */
  allWithinBudget: boolean;
}

const DEVICE = new URL('./container-device.js', import.meta.url).pathname;
const IOVA = 0x1_0000_0000n;
const PAGE = 4096;

/** The device processes of one side and this process's sessions with them, all on one guest memory. */
interface Side {
  procs: ChildProcess[];
  container: ContainerSide;
}

async function startDevice(path: string, o: { guestBytes: number; index: number; slices: number; p2p: boolean; stateBytes: number }): Promise<ChildProcess> {
  const args = [DEVICE, path, String(o.guestBytes), String(IOVA), String(o.index), String(o.slices), o.p2p ? '1' : '0', String(o.stateBytes)];
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = once(proc, 'exit').then(([code, signal]) => {
    throw new Error(`container-device ${o.index} ended (${String(code ?? signal)}) before it served ${path}`);
  });
  await Promise.race([once(proc.stdout as NodeJS.ReadableStream, 'data'), exited]);
  exited.catch(() => undefined);
  return proc;
}

async function openSide(dir: string, name: string, n: number, p2p: boolean, o: ContainerBenchOptions & { stateBytes: number }): Promise<Side> {
  const memory = GuestMemory.create(o.guestBytes, { name: `bench-${name}` });
  const side: Side = { procs: [], container: { memory, iova: IOVA, devices: [] } };
  const devices: { name: string; client: VfioUserClient }[] = [];
  for (let i = 0; i < n; i++) {
    const path = join(dir, `${name}-${i}.sock`);
    side.procs.push(await startDevice(path, { guestBytes: o.guestBytes, index: i, slices: n, p2p, stateBytes: o.stateBytes }));
    const client = await VfioUserClient.connect(path);
    await setCommand(client, PciCommand.MEMORY | PciCommand.MASTER);
    await memory.attach(client, { iova: IOVA, mode: 'fd' });
    devices.push({ name: `dev${i}`, client });
  }
  side.container = { memory, iova: IOVA, devices };
  return side;
}

async function closeSide(side: Side): Promise<void> {
  for (const d of side.container.devices) d.client.close();
  side.container.memory.dispose();
  for (const proc of side.procs) {
    if (proc.exitCode !== null || proc.signalCode !== null) continue;
    proc.kill('SIGTERM');
    await once(proc, 'exit');
  }
}

/** Sets every source device's dirty rate so that together they dirty `totalPagesPerMs`. */
async function setRates(side: Side, totalPagesPerMs: number): Promise<void> {
  const each = Math.round(totalPagesPerMs / side.container.devices.length);
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, each >>> 0, true);
  for (const d of side.container.devices) await d.client.regionWrite(RegionIndex.BAR0, 0n, b);
}

/** Pages each source device has dirtied, and the µs it spent dirtying. */
async function counters(side: Side): Promise<{ pages: number; us: number }[]> {
  const out: { pages: number; us: number }[] = [];
  for (const d of side.container.devices) {
    const b = await d.client.regionRead(RegionIndex.BAR0, 0n, 16);
    const v = new DataView(b.buffer, b.byteOffset, 16);
    out.push({ pages: Number(v.getBigUint64(0, true)), us: Number(v.getBigUint64(8, true)) });
  }
  return out;
}

/** Reference: all guest memory source → destination in 1 MiB chunks, best of 5 (bytes per ms). */
function copyRate(src: GuestMemory, dst: GuestMemory): number {
  const chunk = 1 << 20;
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    for (let gpa = 0n; gpa < src.size; gpa += BigInt(chunk)) dst.write(gpa, src.read(gpa, chunk));
    best = Math.min(best, performance.now() - t);
  }
  return Number(src.size) / best;
}

/** One migration; every source device back to RUNNING afterwards (a migrated source ends stopped). */
async function migrateOnce(src: Side, dst: Side, budgetMs: number, p2p: boolean): Promise<ContainerRun> {
  const r = await migrateContainer({ source: src.container, destination: dst.container, downtimeBudgetMs: budgetMs, ...(p2p ? {} : { withoutP2P: 'warn' as const }) });
  for (const d of src.container.devices) if ((await d.client.migrationState()) !== S.RUNNING) await d.client.setMigrationState(S.RUNNING);
  const moved = r.bytes.precopyMemory + r.bytes.precopyDevice + r.bytes.stopCopyMemory + r.bytes.stopCopyDevice;
  return {
    outcome: r.outcome,
    ...(r.reason === undefined ? {} : { reason: r.reason }),
    totalMs: round(r.totalMs),
    downtimeMs: round(r.downtimeMs),
    projectedDowntimeMs: round(r.projectedDowntimeMs),
    p2pMs: round(r.p2pMs),
    iterations: r.iterations,
    movedMiB: round(Number(moved) / 2 ** 20),
    warnings: r.warnings.length,
  };
}

/** A source and a destination container of the same devices. */
interface Pair {
  src: Side;
  dst: Side;
  p2p: boolean;
}

/** One case being measured: its runs, and the pages and active µs each source device spent dirtying in them. */
interface Plan {
  pair: Pair;
  devices: number;
  dirtyShare: number;
  pagesPerMs: number;
  runs: ContainerRun[];
  pages: number[];
  us: number[];
}

/** One run of `plan`: its dirty rate set (and settled), one migration, the rate back to 0. */
async function measure(plan: Plan, budgetMs: number): Promise<void> {
  const { src, dst, p2p } = plan.pair;
  await setRates(src, plan.pagesPerMs);
  if (plan.pagesPerMs > 0) await new Promise((resolve) => setTimeout(resolve, 20));
  const before = await counters(src);
  plan.runs.push(await migrateOnce(src, dst, budgetMs, p2p));
  const after = await counters(src);
  await setRates(src, 0);
  after.forEach((a, i) => {
    const b = before[i] as { pages: number; us: number };
    plan.pages[i] = (plan.pages[i] ?? 0) + a.pages - b.pages;
    plan.us[i] = (plan.us[i] ?? 0) + a.us - b.us;
  });
}

function summariseCase(plan: Plan, copyRate: number, budgetMs: number): ContainerCase {
  const runs = plan.runs;
  const achieved = plan.pages.reduce((sum, pages, i) => ((plan.us[i] ?? 0) > 0 ? sum + (pages * PAGE * 1000) / (plan.us[i] as number) : sum), 0);
  const switched = runs.filter((r) => r.outcome === 'migrated' || (r.outcome === 'aborted' && r.downtimeMs > 0));
  return {
    devices: plan.devices,
    p2p: plan.pair.p2p,
    dirtyShare: plan.dirtyShare,
    achievedDirtyShare: round(achieved / copyRate),
    runs,
    switchedOver: switched.length,
    withinBudget: switched.filter((r) => r.outcome === 'migrated' && r.downtimeMs <= budgetMs).length,
    medianTotalMs: median(runs.map((r) => r.totalMs)),
    medianDowntimeMs: median(runs.map((r) => r.downtimeMs)),
    medianP2pMs: median(runs.map((r) => r.p2pMs)),
  };
}

async function openPair(n: number, p2p: boolean, o: ContainerBenchOptions & { stateBytes: number; budgetMs: number }): Promise<Pair> {
  const tag = `c${n}${p2p ? '' : 'n'}`;
  const src = await openSide(o.dir, `${tag}-src`, n, p2p, o);
  const dst = await openSide(o.dir, `${tag}-dst`, n, p2p, o);
  await migrateOnce(src, dst, o.budgetMs, p2p); // warm-up (also faults in both memfds)
  return { src, dst, p2p };
}

/**
 * The cases of one device count, their runs interleaved (so load on the machine falls on every case alike):
 * idle and dirtying with the P2P flag, and for 2+ devices idle without it.
 */
async function runCount(n: number, o: ContainerBenchOptions & { stateBytes: number; runs: number; budgetMs: number }, rate: { bytesPerMs?: number }): Promise<ContainerCase[]> {
  const pairs: Pair[] = [];
  try {
    pairs.push(await openPair(n, true, o));
    if (n >= 2) pairs.push(await openPair(n, false, o));
    const withP2p = pairs[0] as Pair;
    const copy = (rate.bytesPerMs ??= copyRate(withP2p.src.container.memory, withP2p.dst.container.memory));
    const plan = (pair: Pair, dirtyShare: number): Plan => ({ pair, devices: n, dirtyShare, pagesPerMs: Math.round((dirtyShare * copy) / PAGE), runs: [], pages: [], us: [] });
    const plans = [plan(withP2p, 0), plan(withP2p, 0.1), ...pairs.slice(1).map((p) => plan(p, 0))];
    // Warm-up of the dirtying: each device's first DMA writes fault in its mapping of the guest memory.
    await measure(plan(withP2p, 0.1), o.budgetMs);
    for (let i = 0; i < o.runs; i++) for (const p of plans) await measure(p, o.budgetMs);
    const cases = plans.map((p) => summariseCase(p, copy, o.budgetMs));
    if (o.log) for (const c of cases) printCase(c, o.budgetMs);
    return cases;
  } finally {
    for (const p of pairs) {
      await closeSide(p.src);
      await closeSide(p.dst);
    }
  }
}

/** Runs the section. */
export async function runContainerBench(options: ContainerBenchOptions): Promise<ContainerResult> {
  const o = { ...options, stateBytes: options.stateBytes ?? 256 << 10, runs: options.runs ?? 5, budgetMs: options.budgetMs ?? 300 };
  const counts = options.counts ?? [1, 2, 4];
  if (o.log) {
    console.log(`\nContainer migration: 1–${Math.max(...counts)} devices (own processes) sharing ${o.guestBytes >> 20} MiB guest RAM, local destination over UNIX sockets,`);
    console.log(`  budget ${o.budgetMs} ms, ${o.stateBytes >> 10} KiB device state each, ${o.runs} runs per case (interleaved) after warm-ups; NOT pinned`);
    console.log('  devices  P2P  dirty tgt/got    outcome       total ms med (range)    downtime ms med (range)  ≤budget  P2P ms med (range)  max iter.');
  }
  const rate: { bytesPerMs?: number } = {};
  const cases: ContainerCase[] = [];
  for (const n of counts) cases.push(...(await runCount(n, o, rate)));
  const idle = (n: number, p2p: boolean): ContainerCase | undefined => cases.find((c) => c.devices === n && c.p2p === p2p && c.dirtyShare === 0);
  const p2pCost = counts
    .filter((n) => n >= 2)
    .map((n) => ({ devices: n, downtimeWithMs: idle(n, true)?.medianDowntimeMs ?? NaN, downtimeWithoutMs: idle(n, false)?.medianDowntimeMs ?? NaN, p2pMs: idle(n, true)?.medianP2pMs ?? NaN }));
  const result: ContainerResult = {
    guestBytes: o.guestBytes,
    budgetMs: o.budgetMs,
    stateBytes: o.stateBytes,
    copyGBps: round(((rate.bytesPerMs ?? 0) * 1000) / 1e9),
    cases,
    p2pCost,
    allWithinBudget: cases.every((c) => c.withinBudget === c.switchedOver),
  };
  if (o.log) printSummary(result);
  return result;
}

function printCase(c: ContainerCase, budgetMs: number): void {
  const migrated = c.runs.filter((r) => r.outcome === 'migrated').length;
  const range = (xs: number[]): string => `${Math.min(...xs)}–${Math.max(...xs)}`;
  const total = `${c.medianTotalMs} (${range(c.runs.map((r) => r.totalMs))})`;
  const downtime = `${c.medianDowntimeMs} (${range(c.runs.map((r) => r.downtimeMs))})`;
  const p2p = `${c.medianP2pMs} (${range(c.runs.map((r) => r.p2pMs))})`;
  const dirty = `${Math.round(c.dirtyShare * 100)} % / ${Math.round(c.achievedDirtyShare * 100)} %`;
  console.log(
    `  ${String(c.devices).padStart(7)}  ${c.p2p ? 'yes' : 'no '}  ${dirty.padEnd(15)}  ${`${migrated}/${c.runs.length} migrated`.padEnd(12)}  ${total.padEnd(22)}  ${downtime.padEnd(23)}  ${`${c.withinBudget}/${c.switchedOver}`.padEnd(7)}  ${p2p.padEnd(18)}  ${Math.max(...c.runs.map((r) => r.iterations))}`,
  );
  for (const r of c.runs) {
    if (r.outcome !== 'migrated' || r.downtimeMs > budgetMs) console.log(`      ↳ ${r.outcome}: ${r.reason ?? `downtime ${r.downtimeMs} ms > budget ${budgetMs} ms`}`);
  }
}

function printSummary(r: ContainerResult): void {
  console.log(`  reference: guest-memory copy ${r.copyGBps} GB/s; 10 % dirty = the sources together dirty 10 % of it (disjoint slices)`);
  for (const p of r.p2pCost) {
    console.log(`  P2P phase, ${p.devices} devices (idle): ${p.p2pMs} ms; downtime ${p.downtimeWithMs} ms with it, ${p.downtimeWithoutMs} ms without (devices lacking P2P, withoutP2P: 'warn')`);
  }
  const switched = r.cases.reduce((n, c) => n + c.switchedOver, 0);
  const within = r.cases.reduce((n, c) => n + c.withinBudget, 0);
  console.log(`  switch-overs within the ${r.budgetMs} ms budget: ${within}/${switched}`);
}
