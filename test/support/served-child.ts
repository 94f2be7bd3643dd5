/**
 * A sample device served by `vfio-user serve` in a child process, for tests
 * whose hostile client could hurt the server process: the test runner
 * survives, and the child's liveness, RSS and fd count can be measured from
 * /proc.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** `dist/src/cli/main.js`, from `dist/test/support/`. */
export const CLI_MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/** A running `vfio-user serve` child. */
export interface ServedChild {
  child: ChildProcess;
  pid: number;
  socket: string;
  /** Whether the process is still running (not exited, not a zombie). */
  alive(): boolean;
  /** Resident set size in KiB (VmRSS). */
  rssKiB(): number;
  /** Open fds of the child. */
  fdCount(): number;
  /** SIGTERM, waits for the exit, removes the temp dir. @returns the exit code (null after a signal). */
  stop(): Promise<number | null>;
}

/**
 * Starts `vfio-user serve <device> --socket <tmp>/device.sock [...args]` and
 * resolves once it prints that it serves.
 * @throws {Error} when the child exits before serving.
 */
export async function serveInChild(device: string, args: readonly string[] = []): Promise<ServedChild> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-hostile-'));
  const socket = join(dir, 'device.sock');
  const child = spawn(process.execPath, [CLI_MAIN, 'serve', device, '--socket', socket, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve();
    });
    void exited.then((code) => reject(new Error(`serve ${device} exited with ${code} before serving: ${stderr}`)));
  });
  const pid = child.pid as number;
  const status = (): string => readFileSync(`/proc/${pid}/status`, 'utf8');
  return {
    child,
    pid,
    socket,
    alive: () => {
      if (child.exitCode !== null || child.signalCode !== null) return false;
      try {
        return !/^State:\s+Z/m.test(status());
      } catch {
        return false;
      }
    },
    rssKiB: () => Number(/^VmRSS:\s+(\d+)/m.exec(status())?.[1] ?? NaN),
    fdCount: () => readdirSync(`/proc/${pid}/fd`).length,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      const code = await exited;
      clearTimeout(timer);
      rmSync(dir, { recursive: true, force: true });
      return code;
    },
  };
}
