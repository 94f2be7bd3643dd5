/**
 * A device served by this CLI in a child process (`vfio-user serve
 * <device> --socket P [-- args]`: a sample device or a device module). The child dies with its parent (SIGTERM through
 * PR_SET_PDEATHSIG, armed first thing in the child: die-with-parent.ts) and
 * owns the private directory its socket lives in: the child creates it after
 * arming the signal and removes it when it exits, so neither a process nor a
 * directory outlives a parent killed by SIGTERM or SIGKILL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CliError } from './common.js';

const MAIN = fileURLToPath(new URL('./main.js', import.meta.url));

/** A running `vfio-user serve` child process. */
export interface ServerProcess {
  child: ChildProcess;
  /** The socket it serves on, inside a directory the child owns (gone once the child exited). */
  socket: string;
  /** SIGTERM (then SIGKILL after 5 s); resolves once it exited. */
  stop(): Promise<void>;
}

/**
 * Starts `vfio-user serve <device> --socket <private dir>/<name> [-- args]`; resolves once it prints that it listens.
 * @param name - the socket's file name (e.g. `source.sock`).
 * @param device - a sample device's name or a device module (resolved from this process's current directory).
 * @throws {CliError} when the child exits before listening.
 */
export function startServer(name: string, device = 'dma-engine', args: readonly string[] = []): Promise<ServerProcess> {
  const dir = join(tmpdir(), `vfio-user-${device.replace(/[^A-Za-z0-9_.-]/g, '_')}-${process.pid}-${randomBytes(6).toString('hex')}`);
  const socket = join(dir, name);
  const env = { ...process.env, VFIO_USER_PARENT_PID: String(process.pid), VFIO_USER_OWNED_DIR: dir };
  const extra = args.length > 0 ? ['--', ...args] : [];
  const child = spawn(process.execPath, [MAIN, 'serve', device, '--socket', socket, ...extra], { stdio: ['ignore', 'pipe', 'inherit'], env });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  };
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve({ child, socket, stop });
    });
    child.once('error', reject);
    void exited.then((code) => reject(new CliError(`vfio-user serve ${device} exited with ${code} before listening`)));
  });
}
