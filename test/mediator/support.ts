/**
 * Helpers of the mediator's tests: an upstream device served on a temporary
 * socket with a mediator in front of it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
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

const MEDIATE = fileURLToPath(new URL('../../src/cli/commands/mediate.js', import.meta.url));
const CLI_MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/** Whether `vfio-user mediate` is in the CLI's command table yet (else the command module is run directly). */
export function cliHasMediate(): boolean {
  return readFileSync(CLI_MAIN, 'utf8').includes('registerMediate(program)');
}

/**
 * Starts `vfio-user mediate --upstream U --listen L ...args` in a child process; resolves
 * once it printed its ready line.
 */
export async function startMediatorChild(upstream: string, listen: string, args: readonly string[] = []): Promise<MediatorChild> {
  const argv = ['--upstream', upstream, '--listen', listen, ...args];
  const script = `import { runMediate } from ${JSON.stringify(pathToFileURL(MEDIATE).href)};
const argv = ${JSON.stringify(argv)};
const o = { upstream: argv[1], listen: argv[3] };
for (let i = 4; i < argv.length; i += 2) {
  const k = argv[i].slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
  if (k === 'json') { o.json = true; i--; continue; }
  if (k === 'plugin' || k === 'fault') (o[k] ??= []).push(argv[i + 1]); else o[k] = argv[i + 1];
}
await runMediate(o);`;
  const command = cliHasMediate() ? [CLI_MAIN, 'mediate', ...argv] : ['--input-type=module', '-e', script];
  const child = spawn(process.execPath, command, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
  let ended: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => resolve((ended = { code, signal }))),
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
