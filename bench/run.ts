/**
 * `npm run bench`: every benchmark of the project, each with a reference
 * measured in the same run. Latency runs are pinned to one CPU (`taskset -c 0`)
 * because waking an idle vCPU costs tens of microseconds on these VMs.
 *   --json         print one JSON document instead of tables
 *   --quick        fewer iterations (for a smoke run)
 *   --only NAMES   only these sections (comma separated: transport, codec,
 *                  server, client, migration, orchestrator, qemu, host, cells,
 *                  container, unplug, mediator)
 *   --help         this text
 * LIBVFIO_USER_BUILD=DIR adds libvfio-user's samples/gpio-pci-idio-16 (built
 * in DIR) to the server section, measured against the same C client, and to
 * the qemu section.
 * VFIO_USER_QEMU=PATH (a qemu-system-x86_64 with vfio-user-pci) enables the
 * qemu section: register reads as a QEMU guest sees them (qtest accelerator),
 * and QEMU's own pre-copy as the orchestrator section's throughput reference.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runTransportBench, type TransportResult } from './transport.js';
import { runCodecBench, type CodecResult } from './codec.js';
import { runServerBench, type ServerResult } from './server.js';
import { runClientBench, type ClientResult } from './client.js';
import { runMigrationBench, type MigrationResult } from './migration.js';
import { runOrchestratorBench, type OrchestratorResult } from './orchestrator.js';
import { runQemuBench, type QemuResult } from './qemu.js';
import { runHostBench, type HostResult } from './host.js';
import { runHostCellsBench, type CellsResult } from './host-cells.js';
import { runContainerBench, type ContainerResult } from './container.js';
import { runUnplugBench, type UnplugResult } from './unplug.js';
import { runMediatorBench, type MediatorResult } from './mediator.js';

interface Report {
  pinnedCpu: string | null;
  transport?: TransportResult;
  codec?: CodecResult;
  server?: ServerResult;
  client?: ClientResult;
  migration?: MigrationResult;
  orchestrator?: OrchestratorResult;
  qemu?: QemuResult;
  host?: HostResult;
  cells?: CellsResult;
  container?: ContainerResult;
  unplug?: UnplugResult;
  mediator?: MediatorResult;
}

const SECTIONS = ['transport', 'codec', 'server', 'client', 'migration', 'orchestrator', 'qemu', 'host', 'cells', 'container', 'unplug', 'mediator'] as const;
type Section = (typeof SECTIONS)[number];

function sections(): Set<Section> {
  const i = process.argv.indexOf('--only');
  if (i < 0) return new Set(SECTIONS);
  const names = (process.argv[i + 1] ?? '').split(',').filter((n) => n !== '');
  const unknown = names.filter((n) => !(SECTIONS as readonly string[]).includes(n));
  if (names.length === 0 || unknown.length > 0) {
    process.stderr.write(`--only: expected a comma-separated list of ${SECTIONS.join(', ')}; got '${process.argv[i + 1] ?? ''}'\n`);
    process.exit(2);
  }
  return new Set(names as Section[]);
}

function hasTaskset(): boolean {
  return spawnSync('taskset', ['-c', '0', 'true']).status === 0;
}

/** libvfio-user's gpio sample, compared in the server section when LIBVFIO_USER_BUILD names its build directory. */
function libvfioUserGpio(): { libvfioUserGpio?: string } {
  const dir = process.env['LIBVFIO_USER_BUILD'];
  if (!dir) return {};
  const binary = join(dir, 'samples', 'gpio-pci-idio-16');
  if (!existsSync(binary)) {
    process.stderr.write(`LIBVFIO_USER_BUILD: ${binary} does not exist; the server section runs without libvfio-user\n`);
    return {};
  }
  return { libvfioUserGpio: binary };
}

function buildC(dir: string): string {
  const out = join(dir, 'echo');
  const source = new URL('../../bench/c/echo.c', import.meta.url).pathname;
  execFileSync('cc', ['-O2', '-o', out, source], { stdio: 'inherit' });
  return out;
}

async function main(): Promise<void> {
  if (process.argv.includes('--help')) {
    process.stdout.write(`usage: node dist/bench/run.js [--json] [--quick] [--only ${SECTIONS.join(',')}]\n`);
    return;
  }
  const json = process.argv.includes('--json');
  const quick = process.argv.includes('--quick');
  const only = sections();
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-bench-'));
  try {
    const pin = hasTaskset() ? ['taskset', '-c', '0'] : [];
    const report: Report = { pinnedCpu: pin.length ? '0' : null };
    const needsEcho = only.has('transport') || only.has('server') || only.has('migration') || only.has('host') || only.has('mediator');
    const echo = needsEcho ? buildC(dir) : '';
    if (only.has('transport')) report.transport = await runTransportBench({ dir, echo, pin, iterations: quick ? 20_000 : 200_000, log: !json });
    if (only.has('codec')) report.codec = runCodecBench({ seconds: quick ? 0.3 : 1, log: !json });
    if (only.has('server')) report.server = await runServerBench({ dir, echo, pin, iterations: quick ? 20_000 : 160_000, log: !json, ...libvfioUserGpio() });
    if (only.has('client')) {
      // The client section compares with the C-to-C floor of the transport section (measured here when that section was not asked for).
      const cFloorNs = (report.transport ?? (await runTransportBench({ dir, echo: buildC(dir), pin, iterations: quick ? 20_000 : 200_000, log: false }))).cToC.meanNs;
      report.client = await runClientBench({ dir, pin, count: quick ? 10_000 : 50_000, cFloorNs, log: !json });
    }
    if (only.has('migration')) report.migration = await runMigrationBench({ dir, echo, stateBytes: (quick ? 32 : 256) << 20, log: !json });
    if (only.has('orchestrator')) report.orchestrator = await runOrchestratorBench({ dir, guestBytes: (quick ? 64 : 256) << 20, log: !json, runs: quick ? 3 : 5, qemu: process.env['VFIO_USER_QEMU'] });
    if (only.has('qemu')) {
      const qemu = process.env['VFIO_USER_QEMU'];
      if (qemu) report.qemu = runQemuBench({ pin, qemu, iterations: quick ? 1000 : 5000, rounds: quick ? 2 : 4, log: !json, ...libvfioUserGpio() });
      else if (!json) console.log('\nQEMU: skipped (VFIO_USER_QEMU is not set)');
    }
    if (only.has('host')) report.host = await runHostBench({ dir, echo, pin, instances: quick ? 100 : 1000, iterations: quick ? 20_000 : 100_000, log: !json });
    if (only.has('cells')) report.cells = await runHostCellsBench({ counts: quick ? [1, 10] : [1, 10, 100], log: !json });
    if (only.has('container')) report.container = await runContainerBench({ dir, guestBytes: (quick ? 64 : 256) << 20, runs: quick ? 1 : 5, log: !json });
    if (only.has('unplug')) report.unplug = await runUnplugBench({ dir, pin, iterations: quick ? 5 : 30, timeoutsMs: [100, 1000], log: !json });
    if (only.has('mediator')) {
      report.mediator = await runMediatorBench({ dir, echo, pin, iterations: quick ? 20_000 : 100_000, dmaBytes: (quick ? 16 : 64) << 20, dmaRuns: quick ? 3 : 5, quick, log: !json });
    }
    if (json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
