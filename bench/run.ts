/**
 * `npm run bench`: every benchmark of the project, each with a reference
 * measured in the same run. Latency runs are pinned to one CPU (`taskset -c 0`)
 * because waking an idle vCPU costs tens of microseconds on these VMs.
 *   --json         print one JSON document instead of tables
 *   --quick        fewer iterations (for a smoke run)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runTransportBench, type TransportResult } from './transport.js';
import { runCodecBench, type CodecResult } from './codec.js';
import { runServerBench, type ServerResult } from './server.js';
import { runClientBench, type ClientResult } from './client.js';
import { runMigrationBench, type MigrationResult } from './migration.js';
import { runOrchestratorBench, type OrchestratorResult } from './orchestrator.js';

interface Report {
  pinnedCpu: string | null;
  transport: TransportResult;
  codec: CodecResult;
  server: ServerResult;
  client: ClientResult;
  migration: MigrationResult;
  orchestrator: OrchestratorResult;
}

function hasTaskset(): boolean {
  return spawnSync('taskset', ['-c', '0', 'true']).status === 0;
}

function buildC(dir: string): string {
  const out = join(dir, 'echo');
  const source = new URL('../../bench/c/echo.c', import.meta.url).pathname;
  execFileSync('cc', ['-O2', '-o', out, source], { stdio: 'inherit' });
  return out;
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const quick = process.argv.includes('--quick');
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-bench-'));
  try {
    const pin = hasTaskset() ? ['taskset', '-c', '0'] : [];
    const echo = buildC(dir);
    const transport = await runTransportBench({ dir, echo, pin, iterations: quick ? 20_000 : 200_000, log: !json });
    const codec = runCodecBench({ seconds: quick ? 0.3 : 1, log: !json });
    const server = await runServerBench({ dir, echo, pin, iterations: quick ? 20_000 : 160_000, log: !json });
    const client = await runClientBench({ dir, pin, count: quick ? 10_000 : 50_000, cFloorNs: transport.cToC.meanNs, log: !json });
    const migration = await runMigrationBench({ dir, echo, stateBytes: (quick ? 32 : 256) << 20, log: !json });
    const orchestrator = await runOrchestratorBench({ dir, guestBytes: (quick ? 64 : 256) << 20, log: !json });
    const report: Report = { pinnedCpu: pin.length ? '0' : null, transport, codec, server, client, migration, orchestrator };
    if (json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
