/**
 * Device-server benchmarks, each against a C reference measured in the same run:
 * - a 4-byte REGION_READ from a C vfio-user client against our server, one in
 *   flight and 16 in flight, vs the C echo floor at the same depths;
 * - 64 KiB DMA reads and writes through mapped guest memory vs C memcpy.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { DmaController } from '../src/device/dma.js';
import { memfdCreate, native } from '../src/native/addon.js';
import { DmaMapFlags } from '../src/protocol/constants.js';
import type { LatencySummary } from './stats.js';

/** Inputs of {@link runServerBench}. */
export interface ServerBenchOptions {
  dir: string;
  echo: string;
  pin: string[];
  iterations: number;
  log: boolean;
}

/** Per-request latency with `depth` requests in flight. */
export interface DepthResult {
  depth: number;
  cEcho: LatencySummary;
  cToNodeServer: LatencySummary;
  ratio: number;
}

/** DMA through mapped memory vs memcpy. */
export interface DmaResult {
  bytes: number;
  memcpyGBps: number;
  dmaWriteGBps: number;
  dmaReadIntoGBps: number;
  writeShare: number;
  readShare: number;
}

/** Everything this section measures. */
export interface ServerResult {
  regionRead: DepthResult[];
  pipelinedVsSingleFloor: number;
  dma: DmaResult;
}

const DEVICE = new URL('./serve-device.js', import.meta.url).pathname;

async function started(cmd: string[]): Promise<ReturnType<typeof spawn>> {
  const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  const [chunk] = (await once(child.stdout as NodeJS.ReadableStream, 'data')) as [Buffer];
  if (!chunk.toString().includes('ready')) throw new Error(`server did not start: ${chunk.toString()}`);
  return child;
}

async function clientRun(cmd: string[]): Promise<LatencySummary> {
  const out = execFileSync(cmd[0] as string, cmd.slice(1), { encoding: 'utf8' });
  return JSON.parse(out) as LatencySummary;
}

async function measure(server: string[], client: string[]): Promise<LatencySummary> {
  const child = await started(server);
  try {
    return await clientRun(client);
  } finally {
    child.kill('SIGTERM');
    await once(child, 'exit');
  }
}

async function regionReads(o: ServerBenchOptions, depth: number): Promise<DepthResult> {
  const best: { c?: LatencySummary; n?: LatencySummary } = {};
  for (let round = 0; round < 3; round++) {
    const sock = join(o.dir, `srv-${depth}-${round}.sock`);
    const c = await measure([...o.pin, o.echo, 'server', sock], [...o.pin, o.echo, 'client', sock, String(o.iterations), '32', String(depth)]);
    const n = await measure([...o.pin, process.execPath, DEVICE, sock], [...o.pin, o.echo, 'vfu', sock, String(o.iterations), String(depth)]);
    if (!best.c || c.meanNs < best.c.meanNs) best.c = c;
    if (!best.n || n.meanNs < best.n.meanNs) best.n = n;
  }
  const cEcho = best.c as LatencySummary;
  const cToNodeServer = best.n as LatencySummary;
  return { depth, cEcho, cToNodeServer, ratio: round2(cToNodeServer.meanNs / cEcho.meanNs) };
}

/** 64 KiB DMA through mapped guest memory vs C memcpy, best of five each. */
export function dmaBench(o: Pick<ServerBenchOptions, "echo">): DmaResult {
  const bytes = 64 * 1024;
  // Best of five on both sides: steady state against steady state.
  const memcpyRuns = Array.from({ length: 5 }, () => JSON.parse(execFileSync(o.echo, ['memcpy', String(bytes), '200000'], { encoding: 'utf8' })) as { gbPerSecond: number });
  const memcpy = { gbPerSecond: Math.max(...memcpyRuns.map((r) => r.gbPerSecond)) };
  const fd = memfdCreate('bench-guest', 1 << 20);
  const dma = new DmaController();
  dma.map({ argsz: 32, flags: DmaMapFlags.READ | DmaMapFlags.WRITE, offset: 0n, addr: 0x1000_0000n, size: 1n << 20n }, fd);
  const src = new Uint8Array(bytes).fill(7);
  const dst = new Uint8Array(bytes);
  const iterations = 200_000;
  const time = (fn: (i: number) => void): number => {
    for (let i = 0; i < iterations / 10; i++) fn(i);
    let best = Infinity;
    for (let round = 0; round < 5; round++) {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < iterations; i++) fn(i);
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / iterations);
    }
    return best;
  };
  // Same footprint as the C reference (two 64 KiB buffers): one guest slot and one heap buffer.
  const slot = 0x1000_0000n;
  const writeNs = time(() => dma.writeSync(slot, src));
  const readNs = time(() => dma.readInto(slot, dst));
  dma.close();
  native.close(fd);
  const dmaWriteGBps = round2(bytes / writeNs);
  const dmaReadIntoGBps = round2(bytes / readNs);
  return {
    bytes,
    memcpyGBps: memcpy.gbPerSecond,
    dmaWriteGBps,
    dmaReadIntoGBps,
    writeShare: round2(dmaWriteGBps / memcpy.gbPerSecond),
    readShare: round2(dmaReadIntoGBps / memcpy.gbPerSecond),
  };
}

/** Runs the server section. */
export async function runServerBench(o: ServerBenchOptions): Promise<ServerResult> {
  const single = await regionReads(o, 1);
  const piped = await regionReads(o, 16);
  const result: ServerResult = {
    regionRead: [single, piped],
    pipelinedVsSingleFloor: round2(piped.cToNodeServer.meanNs / single.cEcho.meanNs),
    dma: dmaBench(o),
  };
  if (o.log) print(result, o.pin.length > 0);
  return result;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

function us(ns: number): string {
  return (ns / 1000).toFixed(2).padStart(7);
}

function print(r: ServerResult, pinned: boolean): void {
  console.log(`\nDevice server: 4-byte REGION_READ of BAR0 from a C vfio-user client, ${pinned ? 'both processes on CPU 0 (taskset -c 0)' : 'NOT pinned'}`);
  console.log('  in flight   C echo µs/req   C → our server µs/req   ratio');
  for (const d of r.regionRead) console.log(`  ${String(d.depth).padStart(9)}   ${us(d.cEcho.meanNs)}         ${us(d.cToNodeServer.meanNs)}               ${d.ratio.toFixed(2)}`);
  console.log(`  16 in flight, per request, vs the single-request C floor: ${r.pipelinedVsSingleFloor.toFixed(2)}`);
  const d = r.dma;
  console.log(`\nDMA through mapped guest memory, ${d.bytes / 1024} KiB per access (C memcpy ${d.memcpyGBps} GB/s)`);
  console.log(`  writeSync  ${d.dmaWriteGBps} GB/s = ${(d.writeShare * 100).toFixed(0)}% of memcpy`);
  console.log(`  readInto   ${d.dmaReadIntoGBps} GB/s = ${(d.readShare * 100).toFixed(0)}% of memcpy`);
}
