/**
 * Throughput of a whole migration over loopback TCP, against references
 * measured in the same run: an idle guest (all guest RAM zero: zero pages
 * cross as markers), then a guest whose every page holds data; ours
 * (`migrate()` → RemoteDestination → MigrationReceiver in its own process)
 * interleaved run by run with QEMU's own pre-copy of a guest of the same size
 * (bench/qemu-precopy.ts, when `VFIO_USER_QEMU` names a QEMU), and the data
 * guest also against bare loopback TCP. Throughput = guest RAM size / total
 * migration time, as QEMU's `total-time` counts it (setup to completion).
 */
import type { GuestMemory } from '../src/client/guest-memory.js';
import { zeroFill } from '../src/orchestrator/memory-copy.js';
import { qemuPrecopyOnce, type QemuPrecopyRun } from './qemu-precopy.js';
import { median, migrateOnce, round, type DestinationFactory, type Side } from './orchestrator-matrix.js';

/** One guest content (idle or data), ours and QEMU's. */
export interface ThroughputCase {
  /** Guest bytes / total time of each run (GB/s), and their median. */
  oursRuns: number[];
  oursGBps: number;
  /** Bytes sent as data, not as zero markers (median run). */
  oursDataBytes: number;
  qemuRuns?: number[];
  qemuGBps?: number;
  /** Bytes QEMU put on the wire (median run). */
  qemuWireBytes?: number;
  /** oursGBps / qemuGBps. */
  oursToQemu?: number;
}

/** What {@link runThroughput} measures. */
export interface ThroughputResult {
  guestBytes: number;
  idle: ThroughputCase;
  data: ThroughputCase & { rawTcpGBps: number; oursToRawTcp: number };
  /** Why QEMU was not measured, if it was not. */
  qemuSkipped?: string;
}

/** Every 8-byte word of the guest non-zero (no zero page). */
function fillData(memory: GuestMemory): void {
  const size = Number(memory.size);
  for (let at = 0; at < size; at += 1 << 30) {
    const v = memory.view(BigInt(at), Math.min(1 << 30, size - at));
    new BigUint64Array(v.buffer, v.byteOffset, v.length / 8).fill(0x5a5a_5a5a_5a5a_5a5an);
  }
}

async function measure(src: Side, remote: DestinationFactory, runs: number, qemu: string | undefined, fill: boolean): Promise<ThroughputCase> {
  const guestBytes = Number(src.memory.size);
  const ours: Array<{ GBps: number; data: number }> = [];
  const theirs: QemuPrecopyRun[] = [];
  for (let i = 0; i < runs; i++) {
    const r = await migrateOnce(src, remote, 300, 1);
    if (r.outcome !== 'migrated') throw new Error(`throughput run: ${r.outcome}: ${r.reason ?? ''}`);
    ours.push({ GBps: round(guestBytes / r.totalMs / 1e6), data: r.bytes - r.zeroBytes });
    if (qemu) theirs.push(await qemuPrecopyOnce(qemu, guestBytes >> 20, fill));
  }
  const byRate = [...ours].sort((a, b) => a.GBps - b.GBps);
  const c: ThroughputCase = { oursRuns: ours.map((r) => r.GBps), oursGBps: median(ours.map((r) => r.GBps)), oursDataBytes: byRate[Math.floor(byRate.length / 2)]?.data ?? 0 };
  if (theirs.length > 0) {
    c.qemuRuns = theirs.map((r) => round(r.GBps));
    c.qemuGBps = median(c.qemuRuns);
    c.qemuWireBytes = median(theirs.map((r) => r.transferredBytes));
    c.oursToQemu = round(c.oursGBps / c.qemuGBps);
  }
  return c;
}

/** Runs both cases (the source's guest RAM is zeroed, then filled; its content is lost). */
export async function runThroughput(src: Side, remote: DestinationFactory, o: { runs: number; rawTcpGBps: number; qemu?: string | undefined }): Promise<ThroughputResult> {
  zeroFill(src.memory, 0n, Number(src.memory.size));
  const idle = await measure(src, remote, o.runs, o.qemu, false);
  fillData(src.memory);
  const data = await measure(src, remote, o.runs, o.qemu, true);
  zeroFill(src.memory, 0n, Number(src.memory.size));
  return {
    guestBytes: Number(src.memory.size),
    idle,
    data: { ...data, rawTcpGBps: o.rawTcpGBps, oursToRawTcp: round(data.oursGBps / o.rawTcpGBps) },
    ...(o.qemu ? {} : { qemuSkipped: 'VFIO_USER_QEMU is not set' }),
  };
}

const mb = (n: number | undefined): string => (n === undefined ? '-' : `${(n / 1e6).toFixed(1)} MB`);

/** Prints the comparison. */
export function printThroughput(t: ThroughputResult): void {
  console.log(`  throughput over loopback TCP, ${t.guestBytes >> 20} MiB guest (guest RAM / total migration time; median, runs interleaved with QEMU's):`);
  const row = (name: string, c: ThroughputCase): void => {
    console.log(`    ${name.padEnd(18)} ours ${String(c.oursGBps).padStart(6)} GB/s [${c.oursRuns.join(', ')}], ${mb(c.oursDataBytes)} as data`);
    if (c.qemuGBps !== undefined) console.log(`    ${''.padEnd(18)} QEMU ${String(c.qemuGBps).padStart(6)} GB/s [${(c.qemuRuns ?? []).join(', ')}], ${mb(c.qemuWireBytes)} on the wire → ours/QEMU ${c.oursToQemu}×`);
  };
  row('idle (all zero)', t.idle);
  row('every page data', t.data);
  console.log(`    bare loopback TCP (same run, 1 MiB writes, best of 3) ${t.data.rawTcpGBps} GB/s → data guest ours/bare TCP ${t.data.oursToRawTcp}×`);
  if (t.qemuSkipped) console.log(`    QEMU: skipped (${t.qemuSkipped})`);
  else console.log(`    QEMU 10.x pre-copy: two processes, qtest accelerator (idle vCPUs), -incoming tcp, max-bandwidth lifted; data guest filled by qtest memset above 1 MiB`);
}
