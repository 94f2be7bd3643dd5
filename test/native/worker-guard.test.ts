/**
 * The addon's process-wide state with worker threads: the SIGBUS guard
 * repairs a fault in any thread's mapping, and the library stays loaded when
 * the only thread that loaded it ends (its signal handler must never point
 * into unmapped code). Each case runs in a child process, so a broken guard
 * fails the test, not the runner.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

const ADDON_URL = new URL('../../src/native/addon.js', import.meta.url).href;

/** Runs an ES module snippet in a child node; its stdout. */
function runChild(body: string): { status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', body], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** Worker source (an ES module: the worker inherits `--input-type=module`) that imports the addon, runs `body` and posts its result. */
function workerSource(body: string): string {
  return `import { parentPort } from 'node:worker_threads';
const addon = await import(${JSON.stringify(ADDON_URL)});
parentPort.postMessage((${body})(addon));`;
}

describe('native state across worker threads', () => {
  it('repairs a SIGBUS in a worker thread\'s mapping while the main thread has its own', () => {
    const fault = `({ mapFd, memfdCreate, mappingFaulted, native }) => {
      const page = native.constants.PAGE_SIZE;
      const fd = memfdCreate('worker-guard', 2 * page);
      const bytes = new Uint8Array(mapFd(fd, 0, 2 * page, true));
      bytes.fill(1);
      native.ftruncate(fd, page);
      return { kept: bytes[0], past: bytes[page], faulted: mappingFaulted(bytes.buffer) };
    }`;
    const r = runChild(`
      import { Worker } from 'node:worker_threads';
      import { mapFd, memfdCreate, mappingFaulted } from ${JSON.stringify(ADDON_URL)};
      const mine = mapFd(memfdCreate('main-intact', 4096), 0, 4096, true);
      const worker = new Worker(${JSON.stringify(workerSource(fault))}, { eval: true });
      const result = await new Promise((resolve, reject) => worker.once('message', resolve).once('error', reject));
      await worker.terminate();
      console.log(JSON.stringify({ ...result, mainFaulted: mappingFaulted(mine) }));
    `);
    assert.equal(r.signal, null, r.stderr);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { kept: 1, past: 0, faulted: true, mainFaulted: false });
  });

  it('keeps the addon loaded after the only worker that loaded it has ended', () => {
    const r = runChild(`
      import { Worker } from 'node:worker_threads';
      import { readFileSync } from 'node:fs';
      const loaded = () => readFileSync('/proc/self/maps', 'utf8').includes('vfio_user_native.node');
      const before = loaded();
      const worker = new Worker(${JSON.stringify(workerSource('() => 0'))}, { eval: true });
      await new Promise((resolve, reject) => worker.once('message', resolve).once('error', reject));
      const during = loaded();
      await worker.terminate();
      await new Promise((resolve) => setTimeout(resolve, 50));
      console.log(JSON.stringify({ before, during, after: loaded() }));
    `);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { before: false, during: true, after: true });
  });
});
