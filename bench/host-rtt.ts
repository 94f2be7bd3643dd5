/**
 * REGION_READ round trips for the host benchmark: the C vfio-user client
 * (`echo vfu`) against one host instance while the others are idle, then
 * while 10 others are kept busy, and against the single-device server
 * (serve-gpio.js) in the same run — rounds interleaved, best of three.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { LatencySummary } from './stats.js';

const run = promisify(execFile);
const GPIO = new URL('./serve-gpio.js', import.meta.url).pathname;
/** BAR2 of the GPIO card (vfio region index 2), its read-only INPUT register. */
const GPIO_REGION = '2';
const GPIO_INPUT = '0x14';
/** Instances kept busy for the "10 busy" figure. */
const BUSY = 10;

/** Inputs of {@link measureRegionReads}. */
export interface RttOptions {
  dir: string;
  echo: string;
  pin: string[];
  iterations: number;
  /** Every instance's socket; the first is measured, the next 10 are kept busy. */
  sockets: string[];
}

async function readLatency(o: RttOptions, socket: string): Promise<LatencySummary> {
  const cmd = [...o.pin, o.echo, 'vfu', socket, String(o.iterations), '1', GPIO_REGION, GPIO_INPUT];
  const { stdout } = await run(cmd[0] as string, cmd.slice(1), { encoding: 'utf8' });
  return JSON.parse(stdout) as LatencySummary;
}

async function singleServer(o: RttOptions, round: number): Promise<LatencySummary> {
  const socket = join(o.dir, `host-ref-${round}.sock`);
  const cmd = [...o.pin, process.execPath, GPIO, socket];
  const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const [chunk] = (await once(child.stdout as NodeJS.ReadableStream, 'data')) as [Buffer];
    if (!chunk.toString().includes('ready')) throw new Error(`serve-gpio did not start: ${chunk.toString()}`);
    return await readLatency(o, socket);
  } finally {
    child.kill('SIGTERM');
    if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
  }
}

/** Starts C clients reading without end from `sockets` (on CPU 1 when pinning). */
function busyClients(o: RttOptions, sockets: readonly string[]): ChildProcess[] {
  const pin = o.pin.length ? ['taskset', '-c', '1'] : [];
  return sockets.map((socket) => {
    const cmd = [...pin, o.echo, 'vfu', socket, '50000000', '1', GPIO_REGION, GPIO_INPUT];
    return spawn(cmd[0] as string, cmd.slice(1), { stdio: 'ignore' });
  });
}

async function stopAll(children: readonly ChildProcess[]): Promise<void> {
  await Promise.all(
    children.map(async (c) => {
      if (c.exitCode !== null || c.signalCode !== null) return;
      c.kill('SIGKILL');
      await once(c, 'exit');
    }),
  );
}

function keepBest(prev: LatencySummary | undefined, next: LatencySummary): LatencySummary {
  return !prev || next.meanNs < prev.meanNs ? next : prev;
}

/** Measures the three round trips, best of three interleaved rounds each. */
export async function measureRegionReads(o: RttOptions): Promise<{ singleServer: LatencySummary; hostIdle: LatencySummary; hostTenBusy: LatencySummary; idleVsSingle: number; busyVsSingle: number }> {
  const measured = o.sockets[0];
  if (measured === undefined) throw new Error('the host benchmark needs at least one instance');
  const busySockets = o.sockets.slice(1, 1 + BUSY);
  let single: LatencySummary | undefined;
  let idle: LatencySummary | undefined;
  let busy: LatencySummary | undefined;
  for (let round = 0; round < 3; round++) {
    single = keepBest(single, await singleServer(o, round));
    idle = keepBest(idle, await readLatency(o, measured));
    const load = busyClients(o, busySockets);
    try {
      busy = keepBest(busy, await readLatency(o, measured));
    } finally {
      await stopAll(load);
    }
  }
  const s = single as LatencySummary;
  const i = idle as LatencySummary;
  const b = busy as LatencySummary;
  const ratio = (x: LatencySummary): number => Math.round((x.meanNs / s.meanNs) * 100) / 100;
  return { singleServer: s, hostIdle: i, hostTenBusy: b, idleVsSingle: ratio(i), busyVsSingle: ratio(b) };
}
