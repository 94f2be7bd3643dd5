/**
 * Our client library ↔ our server: the real `vfio-user bench --json` (the CLI,
 * i.e. VfioUserClient) against the bench device, both processes pinned to the
 * same CPU, compared with the C echo floor measured earlier in the same run.
 */
import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';

/** One row of `vfio-user bench --json`. */
interface BenchRow {
  mode: string;
  size: number;
  depth: number;
  meanUs: number;
  p50Us: number;
  p99Us: number;
  requestsPerSec: number;
}

/** What this section reports. */
export interface ClientResult {
  single: { meanUs: number; p50Us: number; p99Us: number };
  pipelined: { depth: number; usPerRequest: number; requestsPerSec: number };
  cFloorUs: number;
  ratioSingle: number;
  ratioPipelinedPerRequest: number;
}

const DEVICE = new URL('./serve-device.js', import.meta.url).pathname;
const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;

/** Runs the CLI bench against the bench device; `cFloorNs` is the C↔C round trip of the same run. */
export async function runClientBench(o: { dir: string; pin: string[]; count: number; cFloorNs: number; log: boolean }): Promise<ClientResult> {
  const sock = join(o.dir, 'client-bench.sock');
  const server = spawn(o.pin[0] ?? process.execPath, [...o.pin.slice(1), ...(o.pin.length ? [process.execPath] : []), DEVICE, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
  await once(server.stdout, 'data');
  try {
    const run = (): BenchRow[] => {
      const cmd = [...o.pin, process.execPath, CLI, 'bench', sock, '--count', String(o.count), '--depth', '16', '--json'];
      const out = execFileSync(cmd[0] as string, cmd.slice(1), { encoding: 'utf8' });
      return (JSON.parse(out) as { rows: BenchRow[] }).rows;
    };
    run(); // warm-up run: JIT and page faults on both sides
    const rows = run();
    const single = rows.find((r) => r.mode === 'latency') as BenchRow;
    const piped = rows.find((r) => r.mode === 'throughput' && r.size === single.size) as BenchRow;
    const cFloorUs = o.cFloorNs / 1000;
    const usPerRequest = 1e6 / piped.requestsPerSec;
    const result: ClientResult = {
      single: { meanUs: round(single.meanUs), p50Us: round(single.p50Us), p99Us: round(single.p99Us) },
      pipelined: { depth: piped.depth, usPerRequest: round(usPerRequest), requestsPerSec: Math.round(piped.requestsPerSec) },
      cFloorUs: round(cFloorUs),
      ratioSingle: round(single.p50Us / cFloorUs),
      ratioPipelinedPerRequest: round(usPerRequest / cFloorUs),
    };
    if (o.log) print(result, o.pin.length > 0);
    return result;
  } finally {
    server.kill('SIGTERM');
    await once(server, 'exit');
  }
}

function round(x: number): number {
  return Math.round(x * 100) / 100;
}

function print(r: ClientResult, pinned: boolean): void {
  console.log(`\nOur client ↔ our server: \`vfio-user bench\` (4-byte REGION_READ of BAR0), ${pinned ? 'both processes on CPU 0 (taskset -c 0)' : 'NOT pinned'}`);
  console.log(`  1 in flight:   p50 ${r.single.p50Us} µs, mean ${r.single.meanUs} µs, p99 ${r.single.p99Us} µs  = ${r.ratioSingle}× the C↔C floor (${r.cFloorUs} µs, p50 vs mean)`);
  console.log(`  ${r.pipelined.depth} in flight:  ${r.pipelined.usPerRequest} µs per request (${r.pipelined.requestsPerSec} req/s) = ${r.ratioPipelinedPerRequest}× the floor`);
}
