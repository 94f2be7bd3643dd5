/**
 * Round trip of a 32-byte vfio-user message over a UNIX stream socket:
 * C client ↔ C echo (the floor), C client → Node transport, Node ↔ Node.
 * Each pair runs as two processes pinned to the same CPU.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import type { LatencySummary } from './stats.js';

/** Inputs of {@link runTransportBench}. */
export interface TransportBenchOptions {
  dir: string;
  echo: string;
  pin: string[];
  iterations: number;
  log: boolean;
}

/** Results, with ratios against the C floor of the same run. */
export interface TransportResult {
  messageBytes: number;
  cToC: LatencySummary;
  cToNode: LatencySummary;
  nodeToNode: LatencySummary;
  ratioCToNode: number;
  ratioNodeToNode: number;
}

const SIZE = 32;
const NODE_ECHO = new URL('./echo-node.js', import.meta.url).pathname;

async function startServer(cmd: string[], readyTimeoutMs = 10_000): Promise<ReturnType<typeof spawn>> {
  const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  const timer = setTimeout(() => child.kill(), readyTimeoutMs);
  const [chunk] = (await once(child.stdout as NodeJS.ReadableStream, 'data')) as [Buffer];
  clearTimeout(timer);
  if (!chunk.toString().includes('ready')) throw new Error(`server did not start: ${chunk.toString()}`);
  return child;
}

async function runClient(cmd: string[]): Promise<LatencySummary> {
  const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const [code] = (await once(child, 'exit')) as [number];
  if (code !== 0) throw new Error(`${cmd.join(' ')} exited with ${code}`);
  return JSON.parse(out) as LatencySummary;
}

async function pair(serverCmd: string[], clientCmd: string[]): Promise<LatencySummary> {
  const server = await startServer(serverCmd);
  try {
    return await runClient(clientCmd);
  } finally {
    server.kill();
  }
}

/** Runs the three pairs, interleaved over several rounds, keeping each pair's best mean. */
export async function runTransportBench(o: TransportBenchOptions): Promise<TransportResult> {
  const node = [...o.pin, process.execPath, NODE_ECHO];
  const c = [...o.pin, o.echo];
  const n = String(o.iterations);
  const best: Record<string, LatencySummary> = {};
  const keep = (key: string, r: LatencySummary): void => {
    const prev = best[key];
    if (!prev || r.meanNs < prev.meanNs) best[key] = r;
  };
  for (let round = 0; round < 3; round++) {
    const sock = join(o.dir, `echo-${round}.sock`);
    keep('cToC', await pair([...c, 'server', sock], [...c, 'client', sock, n, String(SIZE)]));
    keep('cToNode', await pair([...node, 'server', sock], [...c, 'client', sock, n, String(SIZE)]));
    keep('nodeToNode', await pair([...node, 'server', sock], [...node, 'client', sock, n, String(SIZE)]));
  }
  const result: TransportResult = {
    messageBytes: SIZE,
    cToC: best.cToC as LatencySummary,
    cToNode: best.cToNode as LatencySummary,
    nodeToNode: best.nodeToNode as LatencySummary,
    ratioCToNode: round2((best.cToNode as LatencySummary).meanNs / (best.cToC as LatencySummary).meanNs),
    ratioNodeToNode: round2((best.nodeToNode as LatencySummary).meanNs / (best.cToC as LatencySummary).meanNs),
  };
  if (o.log) printTransport(result, o.pin.length > 0);
  return result;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

function us(ns: number): string {
  return (ns / 1000).toFixed(2).padStart(7);
}

function printTransport(r: TransportResult, pinned: boolean): void {
  console.log(`\nTransport round trip, ${r.messageBytes}-byte message, UNIX stream socket, ${pinned ? 'both processes on CPU 0 (taskset -c 0)' : 'NOT pinned (no taskset)'}`);
  console.log('  pair                 mean µs   p50 µs   p99 µs   × C floor');
  const row = (name: string, s: LatencySummary, ratio: string): void =>
    console.log(`  ${name.padEnd(20)} ${us(s.meanNs)}  ${us(s.p50Ns)}  ${us(s.p99Ns)}   ${ratio}`);
  row('C client ↔ C echo', r.cToC, '1.00 (floor)');
  row('C client → Node', r.cToNode, r.ratioCToNode.toFixed(2));
  row('Node ↔ Node', r.nodeToNode, r.ratioNodeToNode.toFixed(2));
}
