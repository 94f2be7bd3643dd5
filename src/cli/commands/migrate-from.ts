/**
 * `vfio-user migrate --from A.sock --to B.sock|tcp://HOST:PORT`: live-migrates
 * a served device — any device whose definition declares `migration`, e.g.
 * one served by `vfio-user serve ./my-device.js` — with its guest RAM. This
 * process is the VMM: it attaches to the source device, owns the guest RAM (a
 * memfd of `--guest-ram` bytes, optionally initialised from
 * `--guest-ram-file`), DMA_MAPs it at `--iova`, and migrates device state and
 * guest RAM under the downtime budget (vmm-session.ts).
 *
 * After a committed migration the source device stays STOPPED and its session
 * is closed. To a socket, this process then holds the destination session —
 * it is the running device's VMM — until SIGINT/SIGTERM (`--no-hold`: it
 * releases it at once, and the device resets; `--shell`: `vfio-user shell`
 * commands from stdin drive it, and their end releases it); to `tcp://`, the receiver holds
 * it. The summary gives both guest RAMs' SHA-256 and where the held guest RAM
 * can be read (`/proc/PID/fd/N`). SIGINT/SIGTERM during the migration abort
 * it: the source runs again unless the destination committed.
 */
import { MigrationCompatibilityError } from '../../orchestrator/compat.js';
import type { MigrationReport } from '../../orchestrator/types.js';
import { createProgressBar } from '../progress-bar.js';
import { Errno } from '../../protocol/errno.js';
import { CliError, parseInteger, parseTimeout, stdio, toJson, type GlobalOptions, type Output } from '../common.js';
import { guestRamPath, migrateSession, openVmmSession, type OwnedVmmSession, type SessionMigration } from '../vmm-session.js';
import type { MigrateCommandOptions, MigrationRunSummary } from './migrate.js';
import { runShellOnSession } from './shell.js';

/** The `--json` document of `migrate --from`. */
export interface MigrateFromSummary extends MigrationRunSummary {
  source: string;
  guestRam: { bytes: bigint; iova: bigint; file?: string; sourceSha256?: string; destinationSha256?: string; equal?: boolean };
  /** A local destination held by this process after the commit. */
  held?: { pid: number; guestRamPath: string };
}

/** The fields of a summary taken from the orchestrator's report as they are (a projection that never ran: null). */
export function reportFields(r: MigrationReport) {
  return {
    outcome: r.outcome, phase: r.phase,
    ...(r.migrationId === undefined ? {} : { migrationId: r.migrationId }),
    ...(r.resolution === undefined ? {} : { resolution: r.resolution }),
    ...(r.reason === undefined ? {} : { reason: r.reason }),
    ...(r.sourceRecovery === undefined ? {} : { sourceRecovery: r.sourceRecovery }),
    totalMs: r.totalMs, downtimeMs: r.downtimeMs,
    projectedDowntimeMs: Number.isFinite(r.projectedDowntimeMs) ? r.projectedDowntimeMs : null,
    bytes: r.bytes, iterations: r.iterations, arcs: r.arcs,
  };
}

/** Bytes as MB with one decimal (summary lines). */
export const mb = (n: bigint): string => (Number(n) / 1e6).toFixed(1);

/** The summary's `phase` line: where it ended, the interruption, the migration id, how a lost commit was resolved. */
export function summaryPhaseLine(s: MigrationRunSummary): string {
  return `phase      ${s.phase}${s.interrupted ? ` (${s.interrupted})` : ''}${s.migrationId ? `; migration id ${s.migrationId}` : ''}${s.resolution ? `; ${s.resolution}` : ''}`;
}

/** The summary's `bytes` line: pre-copy and stop-copy, memory and device. */
export function summaryBytesLine(s: MigrationRunSummary): string {
  return `bytes      pre-copy ${mb(s.bytes.precopyMemory)} MB memory + ${mb(s.bytes.precopyDevice)} MB device; stop-copy ${mb(s.bytes.stopCopyMemory)} MB memory + ${mb(s.bytes.stopCopyDevice)} MB device`;
}

/** The human-readable summary. */
export function formatMigrateFromSummary(s: MigrateFromSummary): string[] {
  const g = s.guestRam;
  const lines = [
    `outcome    ${s.outcome}${s.reason ? `: ${s.reason}` : ''}${s.sourceRecovery ? ` (source ${s.sourceRecovery})` : ''}`,
    summaryPhaseLine(s),
    `devices    ${s.source} → ${s.destination}`,
    `downtime   ${s.downtimeMs.toFixed(2)} ms of a ${s.budgetMs} ms budget (projected ${s.projectedDowntimeMs === null ? '-' : s.projectedDowntimeMs.toFixed(2)} ms); total ${s.totalMs.toFixed(1)} ms, ${s.iterations} pre-copy iterations`,
    summaryBytesLine(s),
    `arcs       ${s.arcs.map((a) => `${a.side} ${a.from}>${a.to} ${a.ms.toFixed(2)} ms`).join(', ') || '-'}`,
    `guest RAM  ${g.bytes} bytes at IOVA 0x${g.iova.toString(16)}${g.file ? ` from ${g.file}` : ''}`,
  ];
  if (g.sourceSha256 !== undefined) lines.push(`source     sha256 ${g.sourceSha256} (stopped: the switch-over snapshot)`);
  if (g.destinationSha256 !== undefined) {
    lines.push(`destination sha256 ${g.destinationSha256} (after the commit): ${g.equal ? 'equals the source' : 'DIFFERS from the source (written since the device runs there?)'}`);
  }
  if (s.held) lines.push(`held       by pid ${s.held.pid}: guest RAM readable at ${s.held.guestRamPath}`);
  return lines;
}

function summarize(result: SessionMigration, source: OwnedVmmSession, to: string, budgetMs: number, file: string | undefined): MigrateFromSummary {
  const r = result.report;
  const g = { sourceSha256: result.sourceRamDigest, destinationSha256: result.destinationRamDigest };
  return {
    ...reportFields(r),
    source: source.socket, destination: to, budgetMs,
    guestRam: {
      bytes: source.memory.size, iova: source.iova, ...(file === undefined ? {} : { file }),
      ...(g.sourceSha256 === undefined ? {} : { sourceSha256: g.sourceSha256 }),
      ...(g.destinationSha256 === undefined ? {} : { destinationSha256: g.destinationSha256, equal: g.destinationSha256 === g.sourceSha256 }),
    },
  };
}

/** A migration refused before anything changed, with what to do about a device that does not migrate. */
function refused(error: MigrationCompatibilityError, from: string, to: string): CliError {
  const hint = /does not support migration/.test(error.message) ? ": its definition must declare `migration` (save/load hooks: docs/serve-and-migrate.md, \"Make your device migratable\")" : '';
  return new CliError(`migrate ${from} → ${to}: ${error.message}${hint}`, { errno: Errno.EINVAL, cause: error });
}

/** SIGINT/SIGTERM while a migration runs and while its destination is held. */
export interface SignalWatch {
  /** Aborted (with an Error named after the signal) at the first signal: the migration's abort signal. */
  controller: AbortController;
  /** The next signal's name (at once if one already came). */
  next(): Promise<string>;
  /** Stops watching. */
  dispose(): void;
}

/** Watches SIGINT/SIGTERM from now on (the handlers replace the default exit until {@link SignalWatch.dispose}). */
export function signalWatch(): SignalWatch {
  const controller = new AbortController();
  const waiters: Array<(name: string) => void> = [];
  const on = (name: NodeJS.Signals): void => {
    if (!controller.signal.aborted) controller.abort(new Error(name));
    for (const w of waiters.splice(0)) w(name);
  };
  process.on('SIGINT', on);
  process.on('SIGTERM', on);
  return {
    controller,
    next: () => (controller.signal.aborted ? Promise.resolve((controller.signal.reason as Error).message) : new Promise((resolve) => waiters.push(resolve))),
    dispose() {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
    },
  };
}

/**
 * Runs `migrate --from SOCKET --to TARGET`.
 * @throws {CliError} EINVAL without --to, for a bad --iova, or when the devices cannot be migrated between (the compatibility
 *   check's reason: a device without migration, different devices, guest RAM sizes); connect errors naming the socket
 *   or receiver; after printing the summary, a migration that did not complete.
 */
export async function runMigrateFrom(options: MigrateCommandOptions, global: GlobalOptions = {}, out: Output = stdio): Promise<void> {
  const from = options.from as string;
  const to = options.to as string | undefined; // one target (runMigrate passes several --from to migrate-container.ts)
  if (to === undefined) throw new CliError('migrate --from: --to SOCKET or --to tcp://HOST:PORT is required (where the device goes)', { errno: Errno.EINVAL });
  if (options.autoConverge) throw new CliError('migrate --from: --auto-converge throttles a guest workload; this VMM runs none (it applies to --demo)', { errno: Errno.EINVAL });
  if (options.shell && options.hold === false) throw new CliError('migrate --from: --shell and --no-hold exclude each other', { errno: Errno.EINVAL });
  const iova = options.iova === undefined ? undefined : parseInteger(options.iova, '--iova');
  const budgetMs = options.downtime ?? 300;
  const timeoutMs = parseTimeout(global.timeout);
  const say = (line: string): void => void process.stderr.write(`migrate: ${line}\n`);
  const signals = signalWatch();
  let source: OwnedVmmSession | undefined;
  try {
    source = await openVmmSession(from, {
      timeoutMs, name: 'vfio-user-source-ram',
      ...(options.guestRam === undefined ? {} : { guestRamBytes: options.guestRam }),
      ...(options.guestRamFile === undefined ? {} : { guestRamFile: options.guestRamFile }),
      ...(iova === undefined ? {} : { iova }),
    });
    const bar = createProgressBar({ memoryBytes: Number(source.memory.size) });
    let result: SessionMigration;
    try {
      result = await migrateSession(source, to, {
        downtimeBudgetMs: budgetMs, timeLimitMs: options.timeLimit ?? 60_000, requestTimeoutMs: timeoutMs, resolveTimeoutMs: options.resolveTimeout ?? 10_000,
        ...(options.bandwidth === undefined ? {} : { bandwidthLimit: options.bandwidth }),
        ...(options.tlsCreds === undefined ? {} : { tlsCreds: options.tlsCreds }),
        noTls: options.tls === false, signal: signals.controller.signal,
        ...(bar.onProgress ? { onProgress: bar.onProgress } : {}),
      });
    } catch (error) {
      if (error instanceof MigrationCompatibilityError) throw refused(error, from, to);
      throw error;
    } finally {
      bar.stop();
    }
    const summary = summarize(result, source, to, budgetMs, options.guestRamFile);
    if (signals.controller.signal.aborted) summary.interrupted = (signals.controller.signal.reason as Error).message;
    const destination = result.destination;
    if (destination && options.hold !== false) summary.held = { pid: process.pid, guestRamPath: guestRamPath(destination.memory) };
    if (options.json) out.line(toJson(summary));
    else formatMigrateFromSummary(summary).forEach((l) => out.line(l));
    if (summary.outcome !== 'migrated') throw new CliError(`migrate: ${summary.outcome}: ${summary.reason ?? 'unknown reason'} (phase ${summary.phase})`);
    source.close(); // the source device stays STOPPED: its guest runs at the destination now
    if (destination) await holdDestination(destination, options.hold === false ? 'release' : options.shell ? 'shell' : 'hold', { next: signals.next, say, out, global });
  } finally {
    source?.close();
    signals.dispose();
  }
}

/** What `migrate --from … --to SOCKET` does with the migrated destination: hold it until a signal, release it at once, or drive it with shell commands from stdin. */
type HoldMode = 'hold' | 'release' | 'shell';

/** Holds a migrated local destination (or not), then releases it: its session ends and the device resets. */
async function holdDestination(
  destination: OwnedVmmSession, mode: HoldMode, io: { next: () => Promise<string>; say: (line: string) => void; out: Output; global: GlobalOptions },
): Promise<void> {
  const where = `the destination device on ${destination.socket}`;
  try {
    if (mode === 'release') return io.say(`--no-hold: releasing ${where} (it resets)`);
    const ram = `${destination.memory.size} bytes of guest RAM at IOVA 0x${destination.iova.toString(16)} (${guestRamPath(destination.memory)})`;
    if (mode === 'shell') {
      io.say(`--shell: reading shell commands for the migrated device on ${destination.socket} with ${ram} from stdin (quit or end of input releases it)`);
      const shell = runShellOnSession(destination, { input: process.stdin, out: io.out, global: io.global });
      const ended = await Promise.race([shell.then((o) => (o.failures === 0 && !o.disconnected ? 'ok' : 'failed')), io.next()]);
      if (ended !== 'ok' && ended !== 'failed') process.stdin.destroy();
      io.say(`${ended === 'ok' || ended === 'failed' ? 'end of the shell' : ended}: releasing ${where} (it resets: its session ends)`);
      if (ended === 'failed') throw new CliError('migrate: the shell on the migrated device failed (see above)');
      return;
    }
    io.say(`holding the migrated device on ${destination.socket} with ${ram}; SIGINT/SIGTERM releases it (the device then resets)`);
    const lost = destination.client.closed.then(() => undefined);
    const signal = await Promise.race([io.next(), lost]);
    if (signal === undefined) throw new CliError(`migrate: the held device's session on ${destination.socket} ended (its server closed it)`, { errno: Errno.ECONNRESET });
    io.say(`${signal}: releasing ${where} (it resets: its session ends)`);
  } finally {
    destination.close();
  }
}
