/**
 * The addon's fd ownership: the fds a worker thread got from the addon and
 * did not close are closed when the worker ends (terminated or exiting), and
 * only those: a number the worker closed and another thread reused stays open.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { native } from '../../src/native/addon.js';

const script = new URL('./fd-owner-child.js', import.meta.url);

function isOpen(fd: number): boolean {
  return existsSync(`/proc/self/fd/${fd}`);
}

interface Report {
  open: number[];
  closed: number;
}

async function startChild(): Promise<{ worker: Worker; report: Report }> {
  const worker = new Worker(script);
  const [report] = (await once(worker, 'message')) as [Report];
  return { worker, report };
}

describe('fd ownership across worker threads', () => {
  it('closes the fds a terminated worker still owned, not the number it released', async () => {
    const { worker, report } = await startChild();
    for (const fd of report.open) assert.equal(isOpen(fd), true, `fd ${fd} open while the worker runs`);
    const mine = native.eventfd(0, 0); // takes the lowest free number: the one the worker closed
    assert.equal(mine, report.closed);
    await worker.terminate();
    for (const fd of report.open) assert.equal(isOpen(fd), false, `fd ${fd} closed with the worker`);
    assert.equal(isOpen(mine), true);
    assert.equal(native.eventfdWrite(mine, 1n), 0); // still the eventfd this thread created
    native.close(mine);
  });

  it('closes them when the worker exits by itself too, and the peer of its socket sees EOF', async () => {
    const { worker, report } = await startChild();
    const [a] = report.open as [number];
    const peer = native.dup(report.open[1] as number); // this thread's own reference to the pair's other end
    const exited = once(worker, 'exit');
    worker.postMessage('exit');
    assert.deepEqual(await exited, [0]);
    assert.equal(isOpen(a), false);
    assert.equal(native.read(peer, new Uint8Array(1)), 0); // EOF: no other reference to `a` is left
    native.close(peer);
  });
});
