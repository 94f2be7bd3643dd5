/**
 * The Linux-guest scenario: our sample devices served by this process (GPIO,
 * memory, DMA engine) plus a memory device served by a `vfio-user serve`
 * child (the "victim", killed while the guest runs), a guest booted with an
 * initramfs built here, and the host side of each step the guest's /init
 * (init.sh) asks for with "VU: WAIT <tag>". Everything the guest reported and
 * everything the host observed is returned for the test to check.
 */
import { spawnSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDmaEngineDevice, createGpioDevice, createMemoryDevice } from '../../../src/devices/index.js';
import { startCliServer, type ChildServer } from '../qemu/servers.js';
import { initramfs, type CpioEntry } from './initramfs.js';
import type { GuestKit } from './kit.js';
import { GuestMachine, vfioUserPci } from './machine.js';

/** Physical address of the 1 MiB of guest RAM the kernel is told to leave alone (memmap=); the guest puts the DMA ring, buffers and MSI-X targets there. */
export const SCRATCH = 0x0c00_0000;
/** Where in SCRATCH the guest puts the DMA source and destination buffers (init.sh). */
export const DMA_SRC = SCRATCH + 0x1000;
export const DMA_DST = SCRATCH + 0x2000;
/** Guest RAM. */
export const GUEST_MIB = 256;
/** The IOVA vfio-dma.c maps its buffer at (source at +0x1000, destination at +0x2000). */
export const VFIO_IOVA = 0x1000_0000;

/** Why the vfio-pci check cannot run with `kit`, or false if it can. */
export function vfioSkip(kit: GuestKit): string | false {
  if (kit.cc.skip) return kit.cc.skip;
  const missing = kit.missing['vfio'] ?? [];
  return missing.length > 0 ? `vfio modules missing for the guest kernel: ${missing.join('; ')}` : false;
}

/** x-msg-timeout of the device whose server is killed. */
export const VICTIM_MSG_TIMEOUT_MS = 1000;
/** Slots on pcie.0 (sysfs names in the guest). */
export const SLOTS = { mem: '0000:00:03.0', dma: '0000:00:04.0', victim: '0000:00:05.0', port: '0000:00:10.0' } as const;

/** What the host saw and did while the guest ran. */
export interface HostSide {
  /** The words at `0x1000 * i + 4 * i` (i = 0..7) of the memory device's memfd after the guest wrote them. */
  memGuestWords: number[];
  /** The words the host wrote at 0x8000 + 4i for the guest to read. */
  memHostWords: number[];
  /** GPIO outputs after the guest wrote OUTPUT. */
  gpioOutputs?: number;
  /** GPIO inputs the host set, per interrupt round. */
  gpioInputs: number[];
  /** The DMA engine's view of the source and destination buffers (read through its DMA mappings). */
  dmaSource?: Uint8Array;
  dmaDest?: Uint8Array;
  /** The same through vfio-pci: the buffers at the IOVA the guest's driver mapped (so QEMU's vIOMMU forwarded that map). */
  vfioSource?: Uint8Array;
  vfioDest?: Uint8Array;
  /** How `device_add` went: undefined if it succeeded. */
  hotplugError?: string;
  /** How the killed server ended, QEMU's output after the kill, and QMP query-status after it. */
  victimExit?: { code: number | null; signal: NodeJS.Signals | null };
  qemuAfterKill?: string;
  statusAfterKill?: string;
  /** Errors raised by the host side of a step (a failed step leaves the guest waiting until the deadline). */
  errors: string[];
}

/** The whole run. */
export interface GuestRun {
  /** The guest's result lines (after `VU: `), in order. */
  results: string[];
  host: HostSide;
  transcript: string;
  qemuOutput: string;
  qemuExit: { code: number | null; signal: NodeJS.Signals | null } | 'killed at the deadline';
  durationMs: number;
}

/** Builds vfio-dma.c into `dir` with `gcc -static`. @throws Error with gcc's output if it fails. */
function buildVfioDma(dir: string): Uint8Array {
  const source = new URL('../../../../test/support/qemu-guest/vfio-dma.c', import.meta.url).pathname;
  const out = join(dir, 'vfio-dma');
  const r = spawnSync('gcc', ['-static', '-O2', '-Wall', '-Werror', '-o', out, source], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`gcc -static vfio-dma.c failed: ${r.error?.message ?? r.stderr}`);
  return readFileSync(out);
}

function initrd(kit: GuestKit, path: string, extra: CpioEntry[]): void {
  const entries: CpioEntry[] = [
    { kind: 'dir', path: 'bin' },
    { kind: 'dir', path: 'dev' },
    { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 },
    { kind: 'dir', path: 'lib' },
    { kind: 'dir', path: 'lib/modules' },
    { kind: 'file', path: 'bin/busybox', data: readFileSync(kit.busybox), mode: 0o755 },
    { kind: 'symlink', path: 'bin/sh', target: 'busybox' },
    { kind: 'file', path: 'init', data: readFileSync(new URL('../../../../test/support/qemu-guest/init.sh', import.meta.url)), mode: 0o755 },
    ...kit.modules.map((m): CpioEntry => ({ kind: 'file', path: `lib/modules/${m.name}.ko`, data: m.data })),
    ...extra,
  ];
  writeFileSync(path, initramfs(entries));
}

function append(kit: GuestKit, vfio: boolean): string {
  return [
    'console=ttyS0 quiet panic=-1',
    // The IOMMU translates for vfio-pci only; other devices keep an identity domain (their DMA addresses are physical).
    ...(vfio ? ['intel_iommu=on iommu=pt VU_VFIO=1'] : []),
    `memmap=1M$0x${SCRATCH.toString(16)}`,
    `VU_MEM=${SLOTS.mem} VU_DMA=${SLOTS.dma} VU_VICTIM=${SLOTS.victim}`,
    // The GPIO card is hot-plugged behind root port rp0: whatever bus number the port got.
    `VU_GPIO=${SLOTS.port}/0000:*:00.0 VU_HOTPLUG=gpio`,
    `VU_SCRATCH=0x${SCRATCH.toString(16)}`,
    `VU_MODULES=${kit.modules.map((m) => m.name).join(',') || 'none'}`,
  ].join(' ');
}

const word = (b: Uint8Array, off: number): number => new DataView(b.buffer, b.byteOffset + off, 4).getUint32(0, true);

/**
 * Boots the guest and runs init.sh to its end (or until `deadlineMs`), then
 * tears everything down: QEMU, the servers, the temporary directory.
 */
export async function runGuest(kit: GuestKit, deadlineMs: number): Promise<GuestRun> {
  const started = Date.now();
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-guest-'));
  const removeDir = (): void => rmSync(dir, { recursive: true, force: true });
  process.once('exit', removeDir);
  const gpio = createGpioDevice();
  const mem = createMemoryDevice();
  const dma = createDmaEngineDevice();
  const servers = [
    gpio.device.serve(join(dir, 'gpio.sock')),
    mem.device.serve(join(dir, 'mem.sock')),
    dma.device.serve(join(dir, 'dma.sock')),
  ];
  let victim: ChildServer | undefined;
  let machine: GuestMachine | undefined;
  const results: string[] = [];
  const host: HostSide = { memGuestWords: [], memHostWords: [], gpioInputs: [], errors: [] };
  let killOutputAt = 0;
  try {
    victim = await startCliServer(dir, 'memory', ['--size', '64K']);
    const vfio = vfioSkip(kit) === false;
    initrd(kit, join(dir, 'initrd.gz'), vfio ? [{ kind: 'file', path: 'bin/vfio-dma', data: buildVfioDma(dir), mode: 0o755 }] : []);
    const steps: Record<string, (m: GuestMachine) => Promise<void> | void> = {
      hotplug: async (m) => {
        try {
          await m.qmp.execute('device_add', vfioUserPci({ id: 'gpio', bus: 'rp0', socket: join(dir, 'gpio.sock') }));
        } catch (e) {
          host.hotplugError = (e as Error).message;
        }
      },
      'mem-guest-wrote': () => {
        for (let i = 0; i < 8; i++) host.memGuestWords.push(word(mem.memory, i * 0x1000 + i * 4));
        for (let i = 0; i < 4; i++) {
          const v = randomInt(1, 0xffff_ffff);
          new DataView(mem.memory.buffer, mem.memory.byteOffset).setUint32(0x8000 + 4 * i, v, true);
          host.memHostWords.push(v);
        }
      },
      'dma-checked': async () => {
        host.dmaSource = await dma.device.dma.read(BigInt(DMA_SRC), 4096);
        host.dmaDest = await dma.device.dma.read(BigInt(DMA_DST), 4096);
      },
      'vfio-mapped': async () => {
        host.vfioSource = await dma.device.dma.read(BigInt(VFIO_IOVA + 0x1000), 4096);
        host.vfioDest = await dma.device.dma.read(BigInt(VFIO_IOVA + 0x2000), 4096);
      },
      'gpio-outputs': () => void (host.gpioOutputs = gpio.outputs),
      'gpio-irq-1': () => (gpio.setInput(0, true), void host.gpioInputs.push(gpio.inputs)),
      'gpio-irq-2': () => (gpio.setInput(1, true), void host.gpioInputs.push(gpio.inputs)),
      'victim-killed': async (m) => {
        killOutputAt = m.output().length;
        await victim?.kill();
        host.victimExit = await victim?.exited;
      },
      'victim-status': async (m) => {
        host.statusAfterKill = (await m.qmp.execute<{ status: string }>('query-status')).status;
        host.qemuAfterKill = m.output().slice(killOutputAt);
      },
    };
    let guest!: GuestMachine;
    const pending: Promise<void>[] = [];
    const onResult = (line: string): void => {
      results.push(line);
      const tag = /^WAIT (\S+)$/.exec(line)?.[1];
      if (tag === undefined) return;
      const step = steps[tag];
      pending.push(
        (async () => {
          if (!step) throw new Error(`the guest waits for an unknown step ${tag}`);
          await step(guest);
          guest.send(`go ${tag}`);
        })().catch((e: Error) => void host.errors.push(`${tag}: ${e.message}`)),
      );
    };
    machine = guest = await GuestMachine.start({
      qemu: kit.qemu,
      kernel: kit.kernel,
      initrd: join(dir, 'initrd.gz'),
      append: append(kit, vfio),
      iommu: vfio,
      memoryMiB: GUEST_MIB,
      rootPorts: 1,
      dir,
      devices: [
        { id: 'mem', socket: join(dir, 'mem.sock'), bus: 'pcie.0', addr: '0x3' },
        { id: 'dma', socket: join(dir, 'dma.sock'), bus: 'pcie.0', addr: '0x4' },
        // QEMU waits x-msg-timeout (default 5 s) for each reply of a dead server; 1 s keeps the test short.
        { id: 'victim', socket: victim.path, bus: 'pcie.0', addr: '0x5', props: { 'x-msg-timeout': VICTIM_MSG_TIMEOUT_MS } },
      ],
      onResult,
    });
    let timer: NodeJS.Timeout | undefined;
    const ended = await Promise.race([
      guest.exited,
      new Promise<'killed at the deadline'>((resolve) => (timer = setTimeout(() => resolve('killed at the deadline'), deadlineMs - (Date.now() - started)))),
    ]);
    clearTimeout(timer);
    // At the deadline QEMU goes first, so that a step waiting on it (QMP) ends too.
    if (ended === 'killed at the deadline') await guest.close();
    await Promise.all(pending);
    return { results, host, transcript: guest.transcript(), qemuOutput: guest.output(), qemuExit: ended, durationMs: Date.now() - started };
  } finally {
    await machine?.close();
    await victim?.kill();
    for (const s of servers) await s.close();
    for (const d of [gpio.device, mem.device, dma.device]) d.dispose();
    process.removeListener('exit', removeDir);
    removeDir();
  }
}
