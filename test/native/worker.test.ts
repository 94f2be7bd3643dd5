import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';

const script = new URL('./worker-child.js', import.meta.url);

/** Mappings of the worker's memfd still in this process. */
function leftoverMappings(): number {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((line) => line.includes('/memfd:worker-teardown ')).length;
}

// A crash here (libuv calling into the unloaded addon) kills this test file.
describe('worker teardown', () => {
  it('terminate() with open pollers and mappings is clean', async () => {
    for (let i = 0; i < 5; i++) {
      const worker = new Worker(script);
      await new Promise((resolve, reject) => worker.once('message', resolve).once('error', reject));
      assert.equal(await worker.terminate(), 1);
    }
    assert.equal(leftoverMappings(), 0);
  });

  it('process.exit() in a worker with open pollers and mappings is clean', async () => {
    for (let i = 0; i < 5; i++) {
      const worker = new Worker(script, { workerData: { exit: true } });
      const code = await new Promise((resolve, reject) => worker.once('exit', resolve).once('error', reject));
      assert.equal(code, 0);
    }
    assert.equal(leftoverMappings(), 0);
  });
});
