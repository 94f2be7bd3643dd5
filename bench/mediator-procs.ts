/**
 * The processes of the mediator benchmark: `vfio-user serve KIND` and the
 * mediator (`vfio-user mediate` when the CLI has the command, else
 * bench/mediator-serve.ts calling Mediator.listen), each in its own process,
 * pinned when a pin prefix is given; and running the C vfio-user client.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import type { LatencySummary } from './stats.js';

const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;
const MEDIATOR_SERVE = new URL('./mediator-serve.js', import.meta.url).pathname;

/** Which program runs the mediator. */
export type MediatorProgram = 'vfio-user mediate' | 'bench/mediator-serve (Mediator.listen)';

/** `vfio-user mediate` when the CLI's command table has it, else the bench's own script. */
export function mediatorProgram(): MediatorProgram {
  const help = spawnSync(process.execPath, [CLI, 'mediate', '--help'], { encoding: 'utf8' });
  return help.status === 0 && help.stdout.includes('--upstream') ? 'vfio-user mediate' : 'bench/mediator-serve (Mediator.listen)';
}

/** A child process started and ready (it printed its first line). */
export interface Started {
  child: ChildProcess;
  stop(): Promise<void>;
}

/** Starts `cmd` and resolves once it prints a line on stdout. @throws {Error} when it exits first or within 15 s says nothing. */
export async function startReady(cmd: readonly string[]): Promise<Started> {
  const child = spawn(cmd[0] as string, cmd.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${cmd.join(' ')}: not ready within 15 s`)), 15_000);
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${cmd.join(' ')} exited (${code}) before it was ready`));
    });
  });
  child.stdout?.resume();
  return {
    child,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      await once(child, 'exit');
    },
  };
}

/** `vfio-user serve KIND --socket SOCK`, pinned. */
export function serveDevice(pin: readonly string[], kind: string, sock: string): Promise<Started> {
  return startReady([...pin, process.execPath, CLI, 'serve', kind, '--socket', sock]);
}

/** A plugin-less mediator from `upstream` to `listen`, pinned. */
export function startMediator(pin: readonly string[], program: MediatorProgram, upstream: string, listen: string): Promise<Started> {
  const args = program === 'vfio-user mediate' ? [CLI, 'mediate', '--upstream', upstream, '--listen', listen] : [MEDIATOR_SERVE, upstream, listen];
  return startReady([...pin, process.execPath, ...args]);
}

/**
 * The C client (`echo vfu`): 4-byte REGION_READs of `region` at `offset`, `depth` in flight.
 * Retries a few times: a device serves one client at a time, and the previous
 * run's session may not have ended yet when the next one connects (EBUSY).
 */
export async function vfuRun(pin: readonly string[], echo: string, sock: string, iterations: number, depth: number, region: number, offset: number): Promise<LatencySummary> {
  const cmd = [...pin, echo, 'vfu', sock, String(iterations), String(depth), String(region), `0x${offset.toString(16)}`];
  for (let attempt = 0; ; attempt++) {
    try {
      return JSON.parse(execFileSync(cmd[0] as string, cmd.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })) as LatencySummary;
    } catch (error) {
      if (attempt >= 20) throw error;
      await sleep(50);
    }
  }
}

/** The C echo's memcpy of `bytes`, best GB/s of `runs`. */
export function cMemcpyGBps(echo: string, bytes: number, iterations: number, runs = 3): number {
  let best = 0;
  for (let i = 0; i < runs; i++) {
    const r = JSON.parse(execFileSync(echo, ['memcpy', String(bytes), String(iterations)], { encoding: 'utf8' })) as { gbPerSecond: number };
    best = Math.max(best, r.gbPerSecond);
  }
  return best;
}

/** Builds bench/c/mediator-floor.c (the least a relay can cost: bytes copied, nothing parsed) into `dir`. */
export function buildFloor(dir: string): string {
  const out = `${dir}/mediator-floor`;
  const source = new URL('../../bench/c/mediator-floor.c', import.meta.url).pathname;
  execFileSync('cc', ['-O2', '-o', out, source], { stdio: 'inherit' });
  return out;
}

/** The C floor relay from `upstream` to `listen`, pinned. */
export function startFloor(pin: readonly string[], binary: string, upstream: string, listen: string): Promise<Started> {
  return startReady([...pin, binary, upstream, listen]);
}

/** Builds bench/c/echo.c into `dir` (what bench/run.ts does for the sections that need it). */
export function buildEcho(dir: string): string {
  const out = `${dir}/echo-mediator`;
  const source = new URL('../../bench/c/echo.c', import.meta.url).pathname;
  execFileSync('cc', ['-O2', '-o', out, source], { stdio: 'inherit' });
  return out;
}
