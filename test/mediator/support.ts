/**
 * Helpers of the mediator's tests: an upstream device served on a temporary
 * socket with a mediator in front of it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { VfioUserDevice } from '../../src/device/device.js';
import type { DeviceServer, ServeOptions } from '../../src/server/server.js';
import { Mediator } from '../../src/mediator/mediator.js';
import type { MediatorOptions } from '../../src/mediator/types.js';
import { silentLogger } from '../../src/log.js';

/** A device served upstream and a mediator listening in front of it. */
export interface MediatedDevice {
  dir: string;
  /** The device's own socket. */
  upstreamPath: string;
  /** The mediator's socket (what clients connect to). */
  path: string;
  server: DeviceServer;
  mediator: Mediator;
  close(): Promise<void>;
}

/** Serves `device` and puts a mediator in front of it. */
export async function mediate(
  device: VfioUserDevice,
  options: Partial<Omit<MediatorOptions, 'upstream' | 'listen'>> = {},
  serve: Omit<ServeOptions, 'path'> = {},
): Promise<MediatedDevice> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-mediator-'));
  const upstreamPath = join(dir, 'device.sock');
  const path = join(dir, 'mediator.sock');
  const server = device.serve({ path: upstreamPath, ...serve });
  const mediator = await Mediator.listen({ upstream: upstreamPath, listen: path, log: silentLogger(), ...options });
  return {
    dir,
    upstreamPath,
    path,
    server,
    mediator,
    async close() {
      await mediator.close();
      await server.close();
      device.dispose();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Resolves once `cond()` holds (polled), or rejects after `timeoutMs`. */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A mediator in a child process (so a test can measure its memory and fds, or kill it). */
export interface MediatorChild {
  path: string;
  child: ChildProcess;
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM (then SIGKILL after 5 s) unless it already ended; resolves with how it ended. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const CLI_MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/** Children still running: killed if the test process exits first. */
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/**
 * Starts `vfio-user mediate --upstream U --listen L ...args` in a child process; resolves
 * once it printed its ready line.
 */
export async function startMediatorChild(upstream: string, listen: string, args: readonly string[] = []): Promise<MediatorChild> {
  const command = [CLI_MAIN, 'mediate', '--upstream', upstream, '--listen', listen, ...args];
  const child = spawn(process.execPath, command, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
  let ended: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => {
      live.delete(child);
      resolve((ended = { code, signal }));
    }),
  );
  const stop = async (): Promise<{ code: number | null; signal: NodeJS.Signals | null }> => {
    if (!ended) {
      child.kill('SIGTERM');
      const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(kill);
    }
    return exited;
  };
  const deadline = Date.now() + 15_000;
  while (!output.includes('mediating ') && !output.includes('"ready":true')) {
    if (ended) throw new Error(`mediate ended (${ended.code ?? ended.signal}) before it was ready: ${output}`);
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`mediate was not ready within 15 s: ${output}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return { path: listen, child, output: () => output, exited, stop };
}
