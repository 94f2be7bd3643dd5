/**
 * Starting a real QEMU (`VFIO_USER_QEMU` = path to qemu-system-x86_64) under
 * the qtest accelerator: no guest code runs; the test is the guest, through
 * the qtest socket, and the VMM's operator, through QMP. vfio-user-pci devices
 * are given on the command line or hot-plugged later.
 *
 * Guest RAM is a shared memfd (`memory-backend-memfd,share=on`), so QEMU
 * passes it to a vfio-user server with DMA_MAP and the server maps it.
 * Every QEMU started here is SIGKILLed by {@link Qemu.close}, when the test
 * process exits, and by the kernel when the test process dies
 * (`-run-with exit-with-parent=on`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OneShotListener } from './line-socket.js';
import { QmpClient } from './qmp.js';
import { QtestClient } from './qtest.js';

/** The QEMU binary, or why the QEMU tests skip. */
export interface QemuBinary {
  path: string | undefined;
  skip: string | false;
}

/** Reads `VFIO_USER_QEMU`; usable when it names an executable file. */
export function qemuBinary(): QemuBinary {
  const path = process.env['VFIO_USER_QEMU'];
  if (!path) return { path: undefined, skip: 'VFIO_USER_QEMU is not set (path to a qemu-system-x86_64 with vfio-user-pci; docs/interop.md)' };
  try {
    accessSync(path, constants.X_OK);
  } catch {
    return { path: undefined, skip: `VFIO_USER_QEMU=${path} is not an executable file` };
  }
  return { path, skip: false };
}

/** One vfio-user-pci device on the command line. */
export interface VfioUserPciArg {
  /** Socket of the vfio-user server. */
  socket: string;
  id?: string;
  /** `bus` and `addr` properties (e.g. `pcie.0`, `0x4`). */
  bus?: string;
  addr?: string;
  /** Further properties (`x-msg-timeout`, …). */
  props?: Record<string, unknown>;
}

/** Options of {@link startQemu}. */
export interface QemuOptions {
  /** Default q35. */
  machine?: 'q35' | 'pc';
  devices?: VfioUserPciArg[];
  /** q35 only: this many empty pcie-root-ports `rp0`, `rp1`, … on pcie.0 at slots 0x10+, native hot-plug enabled. */
  rootPorts?: number;
  /** Guest RAM in MiB (default 256). */
  memoryMiB?: number;
  /**
   * Guest RAM a shared memfd QEMU passes with DMA_MAP (default true); false:
   * anonymous RAM without an fd, so the server reaches it with DMA_READ/DMA_WRITE messages.
   */
  sharedMemory?: boolean;
  /** Extra arguments, appended last. */
  extraArgs?: string[];
  /**
   * A whole machine command line (e.g. the README's) used instead of the
   * `-machine`, `-m` and `-object` arguments built from the options above.
   */
  machineArgs?: string[];
  /** How long QEMU may take to come up (default 20 s). */
  startTimeoutMs?: number;
}

/** The `-device` JSON of a vfio-user-pci device. */
export function vfioUserPciJson(d: VfioUserPciArg): string {
  return JSON.stringify({
    driver: 'vfio-user-pci',
    ...(d.id ? { id: d.id } : {}),
    ...(d.bus ? { bus: d.bus } : {}),
    ...(d.addr ? { addr: d.addr } : {}),
    socket: { type: 'unix', path: d.socket },
    ...d.props,
  });
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** A running QEMU. */
export class Qemu {
  readonly #child: ChildProcess;
  readonly #dir: string;
  readonly #output: () => string;
  readonly qtest: QtestClient;
  readonly qmp: QmpClient;
  /** Resolves with how QEMU ended. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;

  private constructor(child: ChildProcess, dir: string, qtest: QtestClient, qmp: QmpClient, output: () => string, exited: Qemu['exited']) {
    this.#child = child;
    this.#dir = dir;
    this.qtest = qtest;
    this.qmp = qmp;
    this.#output = output;
    this.exited = exited;
    void exited.then((e) => (this.#exit = e));
  }

  /** QEMU's process id. */
  get pid(): number {
    return this.#child.pid ?? -1;
  }

  /** How QEMU ended, if it has. */
  get exit(): { code: number | null; signal: NodeJS.Signals | null } | undefined {
    return this.#exit;
  }

  /** Everything QEMU printed so far (stdout and stderr interleaved). */
  output(): string {
    return this.#output();
  }

  /** SIGKILLs QEMU (a VMM crash); resolves once it is gone. */
  async kill(): Promise<void> {
    if (!this.#exit) this.#child.kill('SIGKILL');
    await this.exited;
  }

  /** Ends QEMU (SIGKILL unless it already exited), closes the sockets, removes the temporary directory. */
  async close(): Promise<void> {
    await this.kill();
    this.qtest.close();
    this.qmp.close();
    rmSync(this.#dir, { recursive: true, force: true });
  }

  /** Starts QEMU; resolves once both sockets are connected and QMP is out of negotiation. */
  static async start(binary: string, options: QemuOptions = {}): Promise<Qemu> {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-qemu-'));
    const qtestListener = await OneShotListener.listen(join(dir, 'qtest.sock'));
    const qmpListener = await OneShotListener.listen(join(dir, 'qmp.sock'));
    const child = spawn(binary, qemuArgs(qtestListener.path, qmpListener.path, options), { stdio: ['ignore', 'pipe', 'pipe'] });
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
    const fail = (why: string): Promise<never> => {
      child.kill('SIGKILL');
      return exited.then(() => {
        rmSync(dir, { recursive: true, force: true });
        throw new Error(`QEMU did not start (${why}); it printed:\n${output}`);
      });
    };
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<string>((resolve) => (timer = setTimeout(() => resolve('start-up took too long'), options.startTimeoutMs ?? 20_000)));
    const up = (async () => {
      const qtest = new QtestClient(await qtestListener.accepted);
      const qmp = await QmpClient.connect(await qmpListener.accepted);
      return { qtest, qmp };
    })();
    const first = await Promise.race([up, exited.then((e) => `exited with ${e.code ?? e.signal}`), deadline]).catch((e: Error) => e.message);
    clearTimeout(timer);
    qtestListener.close();
    qmpListener.close();
    if (typeof first === 'string') {
      void up.catch(() => undefined);
      return fail(first);
    }
    return new Qemu(child, dir, first.qtest, first.qmp, () => output, exited);
  }
}

/** The command line (without the binary). */
export function qemuArgs(qtestPath: string, qmpPath: string, o: QemuOptions): string[] {
  const machine = o.machine ?? 'q35';
  const mib = o.memoryMiB ?? 256;
  const args = [
    '-accel', 'qtest',
    '-qtest', `unix:${qtestPath}`,
    '-qtest-log', '/dev/null', // QEMU logs every qtest line to stderr otherwise
    '-chardev', `socket,path=${qmpPath},id=qmp0`,
    '-mon', 'chardev=qmp0,mode=control',
    '-run-with', 'exit-with-parent=on',
    '-nographic', '-nodefaults', '-display', 'none',
    '-L', '/usr/share/seabios', '-L', '/usr/share/qemu',
    ...(o.machineArgs ?? [
      '-machine', `${machine},memory-backend=mem`,
      '-m', `${mib}M`,
      '-object', o.sharedMemory === false ? `memory-backend-ram,id=mem,size=${mib}M` : `memory-backend-memfd,id=mem,size=${mib}M,share=on`,
    ]),
  ];
  const ports = o.rootPorts ?? 0;
  if (ports > 0) {
    if (machine !== 'q35') throw new Error('pcie-root-port needs the q35 machine');
    // Native PCIe hot-plug (the guest powers the slot on and off), not ACPI's.
    args.push('-global', 'ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off');
    for (let i = 0; i < ports; i++) {
      args.push('-device', `pcie-root-port,id=rp${i},bus=pcie.0,chassis=${i + 1},slot=${i + 1},addr=0x${(0x10 + i).toString(16)}`);
    }
  }
  for (const d of o.devices ?? []) args.push('-device', vfioUserPciJson(d));
  args.push(...(o.extraArgs ?? []));
  return args;
}

/** Starts QEMU (see {@link Qemu.start}). */
export const startQemu = (binary: string, options?: QemuOptions): Promise<Qemu> => Qemu.start(binary, options);
