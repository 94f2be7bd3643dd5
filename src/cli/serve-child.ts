/** A sample device served by this CLI in a child process (`vfio-user serve <device> --socket P`). */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { CliError } from './common.js';

const MAIN = fileURLToPath(new URL('./main.js', import.meta.url));

/** A running `vfio-user serve` child process. */
export interface ServerProcess {
  child: ChildProcess;
  /** SIGTERM (then SIGKILL after 5 s); resolves once it exited. */
  stop(): Promise<void>;
}

/**
 * Starts `vfio-user serve <device> --socket <socket>`; resolves once it prints that it listens.
 * @throws {CliError} when the child exits before listening.
 */
export function startServer(socket: string, device = 'dma-engine'): Promise<ServerProcess> {
  const child = spawn(process.execPath, [MAIN, 'serve', device, '--socket', socket], { stdio: ['ignore', 'pipe', 'inherit'] });
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
      if (out.includes('\n')) resolve({ child, stop });
    });
    child.once('error', reject);
    void exited.then((code) => reject(new CliError(`vfio-user serve ${device} exited with ${code} before listening`)));
  });
}
