/**
 * `vfio-user migrate --demo`: live migration end to end on this machine. Two
 * DMA engines are served by child processes (`vfio-user serve dma-engine`),
 * each gets 64 MiB of guest RAM (memfd, DMA_MAP at the same IOVA); a batch of
 * copy jobs runs on the source while {@link migrate} moves guest memory and
 * device state to the destination under the downtime budget. Then the
 * destination's guest memory is checked against the source's snapshot taken
 * at switch-over (the stopped source's memory), and the jobs the source had
 * not finished must complete, correctly, on the destination.
 */
import { randomFillSync, randomInt } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VfioUserClient } from '../../client/client.js';
import { GuestMemory } from '../../client/guest-memory.js';
import { enableBusMaster } from '../../client/pci-config.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, DescriptorStatus, decodeResult, encodeDescriptor } from '../../devices/dma-descriptor.js';
import { DmaEngineReg } from '../../devices/dma-engine.js';
import { fnv1a32 } from '../../devices/fnv1a.js';
import { migrate, type MigrationReport } from '../../orchestrator/migrate.js';
import { createProgressBar } from '../../orchestrator/progress.js';
import { startServer } from '../serve-child.js';
import { CliError, parseCount, stdio, toJson, withClient, type GlobalOptions, type Output } from '../common.js';
import { DmaEngineDriver, type CopyJob } from '../dma-driver.js';
import { verifyJob } from './demo.js';

/** Options of `migrate`. */
export interface MigrateCommandOptions {
  demo?: boolean;
  downtime?: string;
  jobs?: string;
  json?: boolean;
}

/** The `--json` document. */
export interface MigrateSummary {
  outcome: MigrationReport['outcome'];
  reason?: string;
  sourceRecovery?: MigrationReport['sourceRecovery'];
  totalMs: number;
  downtimeMs: number;
  budgetMs: number;
  projectedDowntimeMs: number | null;
  bytes: MigrationReport['bytes'];
  iterations: number;
  arcs: MigrationReport['arcs'];
  jobs: { total: number; doneOnSource: number; doneOnDestination: number; errors: number; firstErrors: string[] };
  /** Destination guest memory equal to the source's switch-over snapshot (outside the unfinished jobs' writes). */
  memoryVerified: boolean | null;
}

const GUEST_RAM = 64 << 20;
const IOVA = 0x1_0000_0000n;
const RING_GPA = 0n;
const RING_SIZE = 64;
const DATA_GPA = 1 << 20;
const MIN_JOB = 64 << 10;
const MAX_JOB = 256 << 10;
const SLOT = 2 * MAX_JOB;
/** One batch in flight, data in two halves of BATCH slots (sources and destinations) in guest RAM. */
const MAX_JOBS = 1_000_000;
const BATCH = 15;
const JOB_WAIT_MS = 20_000;

/**
 * Parses `--downtime`: `300ms`, `1s`, `1.5s` or plain milliseconds.
 * @throws {CliError} otherwise.
 */
export function parseDowntime(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$/.exec(text);
  if (!m) throw new CliError(`--downtime: '${text}' is not a duration (e.g. 300ms, 1s)`);
  const ms = Number(m[1]) * (m[2] === 's' ? 1000 : 1);
  if (!Number.isFinite(ms)) throw new CliError(`--downtime: '${text}' is not a duration (e.g. 300ms, 1s)`);
  return ms;
}


const isPending = (memory: GuestMemory, job: CopyJob): boolean =>
  (decodeResult(memory.view(RING_GPA + BigInt(job.slot * DESCRIPTOR_SIZE), DESCRIPTOR_SIZE)).status & 0xffff) === DescriptorStatus.PENDING;

/** Polls the ring in guest RAM (shared with the device) until no job is PENDING; false at `deadline` or when `stop()`. */
async function waitJobs(memory: GuestMemory, jobs: readonly CopyJob[], deadline: number, stop: () => boolean = () => false): Promise<boolean> {
  while (jobs.some((j) => isPending(memory, j))) {
    if (performance.now() > deadline || stop()) return false;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  return true;
}

/** Compares `a` and `b` over [0, size) except the `holes` ([start, end) ranges). */
function equalOutside(a: Uint8Array, b: Uint8Array, holes: [number, number][]): boolean {
  let at = 0;
  for (const [start, end] of [...holes, [a.length, a.length] as [number, number]].sort((x, y) => x[0] - y[0])) {
    if (start > at && Buffer.compare(a.subarray(at, start), b.subarray(at, start)) !== 0) return false;
    at = Math.max(at, end);
  }
  return true;
}

async function attach(client: VfioUserClient, name: string): Promise<GuestMemory> {
  const memory = GuestMemory.create(GUEST_RAM, { name });
  try {
    await memory.attach(client, { iova: IOVA, mode: 'fd' });
  } catch (error) {
    memory.dispose();
    throw error;
  }
  return memory;
}

/** Posts copy jobs in batches (the next once the current is done) until paused or `total` are posted; verifies every finished batch. */
class JobStream {
  readonly total: number;
  readonly failures: string[] = [];
  /** Jobs posted and not yet seen finished. */
  inFlight: CopyJob[] = [];
  posted = 0;
  finished = 0;
  #paused = false;
  #tail = 0;
  #driver: DmaEngineDriver;
  #running: Promise<void> | undefined;

  constructor(driver: DmaEngineDriver, total: number) {
    this.#driver = driver;
    this.total = total;
  }

  get driver(): DmaEngineDriver {
    return this.#driver;
  }

  /** Runs on `driver` (its guest RAM) from where the stream is. */
  start(driver: DmaEngineDriver): void {
    this.#driver = driver;
    this.#paused = false;
    this.#running = this.#loop();
  }

  /** No new doorbell after this returns (the one in flight precedes the next request on the connection). */
  pause(): void {
    this.#paused = true;
  }

  async done(): Promise<void> {
    await this.#running;
  }

  async #loop(): Promise<void> {
    const deadline = (): number => performance.now() + JOB_WAIT_MS;
    for (;;) {
      if (this.inFlight.length > 0) {
        if (!(await waitJobs(this.#driver.memory, this.inFlight, deadline(), () => this.#paused))) return;
        for (const job of this.inFlight) {
          const problem = verifyJob(this.#driver, job);
          if (problem) this.failures.push(problem);
        }
        this.finished += this.inFlight.length;
        this.inFlight = [];
      }
      if (this.#paused || this.posted >= this.total) return;
      const count = Math.min(BATCH, this.total - this.posted);
      const half = (this.posted / BATCH) % 2;
      const jobs: CopyJob[] = [];
      for (let i = 0; i < count; i++) {
        const base = BigInt(DATA_GPA + (half * BATCH + i) * SLOT);
        const length = randomInt(MIN_JOB, MAX_JOB + 1);
        const source = this.#driver.memory.view(base, length, { markDirty: true }); // a guest CPU write: the dirty log must see it
        randomFillSync(source);
        jobs.push({ seq: this.posted + i, slot: (this.#tail + i) % RING_SIZE, src: base, dst: base + BigInt(MAX_JOB), length, expected: fnv1a32(source) });
      }
      for (const job of jobs) {
        const descriptor = encodeDescriptor({ src: IOVA + job.src, dst: IOVA + job.dst, length: job.length, flags: DescriptorFlags.COPY });
        this.#driver.memory.write(RING_GPA + BigInt(job.slot * DESCRIPTOR_SIZE), descriptor);
      }
      this.#tail = (this.#tail + count) % RING_SIZE;
      this.inFlight = jobs;
      this.posted += count;
      await this.#driver.setReg(DmaEngineReg.TAIL, this.#tail);
    }
  }
}

async function runPair(src: VfioUserClient, dst: VfioUserClient, total: number, budgetMs: number, out: Output, quiet: boolean): Promise<MigrateSummary> {
  const say = (line: string): void => void (quiet || out.line(line));
  const srcMem = await attach(src, 'migrate-source-ram');
  let dstMem: GuestMemory | undefined;
  try {
    dstMem = await attach(dst, 'migrate-destination-ram');
    say(`guest RAM  ${GUEST_RAM >> 20} MiB memfd on each side, DMA_MAP at IOVA 0x${IOVA.toString(16)}`);
    await enableBusMaster(src);
    const driver = new DmaEngineDriver(src, srcMem, IOVA, RING_GPA, RING_SIZE);
    await driver.start();
    const stream = new JobStream(driver, total);
    stream.start(driver);
    say(`jobs       ${total} copy jobs of ${MIN_JOB >> 10}..${MAX_JOB >> 10} KiB streamed on the source, ${BATCH} per doorbell; migrating with a ${budgetMs} ms downtime budget`);
    // Let the stream get going before the migration starts.
    const warm = performance.now() + 1000;
    while (stream.finished < Math.min(total, 2 * BATCH) && performance.now() < warm) await new Promise((resolve) => setTimeout(resolve, 1));

    const bar = createProgressBar({ memoryBytes: GUEST_RAM });
    let report: MigrationReport;
    try {
      report = await migrate({
        source: { client: src, memory: srcMem, iova: IOVA },
        destination: { client: dst, memory: dstMem, iova: IOVA },
        downtimeBudgetMs: budgetMs,
        onProgress: (p) => {
          // The vCPUs pause before the switch-over: no doorbell once it is next.
          if (p.phase !== 'precopy' || p.projectedDowntimeMs <= budgetMs) stream.pause();
          bar.onProgress?.(p);
        },
      });
    } finally {
      bar.stop();
    }
    stream.pause();
    await stream.done();

    const summary: MigrateSummary = {
      outcome: report.outcome,
      ...(report.reason === undefined ? {} : { reason: report.reason }),
      ...(report.sourceRecovery === undefined ? {} : { sourceRecovery: report.sourceRecovery }),
      totalMs: report.totalMs,
      downtimeMs: report.downtimeMs,
      budgetMs,
      projectedDowntimeMs: Number.isFinite(report.projectedDowntimeMs) ? report.projectedDowntimeMs : null,
      bytes: report.bytes,
      iterations: report.iterations,
      arcs: report.arcs,
      jobs: { total, doneOnSource: 0, doneOnDestination: 0, errors: 0, firstErrors: [] },
      memoryVerified: null,
    };
    const failures = stream.failures;
    if (report.outcome === 'migrated') {
      // The source stopped at STOP_COPY: its memory is the switch-over snapshot.
      const snapshot = srcMem.read(0n, GUEST_RAM);
      const unfinished = stream.inFlight.filter((j) => isPending(srcMem, j));
      summary.jobs.doneOnSource = stream.finished + stream.inFlight.length - unfinished.length;
      const holes = unfinished.flatMap((j): [number, number][] => [
        [Number(RING_GPA) + j.slot * DESCRIPTOR_SIZE, Number(RING_GPA) + (j.slot + 1) * DESCRIPTOR_SIZE],
        [Number(j.dst), Number(j.dst) + j.length],
      ]);
      // The destination finishes the batch in flight at switch-over, then the remaining jobs.
      if (!(await waitJobs(dstMem, unfinished, performance.now() + JOB_WAIT_MS))) failures.push(`jobs still pending on the destination after ${JOB_WAIT_MS} ms`);
      summary.memoryVerified = equalOutside(dstMem.read(0n, GUEST_RAM), snapshot, holes);
      if (!summary.memoryVerified) failures.push('destination guest memory differs from the source snapshot at switch-over');
      stream.start(new DmaEngineDriver(dst, dstMem, IOVA, RING_GPA, RING_SIZE));
      await stream.done();
      if (stream.posted < total || stream.inFlight.length > 0) failures.push(`the destination did not finish the jobs (${stream.finished} of ${total})`);
      summary.jobs.doneOnDestination = stream.finished - summary.jobs.doneOnSource;
    } else {
      // The source runs again: it finishes the batch in flight and the rest itself.
      stream.start(driver);
      await stream.done();
      if (stream.posted < total || stream.inFlight.length > 0) failures.push(`the source did not finish the jobs (${stream.finished} of ${total})`);
      summary.jobs.doneOnSource = stream.finished;
    }
    summary.jobs.errors = failures.length;
    summary.jobs.firstErrors = failures.slice(0, 5);
    return summary;
  } finally {
    srcMem.dispose();
    dstMem?.dispose();
  }
}

const mb = (n: bigint): string => (Number(n) / 1e6).toFixed(1);

/** The human-readable summary. */
export function formatMigrateSummary(s: MigrateSummary): string[] {
  const lines = [
    `outcome    ${s.outcome}${s.reason ? `: ${s.reason}` : ''}${s.sourceRecovery ? ` (source ${s.sourceRecovery})` : ''}`,
    `downtime   ${s.downtimeMs.toFixed(2)} ms of a ${s.budgetMs} ms budget (projected ${s.projectedDowntimeMs === null ? '-' : s.projectedDowntimeMs.toFixed(2)} ms); total ${s.totalMs.toFixed(1)} ms, ${s.iterations} pre-copy iterations`,
    `bytes      pre-copy ${mb(s.bytes.precopyMemory)} MB memory + ${mb(s.bytes.precopyDevice)} MB device; stop-copy ${mb(s.bytes.stopCopyMemory)} MB memory + ${mb(s.bytes.stopCopyDevice)} MB device`,
    `arcs       ${s.arcs.map((a) => `${a.side} ${a.from}>${a.to} ${a.ms.toFixed(2)} ms`).join(', ') || '-'}`,
    `jobs       ${s.jobs.total}: ${s.jobs.doneOnSource} done on the source, ${s.jobs.doneOnDestination} on the destination; errors ${s.jobs.errors}${s.memoryVerified === null ? '' : `; destination memory ${s.memoryVerified ? 'equals' : 'DIFFERS from'} the switch-over snapshot`}`,
  ];
  for (const e of s.jobs.firstErrors) lines.push(`error      ${e}`);
  return lines;
}

/**
 * Runs `migrate --demo`.
 * @throws {CliError} when the migration did not complete (after printing the summary), or verification failed.
 */
export async function runMigrate(options: MigrateCommandOptions = {}, global: GlobalOptions = {}, out: Output = stdio): Promise<void> {
  if (!options.demo) throw new CliError('migrate: only --demo is supported (two local DMA engines served by child processes)');
  const budgetMs = parseDowntime(options.downtime ?? '300ms');
  const jobs = parseCount(options.jobs ?? '600', '--jobs', MAX_JOBS);
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-migrate-'));
  try {
    const servers = await Promise.all([startServer(join(dir, 'source.sock')), startServer(join(dir, 'destination.sock'))]);
    let summary: MigrateSummary;
    try {
      if (!options.json) out.line(`servers    source pid ${servers[0].child.pid}, destination pid ${servers[1].child.pid} (vfio-user serve dma-engine)`);
      summary = await withClient(join(dir, 'source.sock'), global, (src) =>
        withClient(join(dir, 'destination.sock'), global, (dst) => runPair(src, dst, jobs, budgetMs, out, options.json === true), { out }),
        { out },
      );
    } finally {
      await Promise.all(servers.map((s) => s.stop()));
    }
    if (options.json) out.line(toJson(summary));
    else formatMigrateSummary(summary).forEach((l) => out.line(l));
    if (summary.outcome !== 'migrated') throw new CliError(`migrate: ${summary.outcome}: ${summary.reason ?? 'unknown reason'}`);
    if (summary.jobs.errors > 0) throw new CliError(`migrate: verification failed: ${summary.jobs.firstErrors[0] ?? ''}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
