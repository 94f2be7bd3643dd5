/**
 * The device host benchmark (`--only host`): one `vfio-user host` process
 * (every instance in its own worker thread) started with the benchmark's
 * parent (host-parent.ts: our GPIO card per instance), then
 * - create-and-start latency of each instance through the control socket
 *   (`start -p bench -t bench-gpio`, what `vfio-user mdev start` sends), for
 *   `instances` instances (1,000 in a full run);
 * - the host's memory, threads and fds before and after: the per-instance cost;
 * - a 4-byte REGION_READ round trip of one instance (the C vfio-user client of
 *   the server benchmark, `echo vfu`), while every other instance is idle and
 *   while 10 others are kept busy by 10 more C clients, against the
 *   single-device server of today (serve-gpio.js) measured in the same run.
 * Instances start with the host unpinned, two control requests in flight; for
 * the round trips the host's every thread and the client are pinned to CPU 0
 * when `pin` is given (the busy clients run on CPU 1), so the busy instances' workers compete with the measured one
 * for CPU 0: that contention is what the busy figure shows.
 */
import { once } from 'node:events';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connectHost } from '../src/host/control-client.js';
import { summarise, type LatencySummary } from './stats.js';
import { measureRegionReads } from './host-rtt.js';

/** Inputs of {@link runHostBench}. */
export interface HostBenchOptions {
  dir: string;
  /** The C echo program (bench/c/echo.c). */
  echo: string;
  /** `taskset -c 0`, or empty. */
  pin: string[];
  /** Instances to start in the host. */
  instances: number;
  /** REGION_READs per round trip measurement. */
  iterations: number;
  log: boolean;
}

/** A process's footprint, from /proc. */
export interface Footprint {
  rssMiB: number;
  threads: number;
  fds: number;
}

/** Everything this section measures. */
export interface HostResult {
  instances: number;
  /** Create-and-start latency, control request to instance served (ns), two requests in flight. */
  startLatency: LatencySummary;
  /** Wall time to start them all, two requests in flight (s). */
  startAllSeconds: number;
  before: Footprint;
  after: Footprint;
  perInstance: { rssMiB: number; threads: number; fds: number };
  /** REGION_READ round trip of one instance (ns). */
  rtt: { singleServer: LatencySummary; hostIdle: LatencySummary; hostTenBusy: LatencySummary; idleVsSingle: number; busyVsSingle: number };
  /** SIGTERM to exit, every instance stopped and its socket removed (s). */
  shutdownSeconds: number;
}

/** Control requests in flight while starting instances (one per vCPU of these VMs). */
const STARTS_IN_FLIGHT = 2;
const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;
const PARENT = new URL('./host-parent.js', import.meta.url).pathname;

/** The footprint of process `pid` now. */
export function footprint(pid: number): Footprint {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  return { rssMiB: round2(field('VmRSS') / 1024), threads: field('Threads'), fds: readdirSync(`/proc/${pid}/fd`).length };
}

/** Starts `vfio-user host` (its JSON log lines go to `log`, not to the report). */
async function startHost(runDir: string, configDir: string, log: string): Promise<ChildProcess> {
  const args = [CLI, 'host', '--parent', PARENT, '--no-builtin-parents', '--run-dir', runDir, '--config-dir', configDir];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', openSync(log, 'w')] });
  let seen = '';
  for await (const chunk of child.stdout as NodeJS.ReadableStream) {
    seen += String(chunk);
    if (seen.includes('host ready')) return child;
  }
  throw new Error(`vfio-user host did not start: ${seen}`);
}

/** Runs the host section. */
export async function runHostBench(o: HostBenchOptions): Promise<HostResult> {
  const runDir = join(o.dir, 'host-run');
  const configDir = join(o.dir, 'host-config');
  mkdirSync(configDir, { recursive: true });
  const host = await startHost(runDir, configDir, join(o.dir, 'host.log'));
  const pid = host.pid as number;
  const api = await connectHost(join(runDir, 'control.sock'));
  try {
    await sleep(500);
    const before = footprint(pid);
    const samples = new Float64Array(o.instances);
    const sockets: string[] = [];
    let next = 0;
    const starter = async (): Promise<void> => {
      for (let i = next++; i < o.instances; i = next++) {
        const s = process.hrtime.bigint();
        const instance = await api.start({ parent: 'bench', mdevType: 'bench-gpio' });
        samples[i] = Number(process.hrtime.bigint() - s);
        sockets[i] = instance.socket;
        if (o.log && (i + 1) % 100 === 0) process.stderr.write(`  host: ${i + 1}/${o.instances} instances started\n`);
      }
    };
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: STARTS_IN_FLIGHT }, starter));
    const startAllSeconds = round2(Number(process.hrtime.bigint() - t0) / 1e9);
    await sleep(1000);
    const after = footprint(pid);
    // Round trips with the whole host (every thread) on CPU 0, like the measuring client and the reference server.
    if (o.pin.length) execFileSync('taskset', ['-a', '-p', '-c', '0', String(pid)], { stdio: 'ignore' });
    const rtt = await measureRegionReads({ ...o, sockets });
    api.close();
    const stop = process.hrtime.bigint();
    host.kill('SIGTERM');
    await once(host, 'exit');
    const shutdownSeconds = round2(Number(process.hrtime.bigint() - stop) / 1e9);
    const n = o.instances;
    const result: HostResult = {
      instances: n,
      startLatency: summarise(samples),
      startAllSeconds,
      before,
      after,
      perInstance: { rssMiB: round2((after.rssMiB - before.rssMiB) / n), threads: round2((after.threads - before.threads) / n), fds: round2((after.fds - before.fds) / n) },
      rtt,
      shutdownSeconds,
    };
    if (o.log) print(result, o.pin.length > 0);
    return result;
  } finally {
    api.close();
    if (host.exitCode === null && host.signalCode === null) host.kill('SIGKILL');
  }
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

function print(r: HostResult, pinned: boolean): void {
  const ms = (ns: number): string => (ns / 1e6).toFixed(1);
  const us = (s: LatencySummary): string => `mean ${(s.meanNs / 1000).toFixed(2)} µs, p50 ${(s.p50Ns / 1000).toFixed(2)}, p99 ${(s.p99Ns / 1000).toFixed(2)}`;
  console.log(`\nDevice host: ${r.instances} instances of the GPIO card in one \`vfio-user host\` (a worker thread each), started unpinned;${pinned ? ' round trips with the host and measuring client on CPU 0 (taskset -c 0), busy clients on CPU 1' : ' NOT pinned'}`);
  console.log(`  create-and-start latency (control socket → served)   p50 ${ms(r.startLatency.p50Ns)} ms, p99 ${ms(r.startLatency.p99Ns)} ms, mean ${ms(r.startLatency.meanNs)} ms`);
  console.log(`  time to start all ${r.instances} (2 requests in flight)          ${r.startAllSeconds} s`);
  console.log(`  host footprint before / after                        ${r.before.rssMiB} / ${r.after.rssMiB} MiB RSS, ${r.before.threads} / ${r.after.threads} threads, ${r.before.fds} / ${r.after.fds} fds`);
  console.log(`  per instance                                         ${r.perInstance.rssMiB} MiB RSS, ${r.perInstance.threads} threads, ${r.perInstance.fds} fds`);
  console.log(`  4-byte REGION_READ round trip, C client:`);
  console.log(`    single-device server (serve-gpio, today)           ${us(r.rtt.singleServer)}`);
  console.log(`    one host instance, the others idle                 ${us(r.rtt.hostIdle)}  (${r.rtt.idleVsSingle}× single)`);
  console.log(`    one host instance, 10 others busy                  ${us(r.rtt.hostTenBusy)}  (${r.rtt.busyVsSingle}× single)`);
  console.log(`  shutdown (SIGTERM → exit, every instance stopped)    ${r.shutdownSeconds} s`);
}
