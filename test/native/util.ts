/**
 * Helpers shared by the native tests and their child processes.
 */
import { spawn, type StdioOptions } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { native, socketPair } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';

/** Resolves with the event mask once `fd` is ready for `events` (via a Poller, no busy loop). */
export function waitFor(fd: number, events: number = native.constants.UV_READABLE): Promise<number> {
  return new Promise((resolve, reject) => {
    const poller = new native.Poller(fd, (status, got) => {
      poller.close();
      if (status < 0) reject(new Error(`poll failed: ${status}`));
      else resolve(got);
    });
    poller.start(events);
  });
}

/** Everything a finished child process left behind. */
export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `dist/test/native/<script>` (a sibling of this file once compiled) in
 * a new Node process. `extraFd`, if given, becomes the child's fd 3.
 */
export function runChild(
  script: string,
  args: readonly string[],
  options: { nodeArgs?: readonly string[]; extraFd?: number } = {},
): Promise<ChildResult> {
  const path = fileURLToPath(new URL(`./${script}`, import.meta.url));
  const stdio: StdioOptions = ['ignore', 'pipe', 'pipe'];
  if (options.extraFd !== undefined) stdio.push(options.extraFd);
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), path, ...args], { stdio });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** Fills `bytes` with a pattern that depends on `seed`. */
export function fillPattern(bytes: Uint8Array, seed: number): void {
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * seed + (i >>> 12)) & 0xff;
}

/** Index of the first byte that differs from the `seed` pattern, or -1. */
export function checkPattern(bytes: Uint8Array, seed: number): number {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== ((i * seed + (i >>> 12)) & 0xff)) return i;
  return -1;
}

/** Runs `fn` with a fresh socketpair, closed afterwards, checking that no fd leaked. */
export async function withSocketPair(fn: (a: number, b: number) => unknown): Promise<void> {
  await assertNoFdLeak(async () => {
    const [a, b] = socketPair();
    try {
      await fn(a, b);
    } finally {
      native.close(a);
      native.close(b);
    }
  });
}
