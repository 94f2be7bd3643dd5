/**
 * Migration benchmarks, each with a reference from the same run:
 * - stop-copy stream throughput: a device with 256 MiB of state in its own
 *   process, read by our client over a UNIX socket with 1 MiB MIG_DATA_READs
 *   (and fed to a destination device in a third process), against C memcpy of
 *   the same 256 MiB;
 * - DMA_LOGGING_REPORT of 1 GiB of guest memory at 4 KiB pages (32 KiB bitmap).
 */
import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { VfioUserClient } from '../src/client/client.js';
import { createDevice } from '../src/device/device.js';
import { memfdCreate, native } from '../src/native/addon.js';
import { DmaMapFlags, MigrationState } from '../src/protocol/constants.js';
import { crc32Throughput, type Crc32Row } from './crc32.js';

/** What this section reports. */
export interface MigrationResult {
  stateBytes: number;
  memcpyGBps: number;
  setStopCopyMs: number;
  readGBps: number;
  endToEndGBps: number;
  readShareOfMemcpy: number;
  loggingReport1GiBUs: number;
  /** The stream's CRC-32: native, portable fallback and a bit-at-a-time reference (MB/s). */
  crc32: Crc32Row[];
}

const DEVICE = new URL('./serve-migratable.js', import.meta.url).pathname;

async function serve(path: string, bytes: number): Promise<ReturnType<typeof spawn>> {
  const child = spawn(process.execPath, [DEVICE, path, String(bytes)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await once(child.stdout, 'data');
  return child;
}

async function stop(child: ReturnType<typeof spawn>): Promise<void> {
  child.kill('SIGTERM');
  await once(child, 'exit');
}

/** STOP_COPY on the source, then 1 MiB reads to EOF; optionally each chunk written to a destination. */
async function moveStream(src: VfioUserClient, dst: VfioUserClient | undefined): Promise<{ setMs: number; readMs: number; bytes: number }> {
  const t0 = performance.now();
  await src.setMigrationState(MigrationState.STOP_COPY);
  const t1 = performance.now();
  if (dst) await dst.setMigrationState(MigrationState.RESUMING);
  let bytes = 0;
  for (;;) {
    const chunk = await src.migDataRead(1 << 20);
    if (chunk.length === 0) break;
    bytes += chunk.length;
    if (dst) await dst.migDataWrite(chunk);
  }
  if (dst) await dst.setMigrationState(MigrationState.RUNNING);
  const t2 = performance.now();
  await src.setMigrationState(MigrationState.RUNNING);
  return { setMs: t1 - t0, readMs: t2 - t1, bytes };
}

async function loggingReport(): Promise<number> {
  const dir = process.env.TMPDIR ?? '/tmp';
  const path = join(dir, `vfio-user-bench-log-${process.pid}.sock`);
  const device = createDevice({ name: 'bench-log', pci: { vendorId: 0x1af4, deviceId: 0x10f3, classCode: 0xff0000 }, regions: { bar0: { size: 4096, read: (_o, n) => new Uint8Array(n) } } });
  const server = device.serve(path);
  const client = await VfioUserClient.connect(path);
  const gib = 1n << 30n;
  const fd = memfdCreate('bench-guest', Number(gib));
  try {
    await client.dmaMap({ addr: 1n << 32n, size: gib, flags: DmaMapFlags.READ | DmaMapFlags.WRITE }, fd);
    await client.startDirtyLogging(4096n);
    let best = Infinity;
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < 1000; i++) device.dma.writeSync((1n << 32n) + BigInt((i * 262) % 262144) * 4096n, Uint8Array.of(1));
      const t0 = performance.now();
      await client.dirtyReport(1n << 32n, gib, 4096n);
      best = Math.min(best, performance.now() - t0);
    }
    return Math.round(best * 1000);
  } finally {
    native.close(fd);
    client.close();
    await server.close();
    device.dispose();
  }
}

/** Runs the section. */
export async function runMigrationBench(o: { dir: string; echo: string; stateBytes: number; log: boolean }): Promise<MigrationResult> {
  const memcpyRuns = Array.from({ length: 3 }, () => JSON.parse(execFileSync(o.echo, ['memcpy', String(o.stateBytes), '5'], { encoding: 'utf8' })) as { gbPerSecond: number });
  const memcpyGBps = Math.max(...memcpyRuns.map((r) => r.gbPerSecond));
  const srcPath = join(o.dir, 'mig-src.sock');
  const dstPath = join(o.dir, 'mig-dst.sock');
  const [srcProc, dstProc] = await Promise.all([serve(srcPath, o.stateBytes), serve(dstPath, o.stateBytes)]);
  try {
    const src = await VfioUserClient.connect(srcPath);
    const dst = await VfioUserClient.connect(dstPath);
    await moveStream(src, undefined); // warm-up
    const best = async (to: VfioUserClient | undefined): Promise<{ setMs: number; readMs: number; bytes: number }> => {
      let top: { setMs: number; readMs: number; bytes: number } | undefined;
      for (let i = 0; i < 3; i++) {
        const run = await moveStream(src, to);
        if (!top || run.readMs < top.readMs) top = run;
      }
      return top as { setMs: number; readMs: number; bytes: number };
    };
    const read = await best(undefined); // best of three, like the memcpy reference
    const e2e = await best(dst);
    src.close();
    dst.close();
    const result: MigrationResult = {
      stateBytes: o.stateBytes,
      memcpyGBps: round(memcpyGBps),
      setStopCopyMs: round(read.setMs),
      readGBps: round(read.bytes / read.readMs / 1e6),
      endToEndGBps: round(e2e.bytes / e2e.readMs / 1e6),
      readShareOfMemcpy: round(read.bytes / read.readMs / 1e6 / memcpyGBps),
      loggingReport1GiBUs: await loggingReport(),
      crc32: crc32Throughput(),
    };
    if (o.log) print(result);
    return result;
  } finally {
    await Promise.all([stop(srcProc), stop(dstProc)]);
  }
}

function round(x: number): number {
  return Math.round(x * 100) / 100;
}

function print(r: MigrationResult): void {
  console.log(`\nMigration: stop-copy stream of a device with ${r.stateBytes >> 20} MiB of state, 1 MiB MIG_DATA_READs over a UNIX socket (processes not pinned: throughput; best of 3)`);
  console.log(`  SET STOP_COPY (save + framing + CRC)   ${r.setStopCopyMs} ms`);
  console.log(`  source → client                         ${r.readGBps} GB/s  (C memcpy of the same ${r.stateBytes >> 20} MiB: ${r.memcpyGBps} GB/s, ratio ${r.readShareOfMemcpy})`);
  console.log(`  source → client → destination (loaded)  ${r.endToEndGBps} GB/s`);
  console.log(`DMA_LOGGING_REPORT of 1 GiB at 4 KiB pages (32 KiB bitmap, ~1000 dirty pages), over the socket: ${r.loggingReport1GiBUs} µs (best of 20)`);
  console.log('CRC-32 of the stream (MB/s, best of 3): buffer, native zlib.crc32, portable table-driven, bit-at-a-time reference');
  for (const row of r.crc32) console.log(`  ${String(row.bufferBytes).padStart(8)} B  ${row.nativeMBps}  ${row.portableMBps}  ${row.bitwiseMBps}`);
}
