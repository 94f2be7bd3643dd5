/**
 * The vfio-user servers the QEMU tests attach QEMU to: our sample devices
 * served in this process (so a test sees the device's state and counts this
 * process's fds), `vfio-user serve` as a child process (so a test can kill
 * it), and libvfio-user's gpio sample (`LIBVFIO_USER_BUILD`) as the reference.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { VfioUserDevice } from '../../../src/device/device.js';
import type { DeviceServer } from '../../../src/server/server.js';

/** A device of ours on a socket in this process. */
export interface InProcessServer {
  path: string;
  server: DeviceServer;
  /** Closes the server and disposes of the device. */
  close(): Promise<void>;
}

/** Serves `device` on `dir/name.sock`. */
export function serveInProcess(dir: string, name: string, device: VfioUserDevice): InProcessServer {
  const path = join(dir, `${name}.sock`);
  const server = device.serve(path);
  return {
    path,
    server,
    async close() {
      await server.close();
      device.dispose();
    },
  };
}

/** A server in a child process. */
export interface ChildServer {
  path: string;
  child: ChildProcess;
  /** Everything it printed so far. */
  output(): string;
  /** Resolves with how it ended. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILL unless it already ended. */
  kill(): Promise<void>;
}

const CLI = fileURLToPath(new URL('../../../src/cli/main.js', import.meta.url));

/** Starts `vfio-user serve <kind> --socket dir/kind.sock`; resolves once it announced the socket. */
export async function startCliServer(dir: string, kind: 'gpio' | 'memory' | 'dma-engine', extra: string[] = []): Promise<ChildServer> {
  const path = join(dir, `${kind}-cli.sock`);
  const server = await startChild(process.execPath, [CLI, 'serve', kind, '--socket', path, ...extra], path);
  // The socket file exists from bind(); `serve` announces itself only once it listens.
  const deadline = Date.now() + 10_000;
  while (!server.output().includes(`serving ${kind} on`)) {
    if (Date.now() > deadline) {
      await server.kill();
      throw new Error(`vfio-user serve ${kind} did not announce itself within 10 s: ${server.output()}`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  return server;
}

/** Where libvfio-user's gpio sample is, or why the reference tests skip. */
export function libvfioUserGpio(): { path: string | undefined; skip: string | false } {
  const dir = process.env['LIBVFIO_USER_BUILD'];
  if (!dir) return { path: undefined, skip: 'LIBVFIO_USER_BUILD is not set (see docs/interop.md)' };
  const path = join(dir, 'samples', 'gpio-pci-idio-16');
  if (!existsSync(path)) return { path: undefined, skip: `LIBVFIO_USER_BUILD=${dir} has no samples/gpio-pci-idio-16` };
  return { path, skip: false };
}

/** Starts libvfio-user's `gpio-pci-idio-16 dir/name.sock`; resolves once the socket exists. */
export function startLibvfioUserGpio(binary: string, dir: string, name = 'lvu-gpio'): Promise<ChildServer> {
  const path = join(dir, `${name}.sock`);
  return startChild(binary, [path], path);
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

async function startChild(file: string, args: string[], socket: string): Promise<ChildServer> {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let output = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.on('error', (e) => (output += `spawn: ${e.message}\n`));
  let ended: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => {
      live.delete(child);
      resolve((ended = { code, signal }));
    }),
  );
  const kill = async (): Promise<void> => {
    if (!ended) child.kill('SIGKILL');
    await exited;
  };
  const deadline = Date.now() + 10_000;
  while (!isSocket(socket)) {
    if (ended) throw new Error(`${file} ended (${ended.code ?? ended.signal}) before creating ${socket}: ${output}`);
    if (Date.now() > deadline) {
      await kill();
      throw new Error(`${file} did not create ${socket} within 10 s: ${output}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return { path: socket, child, output: () => output, exited, kill };
}

function isSocket(path: string): boolean {
  try {
    return statSync(path).isSocket();
  } catch {
    return false;
  }
}
