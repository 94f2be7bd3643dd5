/**
 * The measuring side of the bench's `qemu` section, run as its own process so
 * that it, QEMU and the device servers (its children, which inherit its CPU
 * affinity) all sit on the CPU `taskset` pinned it to.
 *   node qemu-driver.js QEMU ITERATIONS ROUNDS [LIBVFIO_USER_GPIO]
 * Prints one JSON document ({@link QemuDriverResult}).
 *
 * One QEMU (qtest accelerator) gets our GPIO card (`serve-gpio.js`), our
 * memory device (`vfio-user serve memory`) and, if given, libvfio-user's
 * gpio-pci-idio-16 sample, each served by its own process. The driver then
 * times qtest commands as the guest's loads: each `inl` of a GPIO register is
 * a REGION_READ round trip QEMU makes to the server; a `readl` of the memory
 * device's BAR0 is a load from QEMU's mapping of the server's memfd (no
 * message); a `readl` of guest RAM is the floor (qtest alone). Rounds are
 * interleaved across targets.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { probe, startGuest, tempDir } from '../test/support/qemu/guest.js';
import { Command } from '../test/support/qemu/pci.js';
import type { QtestClient } from '../test/support/qemu/qtest.js';
import { summarise, type LatencySummary } from './stats.js';

/** What the driver prints. */
export interface QemuDriverResult {
  /** Per target: `ramFloor`, `ours`, `libvfioUser` (if given), `mmap`. */
  targets: Record<string, LatencySummary>;
}

const GPIO_SERVER = fileURLToPath(new URL('./serve-gpio.js', import.meta.url));
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
/** The GPIO card's INPUT register: read-only, no side effect (libvfio-user's sample answers any offset). */
const GPIO_INPUT = 0x14;

async function startServer(cmd: string[], sock: string, children: ChildProcess[]): Promise<void> {
  const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['ignore', 'ignore', 'inherit'] });
  children.push(child);
  for (let waited = 0; ; waited += 10) {
    try {
      if (statSync(sock).isSocket()) return;
    } catch {
      // not yet bound
    }
    if (waited > 10_000 || child.exitCode !== null) throw new Error(`${cmd.join(' ')} did not bind ${sock}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function time(samples: number[], n: number, op: () => Promise<number>): Promise<void> {
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await op();
    samples.push(Number(process.hrtime.bigint() - t0));
  }
}

async function main(): Promise<void> {
  const [qemu, iterationsArg, roundsArg, lvu] = process.argv.slice(2);
  if (!qemu || !iterationsArg || !roundsArg) throw new Error('usage: qemu-driver.js QEMU ITERATIONS ROUNDS [LIBVFIO_USER_GPIO]');
  const iterations = Number(iterationsArg);
  const rounds = Number(roundsArg);
  const tmp = tempDir('bench-qemu');
  const children: ChildProcess[] = [];
  try {
    const sock = (n: string): string => `${tmp.dir}/${n}.sock`;
    await startServer([process.execPath, GPIO_SERVER, sock('ours')], sock('ours'), children);
    await startServer([process.execPath, CLI, 'serve', 'memory', '--socket', sock('mem'), '--size', '64K'], sock('mem'), children);
    if (lvu) await startServer([lvu, sock('lvu')], sock('lvu'), children);
    const devices = [{ socket: sock('ours'), addr: '0x4' }, { socket: sock('mem'), addr: '0x5' }, ...(lvu ? [{ socket: sock('lvu'), addr: '0x6' }] : [])];
    const g = await startGuest(qemu, { devices });
    try {
      const q: QtestClient = g.qemu.qtest;
      const ours = Number((await probe(g, 0x494f, 0x0dc8)).bar(2).address);
      const mem = (await probe(g, 0x1234, 0x5a01)).bar(0).address;
      const theirs = lvu ? Number(await lvuBar(g)) : 0;
      const ops: Record<string, () => Promise<number>> = {
        ramFloor: () => q.readl(0x0100_0000),
        ours: () => q.inl(ours + GPIO_INPUT),
        ...(lvu ? { libvfioUser: () => q.inl(theirs + GPIO_INPUT) } : {}),
        mmap: () => q.readl(mem + 0x100n),
      };
      const samples: Record<string, number[]> = Object.fromEntries(Object.keys(ops).map((k) => [k, []]));
      for (const op of Object.values(ops)) await time([], Math.min(1000, iterations), op); // warm-up
      for (let r = 0; r < rounds; r++) {
        for (const [name, op] of Object.entries(ops)) await time(samples[name] as number[], iterations, op);
      }
      const targets = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, summarise(Float64Array.from(v))]));
      process.stdout.write(`${JSON.stringify({ targets } satisfies QemuDriverResult)}\n`);
    } finally {
      await g.qemu.close();
    }
  } finally {
    for (const c of children) c.kill('SIGKILL');
    tmp.remove();
  }
}

/** libvfio-user's card: the second 0x494f:0x0dc8 function (slot 6); its BARs placed after ours. */
async function lvuBar(g: Awaited<ReturnType<typeof startGuest>>): Promise<bigint> {
  const fn = (await g.pci.enumerate(0)).find((f) => f.vendorId === 0x494f && f.bdf.dev === 6);
  if (!fn) throw new Error('libvfio-user gpio not found at 00:06.0');
  await fn.assignBars(g.alloc);
  await fn.enable(Command.IO | Command.MEMORY);
  return fn.bar(2).address;
}

await main();
