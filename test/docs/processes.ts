/**
 * Processes of the documentation harness: each runs in its own process group
 * (so a shell's background jobs go with it), writes stdout and stderr merged
 * into one file (as a terminal shows them), and is killed by group. Readiness
 * of a server is read from /proc/net/unix and /proc/net/tcp{,6} (a socket in
 * LISTEN state), never by connecting to it: a probe connection would occupy
 * the device's one session.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** A started process and where its output goes. */
export interface Started {
  child: ChildProcess;
  outputFile: string;
  /** Resolves with the exit status (128 + signal number when killed). */
  exited: Promise<number>;
  /** Whether it has exited. */
  done(): boolean;
}

/** Process groups started and not yet known gone: killed if this process exits first (a crash, a test timeout). */
const live = new Set<number>();
process.once('exit', () => {
  for (const pgid of live) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch { /* already gone */ }
  }
});

/** Starts `command args` in `cwd` in a new process group, stdout and stderr merged into `outputFile`. */
export function start(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, outputFile: string): Started {
  const fd = openSync(outputFile, 'a');
  let finished = false;
  let child: ChildProcess;
  try {
    child = spawn(command, args, { cwd, env, stdio: ['ignore', fd, fd], detached: true });
  } finally {
    closeSync(fd);
  }
  if (child.pid !== undefined) live.add(child.pid);
  const exited = new Promise<number>((resolve) => {
    child.once('error', () => { finished = true; resolve(127); });
    child.once('exit', (code, signal) => {
      finished = true;
      resolve(code ?? 128 + (signal ? signalNumber(signal) : 0));
    });
  });
  return { child, outputFile, exited, done: () => finished };
}

function signalNumber(signal: NodeJS.Signals): number {
  return ({ SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 } as Record<string, number>)[signal] ?? 0;
}

/** What `p` wrote so far. */
export function outputOf(p: Started): string {
  return existsSync(p.outputFile) ? readFileSync(p.outputFile, 'utf8') : '';
}

/** Whether process group `pgid` still has a member. */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM to the process group, SIGKILL after `graceMs`; resolves when the group is gone. */
export async function killGroup(p: Started, graceMs = 3000): Promise<void> {
  const pgid = p.child.pid;
  if (pgid === undefined) return;
  try {
    process.kill(-pgid, 'SIGTERM');
  } catch {
    live.delete(pgid); // already gone
    return;
  }
  const deadline = Date.now() + graceMs;
  while (groupAlive(pgid) && Date.now() < deadline) await sleep(20);
  if (groupAlive(pgid)) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch { /* gone meanwhile */ }
    while (groupAlive(pgid)) await sleep(20);
  }
  live.delete(pgid);
}

/** Runs `p` to its end; past `timeoutMs` its group is killed and the status is 'timeout'. */
export async function finish(p: Started, timeoutMs: number): Promise<number | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), timeoutMs); });
  const status = await Promise.race([p.exited, timeout]);
  clearTimeout(timer);
  if (status === 'timeout') await killGroup(p, 500);
  return status;
}

/** Whether a UNIX socket bound to `path` is listening (/proc/net/unix: flag __SO_ACCEPTCON). */
export function unixListening(path: string): boolean {
  const rows = readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1);
  return rows.some((row) => {
    const cols = row.trim().split(/\s+/);
    return cols.length >= 8 && cols.slice(7).join(' ') === path && (parseInt(cols[3] ?? '0', 16) & 0x10000) !== 0;
  });
}

/** Waits until every path listens; fails early if `p` exits. @throws Error naming what was missing. */
export async function waitListening(paths: readonly string[], p: Started | undefined, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const missing = paths.filter((path) => !unixListening(path));
    if (missing.length === 0) return;
    if (p?.done()) throw new Error(`exited (status ${await p.exited}) before ${missing.join(', ')} listened:\n${outputOf(p)}`);
    if (Date.now() > deadline) throw new Error(`${missing.join(', ')} not listening after ${timeoutMs} ms${p ? `:\n${outputOf(p)}` : ''}`);
    await sleep(25);
  }
}

/** Waits until `p` has written something (or exited). */
export async function waitOutput(p: Started, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (outputOf(p) === '') {
    if (p.done()) throw new Error(`exited (status ${await p.exited}) without output`);
    if (Date.now() > deadline) throw new Error(`no output after ${timeoutMs} ms`);
    await sleep(25);
  }
}

/** Whether an executable `name` is on PATH. */
export function onPath(name: string, path = process.env.PATH ?? ''): boolean {
  return path.split(delimiter).some((dir) => dir !== '' && existsSync(join(dir, name)));
}

/**
 * The shell prelude of every sh block: strict mode and the waits the harness
 * inserts after `vfio-user serve … &` and `vfio-user migrate-listen --port N … &`.
 */
export const SHELL_PRELUDE = `set -e -o pipefail
__snippet_wait_unix() {
  local i=0
  until awk -v p="$(realpath -m "$1")" -v q="$1" '($NF == p || $NF == q) && $4 == "00010000" { f = 1 } END { exit !f }' /proc/net/unix; do
    if ! kill -0 "$2" 2>/dev/null; then echo "snippet harness: the server for $1 exited" >&2; return 1; fi
    i=$((i + 1)); if [ $i -gt 600 ]; then echo "snippet harness: $1 never listened" >&2; return 1; fi; sleep 0.05
  done
}
__snippet_wait_tcp() {
  local port i=0; port=$(printf '%04X' "$1")
  until cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=":$port" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }'; do
    if ! kill -0 "$2" 2>/dev/null; then echo "snippet harness: the listener on port $1 exited" >&2; return 1; fi
    i=$((i + 1)); if [ $i -gt 600 ]; then echo "snippet harness: port $1 never listened" >&2; return 1; fi; sleep 0.05
  done
}
`;

const CLI_WORD = String.raw`(?:vfio-user|npx\s+vfio-user|node\s+\S*dist/src/cli/main\.js)`;
const SERVE_BG = new RegExp(String.raw`^\s*${CLI_WORD}\s+serve\b.*--socket[=\s]+(\S+).*&\s*(#.*)?$`);
const LISTEN_BG = new RegExp(String.raw`^\s*${CLI_WORD}\s+migrate-listen\b.*--port[=\s]+(\d+).*&\s*(#.*)?$`);

/** The block's script with a wait inserted after each backgrounded server line. */
export function withServerWaits(code: string): string {
  const out: string[] = [];
  for (const line of code.split('\n')) {
    out.push(line);
    const serve = SERVE_BG.exec(line);
    if (serve) out.push(`__snippet_wait_unix '${serve[1]}' $!`);
    const listen = LISTEN_BG.exec(line);
    if (listen) out.push(`__snippet_wait_tcp ${listen[1]} $!`);
  }
  return out.join('\n');
}
