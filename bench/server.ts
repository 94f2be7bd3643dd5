/**
 * Device-server benchmarks, each against references measured in the same run:
 * - a 4-byte REGION_READ of the GPIO card's BAR2 from a C vfio-user client
 *   (`echo vfu`), one in flight and 16 in flight, against our card
 *   (`serve-gpio.ts`), the C echo floor at the same depths and, when
 *   LIBVFIO_USER_BUILD names a libvfio-user build, libvfio-user's own
 *   `samples/gpio-pci-idio-16` — same client, same socket type, every server
 *   pinned like the client, rounds interleaved;
 * - 64 KiB DMA reads and writes through mapped guest memory vs C memcpy.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
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
  /** libvfio-user's `samples/gpio-pci-idio-16`, when available. */
  libvfioUserGpio?: string;
}

/** Per-request latency with `depth` requests in flight. */
export interface DepthResult {
  depth: number;
  cEcho: LatencySummary;
  /** Our GPIO card (DeviceServer). */
  ours: LatencySummary;
  /** libvfio-user's gpio-pci-idio-16 sample, when LIBVFIO_USER_BUILD was set. */
  libvfioUser?: LatencySummary;
  /** ours / C echo, by mean. */
  ratio: number;
  /** ours / libvfio-user, by mean and by p50. */
  vsLibvfioUser?: { mean: number; p50: number };
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

const GPIO = new URL('./serve-gpio.js', import.meta.url).pathname;
/** BAR2 of the GPIO card (vfio region index 2), its read-only INPUT register. */
const GPIO_REGION = '2';
const GPIO_INPUT = '0x14';

/** Starts a server that prints `ready` once it listens. */
async function started(cmd: string[]): Promise<ReturnType<typeof spawn>> {
  const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  const [chunk] = (await once(child.stdout as NodeJS.ReadableStream, 'data')) as [Buffer];
  if (!chunk.toString().includes('ready')) throw new Error(`server did not start: ${chunk.toString()}`);
  return child;
}

/** Starts a server that prints nothing: ready once its socket exists (libvfio-user binds in vfu_create_ctx). */
async function startedWhenBound(cmd: string[], sock: string): Promise<ReturnType<typeof spawn>> {
  const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['ignore', 'ignore', 'inherit'] });
  for (let waited = 0; !existsSync(sock); waited += 10) {
    if (waited > 10_000 || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error(`${cmd.join(' ')} did not bind ${sock}`);
    }
    await sleep(10);
  }
  return child;
}

async function clientRun(cmd: string[]): Promise<LatencySummary> {
  const out = execFileSync(cmd[0] as string, cmd.slice(1), { encoding: 'utf8' });
  return JSON.parse(out) as LatencySummary;
}

async function measure(server: Promise<ReturnType<typeof spawn>>, client: string[]): Promise<LatencySummary> {
  const child = await server;
  try {
    return await clientRun(client);
  } finally {
    child.kill('SIGTERM');
    if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
  }
}

function keepBest(prev: LatencySummary | undefined, next: LatencySummary): LatencySummary {
  return !prev || next.meanNs < prev.meanNs ? next : prev;
}

async function regionReads(o: ServerBenchOptions, depth: number): Promise<DepthResult> {
  const best: { c?: LatencySummary; n?: LatencySummary; l?: LatencySummary } = {};
  const vfu = (sock: string): string[] => [...o.pin, o.echo, 'vfu', sock, String(o.iterations), String(depth), GPIO_REGION, GPIO_INPUT];
  for (let round = 0; round < 3; round++) {
    const sock = (who: string): string => join(o.dir, `srv-${who}-${depth}-${round}.sock`);
    const c = sock('c');
    best.c = keepBest(best.c, await measure(started([...o.pin, o.echo, 'server', c]), [...o.pin, o.echo, 'client', c, String(o.iterations), '32', String(depth)]));
    const n = sock('node');
    best.n = keepBest(best.n, await measure(started([...o.pin, process.execPath, GPIO, n]), vfu(n)));
    if (o.libvfioUserGpio) {
      const l = sock('lvu');
      best.l = keepBest(best.l, await measure(startedWhenBound([...o.pin, o.libvfioUserGpio, l], l), vfu(l)));
    }
  }
  const cEcho = best.c as LatencySummary;
  const ours = best.n as LatencySummary;
  const result: DepthResult = { depth, cEcho, ours, ratio: round2(ours.meanNs / cEcho.meanNs) };
  if (best.l) {
    result.libvfioUser = best.l;
    result.vsLibvfioUser = { mean: round2(ours.meanNs / best.l.meanNs), p50: round2(ours.p50Ns / best.l.p50Ns) };
  }
  return result;
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
    pipelinedVsSingleFloor: round2(piped.ours.meanNs / single.cEcho.meanNs),
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
  console.log(`\nDevice server: 4-byte REGION_READ of the GPIO card's BAR2 (INPUT) from a C vfio-user client, ${pinned ? 'client and server on CPU 0 (taskset -c 0)' : 'NOT pinned'}`);
  console.log('  in flight  server                        mean µs/req   p50 µs   p99 µs   × C echo   × libvfio-user (mean / p50)');
  for (const d of r.regionRead) {
    const row = (name: string, s: LatencySummary, vsEcho: string, vsLvu: string): void =>
      console.log(`  ${String(d.depth).padStart(9)}  ${name.padEnd(28)}  ${us(s.meanNs)}     ${us(s.p50Ns)}  ${us(s.p99Ns)}   ${vsEcho.padStart(8)}   ${vsLvu}`);
    row('C echo (floor)', d.cEcho, '1.00', '');
    if (d.libvfioUser) row('libvfio-user gpio sample', d.libvfioUser, (d.libvfioUser.meanNs / d.cEcho.meanNs).toFixed(2), '1.00');
    row('our gpio (DeviceServer)', d.ours, d.ratio.toFixed(2), d.vsLibvfioUser ? `${d.vsLibvfioUser.mean.toFixed(2)} / ${d.vsLibvfioUser.p50.toFixed(2)}` : '(LIBVFIO_USER_BUILD not set)');
  }
  console.log(`  16 in flight, per request, vs the single-request C floor: ${r.pipelinedVsSingleFloor.toFixed(2)}`);
  const d = r.dma;
  console.log(`\nDMA through mapped guest memory, ${d.bytes / 1024} KiB per access (C memcpy ${d.memcpyGBps} GB/s)`);
  console.log(`  writeSync  ${d.dmaWriteGBps} GB/s = ${(d.writeShare * 100).toFixed(0)}% of memcpy`);
  console.log(`  readInto   ${d.dmaReadIntoGBps} GB/s = ${(d.readShare * 100).toFixed(0)}% of memcpy`);
}
