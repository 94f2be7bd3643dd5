/**
 * The `qemu` section: a register read as a QEMU guest sees it. With
 * `VFIO_USER_QEMU` naming a qemu-system-x86_64 with vfio-user-pci, one QEMU
 * under the qtest accelerator gets our GPIO card, our memory device and (with
 * LIBVFIO_USER_BUILD) libvfio-user's gpio-pci-idio-16 sample; qtest `inl` of
 * the GPIO INPUT register is a full guest load: qtest → QEMU → REGION_READ →
 * server → reply → QEMU → qtest. Reference points in the same run: a `readl`
 * of guest RAM (the qtest floor) and of the memory device's BAR0, which QEMU
 * maps (no message per access). Skipped without VFIO_USER_QEMU.
 */
import { execFileSync } from 'node:child_process';
import type { LatencySummary } from './stats.js';
import type { QemuDriverResult } from './qemu-driver.js';

/** Inputs of {@link runQemuBench}. */
export interface QemuBenchOptions {
  pin: string[];
  qemu: string;
  libvfioUserGpio?: string;
  iterations: number;
  rounds: number;
  log: boolean;
}

/** Everything this section measures. */
export interface QemuResult {
  ramFloor: LatencySummary;
  ours: LatencySummary;
  mmap: LatencySummary;
  libvfioUser?: LatencySummary;
  /** ours / libvfio-user, by mean and by p50 (whole guest load, qtest included). */
  vsLibvfioUser?: { mean: number; p50: number };
  /** The same, over the part above the qtest floor (the vfio-user round trip QEMU makes). */
  vsLibvfioUserAboveFloor?: { mean: number; p50: number };
}

const DRIVER = new URL('./qemu-driver.js', import.meta.url).pathname;

/** Runs the section (the driver pinned like the other sections' processes). */
export function runQemuBench(o: QemuBenchOptions): QemuResult {
  const args = [...o.pin, process.execPath, DRIVER, o.qemu, String(o.iterations), String(o.rounds), ...(o.libvfioUserGpio ? [o.libvfioUserGpio] : [])];
  const out = execFileSync(args[0] as string, args.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const { targets } = JSON.parse(out) as QemuDriverResult;
  const pick = (k: string): LatencySummary => {
    const t = targets[k];
    if (!t) throw new Error(`qemu bench: no result for ${k}`);
    return t;
  };
  const result: QemuResult = { ramFloor: pick('ramFloor'), ours: pick('ours'), mmap: pick('mmap') };
  if (targets['libvfioUser']) {
    const l = pick('libvfioUser');
    const f = result.ramFloor;
    result.libvfioUser = l;
    result.vsLibvfioUser = { mean: round2(result.ours.meanNs / l.meanNs), p50: round2(result.ours.p50Ns / l.p50Ns) };
    result.vsLibvfioUserAboveFloor = {
      mean: round2((result.ours.meanNs - f.meanNs) / (l.meanNs - f.meanNs)),
      p50: round2((result.ours.p50Ns - f.p50Ns) / (l.p50Ns - f.p50Ns)),
    };
  }
  if (o.log) print(result, o.pin.length > 0);
  return result;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

function us(ns: number): string {
  return (ns / 1000).toFixed(2).padStart(8);
}

function print(r: QemuResult, pinned: boolean): void {
  console.log(`\nQEMU guest loads under the qtest accelerator (driver, QEMU and servers ${pinned ? 'on CPU 0 (taskset -c 0)' : 'NOT pinned'}), ${r.ours.iterations} per target`);
  console.log('  target                                         p50 µs    mean µs');
  const row = (name: string, s: LatencySummary): void => console.log(`  ${name.padEnd(45)} ${us(s.p50Ns)}   ${us(s.meanNs)}`);
  row('guest RAM readl (qtest floor)', r.ramFloor);
  row('memory device BAR0 readl (QEMU mmap, no msg)', r.mmap);
  row('our GPIO INPUT inl (REGION_READ)', r.ours);
  if (r.libvfioUser) row('libvfio-user gpio inl (REGION_READ)', r.libvfioUser);
  if (r.vsLibvfioUser && r.vsLibvfioUserAboveFloor) {
    console.log(`  ours / libvfio-user: ${r.vsLibvfioUser.p50.toFixed(2)} by p50, ${r.vsLibvfioUser.mean.toFixed(2)} by mean; above the qtest floor ${r.vsLibvfioUserAboveFloor.p50.toFixed(2)} / ${r.vsLibvfioUserAboveFloor.mean.toFixed(2)}`);
  }
}
