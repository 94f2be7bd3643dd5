/**
 * Shared by the host tests: a DeviceHost in temp dirs with the fixture
 * parent, a logger that keeps its events, waiting for a condition, the
 * process's open fds, callout scripts, and running `vfio-user host` as a
 * child process.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DeviceHost, type DeviceHostOptions } from '../../src/host/host.js';
import type { Logger } from '../../src/log.js';

/** The fixture parent's compiled module (`hostfix`). */
export const FIXTURE_PARENT = fileURLToPath(new URL('./fixtures/host/parent.js', import.meta.url));
/** The CLI's entry point. */
export const MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/** A logger that records every event (fields and message) for assertions. */
export function recordingLogger(): Logger & { events: Record<string, unknown>[]; named(event: string): Record<string, unknown>[] } {
  const events: Record<string, unknown>[] = [];
  const make = (bindings: Record<string, unknown>): Logger => {
    const at = (level: string) => (obj: object, msg?: string) => void events.push({ level, ...bindings, ...obj, msg });
    return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), child: (more) => make({ ...bindings, ...more }) };
  };
  return Object.assign(make({}), { events, named: (event: string) => events.filter((e) => e.event === event) });
}

/** Temp run and config dirs. */
export interface HostDirs {
  root: string;
  runDir: string;
  configDir: string;
  dispose(): void;
}

/** A temp root with `run/` (created by the host) and `cfg/`. */
export function hostDirs(): HostDirs {
  const root = mkdtempSync(join(tmpdir(), 'vfio-user-host-'));
  return { root, runDir: join(root, 'run'), configDir: join(root, 'cfg'), dispose: () => rmSync(root, { recursive: true, force: true }) };
}

/** A host on `dirs` with the fixture parent (no built-ins unless asked) and fast restarts. */
export function startHost(dirs: HostDirs, options: Partial<DeviceHostOptions> = {}): Promise<DeviceHost> {
  return DeviceHost.start({
    paths: { runDir: dirs.runDir, configDir: dirs.configDir },
    parents: [FIXTURE_PARENT],
    builtinParents: false,
    restart: { initialDelayMs: 20, maxDelayMs: 200 },
    ...options,
  });
}

/** Resolves once `check()` is truthy (polled every 20 ms); rejects with `what` after `timeoutMs`. */
export async function until<T>(check: () => T | Promise<T>, what: string, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Open fds of this process. */
export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/**
 * Writes an executable callout script `name` in `<configDir>/scripts.d/callouts` (or `notifiers`) that appends its
 * arguments and stdin to `log`, and exits `exitCode` for `-e pre -a <vetoAction>` (0 otherwise).
 */
export function writeCallout(configDir: string, name: string, log: string, options: { vetoAction?: string; kind?: 'callouts' | 'notifiers' } = {}): string {
  const dir = join(configDir, 'scripts.d', options.kind ?? 'callouts');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, name);
  const veto = options.vetoAction ?? 'none';
  writeFileSync(
    path,
    `#!/bin/sh
input=$(cat)
echo "$* | $input" >> '${log}'
case "$*" in
  *"-e pre -a ${veto} "*) echo "no ${veto} for you" >&2; exit 1 ;;
esac
exit 0
`,
  );
  chmodSync(path, 0o755);
  return path;
}

/** A `vfio-user host` child process and what it printed. */
export interface HostChild {
  child: ChildProcessWithoutNullStreams;
  stdout(): string;
  stderr(): string;
  /** Resolves with the ready line (rejects if the process exits first). */
  ready: Promise<string>;
  /** Resolves with the exit code and signal. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Runs `node main.js host ARGS…`. */
export function spawnHost(args: readonly string[], env: NodeJS.ProcessEnv = process.env): HostChild {
  const child = spawn(process.execPath, [MAIN, 'host', ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => void (err += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const ready = new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('host ready') || l.startsWith('{"ready"'));
      if (line) resolve(line);
    });
    void exited.then(({ code, signal }) => reject(new Error(`host exited (${code ?? signal}) before ready: ${err.trim()}`)));
  });
  ready.catch(() => undefined);
  return { child, stdout: () => out, stderr: () => err, ready, exited };
}
