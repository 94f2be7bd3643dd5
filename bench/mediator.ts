/**
 * Mediator benchmark (`--only mediator`), every figure against a reference
 * measured in the same run:
 * - a 4-byte REGION_READ of the GPIO card's BAR2 INPUT register from the C
 *   vfio-user client (`echo vfu`), 1 and 16 in flight, against `vfio-user
 *   serve gpio` directly and through a plugin-less mediator (`vfio-user
 *   mediate`, or bench/mediator-serve.ts until the CLI has it), each in its own
 *   process, all pinned to CPU 0 when `pin` is given; rounds interleaved, best
 *   of three by mean on each side;
 * - DMA through passed fds: the DMA engine (`vfio-user serve dma-engine`)
 *   copying guest RAM passed as a memfd, directly and through the mediator,
 *   against a C memcpy and a JS `Uint8Array.set` of the same size;
 * - mediated migration throughput (bench/mediator-migration.ts, M6): a device
 *   made migratable by the mediator vs the natively migratable memory device.
 * The load average when the section starts is reported with it (the machine
 * may be busy with other work: latency figures then spread).
 */
import { loadavg } from 'node:os';
import { join } from 'node:path';
import type { LatencySummary } from './stats.js';
import { buildEcho, cMemcpyGBps, mediatorProgram, serveDevice, startMediator, vfuRun, type MediatorProgram } from './mediator-procs.js';
import { dmaCopyThroughput, jsCopyGBps, type DmaPathResult } from './mediator-dma.js';
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

/** Round trips at one depth, direct and mediated. */
export interface MediatorDepthResult {
  depth: number;
  direct: LatencySummary;
  mediated: LatencySummary;
  /** mediated / direct, by mean and by p50 (goal ≤ 1.3). */
  ratio: { mean: number; p50: number };
  /** Requests per second (1 / mean per-request time). */
  directPerSec: number;
  mediatedPerSec: number;
}

/** DMA copies through passed fds vs memcpy. */
export interface MediatorDmaResult {
  bytes: number;
  cMemcpyGBps: number;
  jsSetGBps: number;
  direct: DmaPathResult;
  mediated: DmaPathResult;
  /** mediated / direct, best against best. */
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

function keepBest(prev: LatencySummary | undefined, next: LatencySummary): LatencySummary {
  return !prev || next.meanNs < prev.meanNs ? next : prev;
}

async function regionReads(o: MediatorBenchOptions, echo: string, program: MediatorProgram, depths: readonly number[]): Promise<MediatorDepthResult[]> {
  const best = new Map<string, LatencySummary>();
  for (let round = 0; round < 3; round++) {
    const device = join(o.dir, `med-gpio-${round}.sock`);
    const listen = join(o.dir, `med-mediator-${round}.sock`);
    const server = await serveDevice(o.pin, 'gpio', device);
    try {
      const mediator = await startMediator(o.pin, program, device, listen);
      try {
        for (const depth of depths) {
          for (const [side, sock] of [['direct', device], ['mediated', listen]] as const) {
            const s = await vfuRun(o.pin, echo, sock, o.iterations, depth, GPIO_BAR2, GPIO_INPUT);
            best.set(`${side}-${depth}`, keepBest(best.get(`${side}-${depth}`), s));
          }
        }
      } finally {
        await mediator.stop();
      }
    } finally {
      await server.stop();
    }
  }
  return depths.map((depth) => {
    const direct = best.get(`direct-${depth}`) as LatencySummary;
    const mediated = best.get(`mediated-${depth}`) as LatencySummary;
    return {
      depth,
      direct,
      mediated,
      ratio: { mean: round2(mediated.meanNs / direct.meanNs), p50: round2(mediated.p50Ns / direct.p50Ns) },
      directPerSec: Math.round(1e9 / direct.meanNs),
      mediatedPerSec: Math.round(1e9 / mediated.meanNs),
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
      const direct = await dmaCopyThroughput(device, o.dmaBytes, o.dmaRuns);
      const mediated = await dmaCopyThroughput(listen, o.dmaBytes, o.dmaRuns);
      const memcpyIterations = Math.max(5, Math.round((2 << 30) / o.dmaBytes));
      return {
        bytes: o.dmaBytes,
        cMemcpyGBps: cMemcpyGBps(echo, o.dmaBytes, memcpyIterations),
        jsSetGBps: jsCopyGBps(o.dmaBytes, memcpyIterations),
        direct,
        mediated,
        ratio: round2(mediated.bestGBps / direct.bestGBps),
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
  const regionRead = await regionReads(o, echo, program, [1, 16]);
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
  console.log(`\nMediator: 4-byte REGION_READ of the GPIO card's BAR2 (INPUT) from a C vfio-user client, \`vfio-user serve gpio\` direct vs through a plugin-less mediator (${r.mediator}), each its own process, ${r.pinned ? 'client, mediator and server all on CPU 0 (taskset -c 0)' : 'NOT pinned'}; best of 3 interleaved rounds; load average ${r.loadAverage} at the start`);
  console.log('  in flight  path         mean µs/req   p50 µs   p99 µs      req/s   × direct (mean / p50)');
  for (const d of r.regionRead) {
    const row = (name: string, s: LatencySummary, perSec: number, ratio: string): void =>
      console.log(`  ${String(d.depth).padStart(9)}  ${name.padEnd(11)}  ${us(s.meanNs)}     ${us(s.p50Ns)}  ${us(s.p99Ns)}  ${String(perSec).padStart(9)}   ${ratio}`);
    row('direct', d.direct, d.directPerSec, '1.00');
    row('mediated', d.mediated, d.mediatedPerSec, `${d.ratio.mean.toFixed(2)} / ${d.ratio.p50.toFixed(2)}${d.depth === 1 ? (d.ratio.mean <= 1.3 ? '  (goal ≤ 1.3: met)' : '  (goal ≤ 1.3: NOT met)') : ''}`);
  }
  const d = r.dma;
  console.log(`\nDMA through passed fds: the DMA engine copies ${d.bytes / (1 << 20)} MiB of guest RAM (a memfd the client passed; through the mediator the same memfd is handed on, the bytes never cross it), copy + FNV-1a checksum per descriptor, GB/s = 10^9 B/s`);
  console.log(`  C memcpy (same size)        ${d.cMemcpyGBps.toFixed(2)} GB/s`);
  console.log(`  JS Uint8Array.set           ${d.jsSetGBps.toFixed(2)} GB/s`);
  console.log(`  DMA engine, direct          ${d.direct.bestGBps.toFixed(2)} GB/s best, ${d.direct.medianGBps.toFixed(2)} median`);
  console.log(`  DMA engine, mediated        ${d.mediated.bestGBps.toFixed(2)} GB/s best, ${d.mediated.medianGBps.toFixed(2)} median  = ${d.ratio.toFixed(2)}× direct`);
  console.log('');
  for (const line of printMediatedMigrationBench(r.migration)) console.log(line);
}
