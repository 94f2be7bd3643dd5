/**
 * Mediated migration throughput (M6, called by bench/mediator.ts): the same
 * device state — a BAR of RAM the size of `barMiB`, plus guest memory — moved
 * by our orchestrator from a natively migratable memory device
 * (src/devices/memory.ts, its own MigrationDefinition), and from a device
 * with the same layout and NO migration support behind two mediators running
 * the migration plugin (state read through the upstream's region fd, the
 * stream made by the mediator). Same run, same sizes; median of `runs`.
 * Throughput = bytes migrated (guest memory, zero pages included, and device
 * data) / total migration time.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { VfioUserClient } from '../src/client/client.js';
import { GuestMemory } from '../src/client/guest-memory.js';
import { createDevice, type VfioUserDevice } from '../src/device/device.js';
import { createMemoryDevice } from '../src/devices/memory.js';
import { silentLogger } from '../src/log.js';
import { Mediator } from '../src/mediator/mediator.js';
import { createMigrationPlugin } from '../src/mediator/migration/index.js';
import { migrate } from '../src/orchestrator/migrate.js';
import { RegionIndex } from '../src/protocol/constants.js';
import type { DeviceServer } from '../src/server/server.js';

const MiB = 1 << 20;
const IOVA = 0x1_0000_0000n;

/** One kind of device, measured. */
export interface MediatedMigrationRow {
  kind: 'native' | 'mediated';
  /** Median total migration time (ms). */
  totalMs: number;
  /** Median downtime (ms). */
  downtimeMs: number;
  /** Device data moved (bytes, last run). */
  deviceBytes: number;
  /** (guest memory + device data) / total time, MB/s (10^6 bytes). */
  mbPerSecond: number;
}

/** What the section measured. */
export interface MediatedMigrationResult {
  barMiB: number;
  guestMiB: number;
  runs: number;
  rows: MediatedMigrationRow[];
  /** mediated throughput / native throughput. */
  ratio: number;
}

interface Side {
  client: VfioUserClient;
  memory: GuestMemory;
  iova: bigint;
  close(): Promise<void>;
}

/** A device with the memory device's layout and no migration (BAR0 RAM, BAR2 registers that hold nothing). */
function plainDevice(barBytes: number): VfioUserDevice {
  return createDevice({
    name: 'plain-memory',
    logger: silentLogger(),
    pci: { vendorId: 0x1234, deviceId: 0x5a01, classCode: 0x050000 },
    regions: {
      bar0: { size: barBytes, type: 'mem64', prefetchable: true, shared: true },
      bar2: { size: 4096, read: (_o, n) => new Uint8Array(n), write: () => undefined },
    },
  });
}

async function openSide(dir: string, name: string, kind: 'native' | 'mediated', barBytes: number, guestBytes: number): Promise<Side> {
  const device = kind === 'native' ? createMemoryDevice({ size: barBytes, logger: silentLogger() }).device : plainDevice(barBytes);
  const upstream = join(dir, `${name}.sock`);
  const server: DeviceServer = device.serve(upstream);
  let mediator: Mediator | undefined;
  let path = upstream;
  if (kind === 'mediated') {
    const plugin = createMigrationPlugin({ deviceType: 'plain-memory', registers: [{ region: RegionIndex.BAR2, offset: 0, size: 0x100 }] });
    mediator = await Mediator.listen({ upstream, listen: join(dir, `${name}-med.sock`), plugins: [plugin], log: silentLogger() });
    path = mediator.path;
  }
  const client = await VfioUserClient.connect(path);
  const memory = GuestMemory.create(guestBytes);
  await memory.attach(client, { iova: IOVA, mode: 'fd' });
  return {
    client,
    memory,
    iova: IOVA,
    async close() {
      client.close();
      await mediator?.close();
      await server.close();
      device.dispose();
      memory.dispose();
    },
  };
}

/** Fills the source's BAR0 with non-zero bytes (so nothing travels as zero pages). */
async function fillBar(side: Side, barBytes: number): Promise<void> {
  const chunk = new Uint8Array(256 * 1024).map((_, i) => (i * 7 + 1) & 0xff || 1);
  for (let at = 0; at < barBytes; at += chunk.length) await side.client.regionWrite(RegionIndex.BAR0, BigInt(at), chunk.subarray(0, Math.min(chunk.length, barBytes - at)));
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function measure(dir: string, kind: 'native' | 'mediated', barBytes: number, guestBytes: number, runs: number): Promise<MediatedMigrationRow> {
  const totals: number[] = [];
  const downtimes: number[] = [];
  const rates: number[] = [];
  let deviceBytes = 0;
  for (let run = 0; run < runs; run++) {
    const src = await openSide(dir, `${kind}-src-${run}`, kind, barBytes, guestBytes);
    const dst = await openSide(dir, `${kind}-dst-${run}`, kind, barBytes, guestBytes);
    try {
      await fillBar(src, barBytes);
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 5000, timeoutMs: 120_000 });
      if (report.outcome !== 'migrated') throw new Error(`${kind} migration ${report.outcome}: ${report.reason ?? ''}`);
      const b = report.bytes;
      deviceBytes = Number(b.precopyDevice + b.stopCopyDevice);
      const total = Number(b.precopyMemory + b.stopCopyMemory) + deviceBytes;
      totals.push(report.totalMs);
      downtimes.push(report.downtimeMs);
      rates.push(total / 1e6 / (report.totalMs / 1000));
    } finally {
      await src.close();
      await dst.close();
    }
  }
  return { kind, totalMs: median(totals), downtimeMs: median(downtimes), deviceBytes, mbPerSecond: median(rates) };
}

/**
 * Runs the section: native memory device vs the same layout made migratable by the mediator.
 * @param o.dir - a scratch directory (a temporary one when absent).
 */
export async function runMediatedMigrationBench(o: { dir?: string; log?: boolean; quick?: boolean; barMiB?: number; guestMiB?: number; runs?: number } = {}): Promise<MediatedMigrationResult> {
  const dir = mkdtempSync(join(o.dir ?? tmpdir(), 'medmig-'));
  const barMiB = o.barMiB ?? (o.quick ? 16 : 64);
  const guestMiB = o.guestMiB ?? (o.quick ? 16 : 64);
  const runs = o.runs ?? (o.quick ? 1 : 3);
  try {
    const rows: MediatedMigrationRow[] = [];
    for (const kind of ['native', 'mediated'] as const) rows.push(await measure(dir, kind, barMiB * MiB, guestMiB * MiB, runs));
    const [native, mediated] = rows as [MediatedMigrationRow, MediatedMigrationRow];
    const result = { barMiB, guestMiB, runs, rows, ratio: mediated.mbPerSecond / native.mbPerSecond };
    if (o.log) for (const line of printMediatedMigrationBench(result)) console.log(line);
    return result;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The section as text lines. */
export function printMediatedMigrationBench(r: MediatedMigrationResult): string[] {
  const lines = [`Mediated migration: BAR ${r.barMiB} MiB of device RAM + ${r.guestMiB} MiB guest memory, median of ${r.runs}`];
  for (const row of r.rows) {
    lines.push(`  ${row.kind.padEnd(9)} ${row.mbPerSecond.toFixed(0).padStart(6)} MB/s   total ${row.totalMs.toFixed(0).padStart(6)} ms   downtime ${row.downtimeMs.toFixed(1).padStart(7)} ms   device data ${(row.deviceBytes / MiB).toFixed(1)} MiB`);
  }
  lines.push(`  mediated / native throughput: ${r.ratio.toFixed(2)}×`);
  return lines;
}
