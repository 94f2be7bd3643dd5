/**
 * QEMU's own live migration, as the reference of the orchestrator benchmark's
 * throughput (bench/orchestrator.ts, with `VFIO_USER_QEMU` naming a
 * qemu-system-x86_64): two QEMU processes under the qtest accelerator (no vCPU
 * runs: an idle guest), guest RAM of the given size (q35, anonymous as with `-m`), the
 * destination started with `-incoming tcp:127.0.0.1:PORT`, the source told
 * QMP `migrate` with `max-bandwidth` lifted (QEMU's default caps it at
 * 128 MiB/s), then `query-migrate` polled until `completed`. Its `total-time`
 * is the migration's time as QEMU counts it (setup to completion on the
 * source). `fill` first writes a byte pattern over guest RAM above 1 MiB
 * (qtest `memset`), so that pages are sent as data instead of zero pages.
 */
import { createServer } from 'node:net';
import { startQemu, type Qemu } from '../test/support/qemu/launcher.js';

/** One QEMU migration as `query-migrate` reports it. */
export interface QemuPrecopyRun {
  guestBytes: number;
  totalMs: number;
  setupMs: number;
  downtimeMs: number;
  /** Bytes QEMU put on the wire. */
  transferredBytes: number;
  /** Guest bytes per total time (GB/s). */
  GBps: number;
}

interface MigrateInfo {
  status?: string;
  'total-time'?: number;
  'setup-time'?: number;
  downtime?: number;
  ram?: { total?: number; transferred?: number };
  'error-desc'?: string;
}

/** A TCP port free a moment ago on 127.0.0.1. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const a = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return typeof a === 'object' && a !== null ? a.port : 0;
}

/** Guest RAM above this address is filled for `fill` runs (below: legacy VGA/BIOS windows). */
const FILL_FROM = 1 << 20;

/** One migration from a fresh source QEMU to a fresh destination QEMU. */
export async function qemuPrecopyOnce(binary: string, guestMiB: number, fill: boolean): Promise<QemuPrecopyRun> {
  const port = await freePort();
  const started: Qemu[] = [];
  try {
    // Anonymous guest RAM (QEMU's default, as `-m`): an untouched page reads as the kernel's zero page, no allocation.
    const dst = await startQemu(binary, { memoryMiB: guestMiB, sharedMemory: false, extraArgs: ['-incoming', `tcp:127.0.0.1:${port}`] });
    started.push(dst);
    const src = await startQemu(binary, { memoryMiB: guestMiB, sharedMemory: false });
    started.push(src);
    if (fill) await src.qtest.memset(FILL_FROM, guestMiB * 2 ** 20 - FILL_FROM, 0x5a);
    await src.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 1e12 });
    await src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    const deadline = performance.now() + 120_000;
    for (;;) {
      const info = await src.qmp.execute<MigrateInfo>('query-migrate');
      if (info.status === 'completed') {
        const totalMs = info['total-time'] ?? 0;
        const guestBytes = guestMiB * 2 ** 20;
        return {
          guestBytes, totalMs, setupMs: info['setup-time'] ?? 0, downtimeMs: info.downtime ?? 0, transferredBytes: info.ram?.transferred ?? 0,
          GBps: totalMs > 0 ? guestBytes / totalMs / 1e6 : 0,
        };
      }
      if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`QEMU migration ${info.status}: ${info['error-desc'] ?? ''}`);
      if (performance.now() > deadline) throw new Error(`QEMU migration still ${info.status ?? '?'} after 120 s`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  } finally {
    for (const q of started.reverse()) await q.close();
  }
}
