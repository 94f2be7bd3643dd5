/**
 * `vfio-user migrate --from [NAME=]A.sock --from [NAME=]B.sock … --to TARGET`:
 * several served devices of one VM — a container: one guest RAM, attached to
 * every device at the same IOVA — migrated as one under one downtime budget
 * (`migrateContainer`: every pair checked first, every source to RUNNING_P2P
 * before any stops, all stopped, all resumed on the destination, all or none
 * committed). This process is their VMM, as for one device (migrate-from.ts).
 * TARGET is a receiver at `tcp://HOST:PORT` (`vfio-user migrate-listen
 * --socket NAME=PATH …`, one channel for all the devices), or one `--to
 * [NAME=]SOCKET` per device on this host (paired by name, else by order),
 * then held by this process until SIGINT/SIGTERM (`--no-hold`: released at
 * once). The summary (and `--json`) reports the container and each device.
 */
import { VfioUserClient } from '../../client/client.js';
import { migrateContainer } from '../../orchestrator/migrate.js';
import { MigrationCompatibilityError } from '../../orchestrator/compat.js';
import { RemoteContainerDestination } from '../../orchestrator/remote-container.js';
import type { ContainerDestination } from '../../orchestrator/destination.js';
import type { ContainerMigrationReport, ContainerSide, MigrateContainerOptions } from '../../orchestrator/types.js';
import { parseChannelAddress } from '../../orchestrator/remote.js';
import { Errno } from '../../protocol/errno.js';
import { faultArmed, faultPause } from '../fault-pause.js';
import { createProgressBar } from '../progress-bar.js';
import { CliError, connectFailure, errorReason, parseInteger, parseTimeout, stdio, toJson, type GlobalOptions, type Output } from '../common.js';
import { channelTls, GUEST_RAM_DIGEST_REQUEST, guestRamDigest, guestRamPath, isChannelTarget, openVmmSession, type OwnedVmmSession } from '../vmm-session.js';
import { describeSpecs, parseDeviceSpecs, specName, type DeviceSpec } from './migrate-devices.js';
import { formatContainerSummary, summarizeContainer, type MigrateContainerSummary } from './migrate-container-report.js';
import { signalWatch, type SignalWatch } from './migrate-from.js';
import type { MigrateCommandOptions } from './migrate.js';

/** A container this process is the VMM of: the sessions, and the guest RAM they share. */
interface OwnedContainer extends ContainerSide {
  /** The devices as given, in order. */
  specs: DeviceSpec[];
  /** Every session closed (the devices reset), the guest RAM freed. Idempotent. */
  close(): void;
}

/**
 * Opens a session with each device and one guest RAM (sized, initialised and mapped as `migrate --from`'s) attached to all.
 * @throws {CliError} naming the device that cannot be reached or map the RAM; nothing is left open.
 */
async function openContainer(specs: DeviceSpec[], open: (socket: string) => Promise<OwnedVmmSession>, timeoutMs: number): Promise<OwnedContainer> {
  const first = await open((specs[0] as DeviceSpec).socket);
  const clients: VfioUserClient[] = [first.client];
  const close = (): void => {
    for (const c of clients.slice(1)) c.close();
    first.close();
  };
  try {
    for (const spec of specs.slice(1)) {
      let client: VfioUserClient;
      try {
        client = await VfioUserClient.connect(spec.socket, { timeoutMs, connectTimeoutMs: timeoutMs });
      } catch (error) {
        throw new CliError(`connect ${spec.socket}: ${connectFailure(spec.socket, error)}`, { cause: error });
      }
      clients.push(client);
      await first.memory.attach(client, { iova: first.iova, mode: 'fd' }).catch((error: unknown) => {
        throw new CliError(`${spec.socket}: guest RAM of ${first.memory.size} bytes at IOVA 0x${first.iova.toString(16)}: ${errorReason(error)}`, { cause: error });
      });
    }
  } catch (error) {
    close();
    throw error;
  }
  const devices = specs.map((s, i) => ({ name: specName(s, i), client: clients[i] as VfioUserClient }));
  return { memory: first.memory, iova: first.iova, devices, specs, close };
}

/** The destination devices (one `--to` per source device) in the sources' order: by name when named, else by order. */
function pairTargets(from: DeviceSpec[], to: DeviceSpec[]): DeviceSpec[] {
  if (to.length !== from.length) throw new CliError(`migrate: ${from.length} --from devices need ${from.length} --to sockets (or one --to tcp://HOST:PORT), not ${to.length}`, { errno: Errno.EINVAL });
  const clash = to.find((t) => from.some((f) => f.socket === t.socket));
  if (clash) throw new CliError(`migrate: the target ${clash.socket} is a source's own socket`, { errno: Errno.EINVAL });
  if (to.every((t) => t.name === undefined)) return to;
  return from.map((f, i) => {
    const found = to.find((t) => t.name === specName(f, i));
    if (found === undefined) throw new CliError(`migrate: no --to ${specName(f, i)}=SOCKET for --from ${describeSpecs([f])}`, { errno: Errno.EINVAL });
    return found;
  });
}

/** Rejects what does not apply to a container. @throws {CliError} EINVAL. */
function checkOptions(options: MigrateCommandOptions): void {
  const refuse = (why: string): never => {
    throw new CliError(`migrate: ${why}`, { errno: Errno.EINVAL });
  };
  if (options.demo) refuse('--demo serves its own DMA engine; several --from migrate your devices');
  if (options.autoConverge) refuse('--auto-converge throttles a guest workload; this VMM runs none (it applies to --demo)');
  if (options.shell) refuse('--shell drives one device; a container of several is held, or released with --no-hold');
}

/** Settings shared by the run's steps. */
interface Run {
  options: MigrateCommandOptions;
  timeoutMs: number;
  say(line: string): void;
  out: Output;
  signals: SignalWatch;
}

/**
 * Runs `migrate` with several `--from`.
 * @throws {CliError} EINVAL for options that do not fit (module TSDoc) or devices that cannot be migrated between
 *   (the compatibility check's reason, e.g. a device without P2P: `--allow-without-p2p`); a device or receiver that
 *   cannot be reached; after printing the summary, a migration that did not complete.
 */
export async function runMigrateContainer(fromValues: readonly string[], toValues: readonly string[], options: MigrateCommandOptions, global: GlobalOptions = {}, out: Output = stdio): Promise<void> {
  checkOptions(options);
  const from = parseDeviceSpecs(fromValues, 'migrate: --from');
  if (toValues.length === 0) throw new CliError('migrate --from: --to tcp://HOST:PORT or one --to SOCKET per device is required (where the devices go)', { errno: Errno.EINVAL });
  if (toValues.length > 1 && toValues.some(isChannelTarget)) throw new CliError('migrate: one --to tcp://HOST:PORT carries every device; give it alone', { errno: Errno.EINVAL });
  const remote = toValues.length === 1 && isChannelTarget(toValues[0] as string) ? (toValues[0] as string) : undefined;
  const to = remote === undefined ? pairTargets(from, parseDeviceSpecs(toValues, 'migrate: --to')) : undefined;
  const iova = options.iova === undefined ? undefined : parseInteger(options.iova, '--iova');
  const timeoutMs = parseTimeout(global.timeout);
  const run: Run = { options, timeoutMs, out, say: (line) => void process.stderr.write(`migrate: ${line}\n`), signals: signalWatch() };
  let source: OwnedContainer | undefined;
  try {
    source = await openContainer(from, (socket) => openVmmSession(socket, {
      timeoutMs, name: 'vfio-user-source-ram',
      ...(options.guestRam === undefined ? {} : { guestRamBytes: options.guestRam }),
      ...(options.guestRamFile === undefined ? {} : { guestRamFile: options.guestRamFile }),
      ...(iova === undefined ? {} : { iova }),
    }), timeoutMs);
    if (remote !== undefined) await toReceiver(source, remote, run);
    else await toSockets(source, to as DeviceSpec[], run);
  } finally {
    source?.close();
    run.signals.dispose();
  }
}

/** The container's migration with the CLI's options (progress bar on a TTY; a refused pair said plainly). */
async function migrateWith(source: OwnedContainer, destination: ContainerSide | ContainerDestination, run: Run, target: string): Promise<ContainerMigrationReport> {
  const { options } = run;
  const bar = createProgressBar({ memoryBytes: Number(source.memory.size) });
  const settings: MigrateContainerOptions = {
    source, destination, downtimeBudgetMs: options.downtime ?? 300, timeoutMs: options.timeLimit ?? 60_000, signal: run.signals.controller.signal,
    withoutP2P: options.allowWithoutP2p ? 'warn' : 'refuse',
    ...(options.bandwidth === undefined ? {} : { bandwidthLimit: options.bandwidth }),
    ...(bar.onProgress ? { onProgress: bar.onProgress } : {}),
  };
  try {
    return await migrateContainer(settings);
  } catch (error) {
    if (error instanceof MigrationCompatibilityError) {
      const hint = /P2P/.test(error.message) ? ' (--allow-without-p2p migrates anyway: such a device may DMA into a peer that already stopped)' : '';
      throw new CliError(`migrate ${describeSpecs(source.specs)} → ${target}: ${error.message}${hint}`, { errno: Errno.EINVAL, cause: error });
    }
    throw error;
  } finally {
    bar.stop();
  }
}

/** Prints the summary; a migration that did not complete fails the command (after the summary). */
function print(summary: MigrateContainerSummary, run: Run): void {
  if (run.signals.controller.signal.aborted) summary.interrupted = (run.signals.controller.signal.reason as Error).message;
  if (run.options.json) run.out.line(toJson(summary));
  else formatContainerSummary(summary).forEach((l) => run.out.line(l));
  if (summary.outcome !== 'migrated') throw new CliError(`migrate: ${summary.outcome}: ${summary.reason ?? 'unknown reason'} (phase ${summary.phase})`);
}

/** To a receiver: one channel for every device; after the commit the receiver holds them. */
async function toReceiver(source: OwnedContainer, url: string, run: Run): Promise<void> {
  let host: string;
  try {
    host = parseChannelAddress(url).host;
  } catch (error) {
    throw new CliError(`migrate: ${(error as Error).message}`, { errno: Errno.EINVAL, cause: error });
  }
  const tls = channelTls(host, run.options, 'client', 'migrate: a channel to');
  let destination: RemoteContainerDestination;
  try {
    destination = await RemoteContainerDestination.connect(url, {
      memory: { size: source.memory.size, iova: source.iova }, devices: source.devices.map((d) => d.name as string),
      timeoutMs: run.timeoutMs, resolveTimeoutMs: run.options.resolveTimeout ?? 10_000, ...(tls ? { tls } : {}),
    });
  } catch (error) {
    throw new CliError(`migrate: ${url}: ${(error as Error).message}`, { cause: error });
  }
  armFaultPoint(destination, run.signals);
  try {
    const report = await migrateWith(source, destination, run, url);
    const digests: { source?: string; destination?: string } = {};
    if (report.outcome === 'migrated') {
      digests.source = guestRamDigest(source.memory);
      const answer = await destination.message({ vmm: GUEST_RAM_DIGEST_REQUEST }).catch(() => undefined);
      const sha = (answer?.result as { sha256?: unknown } | undefined)?.sha256;
      if (typeof sha === 'string') digests.destination = sha;
    }
    print(summarizeContainer(report, source, url, run.options, digests), run);
  } finally {
    destination.close();
  }
}

/** `VFIO_USER_FAULT_PAUSE=sender:precopy` (fault-pause.ts): a pause after the first full copy, released by a signal. */
function armFaultPoint(destination: RemoteContainerDestination, signals: SignalWatch): void {
  if (!faultArmed('sender:precopy')) return;
  const link = destination.link;
  const flush = link.flush.bind(link);
  let first = true;
  link.flush = async () => {
    await flush();
    if (first) await faultPause('sender:precopy', signals.next());
    first = false;
  };
}

/** To sockets on this host: this process opens the destination container, and holds it once migrated. */
async function toSockets(source: OwnedContainer, to: DeviceSpec[], run: Run): Promise<void> {
  const names = source.devices.map((d) => d.name as string);
  const target = describeSpecs(to);
  const destination = await openContainer(to.map((t, i) => ({ name: names[i], socket: t.socket })), (socket) =>
    openVmmSession(socket, { guestRamBytes: source.memory.size, iova: source.iova, timeoutMs: run.timeoutMs, name: 'vfio-user-destination-ram' }), run.timeoutMs);
  try {
    const report = await migrateWith(source, destination, run, target);
    const migrated = report.outcome === 'migrated';
    const digests = migrated ? { source: guestRamDigest(source.memory), destination: guestRamDigest(destination.memory) } : {};
    const summary = summarizeContainer(report, source, target, run.options, digests);
    if (migrated && run.options.hold !== false) summary.held = { pid: process.pid, guestRamPath: guestRamPath(destination.memory) };
    print(summary, run);
    source.close(); // the sources stay STOPPED: the guest runs at the destination now
    await hold(destination, target, run);
  } finally {
    destination.close();
  }
}

/** Holds the migrated destination devices until a signal (or releases them at once with `--no-hold`). */
async function hold(destination: OwnedContainer, target: string, run: Run): Promise<void> {
  if (run.options.hold === false) return run.say(`--no-hold: releasing the destination devices ${target} (they reset)`);
  run.say(`holding the migrated devices ${target} with ${destination.memory.size} bytes of guest RAM at IOVA 0x${destination.iova.toString(16)} (${guestRamPath(destination.memory)}); SIGINT/SIGTERM releases them (the devices then reset)`);
  const lost = Promise.race(destination.devices.map((d) => d.client.closed.then(() => d.name)));
  const ended = await Promise.race([run.signals.next().then((signal) => ({ signal })), lost.then((device) => ({ device }))]);
  if ('device' in ended) throw new CliError(`migrate: the held device ${ended.device ?? '?'}'s session ended (its server closed it); the others are released`, { errno: Errno.ECONNRESET });
  run.say(`${ended.signal}: releasing the destination devices ${target} (they reset: their sessions end)`);
}
