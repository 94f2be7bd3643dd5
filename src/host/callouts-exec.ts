/**
 * Running one callout or notifier script safely: an argv array (never a
 * shell), its own process group (killed whole with SIGKILL at the timeout),
 * bounded stdout/stderr capture, stdin written and closed with EPIPE ignored
 * (a script may exit without reading it), and a background child still
 * holding the pipes after the script exited killed (with the group) after a
 * short drain — a script that daemonizes something must redirect its output.
 * Nothing a script does can throw out of {@link execScript}: every outcome is
 * a field of {@link ScriptRun}.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants as fsConstants, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../log.js';

/** Default time a script may run before its process group is killed (ms). */
export const DEFAULT_SCRIPT_TIMEOUT_MS = 10_000;
/** Default bytes kept of each of stdout and stderr (the rest is read and discarded). */
export const DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024;
/** Default time given to stdout/stderr to reach end-of-file once the script exited (ms). */
export const DEFAULT_DRAIN_MS = 200;

/** How to run one script. */
export interface ExecOptions {
  /** Kill the script's process group with SIGKILL after this long (default {@link DEFAULT_SCRIPT_TIMEOUT_MS}). */
  timeoutMs?: number;
  /** Bytes kept of stdout and of stderr (default {@link DEFAULT_MAX_OUTPUT_BYTES}). */
  maxOutputBytes?: number;
  /** Once the script exited, how long a descendant may keep its pipes open before they are closed on our side (default {@link DEFAULT_DRAIN_MS}). */
  drainMs?: number;
  /** The script's environment (default: the host's). */
  env?: NodeJS.ProcessEnv;
  /** Aborting it kills the running script's process group at once (host shutdown); a script not yet started is not started. */
  signal?: AbortSignal;
}

/** What running one script gave. Exactly one of `spawnError`, `aborted`, `timedOut`, `signal`, `exitCode` tells how it ended. */
export interface ScriptRun {
  /** The script's path. */
  path: string;
  /** Its exit code, null if it did not exit normally (signal, timeout, spawn failure). */
  exitCode: number | null;
  /** The signal that ended it (not counting our timeout kill), else null. */
  signal: NodeJS.Signals | null;
  /** Whether it was killed for running past the timeout. */
  timedOut: boolean;
  /** Whether it was killed (or not started) because `options.signal` was aborted. */
  aborted: boolean;
  /** Why it could not be started (EACCES, ENOENT, ENOEXEC…), if so. */
  spawnError?: NodeJS.ErrnoException;
  /** The first `maxOutputBytes` of stdout. */
  stdout: Buffer;
  /** The first `maxOutputBytes` of stderr. */
  stderr: Buffer;
  /** Whether stdout or stderr held more than was kept. */
  truncated: boolean;
}

/** Keeps the first `limit` bytes of a stream and discards (but keeps reading) the rest. */
class BoundedSink {
  private readonly chunks: Buffer[] = [];
  private kept = 0;
  private readonly limit: number;
  overflowed = false;
  constructor(limit: number) {
    this.limit = limit;
  }
  push(chunk: Buffer): void {
    const room = this.limit - this.kept;
    if (chunk.length > room) this.overflowed = true;
    if (room <= 0) return;
    const part = chunk.length > room ? chunk.subarray(0, room) : chunk;
    this.chunks.push(part);
    this.kept += part.length;
  }
  buffer(): Buffer {
    return Buffer.concat(this.chunks, this.kept);
  }
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // ESRCH: the group is gone already.
  }
}

/**
 * Runs `path` with `args`, writing `input` (if any) to its stdin and closing it.
 * Resolves once the script exited (or was killed at the timeout) and its
 * output was collected; never rejects.
 */
export function execScript(path: string, args: readonly string[], input: string | undefined, options: ExecOptions = {}): Promise<ScriptRun> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_SCRIPT_TIMEOUT_MS;
  const drainMs = options.drainMs ?? DEFAULT_DRAIN_MS;
  const out = new BoundedSink(options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES);
  const err = new BoundedSink(options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES);
  return new Promise((resolve) => {
    let child: ChildProcess;
    const base = { path, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), truncated: false, exitCode: null, signal: null, timedOut: false, aborted: false };
    if (options.signal?.aborted) {
      resolve({ ...base, aborted: true });
      return;
    }
    try {
      child = spawn(path, [...args], { stdio: ['pipe', 'pipe', 'pipe'], detached: true, env: options.env ?? process.env });
    } catch (e) {
      resolve({ ...base, spawnError: e as NodeJS.ErrnoException });
      return;
    }
    let killed: 'timeout' | 'abort' | undefined;
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let open = 2;
    let done = false;
    let drainTimer: NodeJS.Timeout | undefined;
    const finish = (spawnError?: NodeJS.ErrnoException): void => {
      if (done) return;
      done = true;
      clearTimeout(killTimer);
      clearTimeout(drainTimer);
      options.signal?.removeEventListener('abort', onAbort);
      child.stdout?.destroy();
      child.stderr?.destroy();
      child.stdin?.destroy();
      const run: ScriptRun = {
        path,
        exitCode: killed || spawnError ? null : (exit?.code ?? null),
        signal: killed || spawnError ? null : (exit?.signal ?? null),
        timedOut: killed === 'timeout',
        aborted: killed === 'abort',
        stdout: out.buffer(),
        stderr: err.buffer(),
        truncated: out.overflowed || err.overflowed,
      };
      resolve(spawnError ? { ...run, spawnError } : run);
    };
    const kill = (why: 'timeout' | 'abort'): void => {
      if (done || killed) return;
      killed = why;
      killGroup(child);
      // The exit event follows; descendants that left the group may still hold the pipes.
      if (exit) finish();
    };
    const killTimer = setTimeout(() => kill('timeout'), timeoutMs);
    const onAbort = (): void => kill('abort');
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const streamClosed = (): void => {
      open -= 1;
      if (open === 0 && exit) finish();
    };
    child.stdout?.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr?.on('data', (chunk: Buffer) => err.push(chunk));
    child.stdout?.on('close', streamClosed);
    child.stderr?.on('close', streamClosed);
    child.stdout?.on('error', () => {});
    child.stderr?.on('error', () => {});
    // EPIPE/ECONNRESET when the script exits (or closes stdin) before reading all of it.
    child.stdin?.on('error', () => {});
    child.on('error', (e: NodeJS.ErrnoException) => finish(e));
    child.on('exit', (code, signal) => {
      exit = { code, signal };
      if (open === 0 || killed) finish();
      else
        drainTimer = setTimeout(() => {
          // After the poll phase, so an end-of-file already pending (a busy loop) is seen first.
          setImmediate(() => {
            if (done) return;
            // A descendant still holds the pipes: it goes with the script's group.
            killGroup(child);
            finish();
          });
        }, drainMs);
    });
    if (input !== undefined) child.stdin?.end(input);
    else child.stdin?.end();
  });
}

/** Compares names as mdevctl's `PathBuf` sort does: byte-wise. */
function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/**
 * The scripts of one directory, in byte order of their names: regular files
 * (symbolic links followed) the host may execute. Others are skipped with a
 * debug record; a missing directory has no scripts. Never throws (an
 * unreadable directory is logged at warn and has no scripts).
 */
export async function listScripts(dir: string, logger?: Logger): Promise<string[]> {
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') logger?.warn({ dir, err: e }, 'cannot read script directory');
    return [];
  }
  const scripts: string[] = [];
  for (const name of names.sort(byteOrder)) {
    const path = join(dir, name);
    try {
      const stat = await fsp.stat(path);
      if (!stat.isFile()) {
        logger?.debug({ script: path }, 'not a regular file, skipped');
        continue;
      }
      await fsp.access(path, fsConstants.X_OK);
      scripts.push(path);
    } catch (e) {
      logger?.debug({ script: path, code: (e as NodeJS.ErrnoException).code }, 'not executable, skipped');
    }
  }
  return scripts;
}

/** The first non-empty line of a script's output (UTF-8, invalid bytes replaced), at most 200 characters. */
export function firstLine(bytes: Buffer): string {
  const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  const line = text.split(/\r?\n/).find((l) => l.trim() !== '') ?? '';
  const trimmed = line.trim();
  return trimmed.length > 200 ? `${trimmed.slice(0, 200)}…` : trimmed;
}
