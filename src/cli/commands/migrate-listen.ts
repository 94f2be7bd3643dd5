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
import { VfioUserClient } from '../../client/client.js';
import { GuestMemory } from '../../client/guest-memory.js';
import { isLoopback, loadTlsCredentials, type ChannelTlsCredentials } from '../../orchestrator/channel-tls.js';
import { MigrationReceiver, type MigrationOffer, type PreparedDestination, type ReceiveOutcome } from '../../orchestrator/receiver.js';
import { CliError, parseInteger, parseTimeout, stdio, toJson, type GlobalOptions, type Output } from '../common.js';
import { JOB_WAIT_MS, JobStream, digestOutside, driverFor, holesOf, waitJobs, type WorkloadState } from '../migrate-workload.js';
import { startServer, type ServerProcess } from '../serve-child.js';
import { faultPause } from '../fault-pause.js';

/** Options of `migrate-listen`. */
export interface MigrateListenOptions {
  port?: string;
  host?: string;
  socket?: string;
  once?: boolean;
  json?: boolean;
  /** A QEMU tls-creds-x509 directory (ca-cert.pem, server-cert.pem, server-key.pem): mutual TLS. */
  tlsCreds?: string;
  /** false (`--no-tls`): allow a plaintext channel beyond loopback. */
  tls?: boolean;
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
  return { memoryVerified, doneOnDestination: Math.max(0, stream.finished - before), failures };
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
function report(o: ReceiveOutcome, verdict: DemoVerdict | undefined, json: boolean, out: Output, note?: string): void {
  const doc = {
    outcome: o.outcome, phase: o.phase, ...(o.migrationId ? { migrationId: o.migrationId } : {}), peer: o.peer, ...(o.reason ? { reason: o.reason } : {}),
    memoryBytes: o.memoryBytes, deviceBytes: o.deviceBytes, ...(verdict ? { demo: verdict } : {}), ...(note ? { note } : {}),
  };
  if (json) out.line(toJson(doc));
  else {
    const demo = verdict ? `; demo: ${verdict.doneOnDestination} jobs done here, memory ${verdict.memoryVerified ? 'equals' : 'DIFFERS from'} the snapshot, errors ${verdict.failures.length}` : '';
    const id = o.migrationId ? ` migration ${o.migrationId}` : '';
    out.line(`${o.outcome}${id} from ${o.peer} in phase ${o.phase}${o.reason ? ` (${o.reason})` : ''}: ${(Number(o.memoryBytes) / 1e6).toFixed(1)} MB memory, ${(Number(o.deviceBytes) / 1e6).toFixed(1)} MB device${demo}${note ? `; ${note}` : ''}`);
  }
}

/** A committed migration whose sender is still connected: its destination runs here. */
interface Active {
  outcome: ReceiveOutcome;
  /** The demo's verify-and-continue in progress, if any. */
  work?: Promise<unknown>;
}

/**
 * Runs `migrate-listen`: until SIGINT/SIGTERM, or the first migration's end with `--once`.
 * A signal abandons a migration not yet committed (the sender is told, and
 * resumes its source) and stops; a committed destination is never torn down
 * silently: the receiver keeps serving it until its sender is done, and only
 * a second signal stops it, saying so.
 * @throws {CliError} on a bad option, a port in use, (with `--once`) a migration that did not commit,
 *   or a committed destination stopped by a second signal.
 */
export async function runMigrateListen(options: MigrateListenOptions = {}, global: GlobalOptions = {}, out: Output = stdio): Promise<void> {
  const port = Number(parseInteger(options.port ?? '0', '--port', 65535n));
  const host = options.host ?? '127.0.0.1';
  const timeoutMs = parseTimeout(global.timeout);
  const json = options.json === true;
  const tls = channelTls(host, options, 'server', 'migrate-listen: listening on');
  let server: ServerProcess | undefined;
  const say = (line: string): void => void process.stderr.write(`migrate-listen: ${line}\n`);
  let onSignal: ((name: NodeJS.Signals) => void) | undefined;
  try {
    // The child owns its socket's directory and dies with this process (serve-child.ts): nothing to remove here.
    if (options.socket === undefined) server = await startServer('destination.sock');
    const socket = options.socket ?? (server as ServerProcess).socket;
    let finish!: (ok: boolean) => void;
    const finished = new Promise<boolean>((resolve) => (finish = resolve));
    let signalled: ((name: string) => void) | undefined;
    const released = new Promise<string>((resolve) => (signalled = resolve));
    let stopping: string | undefined;
    const active = new Map<string, Active>();
    let lastVmState: Uint8Array | undefined;
    const release = async (side: PreparedDestination['side']): Promise<void> => {
      side.client.close();
      side.memory.dispose();
      await new Promise((resolve) => setTimeout(resolve, 20));
    };
    const receiver = await MigrationReceiver.listen({
      host,
      port,
      ...(tls ? { tls, onTlsRefused: (peer: string, error: Error) => say(`refused ${peer} at the TLS handshake: ${error.message}`) } : {}),
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
      beforeCommit: (id) => faultPause('receiver:commit', released, id),
      afterCommit: (id) => faultPause('receiver:committed', released, id),
      onMessage: async (head, _body, destination) => {
        const request = head as { demo?: unknown };
        if (request.demo !== 'verify-and-continue') throw new CliError(`unknown message ${JSON.stringify(head)}`);
        const entry = [...active.values()].find((a) => a.outcome.destination === destination);
        const work = verifyAndContinue(request as never, lastVmState, destination);
        if (entry) entry.work = work;
        return { result: await work };
      },
      onOutcome: (o) => {
        if (o.outcome === 'committed') {
          lastVmState = o.vmState;
          active.set(o.migrationId ?? '?', { outcome: o });
          return;
        }
        report(o, undefined, json, out, stopping ? `stopped by ${stopping}` : undefined);
        if (options.once || stopping) finish(false);
      },
      onCommittedClosed: (o) => {
        const entry = active.get(o.migrationId ?? '?');
        void (async () => {
          // The destination keeps running its workload to the end before it is released.
          const verdict = (await entry?.work?.catch(() => undefined)) as DemoVerdict | undefined;
          if (!active.delete(o.migrationId ?? '?')) return; // stopped by a second signal meanwhile
          report(o, verdict, json, out, 'the sender is done; the destination was released after its workload');
          const ok = verdict === undefined || (verdict.memoryVerified && verdict.failures.length === 0);
          if (o.destination) await release(o.destination.side);
          if (options.once || (stopping && active.size === 0)) finish(ok);
        })();
      },
    });
    const security = tls ? 'TLS 1.3, client certificates required' : 'plaintext';
    process.stderr.write(`listening tcp://${host.includes(':') ? `[${host}]` : host}:${receiver.port} (${security}; destination device ${options.socket ?? `dma-engine, pid ${server?.child.pid}`})\n`);
    onSignal = (name: NodeJS.Signals): void => {
      if (stopping === undefined) {
        stopping = name;
        const decided = receiver.shutdown(name);
        signalled?.(name);
        if (decided) say(`${name}: abandoning migration ${decided.migrationId} in phase ${decided.phase} (not committed: its sender resumes its source)`);
        for (const id of active.keys()) say(`${name}: migration ${id} is committed and its device runs here: serving it until its sender is done (${name} again stops it now)`);
        if (!decided && active.size === 0) {
          say(`${name}: no migration in progress; stopped`);
          finish(true);
        }
        return;
      }
      for (const [id, a] of active) {
        active.delete(id);
        report(a.outcome, undefined, json, out, `the committed destination was stopped by a second ${name} while it ran`);
        if (a.outcome.destination) void release(a.outcome.destination.side);
      }
      finish(false);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const ok = await finished;
    receiver.close(true);
    if (!ok && (options.once || stopping !== undefined)) throw new CliError(`migrate-listen: ${stopping ? `stopped by ${stopping}` : 'the migration did not complete'}`);
  } finally {
    if (onSignal) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    await server?.stop();
  }
}

/**
 * The channel's TLS credentials for `side`: loaded from `--tls-creds`; none on
 * loopback; beyond loopback TLS is required unless `--no-tls` says otherwise.
 * @throws {CliError} for unreadable credentials, or a plaintext channel beyond loopback without `--no-tls`.
 */
export function channelTls(host: string, options: { tlsCreds?: string; tls?: boolean }, side: 'server' | 'client', what: string): ChannelTlsCredentials | undefined {
  if (options.tlsCreds !== undefined) {
    try {
      return loadTlsCredentials(options.tlsCreds, side);
    } catch (error) {
      throw new CliError((error as Error).message, { cause: error });
    }
  }
  if (isLoopback(host) || options.tls === false) return undefined;
  throw new CliError(`${what} ${host} (beyond loopback) needs --tls-creds DIR (mutual TLS: ca-cert.pem, ${side}-cert.pem, ${side}-key.pem as QEMU's tls-creds-x509), or --no-tls for a plaintext, unauthenticated channel`);
}
