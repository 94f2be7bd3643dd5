/**
 * Live migration of a running device and its guest memory from a source
 * session to a destination session within one downtime budget (the flow of
 * QEMU's `hw/vfio/migration.c` and the convergence rule of
 * `migration/migration.c`, docs/migration.md §10–§11):
 *
 * 1. Compatibility check (read-only; a mismatch throws {@link MigrationCompatibilityError}).
 * 2. Pre-copy: DMA logging on the source over the guest memory range, a full
 *    copy of guest RAM, the device's pre-copy data when it has PRE_COPY; then
 *    iterations that copy dirty pages and device deltas, until the projected
 *    downtime fits the budget ({@link estimateSwitchover}: the pages the source
 *    will have dirtied by the stop at the measured dirty rate, collected and
 *    copied at the measured dirty-page costs, the device data at its measured
 *    bandwidth, the STOP_COPY and resume arc latencies, request round trips).
 *    The switch-over starts when the projection fits the budget less
 *    {@link SWITCHOVER_HEADROOM} of it and the time kept to resume the source.
 *    Guest memory goes chunk by chunk, all-zero pages as zero markers
 *    (memory-copy.ts); progress is reported from inside every step.
 * 3. Switch-over: source → STOP_COPY (deadline-bounded when the server
 *    advertises `x-deadline-state`), last dirty pages, the device stream to
 *    EOF, destination → STOP → RUNNING. The downtime runs from the source
 *    leaving a running state until the destination runs. It is bounded while
 *    it runs: before each chunk the rest is projected against the deadline
 *    (the budget less the time kept to resume the source), and a timer trips
 *    at the deadline whatever step is awaited; either aborts at once.
 *    The time limit and the abort signal likewise trip within the step they
 *    expire in (limits.ts).
 * 4. Abort / failure: the source back to RUNNING (DEVICE_RESET if that fails),
 *    the destination DEVICE_RESET, DMA logging stopped. The source's guest
 *    memory is never written.
 * 5. A commit whose reply is lost: the destination is asked how it ended
 *    (`resolveCommit`): committed → the source stays stopped for good
 *    (migrated); abandoned → the source runs again; no answer → the source
 *    is held stopped, intact, for `vfio-user migrate-resolve`.
 *
 * {@link migrateContainer} migrates several devices sharing one guest RAM
 * (a container) as one VM, with the same steps and one budget: every device
 * pair is checked (and the shared memory once); the memory is copied once,
 * its dirty pages merged from every device's DMA log; each device's data
 * follows in turn. The switch-over first moves every source into its P2P
 * state (RUNNING_P2P, or PRE_COPY_P2P when pre-copying) and only when all are
 * there stops any (STOP_COPY): a device may still take peer-to-peer DMA in a
 * P2P state but starts none, so no device writes into a peer that has
 * stopped. The destinations go RESUMING → STOP → RUNNING_P2P → RUNNING, all
 * to RUNNING_P2P before any runs. A failure anywhere resumes every source in
 * the mirror order (stopped ones to RUNNING_P2P, then all to RUNNING) and
 * abandons every destination device. {@link migrate} is a container of one
 * (no P2P phase: there is no peer).
 */
import { InvalidArgumentError } from '../errors.js';
import { MigrationFlags } from '../protocol/constants.js';
import { checkContainerCompatibility, MigrationCompatibilityError } from './compat.js';
import { Run, noBytes } from './container-run.js';
import {
  containerOfOne, deviceName, isMigrationSide, localContainerDestination, localDestination, type ContainerDestination,
} from './destination.js';
import { Abort, Limits } from './limits.js';
import { AutoConverge, RateLimiter } from './throttle.js';
import type { ContainerMigrationReport, ContainerSide, MigrateContainerOptions, MigrateOptions, MigrationReport } from './types.js';

export { MigrationCompatibilityError } from './compat.js';
export { SWITCHOVER_HEADROOM } from './container-run.js';
export type * from './types.js';

const now = (): number => performance.now();

/**
 * Migrates the device and its guest memory (module TSDoc): a container of one.
 * @throws {MigrationCompatibilityError} when the sides differ (nothing was changed).
 * @throws {InvalidArgumentError} EINVAL for a bad option (autoConverge without throttle, a bandwidth cap ≤ 0).
 * @returns the report; an abort or failure is reported, not thrown.
 */
export async function migrate(options: MigrateOptions): Promise<MigrationReport> {
  const { source, destination, ...rest } = options;
  const dst = containerOfOne(isMigrationSide(destination) ? localDestination(destination) : destination);
  const report = await migrateContainer({ ...rest, source: { memory: source.memory, iova: source.iova, devices: [{ client: source.client }] }, destination: dst });
  const { devices: _devices, p2pMs: _p2p, warnings: _warnings, ...single } = report;
  return single;
}

/**
 * Migrates a container — its devices and their shared guest memory — as one
 * VM under one downtime budget (module TSDoc).
 * @throws {MigrationCompatibilityError} when a device pair or the memories differ, when the sides have different
 *   device counts, or when a device of a 2+ device container lacks P2P (unless `withoutP2P: 'warn'`); nothing was changed.
 * @throws {InvalidArgumentError} EINVAL for no devices, duplicate device names, or a bad option.
 * @returns the report, overall and per device; an abort or failure is reported, not thrown.
 */
export async function migrateContainer(options: MigrateContainerOptions): Promise<ContainerMigrationReport> {
  const started = now();
  const { source } = options;
  const names = checkDevices(source);
  const destination = isContainerSide(options.destination) ? localContainerDestination(options.destination) : options.destination;
  if (options.autoConverge !== undefined && options.autoConverge !== false && options.throttle === undefined) {
    throw new InvalidArgumentError('migrate: autoConverge needs a throttle callback (the VMM slows its guest)');
  }
  // Everything that validates an option is built before the limits' timer starts: a refused option leaves nothing armed.
  const converge = options.autoConverge ? new AutoConverge(options.autoConverge === true ? {} : options.autoConverge) : undefined;
  const pacer = new RateLimiter(options.bandwidthLimit);
  const limits = new Limits({ started, timeoutMs: options.timeoutMs ?? 60_000, signal: options.signal });
  let flags: Array<{ preCopy: boolean; p2p: boolean }>;
  const warnings: string[] = [];
  try {
    const profiles = await limits.race(checkContainerCompatibility(source, destination, names));
    flags = profiles.map((p) => ({ preCopy: (p.migrationFlags & MigrationFlags.PRE_COPY) !== 0n, p2p: (p.migrationFlags & MigrationFlags.P2P) !== 0n }));
    checkP2p(names, flags, options.withoutP2P ?? 'refuse', warnings);
  } catch (error) {
    limits.dispose();
    if (error instanceof MigrationCompatibilityError) throw error;
    // A limit, or a side lost before anything changed (the channel broke during the check): nothing to recover.
    await destination.abandon();
    return endedBeforeStart(error, destination, started, names);
  }
  return new Run({ options, destination, names, flags, warnings, started }, { pacer, converge, limits }).execute();
}

/**
 * The devices' report names.
 * @throws {InvalidArgumentError} EINVAL for no devices or a name given twice.
 */
function checkDevices(source: ContainerSide): string[] {
  if (source.devices.length === 0) throw new InvalidArgumentError('migrateContainer: the container has no device');
  const names = source.devices.map((d, i) => deviceName(d, i));
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice !== undefined) throw new InvalidArgumentError(`migrateContainer: device name '${twice}' given twice`);
  return names;
}

/**
 * A container of 2+ devices needs every device's P2P states (QEMU refuses
 * likewise): without them a device still running may DMA into a peer that
 * already stopped. With `warn` it goes on, and says so.
 * @throws {MigrationCompatibilityError} with `refuse`.
 */
function checkP2p(names: readonly string[], flags: ReadonlyArray<{ p2p: boolean }>, policy: 'refuse' | 'warn', warnings: string[]): void {
  if (names.length < 2) return;
  const without = names.filter((_n, i) => flags[i]?.p2p !== true);
  if (without.length === 0) return;
  const what = `device(s) ${without.join(', ')} lack the P2P migration states: they cannot be quiesced before their peers stop`;
  if (policy === 'refuse') throw new MigrationCompatibilityError(`${what} (withoutP2P: 'warn' migrates anyway)`);
  warnings.push(`${what}; they stop after the P2P devices entered RUNNING_P2P, and a DMA from one into a peer that already stopped would be lost`);
}

function isContainerSide(x: ContainerSide | ContainerDestination): x is ContainerSide {
  return 'memory' in x && 'iova' in x;
}

/** The report of a migration that ended in its compatibility check (nothing was changed; the sources run). */
function endedBeforeStart(error: unknown, destination: ContainerDestination, started: number, names: readonly string[]): ContainerMigrationReport {
  const aborted = error instanceof Abort;
  return {
    outcome: aborted ? 'aborted' : 'failed', reason: `compatibility check: ${error instanceof Error ? error.message : String(error)}`, sourceRecovery: 'running', phase: 'precopy',
    ...(destination.migrationId === undefined ? {} : { migrationId: destination.migrationId }),
    totalMs: now() - started, downtimeMs: 0, projectedDowntimeMs: Number.POSITIVE_INFINITY, bytes: noBytes(), zeroBytes: 0n,
    iterations: 0, arcs: [], destination: destination.address, throttlePercent: 0, bandwidthLimitedMs: 0,
    devices: names.map((name) => ({ name, bytes: { precopy: 0n, stopCopy: 0n }, arcs: [], states: [{ side: 'source', state: 'RUNNING', atMs: 0 }], p2pMs: 0 })),
    p2pMs: 0, warnings: [],
  };
}
