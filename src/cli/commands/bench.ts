/**
 * `vfio-user bench SOCKET [--region bar0] [--offset 0] [--size 4] [--count N]
 * [--depth 16] [--large-size 64K] [--json]`: REGION_READ latency with one
 * request in flight, then throughput with `depth` in flight (pipelined
 * `client.regionRead` promises), at `--size` and at a larger size for MB/s.
 * Pinning is the user's business: `taskset -c 0 vfio-user bench …`.
 */
import { availableParallelism } from 'node:os';
import type { VfioUserClient } from '../../client/client.js';
import { native } from '../../native/addon.js';
import { BarGate, parseAssignBars, type AssignBarsMode } from '../bar-gate.js';
import { parseSize } from '../values.js';
import { CliError, hex, parseCount, parseInteger, parseRegion, regionName, siteError, stdio, table, toJson, withClient, type GlobalOptions, type Output } from '../common.js';

/** Options of `bench`. */
export interface BenchOptions {
  region?: string;
  offset?: string;
  size?: string;
  count?: string;
  depth?: string;
  largeSize?: string;
  json?: boolean;
  /** `auto` (default), `always` or `never`: see bar-gate.ts. */
  assignBars?: string;
}

/** One row of results. */
export interface BenchRow {
  mode: 'latency' | 'throughput';
  size: number;
  depth: number;
  requests: number;
  elapsedMs: number;
  meanUs: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  maxUs: number;
  requestsPerSec: number;
  mbPerSec: number;
}

/** What the output says about CPU placement, which the bench leaves to the user. */
function pinningNote(cpus: number): string {
  const where = cpus === 1 ? 'this process may run on 1 CPU (pinned)' : `this process may run on ${cpus} CPUs (not pinned)`;
  return `${where}; pinning is your business: run client and server under \`taskset -c 0\` for stable figures`;
}
const MAX_DEPTH = 4096;

/** The `q` quantile (0..1) of sorted values, nearest rank. */
export function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] ?? 0;
}

/** Runs `count` reads of `size` bytes with `depth` in flight; each request timed from issue to reply. */
async function measure(client: VfioUserClient, region: number, offset: bigint, size: number, count: number, depth: number): Promise<BenchRow> {
  const times = new Float64Array(count);
  let issued = 0;
  const worker = async (): Promise<void> => {
    while (issued < count) {
      const i = issued++;
      const t0 = process.hrtime.bigint();
      await client.regionRead(region, offset, size);
      times[i] = Number(process.hrtime.bigint() - t0) / 1000;
    }
  };
  const start = process.hrtime.bigint();
  await Promise.all(Array.from({ length: Math.min(depth, count) }, worker));
  const elapsedNs = Number(process.hrtime.bigint() - start);
  const sorted = times.slice().sort();
  const seconds = elapsedNs / 1e9;
  return {
    mode: depth === 1 ? 'latency' : 'throughput',
    size,
    depth,
    requests: count,
    elapsedMs: elapsedNs / 1e6,
    meanUs: sorted.reduce((a, b) => a + b, 0) / count,
    p50Us: quantile(sorted, 0.5),
    p90Us: quantile(sorted, 0.9),
    p99Us: quantile(sorted, 0.99),
    maxUs: sorted[sorted.length - 1] ?? 0,
    requestsPerSec: count / seconds,
    mbPerSec: (count * size) / seconds / 1e6,
  };
}

interface Plan {
  region: number;
  offset: bigint;
  size: number;
  largeSize: number;
  count: number;
  depth: number;
  assignBars: AssignBarsMode;
}

function plan(options: BenchOptions): Plan {
  const depth = parseCount(options.depth ?? '16', '--depth', MAX_DEPTH);
  return {
    region: parseRegion(options.region ?? 'bar0'),
    offset: parseInteger(options.offset ?? '0', '--offset'),
    size: parseSize(options.size ?? '4', '--size', { max: 1 << 20 }),
    largeSize: parseSize(options.largeSize ?? '64K', '--large-size'),
    count: parseCount(options.count ?? '10000', '--count', 10_000_000),
    depth,
    assignBars: parseAssignBars(options.assignBars),
  };
}

async function runRows(gate: BarGate, p: Plan): Promise<BenchRow[]> {
  const client = gate.client;
  const { info, fd } = await client.regionInfo(p.region);
  if (fd !== undefined) native.close(fd);
  if (info.size === 0n) throw new CliError(`bench: ${regionName(p.region)} is not implemented by this device`);
  const room = info.size > p.offset ? info.size - p.offset : 0n;
  if (room < BigInt(p.size)) throw new CliError(`bench: ${regionName(p.region)} is ${info.size} bytes; no room for ${p.size} bytes at ${hex(p.offset)}`);
  const wanted = BigInt(Math.min(p.largeSize, client.server.maxDataXferSize));
  const large = Number(wanted < room ? wanted : room);
  await gate.run(p.region, p.offset, p.size, () => client.regionRead(p.region, p.offset, p.size)); // a server that needs the BARs set up gets it here
  const warmup = Math.min(1000, Math.ceil(p.count / 10));
  await measure(client, p.region, p.offset, p.size, warmup, p.depth);
  const rows = [await measure(client, p.region, p.offset, p.size, p.count, 1), await measure(client, p.region, p.offset, p.size, p.count, p.depth)];
  if (large > p.size) {
    const n = Math.max(100, Math.min(p.count, Math.floor((256 << 20) / large)));
    rows.push(await measure(client, p.region, p.offset, large, n, p.depth));
  }
  return rows;
}

const f1 = (n: number): string => n.toFixed(1);

/** The result table, one line per row. */
export function formatBench(rows: readonly BenchRow[]): string[] {
  const head = ['mode', 'bytes', 'in flight', 'requests', 'p50 µs', 'p90 µs', 'p99 µs', 'max µs', 'req/s', 'MB/s'];
  const body = rows.map((r) => [r.mode, String(r.size), String(r.depth), String(r.requests), f1(r.p50Us), f1(r.p90Us), f1(r.p99Us), f1(r.maxUs), Math.round(r.requestsPerSec).toString(), r.mbPerSec.toFixed(2)]);
  return table([head, ...body]);
}

/** Runs `bench`. */
export async function runBench(socket: string, options: BenchOptions, global: GlobalOptions, out: Output = stdio): Promise<void> {
  const p = plan(options);
  const cpus = availableParallelism();
  const rows = await withClient(
    socket,
    global,
    async (client) => {
      try {
        return await runRows(new BarGate(client, p.assignBars, (t) => out.trace(`note: ${t}`)), p);
      } catch (error) {
        throw error instanceof CliError ? error : siteError(`bench ${regionName(p.region).toLowerCase()} ${hex(p.offset)}`, error);
      }
    },
    { out },
  );
  if (options.json) {
    out.line(toJson({ socket, region: p.region, regionName: regionName(p.region), offset: p.offset, count: p.count, depth: p.depth, cpus, note: pinningNote(cpus), rows }));
    return;
  }
  out.line(`REGION_READ of ${regionName(p.region)}+${hex(p.offset)} over ${socket}; request latency from issue to reply`);
  formatBench(rows).forEach((l) => out.line(l));
  out.line(`note: ${pinningNote(cpus)}`);
}
