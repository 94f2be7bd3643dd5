/**
 * Finding and running the samples of a libvfio-user build for the optional
 * interoperability tests. The build is made by hand, outside this repository
 * (docs/interop.md); `LIBVFIO_USER_BUILD` names its meson build directory, the
 * one that holds `samples/client`. Without it the interop tests skip.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** Where the samples are, or why the interop tests skip. */
export interface LibvfioUserBuild {
  /** The build directory, when usable. */
  dir: string | undefined;
  /** A skip reason when `dir` is undefined. */
  skip: string | false;
}

/** Reads `LIBVFIO_USER_BUILD`; usable when it holds `samples/client`. */
export function libvfioUserBuild(): LibvfioUserBuild {
  const dir = process.env['LIBVFIO_USER_BUILD'];
  if (!dir) return { dir: undefined, skip: 'LIBVFIO_USER_BUILD is not set (see docs/interop.md)' };
  if (!existsSync(join(dir, 'samples', 'client'))) {
    return { dir: undefined, skip: `LIBVFIO_USER_BUILD=${dir} has no samples/client` };
  }
  return { dir, skip: false };
}

/** How a sample process ended. */
export interface SampleResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True if it was killed by {@link runSample}'s timeout. */
  timedOut: boolean;
}

/**
 * Runs a sample to completion (asynchronously: the device under test lives in
 * this process and must keep serving while the sample runs).
 */
export function runSample(file: string, args: readonly string[], timeoutMs: number): Promise<SampleResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}

/** A sample server started in the background. */
export interface SampleServer {
  /** Output so far. */
  readonly output: () => { stdout: string; stderr: string };
  /** Resolves when the process has exited. */
  readonly exited: Promise<SampleResult>;
  /** SIGTERM (then SIGKILL after 2 s) unless it already exited; resolves with how it ended. */
  stop(): Promise<SampleResult>;
}

/** Starts a sample server; resolves once its socket exists, rejects if it exits first or takes over 5 s. */
export async function startSampleServer(file: string, args: readonly string[], socketPath: string): Promise<SampleServer> {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let result: SampleResult | undefined;
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  // 'close' follows 'error' too (e.g. ENOENT), so `exited` always resolves.
  child.on('error', (e) => (stderr += `${e.message}\n`));
  const exited = new Promise<SampleResult>((resolve) => {
    child.on('close', (code, signal) => {
      result = { code, signal, stdout, stderr, timedOut: false };
      resolve(result);
    });
  });
  const deadline = Date.now() + 5000;
  while (!isSocket(socketPath)) {
    if (result) throw new Error(`${file} exited (code ${result.code}) before creating ${socketPath}: ${result.stderr.trim()}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${file} did not create ${socketPath} within 5 s`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    output: () => ({ stdout, stderr }),
    exited,
    async stop() {
      if (!result) {
        child.kill('SIGTERM');
        const kill = setTimeout(() => child.kill('SIGKILL'), 2000);
        await exited;
        clearTimeout(kill);
      }
      return exited;
    },
  };
}

/**
 * Whether a socket is listening on `path`: the file exists *and* the kernel lists it with
 * __SO_ACCEPTCON (/proc/net/unix flag 0x10000). The samples bind() before they listen(), so the file
 * alone is not enough (a connect in between is refused), and a probing connect would take the
 * sample's one session.
 */
function isSocket(path: string): boolean {
  try {
    if (!statSync(path).isSocket()) return false;
  } catch {
    return false;
  }
  return readFileSync('/proc/net/unix', 'utf8')
    .split('\n')
    .some((line) => {
      const f = line.trim().split(/\s+/);
      return f[7] === path && (parseInt(f[3] ?? '0', 16) & 0x10000) !== 0;
    });
}
