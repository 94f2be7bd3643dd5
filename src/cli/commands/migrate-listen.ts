/**
 * `vfio-user migrate-listen --port N [--socket DEVICE]`: the receiving host of
 * a remote migration, acting as the destination's VMM. For each offer it
 * connects to the destination device (`--socket`, e.g. one served by
 * `vfio-user serve ./my-device.js`; or one it serves in a child process:
 * `--serve ./my-device.js [-- args]`, by default a DMA engine for the demo), creates guest RAM of the offered size (a memfd), DMA_MAPs it at the
 * offered IOVA, and lets the sender's orchestrator drive the device through
 * the channel. An uncommitted migration (link lost, corrupt frame, abort)
 * resets the device and frees the memory.
 *
 * Several devices of one VM (a container, sent by `vfio-user migrate --from
 * A --from B … --to tcp://…`): `--socket NAME=PATH` once per device (the
 * sender's names; unnamed sockets are paired by order). The receiver opens a
 * session with each, maps one guest RAM for all of them, and commits them all
 * or resets them all; the offer is refused (EINVAL) unless it names exactly
 * these devices.
 *
 * After the commit the device runs here and this process holds its session:
 * - a migration sent by `vfio-user migrate --from … --to tcp://…` (any device):
 *   once the sender is gone, the receiver keeps holding the device and its
 *   guest RAM — printing the guest RAM's SHA-256 and the path through which
 *   it can be read (`/proc/PID/fd/N`, the memfd) — and stops listening (the
 *   device is taken), until SIGINT/SIGTERM releases it (the device then
 *   resets, as on any client disconnect); with `--shell`, `vfio-user shell`
 *   commands read from stdin drive it, and their end releases it;
 * - the demo (`migrate --demo --to …`, which asks for it): the receiver
 *   continues the demo workload from the migrated VMM state, answers whether
 *   guest memory matched the source's snapshot, and releases the device once
 *   its sender is done (the demo's destination has no use beyond the demo).
 */
import { MigrationReceiver, type MigrationOffer, type PreparedDestination, type ReceiveOutcome } from '../../orchestrator/receiver.js';
import { Errno } from '../../protocol/errno.js';
import { CliError, parseInteger, parseTimeout, socketPathProblem, stdio, toJson, type GlobalOptions, type Output } from '../common.js';
import { JOB_WAIT_MS, JobStream, digestOutside, driverFor, holesOf, waitJobs, type WorkloadState } from '../migrate-workload.js';
import { startServer, type ServerProcess } from '../serve-child.js';
import { faultPause } from '../fault-pause.js';
import { runShellOnSession } from './shell.js';
import { channelTls, GUEST_RAM_DIGEST_REQUEST, guestRamDigest, guestRamPath } from '../vmm-session.js';
import { describeSpecs, matchOffer, optionList, parseDeviceSpecs, prepareDevices, releasePrepared, type DeviceSpec } from './migrate-devices.js';

export { channelTls } from '../vmm-session.js';

/** Options of `migrate-listen`. */
export interface MigrateListenOptions {
  port?: string;
  host?: string;
  /** The destination device(s): `[NAME=]PATH`, repeated for a container (`--socket <path...>`). */
  socket?: string | string[];
  once?: boolean;
  json?: boolean;
  /** A QEMU tls-creds-x509 directory (ca-cert.pem, server-cert.pem, server-key.pem): mutual TLS. */
  tlsCreds?: string;
  /** false (`--no-tls`): allow a plaintext channel beyond loopback. */
  tls?: boolean;
  /** Drive a held device with `vfio-user shell` commands from stdin; at its end (quit, EOF) the device is released. */
  shell?: boolean;
  /** Serve this device (a sample's name or a module) in a child process as the destination, instead of `--socket`. */
  serve?: string;
}

/** What the receiver answers the demo's `verify-and-continue`. */
export interface DemoVerdict {
  /** Destination guest memory equals the source's snapshot outside what unfinished jobs wrote. */
  memoryVerified: boolean;
  /** Jobs completed here (the unfinished ones of the migrated batch, then the rest of the stream). */
  doneOnDestination: number;
  failures: string[];
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

/** What the receiver holds of a committed destination it keeps (a user's device, its sender gone). */
interface Holding {
  /** The device's socket (several: `NAME=PATH, …`). */
  socket: string;
  /** A container's devices. */
  devices?: Array<{ name: string; socket: string }>;
  guestRamPath: string;
  guestRamBytes: bigint;
  iova: bigint;
  sha256: string;
}

/** The one-line (or JSON) account of a finished migration. */
function report(o: ReceiveOutcome, out: Output, json: boolean, extra: { verdict?: DemoVerdict; held?: Holding; note?: string } = {}): void {
  const { verdict, held, note } = extra;
  const doc = {
    outcome: o.outcome, phase: o.phase, ...(o.migrationId ? { migrationId: o.migrationId } : {}), peer: o.peer, ...(o.reason ? { reason: o.reason } : {}),
    memoryBytes: o.memoryBytes, deviceBytes: o.deviceBytes, ...(o.devices.length > 1 ? { devices: o.devices } : {}), ...(verdict ? { demo: verdict } : {}), ...(held ? { held } : {}), ...(note ? { note } : {}),
  };
  if (json) return out.line(toJson(doc));
  const demo = verdict ? `; demo: ${verdict.doneOnDestination} jobs done here, memory ${verdict.memoryVerified ? 'equals' : 'DIFFERS from'} the snapshot, errors ${verdict.failures.length}` : '';
  const hold = held ? `; guest RAM sha256 ${held.sha256}, readable at ${held.guestRamPath}` : '';
  const id = o.migrationId ? ` migration ${o.migrationId}` : '';
  const each = o.devices.length > 1 ? ` (${o.devices.map((d) => `${d.name} ${(Number(d.deviceBytes) / 1e6).toFixed(1)}`).join(', ')})` : '';
  out.line(`${o.outcome}${id} from ${o.peer} in phase ${o.phase}${o.reason ? ` (${o.reason})` : ''}: ${(Number(o.memoryBytes) / 1e6).toFixed(1)} MB memory, ${(Number(o.deviceBytes) / 1e6).toFixed(1)} MB device${each}${demo}${hold}${note ? `; ${note}` : ''}`);
}

/** A committed migration: its destination runs here. */
interface Committed {
  outcome: ReceiveOutcome;
  /** The demo's verify-and-continue, when the sender asked for it (a demo migration). */
  demo?: Promise<DemoVerdict>;
  /** The sender closed the channel: a user's device is now simply held. */
  senderGone: boolean;
}

/** Settings of one `migrate-listen` run. */
interface ListenSettings {
  /** The destination device(s), as messages name them. */
  socket: string;
  devices: DeviceSpec[];
  once: boolean;
  shell: boolean;
  global: GlobalOptions;
  json: boolean;
  timeoutMs: number;
  out: Output;
  say(line: string): void;
}

/** The receiver's application side: prepares destinations, holds or releases committed ones, handles signals. */
class Listening {
  readonly #s: ListenSettings;
  readonly #committed = new Map<string, Committed>();
  #stopping: string | undefined;
  #lastVmState: Uint8Array | undefined;
  #lostDevice = false;
  #receiver: MigrationReceiver | undefined;
  #finish!: (ok: boolean) => void;
  /** Resolves with whether the run succeeded, when it is over. */
  readonly finished = new Promise<boolean>((resolve) => (this.#finish = resolve));
  #signalled!: (name: string) => void;
  /** Settles at the first signal (releases a fault pause). */
  readonly released = new Promise<string>((resolve) => (this.#signalled = resolve));

  constructor(settings: ListenSettings) {
    this.#s = settings;
  }

  set receiver(receiver: MigrationReceiver) {
    this.#receiver = receiver;
  }

  get stopping(): string | undefined {
    return this.#stopping;
  }

  /** A held device's session ended by its server. */
  get lostDevice(): boolean {
    return this.#lostDevice;
  }

  async prepare(offer: MigrationOffer): Promise<PreparedDestination> {
    return prepareDevices(offer, matchOffer(offer, this.#s.devices), this.#s.timeoutMs);
  }

  async message(head: unknown, destination: PreparedDestination): Promise<{ result: unknown }> {
    const request = head as { demo?: unknown; vmm?: unknown };
    if (request.vmm === GUEST_RAM_DIGEST_REQUEST) return { result: { sha256: guestRamDigest(destination.side.memory) } };
    if (request.demo !== 'verify-and-continue') throw new CliError(`unknown message ${JSON.stringify(head)}`, { errno: Errno.EINVAL });
    const entry = [...this.#committed.values()].find((c) => c.outcome.destination === destination);
    const work = verifyAndContinue(request as never, this.#lastVmState, destination);
    if (entry) entry.demo = work;
    return { result: await work };
  }

  outcome(o: ReceiveOutcome): void {
    if (o.outcome === 'committed') {
      this.#lastVmState = o.vmState;
      this.#committed.set(o.migrationId ?? '?', { outcome: o, senderGone: false });
      this.#s.say(`migration ${o.migrationId ?? '?'} committed: the destination device${this.#s.devices.length > 1 ? 's' : ''} (${this.#s.socket}) ${this.#s.devices.length > 1 ? 'run' : 'runs'} here`);
      return;
    }
    report(o, this.#s.out, this.#s.json, this.#stopping ? { note: `stopped by ${this.#stopping}` } : {});
    if (this.#s.once || this.#stopping) this.#finish(false);
  }

  /** The sender of a committed migration is gone: the demo's destination is released after its workload; a user's device is held. */
  async committedClosed(o: ReceiveOutcome): Promise<void> {
    const id = o.migrationId ?? '?';
    const entry = this.#committed.get(id);
    if (entry === undefined) return; // released by a second signal meanwhile
    if (entry.demo === undefined) return this.#hold(entry, o);
    const verdict = await entry.demo.catch(() => undefined);
    if (!this.#committed.delete(id)) return;
    report(o, this.#s.out, this.#s.json, { ...(verdict ? { verdict } : {}), note: 'the sender is done; the destination was released after its workload' });
    const ok = verdict === undefined || (verdict.memoryVerified && verdict.failures.length === 0);
    if (o.destination) await releasePrepared(o.destination);
    if (this.#s.once || (this.#stopping && !this.#anySenderConnected())) this.#finish(ok);
  }

  #hold(entry: Committed, o: ReceiveOutcome): void {
    entry.senderGone = true;
    const prepared = o.destination;
    if (prepared === undefined) return;
    const side = prepared.side;
    this.#receiver?.close(); // the device is taken: no further migration can be received
    const matched = o.devices.length > 1 ? matchOffer({ memory: { size: side.memory.size, iova: side.iova }, peer: o.peer, devices: o.devices }, this.#s.devices) : [];
    const devices = matched.length > 0 ? { devices: o.devices.map((d, i) => ({ name: d.name, socket: matched[i]?.socket ?? '?' })) } : {};
    const held: Holding = { socket: this.#s.socket, ...devices, guestRamPath: guestRamPath(side.memory), guestRamBytes: side.memory.size, iova: side.iova, sha256: guestRamDigest(side.memory) };
    report(o, this.#s.out, this.#s.json, { held, note: 'the sender is done; this process holds the running device and its guest RAM until SIGINT/SIGTERM' });
    this.#s.say(`holding the migrated device${this.#s.devices.length > 1 ? 's' : ''} on ${this.#s.socket} with ${side.memory.size} bytes of guest RAM at IOVA 0x${side.iova.toString(16)} (${held.guestRamPath}); no more migrations are received; SIGINT/SIGTERM releases ${this.#s.devices.length > 1 ? 'them (the devices then reset)' : 'it (the device then resets)'}`);
    for (const client of prepared.clients ?? [side.client]) void client.closed.then(() => this.#lost(o.migrationId ?? '?', prepared));
    if (this.#stopping) void this.#releaseHeld(this.#stopping).then(() => this.#finish(true));
    else if (this.#s.shell) void this.#shell(side);
  }

  /** The held device's session ended without us (its server exited): nothing is held any more. */
  #lost(id: string, prepared: PreparedDestination): void {
    if (!this.#committed.delete(id)) return; // released by us
    void releasePrepared(prepared); // a container's other devices are let go with it
    this.#lostDevice = true;
    this.#s.say(`the held device's session on ${this.#s.socket} ended (its server closed it): nothing is held any more`);
    this.#finish(false);
  }

  /** `--shell`: the held device driven by shell commands from stdin; released when they end. */
  async #shell(side: PreparedDestination['side']): Promise<void> {
    this.#s.say('--shell: reading shell commands for the migrated device from stdin (quit or end of input releases it)');
    let ok = false;
    try {
      const outcome = await runShellOnSession({ socket: this.#s.socket, client: side.client, memory: side.memory, iova: side.iova }, { input: process.stdin, out: this.#s.out, global: this.#s.global });
      ok = outcome.failures === 0 && !outcome.disconnected;
    } catch (error) {
      this.#s.say(`--shell: ${(error as Error).message}`);
    }
    if (this.#stopping) return; // a signal released it meanwhile
    await this.#releaseHeld('end of the shell');
    this.#finish(ok);
  }

  #anySenderConnected(): boolean {
    return [...this.#committed.values()].some((c) => !c.senderGone);
  }

  async #releaseHeld(signal: string): Promise<void> {
    for (const [id, c] of this.#committed) {
      if (!c.senderGone) continue;
      this.#committed.delete(id);
      this.#s.say(`${signal}: releasing the device of migration ${id} (it resets: its session ends)`);
      if (c.outcome.destination) await releasePrepared(c.outcome.destination);
    }
  }

  signal(name: NodeJS.Signals): void {
    if (this.#stopping !== undefined) return this.#secondSignal(name);
    this.#stopping = name;
    const decided = this.#receiver?.shutdown(name);
    this.#signalled(name);
    if (decided) this.#s.say(`${name}: abandoning migration ${decided.migrationId} in phase ${decided.phase} (not committed: its sender resumes its source)`);
    for (const [id, c] of this.#committed) {
      if (!c.senderGone) this.#s.say(`${name}: migration ${id} is committed and its device runs here: serving it until its sender is done (${name} again stops it now)`);
    }
    const waiting = this.#anySenderConnected();
    const idle = this.#committed.size === 0;
    if (this.#s.shell) process.stdin.destroy(); // a shell on a held device ends with it
    void this.#releaseHeld(name).then(() => {
      if (decided || waiting) return;
      if (idle) this.#s.say(`${name}: no migration in progress; stopped`);
      this.#finish(true);
    });
  }

  #secondSignal(name: NodeJS.Signals): void {
    for (const [id, c] of this.#committed) {
      this.#committed.delete(id);
      report(c.outcome, this.#s.out, this.#s.json, { note: `the committed destination was stopped by a second ${name} while it ran` });
      if (c.outcome.destination) void releasePrepared(c.outcome.destination);
    }
    this.#finish(false);
  }
}

/**
 * Runs `migrate-listen` until SIGINT/SIGTERM (module TSDoc for what a commit
 * leads to). `--once`: the first migration that does not commit ends the run
 * with status 1; one that commits ends listening (as any commit of a user's
 * device does) and the run ends, status 0, when its device is released.
 * A signal abandons a migration not yet committed (the sender is told, and
 * resumes its source) and stops; a committed destination whose sender is
 * still connected is served until the sender is done, and only a second
 * signal stops it, saying so; a held one is released.
 * @throws {CliError} on a bad option, a `--socket` that is not a socket, a port in use, (with `--once`)
 *   a migration that did not commit, or a committed destination stopped by a second signal.
 */
export async function runMigrateListen(options: MigrateListenOptions = {}, global: GlobalOptions = {}, out: Output = stdio, args: readonly string[] = []): Promise<void> {
  if (options.serve !== undefined && options.socket !== undefined) throw new CliError('migrate-listen: --serve and --socket exclude each other (one destination device)', { errno: Errno.EINVAL });
  if (args.length > 0 && options.serve === undefined) throw new CliError(`migrate-listen: arguments after -- (${args.join(' ')}) are for --serve's device module`, { errno: Errno.EINVAL });
  const port = Number(parseInteger(options.port ?? '0', '--port', 65535n));
  const host = options.host ?? '127.0.0.1';
  const timeoutMs = parseTimeout(global.timeout);
  const tls = channelTls(host, options, 'server', 'migrate-listen: listening on');
  const specs = parseDeviceSpecs(optionList(options.socket), 'migrate-listen: --socket');
  if (specs.length > 1 && options.shell) throw new CliError('migrate-listen: --shell drives one device; several --socket receive a container', { errno: Errno.EINVAL });
  for (const spec of specs) {
    const problem = socketPathProblem(spec.socket);
    if (problem !== undefined) throw new CliError(`migrate-listen: --socket ${spec.socket}: ${problem}`, { errno: Errno.ENOENT });
  }
  let server: ServerProcess | undefined;
  const say = (line: string): void => void process.stderr.write(`migrate-listen: ${line}\n`);
  let onSignal: ((name: NodeJS.Signals) => void) | undefined;
  try {
    // The child owns its socket's directory and dies with this process (serve-child.ts): nothing to remove here.
    if (specs.length === 0) server = await startServer('destination.sock', options.serve ?? 'dma-engine', args);
    const devices = specs.length > 0 ? specs : [{ name: undefined, socket: (server as ServerProcess).socket }];
    const socket = describeSpecs(devices);
    const l = new Listening({ socket, devices, once: options.once === true, shell: options.shell === true, global, json: options.json === true, timeoutMs, out, say });
    const receiver = await MigrationReceiver.listen({
      host,
      port,
      ...(tls ? { tls, onTlsRefused: (peer: string, error: Error) => say(`refused ${peer} at the TLS handshake: ${error.message}`) } : {}),
      prepare: (offer) => l.prepare(offer),
      beforeCommit: (id) => faultPause('receiver:commit', l.released, id),
      afterCommit: (id) => faultPause('receiver:committed', l.released, id),
      onMessage: (head, _body, destination) => l.message(head, destination),
      onOutcome: (o) => l.outcome(o),
      onCommittedClosed: (o) => void l.committedClosed(o),
    });
    l.receiver = receiver;
    const security = tls ? 'TLS 1.3, client certificates required' : 'plaintext';
    process.stderr.write(`listening tcp://${host.includes(':') ? `[${host}]` : host}:${receiver.port} (${security}; destination device${specs.length > 1 ? 's' : ''} ${specs.length > 0 ? socket : `${options.serve ?? 'dma-engine'}, pid ${server?.child.pid}`})\n`);
    onSignal = (name) => l.signal(name);
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const ok = await l.finished;
    receiver.close(true);
    if (!ok) throw new CliError(`migrate-listen: ${l.stopping ? `stopped by ${l.stopping}` : l.lostDevice ? 'the held device went away' : 'the migration did not complete'}`);
  } finally {
    if (onSignal) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    await server?.stop();
  }
}
