/**
 * Helpers for the end-to-end tests of `vfio-user mdev` and `lsmdev`: a real
 * device host in temporary run and config directories, and the real binaries
 * run against it in child processes (the control socket given by
 * `$VFIO_USER_CONTROL`, as a user would set it).
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DeviceHost } from '../../src/host/host.js';
import { silentLogger } from '../../src/log.js';
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
  /** `vfio-user mdev ARGS…` against this host. */
  mdev(...args: string[]): Promise<CliResult>;
  /** `lsmdev ARGS…` against this host. */
  lsmdev(...args: string[]): Promise<CliResult>;
  /** Stops the host, removes the directories. */
  close(): Promise<void>;
}

/** Runs `node SCRIPT ARGS…` to completion with `env` added (killed after 30 s). */
export function runNode(script: string, args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => void (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => void (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/**
 * Starts a device host (the built-in parents: `memory-pool`, `gpio-bank`) in
 * this process, in fresh temporary run and config directories.
 * @param prepare - called with the config directory before the host starts (definitions, callout scripts).
 */
export async function startHost(prepare?: (configDir: string) => void): Promise<HostUnderTest> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-mdev-'));
  const runDir = join(dir, 'run');
  const configDir = join(dir, 'config');
  mkdirSync(configDir);
  prepare?.(configDir);
  let host: DeviceHost;
  try {
    host = await DeviceHost.start({ paths: { runDir, configDir }, logger: silentLogger() });
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  const user = { VFIO_USER_CONTROL: host.controlSocket };
  return {
    dir,
    runDir,
    configDir,
    control: host.controlSocket,
    mdev: (...a) => runNode(MAIN, ['mdev', ...a], user),
    lsmdev: (...a) => runNode(LSMDEV, a, user),
    async close() {
      await host.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
