/**
 * A QEMU that boots a real Linux guest under TCG (no KVM needed): q35, guest
 * RAM in a shared memfd (so QEMU can hand it to vfio-user servers with
 * DMA_MAP), the kernel and an initramfs given directly, the serial console on
 * a UNIX socket this process listens on (lines in, lines out) and QMP on
 * another. QEMU's own stdout/stderr are kept apart from the console, so what
 * it reports about its vfio-user devices can be read on its own.
 *
 * QEMU is SIGKILLed by {@link GuestMachine.close}, when this process exits,
 * and by the kernel if this process dies (`-run-with exit-with-parent=on`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { LineSocket, OneShotListener } from '../qemu/line-socket.js';
import { QmpClient } from '../qemu/qmp.js';

/** A vfio-user-pci device on QEMU's command line or for `device_add`. */
export interface GuestPciDevice {
  id: string;
  socket: string;
  /** `bus` property (`pcie.0` if absent; a root port id for a device behind it). */
  bus?: string;
  /** `addr` property (slot, e.g. `0x3`). */
  addr?: string;
  /** Further properties (`x-msg-timeout`, …). */
  props?: Record<string, unknown>;
}

/** The `device_add` / `-device` properties of `d`. */
export function vfioUserPci(d: GuestPciDevice): Record<string, unknown> {
  return { driver: 'vfio-user-pci', id: d.id, ...(d.bus ? { bus: d.bus } : {}), ...(d.addr ? { addr: d.addr } : {}), socket: { type: 'unix', path: d.socket }, ...d.props };
}

/** Options of {@link GuestMachine.start}. */
export interface GuestMachineOptions {
  qemu: string;
  kernel: string;
  initrd: string;
  /** Kernel command line. */
  append: string;
  memoryMiB: number;
  devices: GuestPciDevice[];
  /** Empty pcie-root-ports `rp0`… with native hot-plug, for `device_add`. */
  rootPorts: number;
  /** An emulated Intel IOMMU (`intel-iommu,caching-mode=on`, which vfio devices need) in front of every device. */
  iommu: boolean;
  /** Directory for the console and QMP sockets. */
  dir: string;
  /** Called with each console line that carries a result (the text after `VU: `). */
  onResult: (result: string) => void;
  /** How long QEMU may take to connect both sockets (default 20 s). */
  startTimeoutMs?: number;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** The command line (without the binary). */
export function guestArgs(o: GuestMachineOptions, consolePath: string, qmpPath: string): string[] {
  const args = [
    '-accel', 'tcg',
    '-machine', 'q35,memory-backend=mem',
    '-m', `${o.memoryMiB}M`,
    '-object', `memory-backend-memfd,id=mem,size=${o.memoryMiB}M,share=on`,
    '-smp', '1',
    '-nodefaults', '-display', 'none', '-no-reboot',
    '-run-with', 'exit-with-parent=on',
    '-L', '/usr/share/seabios', '-L', '/usr/share/qemu',
    '-chardev', `socket,id=con0,path=${consolePath}`,
    '-serial', 'chardev:con0',
    '-chardev', `socket,id=qmp0,path=${qmpPath}`,
    '-mon', 'chardev=qmp0,mode=control',
    '-kernel', o.kernel,
    '-initrd', o.initrd,
    '-append', o.append,
    // Native PCIe hot-plug in the root ports (the guest's pciehp), not ACPI's.
    '-global', 'ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off',
  ];
  // The IOMMU must exist before the devices it translates for.
  if (o.iommu) args.push('-device', 'intel-iommu,caching-mode=on');
  for (let i = 0; i < o.rootPorts; i++) {
    args.push('-device', `pcie-root-port,id=rp${i},bus=pcie.0,chassis=${i + 1},slot=${i + 1},addr=0x${(0x10 + i).toString(16)}`);
  }
  for (const d of o.devices) args.push('-device', JSON.stringify(vfioUserPci(d)));
  return args;
}

/** A running guest. */
export class GuestMachine {
  readonly #child: ChildProcess;
  readonly #console: LineSocket;
  readonly #lines: string[];
  readonly #output: () => string;
  readonly qmp: QmpClient;
  /** Resolves with how QEMU ended. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(child: ChildProcess, console: LineSocket, lines: string[], qmp: QmpClient, output: () => string, exited: GuestMachine['exited']) {
    this.#child = child;
    this.#console = console;
    this.#lines = lines;
    this.qmp = qmp;
    this.#output = output;
    this.exited = exited;
  }

  /** What QEMU itself printed so far (stdout and stderr). */
  output(): string {
    return this.#output();
  }

  /** Every console line so far. */
  transcript(): string {
    return this.#lines.join('\n');
  }

  /** Sends one line to the guest's console. */
  send(line: string): void {
    this.#console.write(`${line}\n`);
  }

  /** SIGKILLs QEMU unless it already ended; resolves once it is gone and the sockets are closed. */
  async close(): Promise<void> {
    if (live.has(this.#child)) this.#child.kill('SIGKILL');
    await this.exited;
    this.#console.close();
    this.qmp.close();
  }

  /** Starts QEMU; resolves once it connected the console and QMP (QMP out of negotiation). */
  static async start(o: GuestMachineOptions): Promise<GuestMachine> {
    const consoleListener = await OneShotListener.listen(join(o.dir, 'console.sock'));
    const qmpListener = await OneShotListener.listen(join(o.dir, 'qmp.sock'));
    const child = spawn(o.qemu, guestArgs(o, consoleListener.path, qmpListener.path), { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    let output = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.on('error', (e) => (output += `spawn: ${e.message}\n`));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('close', (code, signal) => {
        live.delete(child);
        resolve({ code, signal });
      }),
    );
    const lines: string[] = [];
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<string>((resolve) => (timer = setTimeout(() => resolve('start-up took too long'), o.startTimeoutMs ?? 20_000)));
    const up = (async () => {
      const con = new LineSocket(
        await consoleListener.accepted,
        (raw) => {
          const line = raw.replace(/\r/g, '');
          lines.push(line);
          const at = line.indexOf('VU: ');
          if (at >= 0) o.onResult(line.slice(at + 4));
        },
        () => undefined,
      );
      return { con, qmp: await QmpClient.connect(await qmpListener.accepted) };
    })();
    try {
      const first = await Promise.race([up, exited.then((e) => `exited with ${e.code ?? e.signal}`), deadline]).catch((e: Error) => e.message);
      if (typeof first !== 'string') return new GuestMachine(child, first.con, lines, first.qmp, () => output, exited);
      void up.then((u) => (u.con.close(), u.qmp.close())).catch(() => undefined);
      child.kill('SIGKILL');
      await exited;
      throw new Error(`QEMU did not start (${first}); it printed:\n${output}`);
    } finally {
      clearTimeout(timer);
      consoleListener.close();
      qmpListener.close();
    }
  }
}
