/**
 * The cost of instance cells: for 1, 10 and 100 cells (each
 * a worker thread serving one GPIO card of bench/host-parent.ts on its own
 * socket), in a fresh process per count, the process's RSS, threads and open
 * fds before (after one warm-up cell) and after starting them, the time each start took (bind +
 * worker + import + build + serve, started one after the other), and whether
 * stopping them all brings fds and threads back to where they were.
 *   node dist/bench/host-cells.js [--counts 1,10,100] [--json]
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bindInstanceSocket, InstanceCell, type InstanceSocket } from '../src/host/cell.js';
import { loadParent } from '../src/host/parent-loader.js';
import { VfioUserClient } from '../src/client/client.js';
import { summarise, type LatencySummary } from './stats.js';

/** The footprint of this process. */
interface Footprint {
  rssMiB: number;
  threads: number;
  fds: number;
}

/** What one count measured. */
export interface CellsRun {
  cells: number;
  before: Footprint;
  after: Footprint;
  /** After stopping every cell (fds and threads should be back to `before`). */
  stopped: Footprint;
  /** Per cell: (after - before) / cells. */
  perCell: { rssMiB: number; threads: number; fds: number };
  /** One start (bind, worker, build, serve), ms. */
  startMs: LatencySummary;
  /** All starts, one after the other, ms. */
  totalStartMs: number;
}

/** Results of {@link runCellsBench}. */
export interface CellsResult {
  runs: CellsRun[];
}

const PARENT_URL = new URL('./host-parent.js', import.meta.url).href;

function footprint(): Footprint {
  const status = readFileSync('/proc/self/status', 'utf8');
  const rssKiB = Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1] ?? NaN);
  return { rssMiB: rssKiB / 1024, threads: readdirSync('/proc/self/task').length, fds: readdirSync('/proc/self/fd').length };
}

async function settle(): Promise<Footprint> {
  await new Promise((resolve) => setTimeout(resolve, 500));
  return footprint();
}

/** Starts and stops one cell. */
async function warmUp(dir: string): Promise<void> {
  const uuid = 'ffffffff-0000-4000-8000-000000000000';
  const socket = bindInstanceSocket(join(dir, `${uuid}.sock`));
  try {
    const cell = await InstanceCell.start({ uuid, parent: 'bench', parentModule: PARENT_URL, type: 'gpio', attrs: [], socket: socket.path, listenFd: socket.fd });
    await cell.stop();
  } finally {
    socket.close();
  }
}

/** Runs in the child: starts `count` cells and measures. */
async function measure(count: number): Promise<CellsRun> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-cells-bench-'));
  const cells: { cell: InstanceCell; socket: InstanceSocket }[] = [];
  try {
    await loadParent(PARENT_URL); // as the host's main thread does, for the metadata
    await warmUp(dir); // the first worker's one-time costs (Node's /dev/null fd, …) are not per cell
    const before = await settle();
    const times: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < count; i++) {
      const uuid = `00000000-0000-4000-8000-${i.toString(16).padStart(12, '0')}`;
      const started = performance.now();
      const socket = bindInstanceSocket(join(dir, `${uuid}.sock`));
      const cell = await InstanceCell.start({ uuid, parent: 'bench', parentModule: PARENT_URL, type: 'gpio', attrs: [], socket: socket.path, listenFd: socket.fd });
      times.push(performance.now() - started);
      cells.push({ cell, socket });
    }
    const totalStartMs = performance.now() - t0;
    const probe = await VfioUserClient.connect(cells[cells.length - 1]?.socket.path ?? '');
    await probe.regionRead(2, 0n, 1); // the last one answers
    probe.close();
    const after = await settle();
    for (const { cell, socket } of cells.splice(0)) {
      await cell.stop({ force: true });
      socket.close();
    }
    const stopped = await settle();
    const per = (k: keyof Footprint): number => (after[k] - before[k]) / count;
    return { cells: count, before, after, stopped, perCell: { rssMiB: per('rssMiB'), threads: per('threads'), fds: per('fds') }, startMs: summarise(Float64Array.from(times, (ms) => ms * 1e6)), totalStartMs };
  } finally {
    for (const { cell, socket } of cells) {
      await cell.terminate();
      socket.close();
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Measures 1, 10 and 100 cells (or `counts`), each count in a fresh Node process.
 * @throws {Error} if a child fails (its stderr in the message).
 */
export function runCellsBench(options: { counts?: readonly number[]; log: boolean }): CellsResult {
  const runs: CellsRun[] = [];
  for (const count of options.counts ?? [1, 10, 100]) {
    const child = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', String(count)], { encoding: 'utf8', maxBuffer: 1 << 20 });
    if (child.status !== 0) throw new Error(`cells bench (${count} cells) failed: ${child.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    runs.push(JSON.parse(child.stdout) as CellsRun);
  }
  if (options.log) print(runs);
  return { runs };
}

/** {@link runCellsBench} under the name the lead registers in bench/run.ts. */
export function runHostCellsBench(options: { counts?: readonly number[]; log: boolean }): Promise<CellsResult> {
  return Promise.resolve(runCellsBench(options));
}

function print(runs: readonly CellsRun[]): void {
  console.log('\nInstance cells (one worker thread per instance, GPIO card; fresh process per row)');
  console.log('cells  RSS before→after MiB  per cell MiB  threads/cell  fds/cell  start p50 / p99 ms  all starts s  after stop: fds, threads');
  for (const r of runs) {
    const back = `${r.stopped.fds - r.before.fds >= 0 ? '+' : ''}${r.stopped.fds - r.before.fds}, ${r.stopped.threads - r.before.threads >= 0 ? '+' : ''}${r.stopped.threads - r.before.threads}`;
    console.log(
      `${String(r.cells).padStart(5)}  ${`${r.before.rssMiB.toFixed(0)}→${r.after.rssMiB.toFixed(0)}`.padStart(20)}  ${r.perCell.rssMiB.toFixed(1).padStart(12)}  ` +
        `${r.perCell.threads.toFixed(1).padStart(12)}  ${r.perCell.fds.toFixed(1).padStart(8)}  ${`${(r.startMs.p50Ns / 1e6).toFixed(0)} / ${(r.startMs.p99Ns / 1e6).toFixed(0)}`.padStart(18)}  ` +
        `${(r.totalStartMs / 1000).toFixed(1).padStart(12)}  ${back}`,
    );
  }
}

const childIndex = process.argv.indexOf('--child');
if (childIndex >= 0) {
  const run = await measure(Number(process.argv[childIndex + 1]));
  process.stdout.write(`${JSON.stringify(run)}\n`);
} else if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--counts');
  const counts = i >= 0 ? (process.argv[i + 1] ?? '').split(',').map(Number) : undefined;
  const json = process.argv.includes('--json');
  const result = runCellsBench({ ...(counts ? { counts } : {}), log: !json });
  if (json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
}
