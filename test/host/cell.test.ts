import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { VfioUserError } from '../../src/errors.js';
import { Errno } from '../../src/protocol/errno.js';
import type { InstanceClient } from '../../src/host/types.js';
import type { Logger } from '../../src/log.js';
import { baseline, openFds, runDir, settledCount, startCell, threads, u32 } from './cell-support.js';

const BAR0 = 0;

describe('instance cell', () => {
  const run = runDir();
  let baselineFds = 0;
  let baselineThreads = 0;

  before(async () => {
    // Warm up: the first cell loads modules and libuv's thread pool in this thread too.
    const warm = await startCell(run.dir, 'echo');
    await warm.close();
    baselineFds = await baseline(openFds);
    baselineThreads = await baseline(threads);
  });
  after(() => run.dispose());

  it('serves the device in a worker: REGION_READ/REGION_WRITE, attribute applied', async () => {
    const t = await startCell(run.dir, 'echo', {}, [{ value: '1234' }]);
    assert.equal(statSync(t.socket.path).mode & 0o777, 0o600);
    const events: (InstanceClient | undefined)[] = [];
    t.cell.on('client', (c) => events.push(c));
    const client = await VfioUserClient.connect(t.socket.path);
    try {
      assert.equal(u32(await client.regionRead(BAR0, 0n, 4)), 1234);
      await client.regionWrite(BAR0, 0n, new Uint8Array([0x78, 0x56, 0x34, 0x12]));
      assert.equal(u32(await client.regionRead(BAR0, 0n, 4)), 0x12345678);
      const status = await t.cell.status();
      assert.equal(status.client?.pid, process.pid);
      assert.equal(status.client?.uid, process.getuid?.());
      assert.equal(typeof status.client?.since, 'number');
      assert.equal(status.migrationState, undefined); // the echo device has no migration
    } finally {
      client.close();
    }
    await new Promise<void>((resolve) => t.cell.once('client', () => resolve())); // the session's end
    assert.deepEqual(
      events.map((c) => c?.pid),
      [process.pid, undefined],
    );
    await t.close();
    assert.equal(existsSync(t.socket.path), false);
  });

  it('a forced stop closes a connected client at once, without release requests; a second (unforced) stop is refused EBUSY', async () => {
    const t = await startCell(run.dir, 'echo');
    const client = await VfioUserClient.connect(t.socket.path);
    assert.equal(u32(await client.regionRead(BAR0, 0n, 4)), 0); // served
    const requests: number[] = [];
    t.cell.on('release-requested', (count) => requests.push(count));
    const stopping = t.cell.stop({ force: true });
    await assert.rejects(t.cell.stop(), (e: VfioUserError) => e.errno === Errno.EBUSY && /already stopping/.test(e.message));
    assert.deepEqual(await stopping, { release: 'forced', requests: 0, delivered: false, waitedMs: 0 });
    assert.deepEqual(requests, []);
    assert.equal(t.cell.alive, false);
    await client.closed; // the client sees its connection end
    await assert.rejects(client.regionRead(BAR0, 0n, 4));
    await assert.rejects(t.cell.status(), (e: VfioUserError) => e.errno === Errno.ENODEV);
    t.socket.close();
  });

  it('keeps the socket across a stop: a client connecting meanwhile is served by the next cell', async () => {
    const first = await startCell(run.dir, 'echo');
    assert.deepEqual(await first.cell.stop(), { release: 'idle', requests: 0, delivered: false, waitedMs: 0 }); // no client: nothing to ask
    // Nobody accepts now, but the host's listening fd keeps the socket: the connection waits in the backlog.
    const connecting = VfioUserClient.connect(first.socket.path);
    const { InstanceCell } = await import('../../src/host/cell.js');
    const spec = { ...first.cell.spec, attrs: [{ value: '7' }] };
    const second = await InstanceCell.start(spec);
    const client = await connecting;
    assert.equal(u32(await client.regionRead(BAR0, 0n, 4)), 7);
    client.close();
    await second.terminate();
    first.socket.close();
  });

  it('a stop whose parent dispose throws still stops, with a warning logged', async () => {
    const warnings: string[] = [];
    const logger: Logger = {
      error: () => undefined,
      warn: (obj: object, msg?: string) => void warnings.push(`${msg ?? ''}: ${(obj as { reason?: string }).reason ?? ''}`),
      info: () => undefined,
      debug: () => undefined,
      child: () => logger,
    };
    const t = await startCell(run.dir, 'dispose-fails', { logger });
    await t.cell.stop();
    assert.equal(t.cell.alive, false);
    assert.deepEqual(warnings, ["instance stopped with a problem: the parent's dispose failed: cannot give the resources back"]);
    t.socket.close();
  });

  it('a create or attribute failure rejects start with its errno, leaving no fd or thread', async () => {
    await assert.rejects(startCell(run.dir, 'create-fails'), (e: VfioUserError) => e.errno === Errno.ENOSPC && /no room/.test(e.message));
    await assert.rejects(startCell(run.dir, 'echo', {}, [{ value: 'x' }]), (e: VfioUserError) => e.errno === Errno.ERANGE && /attribute 0 value/.test(e.message));
    await assert.rejects(startCell(run.dir, 'echo', {}, [{ colour: 'blue' }]), (e: VfioUserError) => e.errno === Errno.EINVAL && /colour/.test(e.message));
    await assert.rejects(startCell(run.dir, 'no-such-type'), (e: VfioUserError) => e.errno === Errno.ENOENT);
    assert.equal(await settledCount(openFds, baselineFds), baselineFds);
    assert.ok((await settledCount(threads, baselineThreads)) <= baselineThreads, 'no thread left');
  });

  it('a create that spins or never resolves: start rejects ETIMEDOUT (watchdog, start timeout), nothing left', async () => {
    await assert.rejects(startCell(run.dir, 'create-spins', { watchdogMs: 300 }), (e: VfioUserError) => e.errno === Errno.ETIMEDOUT && /stalled: no heartbeat/.test(e.message));
    await assert.rejects(startCell(run.dir, 'create-hangs', { startTimeoutMs: 300 }), (e: VfioUserError) => e.errno === Errno.ETIMEDOUT && /not served within 300 ms/.test(e.message));
    assert.equal(await settledCount(openFds, baselineFds), baselineFds);
    assert.ok((await settledCount(threads, baselineThreads)) <= baselineThreads, 'no thread left');
  });

  it('leaves the fd count where it was after clients, eventfds and memfds', async () => {
    const t = await startCell(run.dir, 'echo');
    const client = await VfioUserClient.connect(t.socket.path);
    await client.regionRead(BAR0, 0n, 4);
    await t.close(); // terminate, with the session open
    await client.closed;
    client.close();
    assert.equal(await settledCount(openFds, baselineFds), baselineFds);
    assert.ok((await settledCount(threads, baselineThreads)) <= baselineThreads, 'no thread left');
  });
});
