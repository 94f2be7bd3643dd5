/**
 * `vfio-user migrate`: `--from SOCKET --to SOCKET|tcp://…` migrates any
 * served device with its guest RAM, this process acting as its VMM
 * (migrate-from.ts); `--demo` is live migration end to end. A DMA engine is served
 * by a child process (`vfio-user serve dma-engine`) with 64 MiB of guest RAM
 * (memfd, DMA_MAP); copy jobs stream on it while {@link migrate} moves guest
 * memory and device state under the downtime budget to a second engine — in
 * another child process (local), or behind `vfio-user migrate-listen` on
 * another host (`--to tcp://HOST:PORT`; the job stream's position travels as
 * the VMM's state). Then the destination's guest memory is checked against
 * the source's snapshot at switch-over (the stopped source's memory, outside
 * what unfinished jobs still write), and the remaining jobs must complete,
 * correctly, on the destination. SIGTERM/SIGINT stop it at its next step:
 * the source runs again unless the destination committed, and the summary
 * says so with the phase it ended in (docs/migration-faults.md, "Remote
 * migration faults").
 */
import type { VfioUserClient } from '../../client/client.js';
import type { GuestMemory } from '../../client/guest-memory.js';
import { enableBusMaster } from '../../client/pci-config.js';
import { migrate, type MigrateOptions, type MigrationReport } from '../../orchestrator/migrate.js';
import { createProgressBar } from '../progress-bar.js';
import { RemoteDestination } from '../../orchestrator/remote.js';
import { MigrationState as S } from '../../protocol/constants.js';
import { startServer } from '../serve-child.js';
import { CliError, parseTimeout, stdio, toJson, withClient, type GlobalOptions, type Output } from '../common.js';
import {
  GUEST_RAM, IOVA, JOB_WAIT_MS, MAX_JOBS, MIN_JOB, MAX_JOB, BATCH, JobStream, attachGuestRam, digestOutside, driverFor, holesOf, isPending, waitJobs,
} from '../migrate-workload.js';
import type { DemoVerdict } from './migrate-listen.js';
import { channelTls } from '../vmm-session.js';
import { runMigrateFrom } from './migrate-from.js';
import { runMigrateContainer } from './migrate-container.js';
import { optionList, parseDeviceSpecs } from './migrate-devices.js';
import { isChannelTarget } from '../vmm-session.js';
import { Errno } from '../../protocol/errno.js';
import { parseChannelAddress } from '../../orchestrator/remote.js';
import type { ChannelTlsCredentials } from '../../orchestrator/channel-tls.js';
import { faultArmed, faultPause } from '../fault-pause.js';

/** Options of `migrate` (as commander parses them: durations in ms, sizes in bytes). */
export interface MigrateCommandOptions {
  demo?: boolean;
  /**
   * The source device's socket (`--from`): this process becomes its VMM and migrates it to `--to`.
   * Repeated (`[NAME=]SOCKET` each): the devices of one VM, migrated as a container (migrate-container.ts).
   */
  from?: string | string[];
  /** Where to: a socket or `tcp://HOST:PORT`; for a container, `tcp://` or one `[NAME=]SOCKET` per device. */
  to?: string | string[];
  /** A container of 2+ devices where one lacks P2P: migrate anyway (warned) instead of refusing. */
  allowWithoutP2p?: boolean;
  /** Downtime budget, ms. */
  downtime?: number;
  jobs?: number;
  /** Pre-copy bandwidth cap, bytes/s. */
  bandwidth?: number;
  autoConverge?: boolean;
  /** The whole migration's limit, ms. */
  timeLimit?: number;
  /** ms. */
  resolveTimeout?: number;
  json?: boolean;
  /** A QEMU tls-creds-x509 directory (ca-cert.pem, client-cert.pem, client-key.pem): mutual TLS. */
  tlsCreds?: string;
  /** false (`--no-tls`): allow a plaintext channel beyond loopback. */
  tls?: boolean;
  /** `--from`: guest RAM bytes. */
  guestRam?: number;
  /** `--from`: initialise guest RAM from this file. */
  guestRamFile?: string;
  /** `--from`: where the device sees guest RAM (decimal or 0x-hex). */
  iova?: string;
  /** false (`--no-hold`): after migrating to a local socket, release the destination at once instead of holding it. */
  hold?: boolean;
  /** After migrating to a local socket: drive the destination with shell commands from stdin, then release it. */
  shell?: boolean;
}

/** Most copy jobs `--jobs` accepts. */
export const MAX_DEMO_JOBS = MAX_JOBS;

/** SIGTERM/SIGINT while the demo runs: the migration's abort signal, and where the demo is. */
interface Interrupt {
  signal: AbortSignal;
  /** Settles when a signal came (releases a fault pause). */
  released: Promise<void>;
  /** The demo's phase: connect, warm-up, the migration's phases, verify. */
  phase: string;
}

/** What every migration the CLI runs reports (`migrate --demo`, `migrate --from`): the outcome and its figures. */
export interface MigrationRunSummary {
  outcome: MigrationReport['outcome'];
  /** Where it ended: `warm-up` (before the migration), the migration's phase (`precopy`, `switchover`, `commit`, `done`), `verify`. */
  phase: string;
  /** The signal that stopped it, if one did. */
  interrupted?: string;
  /** The receiver's migration id (remote), for `vfio-user migrate-resolve`. */
  migrationId?: string;
  /** How a lost commit reply was resolved. */
  resolution?: string;
  reason?: string;
  sourceRecovery?: MigrationReport['sourceRecovery'];
  destination: string;
  totalMs: number;
  downtimeMs: number;
  budgetMs: number;
  projectedDowntimeMs: number | null;
  bytes: MigrationReport['bytes'];
  iterations: number;
  arcs: MigrationReport['arcs'];
}

/** The `--json` document of `migrate --demo`. */
export interface MigrateSummary extends MigrationRunSummary {
  throttlePercent: number;
  jobs: { total: number; doneOnSource: number; doneOnDestination: number; errors: number; firstErrors: string[] };
  /** Destination guest memory equal to the source's switch-over snapshot (outside the unfinished jobs' writes). */
  memoryVerified: boolean | null;
}
/** Where the demo migrates to, and how it checks the destination afterwards. */
interface DemoTarget {
  destination: MigrateOptions['destination'];
  /** After a migration: verify the destination against the snapshot, let it run the rest of the stream. */
  finish(stream: JobStream, snapshotDigest: string, unfinished: number[]): Promise<DemoVerdict>;
}

/** A second engine on this machine. */
async function localTarget(dst: VfioUserClient, dstMem: GuestMemory): Promise<DemoTarget> {
  return {
    destination: { client: dst, memory: dstMem, iova: IOVA },
    async finish(stream, snapshotDigest, unfinishedSeqs) {
      const failures: string[] = [];
      const unfinished = stream.inFlight.filter((j) => unfinishedSeqs.includes(j.seq));
      if (!(await waitJobs(dstMem, unfinished, performance.now() + JOB_WAIT_MS))) failures.push(`jobs still pending on the destination after ${JOB_WAIT_MS} ms`);
      const memoryVerified = digestOutside(dstMem.read(0n, GUEST_RAM), holesOf(unfinished)) === snapshotDigest;
      const before = stream.finished + stream.inFlight.length - unfinished.length;
      stream.start(driverFor(dst, dstMem));
      await stream.done();
      if (stream.posted < stream.total || stream.inFlight.length > 0) failures.push(`the destination did not finish the jobs (${stream.finished} of ${stream.total})`);
      return { memoryVerified, doneOnDestination: Math.max(0, stream.finished - before), failures };
    },
  };
}

/** The receiver of a remote migration: it continues the stream from the migrated state and answers the verdict. */
function remoteTarget(destination: RemoteDestination): DemoTarget {
  return {
    destination,
    async finish(_stream, snapshotDigest, unfinished) {
      const { result } = await destination.message({ demo: 'verify-and-continue', snapshotDigest, unfinished }, undefined, 4 * JOB_WAIT_MS);
      return result as DemoVerdict;
    },
  };
}

interface DemoSettings {
  total: number;
  budgetMs: number;
  bandwidthLimit: number | undefined;
  autoConverge: boolean;
  timeoutMs: number;
}

/** Streams jobs on the source, migrates, verifies. */
async function runDemo(src: VfioUserClient, srcMem: GuestMemory, target: DemoTarget, settings: DemoSettings, say: (line: string) => void, interrupt: Interrupt): Promise<MigrateSummary> {
  const { total, budgetMs } = settings;
  await enableBusMaster(src);
  const driver = driverFor(src, srcMem);
  await driver.start();
  const stream = new JobStream(driver, total);
  stream.start(driver);
  say(`jobs       ${total} copy jobs of ${MIN_JOB >> 10}..${MAX_JOB >> 10} KiB streamed on the source, ${BATCH} per doorbell; migrating with a ${budgetMs} ms downtime budget`);
  // Let the stream get going before the migration starts.
  interrupt.phase = 'warm-up';
  const warm = performance.now() + 1000;
  while (stream.finished < Math.min(total, 2 * BATCH) && performance.now() < warm && !interrupt.signal.aborted) await new Promise((resolve) => setTimeout(resolve, 1));
  await faultPause('sender:warm-up', interrupt.released);
  if (interrupt.signal.aborted) return interruptedBeforeStart(stream, target, settings, interrupt);

  const bar = createProgressBar({ memoryBytes: GUEST_RAM });
  let report: MigrationReport;
  try {
    report = await migrate({
      source: { client: src, memory: srcMem, iova: IOVA },
      destination: target.destination,
      downtimeBudgetMs: budgetMs,
      bandwidthLimit: settings.bandwidthLimit,
      timeoutMs: settings.timeoutMs,
      ...(settings.autoConverge ? { autoConverge: true, throttle: (percent: number) => stream.throttle(percent) } : {}),
      vmState: () => Buffer.from(JSON.stringify(stream.state())),
      signal: interrupt.signal,
      onProgress: (p) => {
        if (p.phase !== 'abort') interrupt.phase = p.phase;
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

  const summary = summarize(report, budgetMs, total);
  const failures = [...stream.failures];
  if (report.outcome === 'migrated') {
    interrupt.phase = 'verify';
    // The source stopped at STOP_COPY: its memory is the switch-over snapshot.
    const unfinished = stream.inFlight.filter((j) => isPending(srcMem, j));
    const digest = digestOutside(srcMem.read(0n, GUEST_RAM), holesOf(unfinished));
    summary.jobs.doneOnSource = stream.finished + stream.inFlight.length - unfinished.length;
    let verdict: DemoVerdict | undefined;
    let lost: string | undefined;
    try {
      verdict = await untilInterrupted(target.finish(stream, digest, unfinished.map((j) => j.seq)), interrupt);
    } catch (error) {
      lost = `verification failed (the destination was migrated): ${(error as Error).message}`;
    }
    if (verdict === undefined) {
      summary.phase = 'verify';
      summary.jobs.errors = failures.length + 1;
      summary.jobs.firstErrors = [...failures, lost ?? 'verification interrupted: the destination keeps running the workload'].slice(0, 5);
      return summary;
    }
    summary.memoryVerified = verdict.memoryVerified;
    if (!verdict.memoryVerified) failures.push('destination guest memory differs from the source snapshot at switch-over');
    summary.jobs.doneOnDestination = verdict.doneOnDestination;
    failures.push(...verdict.failures);
    if (summary.jobs.doneOnSource + summary.jobs.doneOnDestination !== total) failures.push(`jobs done: ${summary.jobs.doneOnSource} + ${summary.jobs.doneOnDestination} of ${total}`);
  } else if (interrupt.signal.aborted) {
    summary.jobs.doneOnSource = stream.finished; // the source runs again; the demo stops here
  } else if (report.sourceRecovery !== 'held') {
    // The source runs again: it finishes the batch in flight and the rest itself.
    stream.start(driver);
    await stream.done();
    failures.push(...stream.failures.slice(failures.length));
    if (stream.posted < total || stream.inFlight.length > 0) failures.push(`the source did not finish the jobs (${stream.finished} of ${total})`);
    summary.jobs.doneOnSource = stream.finished;
  }
  summary.jobs.errors = failures.length;
  summary.jobs.firstErrors = failures.slice(0, 5);
  return summary;
}

/** SIGTERM during the warm-up: the source keeps running, the receiver is told to abandon. */
async function interruptedBeforeStart(stream: JobStream, target: DemoTarget, settings: DemoSettings, interrupt: Interrupt): Promise<MigrateSummary> {
  stream.pause();
  await stream.done();
  const destination = target.destination;
  if ('abandon' in destination) await destination.abandon();
  const summary: MigrateSummary = {
    outcome: 'aborted', phase: 'warm-up', reason: `interrupted (${String((interrupt.signal.reason as Error).message)}) before the migration started`, sourceRecovery: 'running',
    ...(destination instanceof RemoteDestination ? { migrationId: destination.migrationId } : {}),
    destination: 'address' in destination ? destination.address : 'local', totalMs: 0, downtimeMs: 0, budgetMs: settings.budgetMs, projectedDowntimeMs: null,
    bytes: { precopyMemory: 0n, precopyDevice: 0n, stopCopyMemory: 0n, stopCopyDevice: 0n }, iterations: 0, throttlePercent: 0, arcs: [],
    jobs: { total: settings.total, doneOnSource: stream.finished, doneOnDestination: 0, errors: 0, firstErrors: [] }, memoryVerified: null,
  };
  return summary;
}

/** `work`'s result, or undefined when a signal comes first. */
async function untilInterrupted<T>(work: Promise<T>, interrupt: Interrupt): Promise<T | undefined> {
  work.catch(() => undefined);
  return Promise.race([work, interrupt.released.then(() => undefined)]);
}

function summarize(report: MigrationReport, budgetMs: number, total: number): MigrateSummary {
  return {
    outcome: report.outcome,
    phase: report.phase,
    ...(report.migrationId === undefined ? {} : { migrationId: report.migrationId }),
    ...(report.resolution === undefined ? {} : { resolution: report.resolution }),
    ...(report.reason === undefined ? {} : { reason: report.reason }),
    ...(report.sourceRecovery === undefined ? {} : { sourceRecovery: report.sourceRecovery }),
    destination: report.destination,
    totalMs: report.totalMs,
    downtimeMs: report.downtimeMs,
    budgetMs,
    projectedDowntimeMs: Number.isFinite(report.projectedDowntimeMs) ? report.projectedDowntimeMs : null,
    bytes: report.bytes,
    iterations: report.iterations,
    throttlePercent: report.throttlePercent,
    arcs: report.arcs,
    jobs: { total, doneOnSource: 0, doneOnDestination: 0, errors: 0, firstErrors: [] },
    memoryVerified: null,
  };
}

const mb = (n: bigint): string => (Number(n) / 1e6).toFixed(1);

/** The human-readable summary. */
export function formatMigrateSummary(s: MigrateSummary): string[] {
  const lines = [
    `outcome    ${s.outcome}${s.reason ? `: ${s.reason}` : ''}${s.sourceRecovery ? ` (source ${s.sourceRecovery})` : ''}`,
    `phase      ${s.phase}${s.interrupted ? ` (${s.interrupted})` : ''}${s.migrationId ? `; migration id ${s.migrationId}` : ''}${s.resolution ? `; ${s.resolution}` : ''}`,
    `downtime   ${s.downtimeMs.toFixed(2)} ms of a ${s.budgetMs} ms budget (projected ${s.projectedDowntimeMs === null ? '-' : s.projectedDowntimeMs.toFixed(2)} ms); total ${s.totalMs.toFixed(1)} ms, ${s.iterations} pre-copy iterations`,
    `bytes      pre-copy ${mb(s.bytes.precopyMemory)} MB memory + ${mb(s.bytes.precopyDevice)} MB device; stop-copy ${mb(s.bytes.stopCopyMemory)} MB memory + ${mb(s.bytes.stopCopyDevice)} MB device`,
    `arcs       ${s.arcs.map((a) => `${a.side} ${a.from}>${a.to} ${a.ms.toFixed(2)} ms`).join(', ') || '-'}`,
    `jobs       ${s.jobs.total}: ${s.jobs.doneOnSource} done on the source, ${s.jobs.doneOnDestination} on the destination; errors ${s.jobs.errors}${s.memoryVerified === null ? '' : `; destination memory ${s.memoryVerified ? 'equals' : 'DIFFERS from'} the switch-over snapshot`}`,
  ];
  for (const e of s.jobs.firstErrors) lines.push(`error      ${e}`);
  return lines;
}

/**
 * Runs `migrate --demo [--to tcp://HOST:PORT]`.
 * @throws {CliError} when the migration did not complete (after printing the summary), or verification failed.
 */
export async function runMigrate(given: MigrateCommandOptions = {}, global: GlobalOptions = {}, out: Output = stdio): Promise<void> {
  const from = optionList(given.from);
  const to = optionList(given.to);
  if (from.length > 1) return runMigrateContainer(from, to, given, global, out);
  if (to.length > 1) throw new CliError(`migrate: ${to.length} --to targets for ${from.length === 0 ? 'no --from' : 'one --from'} (several --to pair with several --from)`, { errno: Errno.EINVAL });
  if (given.allowWithoutP2p) throw new CliError('migrate: --allow-without-p2p is for several --from (a container)', { errno: Errno.EINVAL });
  // One device: a NAME= prefix only names it (a receiver pairs one device with its one device whatever the names).
  const one = (values: string[], option: string): string | undefined => {
    const [spec] = parseDeviceSpecs(values, option);
    return spec === undefined || isChannelTarget(values[0] as string) ? values[0] : spec.socket;
  };
  const options: Omit<MigrateCommandOptions, 'from' | 'to'> & { from?: string; to?: string } = { ...given, from: one(from, 'migrate: --from'), to: one(to, 'migrate: --to') };
  if (options.from !== undefined) {
    if (options.demo) throw new CliError('migrate: --demo and --from exclude each other (the demo serves its own DMA engine)', { errno: Errno.EINVAL });
    return runMigrateFrom(options, global, out);
  }
  if (!options.demo) throw new CliError('migrate: give --from SOCKET --to SOCKET|tcp://HOST:PORT (migrate a served device and its guest RAM), or --demo', { errno: Errno.EINVAL });
  const settings: DemoSettings = {
    budgetMs: options.downtime ?? 300,
    total: options.jobs ?? 600,
    bandwidthLimit: options.bandwidth,
    autoConverge: options.autoConverge === true,
    timeoutMs: options.timeLimit ?? 60_000,
  };
  const resolveTimeoutMs = options.resolveTimeout ?? 10_000;
  const tls = options.to === undefined ? undefined : channelTls(addressHost(options.to), options, 'client', 'migrate: a channel to');
  const say = (line: string): void => void (options.json || out.line(line));
  const controller = new AbortController();
  const interrupt: Interrupt = {
    signal: controller.signal,
    released: new Promise<void>((resolve) => controller.signal.addEventListener('abort', () => resolve(), { once: true })),
    phase: 'connect',
  };
  const onSignal = (name: NodeJS.Signals): void => {
    if (controller.signal.aborted) return;
    process.stderr.write(`migrate: ${name} in phase ${interrupt.phase}: stopping (the source runs again unless the destination committed)\n`);
    controller.abort(new Error(name));
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    const sockets = options.to === undefined ? ['source.sock', 'destination.sock'] : ['source.sock'];
    // Each child owns its socket's directory and dies with this process (serve-child.ts): nothing to remove here.
    const servers = await Promise.all(sockets.map((name) => startServer(name)));
    let summary: MigrateSummary;
    try {
      say(`servers    ${servers.map((s, i) => `${i === 0 ? 'source' : 'destination'} pid ${s.child.pid}`).join(', ')} (vfio-user serve dma-engine)${options.to ? `; destination ${options.to}` : ''}`);
      summary = await withClient(servers[0]!.socket, global, async (src) => {
        const srcMem = await attachGuestRam(src, 'migrate-source-ram');
        try {
          if (options.to !== undefined) return await runRemote(src, srcMem, { url: options.to, resolveTimeoutMs, tls }, settings, global, say, interrupt);
          return await withClient(servers[1]!.socket, global, async (dst) => {
            const dstMem = await attachGuestRam(dst, 'migrate-destination-ram');
            try {
              say(`guest RAM  ${GUEST_RAM >> 20} MiB memfd on each side, DMA_MAP at IOVA 0x${IOVA.toString(16)}`);
              return await runDemo(src, srcMem, await localTarget(dst, dstMem), settings, say, interrupt);
            } finally {
              dstMem.dispose();
            }
          }, { out });
        } finally {
          srcMem.dispose();
        }
      }, { out });
    } finally {
      await Promise.all(servers.map((s) => s.stop()));
    }
    if (controller.signal.aborted) summary.interrupted = (controller.signal.reason as Error).message;
    if (options.json) out.line(toJson(summary));
    else formatMigrateSummary(summary).forEach((l) => out.line(l));
    if (summary.outcome !== 'migrated') throw new CliError(`migrate: ${summary.outcome}: ${summary.reason ?? 'unknown reason'} (phase ${summary.phase})`);
    if (summary.jobs.errors > 0) throw new CliError(`migrate: verification failed: ${summary.jobs.firstErrors[0] ?? ''}`);
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}

/** Arms the remote fault points (fault-pause.ts): after the first full copy, and with the destination running before the commit. */
function armFaultPoints(destination: RemoteDestination, interrupt: Interrupt): void {
  if (faultArmed('sender:precopy')) {
    const flush = destination.flush.bind(destination);
    let first = true;
    destination.flush = async () => {
      await flush();
      if (first) await faultPause('sender:precopy', interrupt.released);
      first = false;
    };
  }
  if (faultArmed('sender:commit')) {
    const set = destination.setMigrationState.bind(destination);
    destination.setMigrationState = async (state) => {
      await set(state);
      if (state === S.RUNNING) await faultPause('sender:commit', interrupt.released);
    };
  }
}

async function runRemote(
  src: VfioUserClient, srcMem: GuestMemory, to: { url: string; resolveTimeoutMs: number; tls: ChannelTlsCredentials | undefined }, settings: DemoSettings, global: GlobalOptions, say: (line: string) => void, interrupt: Interrupt,
): Promise<MigrateSummary> {
  const { url } = to;
  let destination: RemoteDestination;
  try {
    destination = await RemoteDestination.connect(url, { memory: { size: srcMem.size, iova: IOVA }, timeoutMs: parseTimeout(global.timeout), resolveTimeoutMs: to.resolveTimeoutMs, ...(to.tls ? { tls: to.tls } : {}) });
    armFaultPoints(destination, interrupt);
  } catch (error) {
    throw new CliError(`migrate: ${url}: ${(error as Error).message}`, { cause: error });
  }
  try {
    say(`guest RAM  ${GUEST_RAM >> 20} MiB memfd at IOVA 0x${IOVA.toString(16)}; the receiver at ${destination.address} prepared its own`);
    return await runDemo(src, srcMem, remoteTarget(destination), settings, say, interrupt);
  } finally {
    destination.close();
  }
}

/** The host of `tcp://HOST:PORT`. @throws {CliError} for a bad address. */
function addressHost(url: string): string {
  try {
    return parseChannelAddress(url).host;
  } catch (error) {
    throw new CliError(`migrate: ${(error as Error).message}`, { cause: error });
  }
}
