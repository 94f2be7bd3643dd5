/**
 * Issue 11, "Also: orphans": the `serve` children of `demo`, `migrate --demo`
 * and `migrate-listen` outlived a parent killed by SIGTERM or SIGKILL, and so
 * did the temporary directories of their sockets. Each parent is started for
 * real, killed once its children serve, and then neither a child process nor
 * a child's directory may remain.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { CLI_MAIN } from '../support/served-child.js';

/** Pids whose parent is `ppid` (from /proc/<pid>/stat). */
function childrenOf(ppid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === ppid) out.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** Whether `pid` runs (a zombie counts as gone). */
function running(pid: number): boolean {
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

/** The directory of a `serve` child's socket (its `--socket` argument), if it is one. */
function socketDir(pid: number): string | undefined {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const i = argv.indexOf('--socket');
    return argv.includes('serve') && i > 0 && argv[i + 1] ? dirname(argv[i + 1] as string) : undefined;
  } catch {
    return undefined;
  }
}

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const PARENTS: ReadonlyArray<{ name: string; args: string[]; servers: number }> = [
  { name: 'demo', args: ['demo', '--jobs', '1000000'], servers: 1 },
  { name: 'migrate --demo', args: ['migrate', '--demo', '--jobs', '1000000'], servers: 2 },
  { name: 'migrate-listen', args: ['migrate-listen'], servers: 1 },
];

describe('security: serve children die with their parent and leave no directory', () => {
  for (const parent of PARENTS) {
    for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
      it(`${parent.name}, parent killed by ${signal}`, { timeout: 30_000 }, async () => {
        const p = spawn(process.execPath, [CLI_MAIN, ...parent.args], { stdio: ['ignore', 'ignore', 'ignore'] });
        const pid = p.pid as number;
        const exited = new Promise((r) => p.once('exit', r));
        try {
          // Serving: each child's socket exists in its directory.
          let servers: number[] = [];
          await until(`${parent.servers} serving children`, () => {
            servers = childrenOf(pid).filter((c) => {
              const dir = socketDir(c);
              return dir !== undefined && existsSync(dir) && readdirSync(dir).length > 0;
            });
            return servers.length === parent.servers;
          });
          const dirs = servers.map((c) => socketDir(c) as string);
          p.kill(signal);
          await exited;
          await until('the children to exit', () => servers.every((c) => !running(c)));
          await until('the directories to be removed', () => dirs.every((d) => !existsSync(d)));
          assert.deepEqual(servers.filter(running), [], 'no serve child is left');
          assert.deepEqual(dirs.filter((d) => existsSync(d)), [], 'no socket directory is left');
        } finally {
          if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
          for (const c of childrenOf(pid)) process.kill(c, 'SIGKILL');
        }
      });
    }
  }
});
