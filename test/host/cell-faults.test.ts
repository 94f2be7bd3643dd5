/**
 * Misbehaving devices each in their own cell: only the faulty cell is hurt,
 * the others keep answering, and a dead cell leaves no fd or thread behind.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { RemoteError } from '../../src/errors.js';
import { Errno } from '../../src/protocol/errno.js';
import { baseline, openFds, runDir, settledCount, startCell, threads, u32, type TestCell } from './cell-support.js';

const BAR0 = 0;

/** The promise's error, or 'answered' (attached at once: the rejection is never unhandled). */
function settled(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => 'answered',
    (error: unknown) => error,
  );
}

describe('instance cell faults', () => {
  const run = runDir();
  let healthy: TestCell;
  let healthyClient: VfioUserClient;
  let baselineFds = 0;
  let baselineThreads = 0;

  before(async () => {
    healthy = await startCell(run.dir, 'echo', {}, [{ value: '42' }]);
    healthyClient = await VfioUserClient.connect(healthy.socket.path);
    const warm = await startCell(run.dir, 'echo');
    await warm.close();
    baselineFds = await baseline(openFds);
    baselineThreads = await baseline(threads);
  });
  after(async () => {
    healthyClient.close();
    await healthy.close();
    run.dispose();
  });

  /** The healthy cell still answers a REGION_READ. */
  async function healthyAnswers(): Promise<void> {
    assert.equal(u32(await healthyClient.regionRead(BAR0, 0n, 4)), 42);
    assert.equal(healthy.cell.alive, true);
  }

  /** After a cell died: its client saw the close, the healthy cell still answers, no fd or thread is left. */
  async function closedAndOthersFine(t: TestCell, client: VfioUserClient): Promise<void> {
    await client.closed;
    client.close();
    await healthyAnswers();
    t.socket.close();
    assert.equal(await settledCount(openFds, baselineFds), baselineFds);
    assert.ok((await settledCount(threads, baselineThreads)) <= baselineThreads, 'no thread left');
  }

  it('a region callback that throws gets an error reply; the cell and the others carry on', async () => {
    const t = await startCell(run.dir, 'throws');
    const client = await VfioUserClient.connect(t.socket.path);
    await assert.rejects(client.regionRead(BAR0, 0n, 4), (e: RemoteError) => e instanceof RemoteError && e.errno === Errno.EIO);
    assert.equal(t.cell.alive, true);
    assert.equal((await t.cell.status()).client?.pid, process.pid);
    await healthyAnswers();
    client.close();
    await t.close();
  });

  it('a callback that spins forever: the watchdog kills only that cell, its client sees a close', async () => {
    const t = await startCell(run.dir, 'spin', { watchdogMs: 400 });
    const client = await VfioUserClient.connect(t.socket.path, { timeoutMs: 60_000 });
    const died = once(t.cell, 'exit') as Promise<[string]>;
    const stuck = settled(client.regionRead(BAR0, 0n, 4));
    const [reason] = await died;
    assert.match(reason, /^stalled: no heartbeat for \d+ ms \(watchdog 400 ms\)$/);
    assert.equal((await stuck as { code?: string }).code, 'ENOTCONN'); // the connection closed under the pending request
    await client.closed;
    client.close();
    await healthyAnswers(); // answered after the kill
    assert.equal(t.cell.alive, false);
    t.socket.close();
    assert.equal(await settledCount(openFds, baselineFds), baselineFds);
    assert.ok((await settledCount(threads, baselineThreads)) <= baselineThreads, 'no thread left');
  });

  it('a callback that leaks memory: only that cell dies, out of memory', async () => {
    const t = await startCell(run.dir, 'leak', { memoryLimitMb: 24 });
    const client = await VfioUserClient.connect(t.socket.path, { timeoutMs: 60_000 });
    const died = once(t.cell, 'exit') as Promise<[string]>;
    const pending = settled(client.regionRead(BAR0, 0n, 4));
    const [reason] = await died;
    assert.match(reason, /^out of memory \(ERR_WORKER_OUT_OF_MEMORY\)/);
    assert.equal((await pending as { code?: string }).code, 'ENOTCONN');
    await closedAndOthersFine(t, client);
  });

  it('an exception thrown outside any request ends only that cell, with the error as reason', async () => {
    const t = await startCell(run.dir, 'crash');
    const client = await VfioUserClient.connect(t.socket.path, { timeoutMs: 60_000 });
    const died = once(t.cell, 'exit') as Promise<[string]>;
    void client.regionRead(BAR0, 0n, 4).catch(() => undefined); // answered, then the device's timer throws
    const [reason] = await died;
    assert.equal(reason, 'uncaught Error: a device bug outside any request');
    await closedAndOthersFine(t, client);
  });

  it('an unhandled rejection ends only that cell, with the error as reason', async () => {
    const t = await startCell(run.dir, 'reject');
    const client = await VfioUserClient.connect(t.socket.path, { timeoutMs: 60_000 });
    const died = once(t.cell, 'exit') as Promise<[string]>;
    void client.regionRead(BAR0, 0n, 4).catch(() => undefined);
    const [reason] = await died;
    assert.equal(reason, 'uncaught RangeError: a rejection nobody handles');
    await client.closed;
    client.close();
    await healthyAnswers();
    t.socket.close();
  });

  it('a forced stop whose device reset spins: the watchdog ends it, the stop completes, no exit event', async () => {
    const t = await startCell(run.dir, 'reset-spins', { watchdogMs: 400 });
    const client = await VfioUserClient.connect(t.socket.path, { timeoutMs: 60_000 });
    const deaths: string[] = [];
    t.cell.on('exit', (reason) => deaths.push(reason));
    await t.cell.stop({ force: true });
    assert.match(t.cell.endReason ?? '', /^stalled: no heartbeat/);
    assert.deepEqual(deaths, []);
    await closedAndOthersFine(t, client);
  });
});
