/**
 * Helpers for the end-to-end tests of `vfio-user mdev` and `lsmdev`: a real
 * `vfio-user host` child process in temporary run and config directories, and
 * the real binaries run against it (the control socket given by
 * `$VFIO_USER_CONTROL`, as a user would set it).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MAIN, type CliResult } from './support.js';

/** dist/src/cli/lsmdev.js. */
export const LSMDEV = fileURLToPath(new URL('../../src/cli/lsmdev.js', import.meta.url));

/** A host child process and the way to reach it. */
export interface HostUnderTest {
  /** Temporary directory holding `run/` and `config/`. */
  dir: string;
  runDir: string;
  configDir: string;
  control: string;
  /** What the host logged on stderr so far. */
  stderr(): string;
  /** `vfio-user mdev ARGS…` against this host. */
  mdev(...args: string[]): Promise<CliResult>;
  /** `lsmdev ARGS…` against this host. */
  lsmdev(...args: string[]): Promise<CliResult>;
  /** SIGTERM, waits for the host to exit, removes the directories. */
  close(): Promise<void>;
}

/** Runs `node SCRIPT ARGS…` to completion with `env` added (killed after 120 s: a loaded machine is slow, not wrong). */
export function runNode(script: string, args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => void (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => void (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Resolves once the host prints its ready line; rejects (with its stderr) if it exits first or takes over 120 s. */
function ready(child: ChildProcess, stderr: () => string): Promise<void> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    const timer = setTimeout(() => reject(new Error(`vfio-user host not ready within 120 s: ${stderr()}`)), 120_000);
    child.stdout?.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (/^host ready/m.test(stdout)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`vfio-user host exited (${code ?? signal}) before it was ready: ${stderr()}`));
    });
  });
}

/**
 * Starts `vfio-user host --run-dir … --config-dir …` (the built-in parents:
 * `memory-pool`, `gpio-bank`) as a child process in fresh temporary
 * directories, and waits for its ready line.
 * @param prepare - called with the config directory before the host starts (definitions, callout scripts).
 */
export async function startHost(prepare?: (configDir: string) => void): Promise<HostUnderTest> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-mdev-'));
  const runDir = join(dir, 'run');
  const configDir = join(dir, 'config');
  mkdirSync(configDir);
  prepare?.(configDir);
  const child = spawn(process.execPath, [MAIN, 'host', '--run-dir', runDir, '--config-dir', configDir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => void (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    await ready(child, () => stderr);
  } catch (error) {
    child.kill('SIGKILL');
    await exited;
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  const control = join(runDir, 'control.sock');
  const user = { VFIO_USER_CONTROL: control };
  return {
    dir,
    runDir,
    configDir,
    control,
    stderr: () => stderr,
    mdev: (...a) => runNode(MAIN, ['mdev', ...a], user),
    lsmdev: (...a) => runNode(LSMDEV, a, user),
    async close() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Runs `tasks` at most `limit` at a time (independent CLI runs side by side, without flooding a small machine); results in order. */
export async function inParallel<T>(tasks: ReadonlyArray<() => Promise<T>>, limit = 4): Promise<T[]> {
  const results: T[] = new Array<T>(tasks.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < tasks.length; i = next++) results[i] = await (tasks[i] as () => Promise<T>)();
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return results;
}
