/**
 * `vfio-user migrate-listen --port N`: the receiving host of a remote
 * migration. It listens for a migration channel (`vfio-user migrate --demo
 * --to tcp://HOST:PORT`), and for each offer acts as the destination VMM:
 * connects to the destination device (`--socket`, or a DMA engine it serves in
 * a child process), creates guest RAM of the offered size, DMA_MAPs it at the
 * offered IOVA, and lets the orchestrator drive the device through the
 * channel. An uncommitted migration (link lost, corrupt frame, abort) resets
 * the device and frees the memory. After the commit it continues the demo
 * workload from the migrated VMM state when the sender asks it to, and
 * answers whether guest memory matched the source's snapshot.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../client/client.js';
import { GuestMemory } from '../../client/guest-memory.js';
import { MigrationReceiver, type MigrationOffer, type PreparedDestination, type ReceiveOutcome } from '../../orchestrator/receiver.js';
import { CliError, parseInteger, parseTimeout, stdio, toJson, type GlobalOptions, type Output } from '../common.js';
import { JOB_WAIT_MS, JobStream, digestOutside, driverFor, holesOf, waitJobs, type WorkloadState } from '../migrate-workload.js';
import { startServer, type ServerProcess } from '../serve-child.js';

/** Options of `migrate-listen`. */
export interface MigrateListenOptions {
  port?: string;
  host?: string;
  socket?: string;
  once?: boolean;
  json?: boolean;
}

/** What the receiver answers the demo's `verify-and-continue`. */
export interface DemoVerdict {
  /** Destination guest memory equals the source's snapshot outside what unfinished jobs wrote. */
  memoryVerified: boolean;
  /** Jobs completed here (the unfinished ones of the migrated batch, then the rest of the stream). */
  doneOnDestination: number;
  failures: string[];
}

/**
 * Parses a bandwidth: bytes per second with an optional K/M/G suffix (powers of 1000, `B/s` optional).
 * @throws {CliError} for anything else or 0.
 */
export function parseBandwidth(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:b(?:\/s)?)?\s*$/i.exec(text);
  const value = m ? Number(m[1]) * ({ '': 1, k: 1e3, m: 1e6, g: 1e9 } as Record<string, number>)[(m[2] ?? '').toLowerCase()]! : NaN;
  if (!(value >= 1) || !Number.isFinite(value)) throw new CliError(`--bandwidth: '${text}' is not a bandwidth (e.g. 200M = 200 MB/s)`);
  return value;
}

/** The demo's continuation on the destination. */
async function verifyAndContinue(request: { snapshotDigest?: unknown; unfinished?: unknown }, vmState: Uint8Array | undefined, destination: PreparedDestination): Promise<DemoVerdict> {
  if (vmState === undefined) throw new CliError('no VMM state was migrated');
  const state = JSON.parse(Buffer.from(vmState).toString('utf8')) as WorkloadState;
  if (state.kind !== 'vfio-user-demo-jobs' || !Array.isArray(request.unfinished) || typeof request.snapshotDigest !== 'string') throw new CliError('not a demo workload');
  const { client, memory } = destination.side;
  const seqs = new Set(request.unfinished as number[]);
  const stream = JobStream.fromState(driverFor(client, memory), state);
  const unfinished = stream.inFlight.filter((j) => seqs.has(j.seq));
  const failures: string[] = [];
  if (!(await waitJobs(memory, unfinished, performance.now() + JOB_WAIT_MS))) failures.push(`jobs still pending on the destination after ${JOB_WAIT_MS} ms`);
  const memoryVerified = digestOutside(memory.read(0n, Number(memory.size)), holesOf(unfinished)) === request.snapshotDigest;
  const before = state.finished + state.inFlight.length - unfinished.length;
  stream.start(stream.driver);
  await stream.done();
  failures.push(...stream.failures.slice(state.failures.length));
  if (stream.posted < stream.total || stream.inFlight.length > 0) failures.push(`the destination did not finish the jobs (${stream.finished} of ${stream.total})`);
  return { memoryVerified, doneOnDestination: stream.finished - before, failures };
}

/** Connects to the device, retrying while the server still finishes the previous session (EBUSY). */
async function connectDevice(socket: string, timeoutMs: number): Promise<VfioUserClient> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await VfioUserClient.connect(socket, { timeoutMs, connectTimeoutMs: timeoutMs });
    } catch (error) {
      if (performance.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/** The one-line (or JSON) account of a finished migration. */
function report(o: ReceiveOutcome, verdict: DemoVerdict | undefined, json: boolean, out: Output): void {
  const doc = { outcome: o.outcome, peer: o.peer, ...(o.reason ? { reason: o.reason } : {}), memoryBytes: o.memoryBytes, deviceBytes: o.deviceBytes, ...(verdict ? { demo: verdict } : {}) };
  if (json) out.line(toJson(doc));
  else {
    const demo = verdict ? `; demo: ${verdict.doneOnDestination} jobs done here, memory ${verdict.memoryVerified ? 'equals' : 'DIFFERS from'} the snapshot, errors ${verdict.failures.length}` : '';
    out.line(`${o.outcome} from ${o.peer}${o.reason ? ` (${o.reason})` : ''}: ${(Number(o.memoryBytes) / 1e6).toFixed(1)} MB memory, ${(Number(o.deviceBytes) / 1e6).toFixed(1)} MB device${demo}`);
  }
}

/**
 * Runs `migrate-listen`: until SIGINT/SIGTERM, or the first migration's end with `--once`.
 * @throws {CliError} on a bad option, a port in use, or (with `--once`) a migration that did not commit.
 */
export async function runMigrateListen(options: MigrateListenOptions = {}, global: GlobalOptions = {}, out: Output = stdio): Promise<void> {
  const port = Number(parseInteger(options.port ?? '0', '--port', 65535n));
  const host = options.host ?? '127.0.0.1';
  const timeoutMs = parseTimeout(global.timeout);
  const json = options.json === true;
  const dir = options.socket === undefined ? mkdtempSync(join(tmpdir(), 'vfio-user-listen-')) : undefined;
  let server: ServerProcess | undefined;
  try {
    const socket = options.socket ?? join(dir as string, 'destination.sock');
    if (options.socket === undefined) server = await startServer(socket);
    let finish!: (ok: boolean) => void;
    const finished = new Promise<boolean>((resolve) => (finish = resolve));
    const demo: { verdict?: DemoVerdict } = {};
    let lastVmState: Uint8Array | undefined;
    const release = async (side: PreparedDestination['side']): Promise<void> => {
      side.client.close();
      side.memory.dispose();
      await new Promise((resolve) => setTimeout(resolve, 20));
    };
    const receiver = await MigrationReceiver.listen({
      host,
      port,
      prepare: async (offer: MigrationOffer) => {
        const client = await connectDevice(socket, timeoutMs);
        const memory = GuestMemory.create(offer.memory.size, { name: 'migrate-listen-ram' });
        try {
          await memory.attach(client, { iova: offer.memory.iova, mode: 'fd' });
        } catch (error) {
          memory.dispose();
          client.close();
          throw error;
        }
        const side = { client, memory, iova: offer.memory.iova };
        return { side, release: () => release(side) };
      },
      onMessage: async (head, _body, destination) => {
        const request = head as { demo?: unknown };
        if (request.demo !== 'verify-and-continue') throw new CliError(`unknown message ${JSON.stringify(head)}`);
        demo.verdict = await verifyAndContinue(request as never, lastVmState, destination);
        return { result: demo.verdict };
      },
      onOutcome: (o) => {
        if (o.outcome === 'committed') {
          lastVmState = o.vmState;
          return;
        }
        report(o, undefined, json, out);
        if (options.once) finish(false);
      },
      onCommittedClosed: (o) => {
        report(o, demo.verdict, json, out);
        const ok = demo.verdict === undefined || (demo.verdict.memoryVerified && demo.verdict.failures.length === 0);
        demo.verdict = undefined;
        if (o.destination) void release(o.destination.side);
        if (options.once) finish(ok);
      },
    });
    process.stderr.write(`listening tcp://${host.includes(':') ? `[${host}]` : host}:${receiver.port} (destination device ${options.socket ?? `dma-engine, pid ${server?.child.pid}`})\n`);
    const stop = (): void => finish(true);
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    const ok = await finished;
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    receiver.close();
    if (!ok) throw new CliError('migrate-listen: the migration did not complete');
  } finally {
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}
