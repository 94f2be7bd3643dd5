/**
 * Mediator benchmark (`--only mediator`), every figure against a reference
 * measured in the same run:
 * - a 4-byte REGION_READ of the GPIO card's BAR2 INPUT register from the C
 *   vfio-user client (`echo vfu`), 1 and 16 in flight, against `vfio-user
 *   serve gpio` directly and through a plugin-less mediator (`vfio-user
 *   mediate`, or bench/mediator-serve.ts until the CLI has it), each in its own
 *   process, all pinned to CPU 0 when `pin` is given; and through the floor of
 *   any relay (bench/c/mediator-floor.c: one C process copying bytes, nothing
 *   parsed), which shows what the extra hop itself costs on one CPU; rounds
 *   interleaved, best of three by p50 on each path;
 * - DMA through passed fds: the DMA engine (`vfio-user serve dma-engine`)
 *   copying guest RAM passed as a memfd, directly and through the mediator,
 *   against a C memcpy and a JS `Uint8Array.set` of the same size (the
 *   engine checksums as it copies, in JS: it is far below memcpy on either
 *   path; the point is that mediation does not change it — test/mediator
 *   checks that no DMA message crosses the mediator then);
 * - mediated migration throughput (bench/mediator-migration.ts, M6): a device
 *   made migratable by the mediator vs the natively migratable memory device.
 * The load average when the section starts is reported with it (the machine
 * may be busy with other work: latency figures then spread).
 */
import { loadavg } from 'node:os';
import { join } from 'node:path';
import type { LatencySummary } from './stats.js';
import { buildEcho, buildFloor, cMemcpyGBps, mediatorProgram, serveDevice, startFloor, startMediator, vfuRun, type MediatorProgram } from './mediator-procs.js';
import { dmaCopyThroughput, jsCopyGBps, summariseRates, type DmaPathResult } from './mediator-dma.js';
import { printMediatedMigrationBench, runMediatedMigrationBench, type MediatedMigrationResult } from './mediator-migration.js';

/** Inputs of {@link runMediatorBench}. */
export interface MediatorBenchOptions {
  dir: string;
  /** The C echo binary (bench/c/echo.c); built into `dir` when absent. */
  echo?: string;
  /** `taskset -c 0`, or empty. */
  pin: string[];
  /** REGION_READs per measurement. */
  iterations: number;
  /** Bytes of one DMA copy. */
  dmaBytes: number;
  /** DMA copies per path (after a warm-up). */
  dmaRuns: number;
  /** Fewer migration runs and smaller sizes (M6's quick mode). */
  quick?: boolean;
  log: boolean;
}

/** Round trips at one depth: direct, through the C floor relay, through the mediator. */
export interface MediatorDepthResult {
  depth: number;
  direct: LatencySummary;
  floor: LatencySummary;
  mediated: LatencySummary;
  /** mediated / direct, by mean and by p50 (goal ≤ 1.3). */
  ratio: { mean: number; p50: number };
  /** floor / direct by p50: what the extra hop alone costs. */
  floorRatioP50: number;
  /** mediated / floor by p50: what the mediator costs beyond the hop. */
  overFloorP50: number;
  /** Requests per second (1 / p50 per-request time: with 16 in flight, the time of a batch / 16). */
  directPerSec: number;
  floorPerSec: number;
  mediatedPerSec: number;
}

/** DMA copies through passed fds vs memcpy. */
export interface MediatorDmaResult {
  bytes: number;
  cMemcpyGBps: number;
  jsSetGBps: number;
  direct: DmaPathResult;
  mediated: DmaPathResult;
  /** mediated / direct, median against median. */
  ratio: number;
}

/** What this section reports. */
export interface MediatorResult {
  pinned: boolean;
  mediator: MediatorProgram;
  regionRead: MediatorDepthResult[];
  dma: MediatorDmaResult;
  /** 1-minute load average when the section started. */
  loadAverage: number;
  /** M6's rows: native vs mediated migration throughput. */
  migration: MediatedMigrationResult;
}

const GPIO_BAR2 = 2;
const GPIO_INPUT = 0x14;

/** Best by p50: on a busy machine the mean follows the load (a few preempted rounds of milliseconds), the median the path. */
function keepBest(prev: LatencySummary | undefined, next: LatencySummary): LatencySummary {
  return !prev || next.p50Ns < prev.p50Ns ? next : prev;
}

async function regionReads(o: MediatorBenchOptions, echo: string, floorBinary: string, program: MediatorProgram, depths: readonly number[]): Promise<MediatorDepthResult[]> {
  const best = new Map<string, LatencySummary>();
  for (let round = 0; round < 3; round++) {
    const device = join(o.dir, `med-gpio-${round}.sock`);
    const listen = join(o.dir, `med-mediator-${round}.sock`);
    const floorListen = join(o.dir, `med-floor-${round}.sock`);
    const server = await serveDevice(o.pin, 'gpio', device);
    const started = [server];
    try {
      started.push(await startMediator(o.pin, program, device, listen));
      started.push(await startFloor(o.pin, floorBinary, device, floorListen));
      for (const depth of depths) {
        for (const [path, sock] of [['direct', device], ['floor', floorListen], ['mediated', listen]] as const) {
          const s = await vfuRun(o.pin, echo, sock, o.iterations, depth, GPIO_BAR2, GPIO_INPUT);
          best.set(`${path}-${depth}`, keepBest(best.get(`${path}-${depth}`), s));
        }
      }
    } finally {
      for (const p of started.reverse()) await p.stop();
    }
  }
  return depths.map((depth) => {
    const get = (path: string): LatencySummary => best.get(`${path}-${depth}`) as LatencySummary;
    const [direct, floor, mediated] = [get('direct'), get('floor'), get('mediated')];
    return {
      depth,
      direct,
      floor,
      mediated,
      ratio: { mean: round2(mediated.meanNs / direct.meanNs), p50: round2(mediated.p50Ns / direct.p50Ns) },
      floorRatioP50: round2(floor.p50Ns / direct.p50Ns),
      overFloorP50: round2(mediated.p50Ns / floor.p50Ns),
      directPerSec: Math.round(1e9 / direct.p50Ns),
      floorPerSec: Math.round(1e9 / floor.p50Ns),
      mediatedPerSec: Math.round(1e9 / mediated.p50Ns),
    };
  });
}

async function dmaPaths(o: MediatorBenchOptions, echo: string, program: MediatorProgram): Promise<MediatorDmaResult> {
  const device = join(o.dir, 'med-dma.sock');
  const listen = join(o.dir, 'med-dma-mediator.sock');
  const server = await serveDevice(o.pin, 'dma-engine', device);
  try {
    const mediator = await startMediator(o.pin, program, device, listen);
    try {
      // Three alternating blocks per path: a busy machine's drift then weighs on both alike.
      const rates = { direct: [] as number[], mediated: [] as number[] };
      for (let block = 0; block < 3; block++) {
        rates.direct.push(...(await dmaCopyThroughput(device, o.dmaBytes, o.dmaRuns)));
        rates.mediated.push(...(await dmaCopyThroughput(listen, o.dmaBytes, o.dmaRuns)));
      }
      const [direct, mediated] = [summariseRates(rates.direct), summariseRates(rates.mediated)];
      const memcpyIterations = Math.max(5, Math.round((2 << 30) / o.dmaBytes));
      return {
        bytes: o.dmaBytes,
        cMemcpyGBps: cMemcpyGBps(echo, o.dmaBytes, memcpyIterations),
        jsSetGBps: jsCopyGBps(o.dmaBytes, memcpyIterations),
        direct,
        mediated,
        ratio: round2(mediated.medianGBps / direct.medianGBps),
      };
    } finally {
      await mediator.stop();
    }
  } finally {
    await server.stop();
  }
}

/** Runs the mediator section. */
export async function runMediatorBench(o: MediatorBenchOptions): Promise<MediatorResult> {
  const echo = o.echo || buildEcho(o.dir);
  const program = mediatorProgram();
  const loadAverage = Math.round((loadavg()[0] ?? 0) * 10) / 10;
  const regionRead = await regionReads(o, echo, buildFloor(o.dir), program, [1, 16]);
  const dma = await dmaPaths(o, echo, program);
  const migration = await runMediatedMigrationBench({ dir: o.dir, log: false, ...(o.quick ? { quick: true } : {}) });
  const result: MediatorResult = { pinned: o.pin.length > 0, mediator: program, loadAverage, regionRead, dma, migration };
  if (o.log) printMediatorBench(result);
  return result;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

function us(ns: number): string {
  return (ns / 1000).toFixed(2).padStart(7);
}

/** Prints the section's tables. */
export function printMediatorBench(r: MediatorResult): void {
  console.log(`\nMediator: 4-byte REGION_READ of the GPIO card's BAR2 (INPUT) from a C vfio-user client, \`vfio-user serve gpio\` direct, through the floor of any relay (C, bytes copied, nothing parsed) and through a plugin-less mediator (${r.mediator}), each its own process, ${r.pinned ? 'client, relay and server all on CPU 0 (taskset -c 0)' : 'NOT pinned'}; best of 3 interleaved rounds by p50; req/s = 1 / p50; load average ${r.loadAverage} at the start`);
  console.log('  in flight  path           p50 µs   mean µs   p99 µs      req/s   p50 × direct   p50 × floor');
  for (const d of r.regionRead) {
    const row = (name: string, s: LatencySummary, perSec: number, vsDirect: string, vsFloor: string): void =>
      console.log(`  ${String(d.depth).padStart(9)}  ${name.padEnd(13)} ${us(s.p50Ns)}   ${us(s.meanNs)}  ${us(s.p99Ns)}  ${String(perSec).padStart(9)}   ${vsDirect.padStart(12)}   ${vsFloor}`);
    row('direct', d.direct, d.directPerSec, '1.00', '');
    row('C floor relay', d.floor, d.floorPerSec, d.floorRatioP50.toFixed(2), '1.00');
    const goal = d.depth === 1 ? `   (goal ≤ 1.3× direct: ${d.ratio.p50 <= 1.3 ? 'met' : 'NOT met'})` : '';
    row('mediator', d.mediated, d.mediatedPerSec, d.ratio.p50.toFixed(2), `${d.overFloorP50.toFixed(2)}${goal}`);
  }
  const d = r.dma;
  console.log(`\nDMA through passed fds: the DMA engine copies ${d.bytes / (1 << 20)} MiB of guest RAM (a memfd the client passed; through the mediator the same memfd is handed on, the bytes never cross it), copy + FNV-1a checksum per descriptor, GB/s = 10^9 B/s`);
  console.log(`  C memcpy (same size)        ${d.cMemcpyGBps.toFixed(2)} GB/s`);
  console.log(`  JS Uint8Array.set           ${d.jsSetGBps.toFixed(2)} GB/s`);
  console.log(`  DMA engine, direct          ${d.direct.medianGBps.toFixed(2)} GB/s median, ${d.direct.bestGBps.toFixed(2)} best (${d.direct.runs} copies in 3 blocks)`);
  console.log(`  DMA engine, mediated        ${d.mediated.medianGBps.toFixed(2)} GB/s median, ${d.mediated.bestGBps.toFixed(2)} best (${d.mediated.runs} copies, blocks alternating with direct's)  = ${d.ratio.toFixed(2)}× direct (median)`);
  console.log('');
  for (const line of printMediatedMigrationBench(r.migration)) console.log(line);
}
