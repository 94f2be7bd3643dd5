/**
 * Hot-unplug (`--only unplug`): how long a device host's `stop` takes for an
 * instance in use, through the host API (what `vfio-user mdev stop` sends):
 * one `vfio-user host` (bench/host-parent.ts: the GPIO card per instance) and
 * a client process (bench/unplug-client.ts), both pinned to CPU 0 when `pin`
 * is given; this process sends the control requests. A fresh instance per
 * stop, the cases' stops interleaved (after two warm-up stops of each of the first three cases):
 * - idle: no client connected (the reference: stopping the instance's cell);
 * - released: a cooperating client, which closes its connection at the first
 *   release request (`onReleaseRequest`, the REQ eventfd), stop with a 10 s timeout;
 * - forced at once: a client connected, `force`;
 * - released through the CLI: as released, each stop a `vfio-user mdev stop`
 *   process (Node's start-up included; at most 10 stops);
 * - forced at the timeout: a client that ignores the requests, for each
 *   timeout: the stop's time over the timeout is the overhead.
 * Reported: the stop's wall time (control request to answer), the host's own
 * `waitedMs` and `requests`, and every stop's outcome (`release`) checked
 * against the case's.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { connectHost, type HostConnection } from '../src/host/control-client.js';
import type { ReleaseOutcome, StopRequest, StopResult } from '../src/host/api.js';
import { summarise, type LatencySummary } from './stats.js';
import { median, round } from './orchestrator-matrix.js';

/** Inputs of {@link runUnplugBench}. */
export interface UnplugBenchOptions {
  dir: string;
  /** `taskset -c 0`, or empty. */
  pin: string[];
  /** Stops per case (the forced-at-timeout cases take fewer: see {@link timeoutIterations}). */
  iterations: number;
  /** Timeouts of the ignoring client's cases (ms). */
  timeoutsMs: number[];
  log: boolean;
}

/** One case. */
export interface UnplugCase {
  name: string;
  /** What every stop of the case must report. */
  expected: ReleaseOutcome;
  /** Stops that reported something else. */
  unexpected: number;
  timeoutMs?: number;
  /** Control request to answer (ns). */
  stop: LatencySummary;
  /** The host's `waitedMs`, median. */
  waitedMs: number;
  /** Release requests signalled, median. */
  requests: number;
  /** For forced-at-timeout: median stop time over the timeout (ms). */
  overMs?: number;
}

/** What the section reports. */
export interface UnplugResult {
  pinned: boolean;
  cases: UnplugCase[];
}

const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;
const PARENT = new URL('./host-parent.js', import.meta.url).pathname;
const CLIENT = new URL('./unplug-client.js', import.meta.url).pathname;

/** Stops per forced-at-timeout case: fewer for long timeouts (about 10 s each at most). */
export function timeoutIterations(iterations: number, timeoutMs: number): number {
  return Math.max(1, Math.min(iterations, Math.floor(10_000 / timeoutMs)));
}

/** The client process: commands in, one answer line per event out. */
class ClientProcess {
  readonly proc: ChildProcess;
  readonly #lines: string[] = [];
  #waiter: ((line: string) => void) | undefined;

  constructor(pin: string[]) {
    const [file, ...args] = [...pin, process.execPath, CLIENT];
    this.proc = spawn(file as string, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    createInterface({ input: this.proc.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      if (this.#waiter) {
        const w = this.#waiter;
        this.#waiter = undefined;
        w(line);
      } else this.#lines.push(line);
    });
  }

  /** The next answer line. @throws Error on `error: …` or after 30 s. */
  async next(): Promise<string> {
    const line =
      this.#lines.shift() ??
      (await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('unplug client: no answer within 30 s')), 30_000);
        this.#waiter = (l) => {
          clearTimeout(timer);
          resolve(l);
        };
      }));
    if (line.startsWith('error:')) throw new Error(`unplug client: ${line}`);
    return line;
  }

  async attach(mode: 'coop' | 'ignore', socket: string): Promise<void> {
    (this.proc.stdin as NodeJS.WritableStream).write(`${mode} ${socket}\n`);
    const line = await this.next();
    if (line !== 'ready') throw new Error(`unplug client: expected ready, got '${line}'`);
  }
}

async function startHost(dir: string): Promise<ChildProcess> {
  const runDir = join(dir, 'unplug-run');
  const configDir = join(dir, 'unplug-config');
  mkdirSync(configDir, { recursive: true });
  const args = [CLI, 'host', '--parent', PARENT, '--no-builtin-parents', '--run-dir', runDir, '--config-dir', configDir];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', openSync(join(dir, 'unplug-host.log'), 'w')] });
  let seen = '';
  for await (const chunk of child.stdout as NodeJS.ReadableStream) {
    seen += String(chunk);
    if (seen.includes('host ready')) return child;
  }
  throw new Error(`vfio-user host did not start: ${seen}`);
}

interface CaseSpec {
  name: string;
  expected: ReleaseOutcome;
  client?: 'coop' | 'ignore';
  stop: Omit<StopRequest, 'uuid'>;
  iterations: number;
  /** Stop with `vfio-user mdev stop --json` (a Node process per stop) instead of the API. */
  cli?: boolean;
}

/** A case's stops so far. */
interface Tally {
  spec: CaseSpec;
  samples: number[];
  waited: number[];
  requests: number[];
  unexpected: number;
}

/** `vfio-user mdev stop --json -u UUID [--timeout Nms]`: its StopResult. */
async function cliStop(control: string, request: StopRequest): Promise<StopResult> {
  const args = [CLI, 'mdev', 'stop', '--json', '-u', request.uuid, ...(request.timeoutMs === undefined ? [] : ['--timeout', `${request.timeoutMs}ms`])];
  const child = spawn(process.execPath, args, { env: { ...process.env, VFIO_USER_CONTROL: control }, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`vfio-user mdev stop exited ${code}: ${out}`);
  return JSON.parse(out) as StopResult;
}

/** One stop of a fresh instance (with the case's client attached), timed from the control request (or the CLI's start) to its answer. */
async function stopOnce(api: HostConnection, client: ClientProcess, t: Tally): Promise<void> {
  const instance = await api.start({ parent: 'bench', mdevType: 'bench-gpio' });
  if (t.spec.client) await client.attach(t.spec.client, instance.socket);
  const request = { uuid: instance.uuid, ...t.spec.stop };
  const t0 = process.hrtime.bigint();
  const r = t.spec.cli ? await cliStop(api.socket, request) : await api.stop(request);
  t.samples.push(Number(process.hrtime.bigint() - t0));
  if (t.spec.client) await client.next(); // `gone <n>`: the client saw its connection end
  if (r.release !== t.spec.expected) t.unexpected++;
  t.waited.push(r.waitedMs);
  t.requests.push(r.requests);
}

function summariseCase(t: Tally): UnplugCase {
  const stop = summarise(Float64Array.from(t.samples));
  const timeoutMs = t.spec.stop.timeoutMs;
  return {
    name: t.spec.name,
    expected: t.spec.expected,
    unexpected: t.unexpected,
    ...(t.spec.client === 'ignore' && timeoutMs !== undefined ? { timeoutMs, overMs: round(stop.p50Ns / 1e6 - timeoutMs) } : {}),
    stop,
    waitedMs: round(median(t.waited)),
    requests: median(t.requests),
  };
}

/** Runs the section: the cases' stops interleaved (round-robin), so load on the machine falls on every case alike. */
export async function runUnplugBench(o: UnplugBenchOptions): Promise<UnplugResult> {
  const host = await startHost(o.dir);
  const api = await connectHost(join(o.dir, 'unplug-run', 'control.sock'));
  const client = new ClientProcess(o.pin);
  try {
    if (o.pin.length) execFileSync('taskset', ['-a', '-p', '-c', '0', String(host.pid)], { stdio: 'ignore' });
    const specs: CaseSpec[] = [
      { name: 'idle (no client)', expected: 'idle', stop: {}, iterations: o.iterations },
      { name: 'released (cooperating client, timeout 10 s)', expected: 'released', client: 'coop', stop: { timeoutMs: 10_000 }, iterations: o.iterations },
      { name: 'forced at once (--force)', expected: 'forced', client: 'ignore', stop: { force: true }, iterations: o.iterations },
      { name: 'released, through `vfio-user mdev stop` (a process)', expected: 'released', client: 'coop', stop: { timeoutMs: 10_000 }, iterations: Math.min(o.iterations, 10), cli: true },
      ...o.timeoutsMs.map((t): CaseSpec => ({ name: `forced at the timeout (${t} ms, client ignores)`, expected: 'forced', client: 'ignore', stop: { timeoutMs: t }, iterations: timeoutIterations(o.iterations, t) })),
    ];
    const tallies = specs.map((spec): Tally => ({ spec, samples: [], waited: [], requests: [], unexpected: 0 }));
    for (const t of tallies.slice(0, 3)) for (let i = 0; i < 2; i++) await stopOnce(api, client, { ...t, samples: [], waited: [], requests: [] }); // warm-up
    for (let i = 0; i < o.iterations; i++) {
      for (const t of tallies) if (i < t.spec.iterations) await stopOnce(api, client, t);
    }
    const result: UnplugResult = { pinned: o.pin.length > 0, cases: tallies.map(summariseCase) };
    if (o.log) print(result);
    return result;
  } finally {
    api.close();
    client.proc.kill('SIGKILL');
    host.kill('SIGKILL');
  }
}

function print(r: UnplugResult): void {
  const ms = (ns: number): string => (ns / 1e6).toFixed(2);
  console.log(`\nHot-unplug: \`stop\` of an instance of a \`vfio-user host\` through its control socket, a fresh instance per stop;${r.pinned ? ' host and client pinned to CPU 0 (taskset -c 0)' : ' NOT pinned'}`);
  console.log('  case                                                 stops  stop ms p50 / p99 / mean     host waited ms  requests  outcome');
  for (const c of r.cases) {
    const outcome = c.unexpected === 0 ? `all ${c.expected}` : `${c.unexpected} NOT ${c.expected}`;
    const over = c.overMs === undefined ? '' : `  (${c.overMs} ms over the timeout)`;
    console.log(
      `  ${c.name.padEnd(51)}  ${String(c.stop.iterations).padStart(5)}  ${`${ms(c.stop.p50Ns)} / ${ms(c.stop.p99Ns)} / ${ms(c.stop.meanNs)}`.padEnd(26)}  ${String(c.waitedMs).padStart(14)}  ${String(c.requests).padStart(8)}  ${outcome}${over}`,
    );
  }
}
