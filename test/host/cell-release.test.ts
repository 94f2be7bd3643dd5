/**
 * Stopping a cell with a client attached: release requests on the client's REQ eventfd (IRQ index 4), then forced
 * at the timeout (the kernel's vfio_unregister_group_dev + device request IRQ).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { Interrupts } from '../../src/client/interrupts.js';
import { createEventFd, native } from '../../src/native/addon.js';
import { IrqIndex, IrqSetFlags } from '../../src/protocol/constants.js';
import type { Logger } from '../../src/log.js';
import { openFds, runDir, settledCount, startCell, u32, warmFdBaseline } from './cell-support.js';

const BAR0 = 0;
const TRIGGER_EVENTFD = IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER;

/** A logger that keeps the objects of its info/warn lines that carry `audit`. */
function auditLogger(): { logger: Logger; audits: Record<string, unknown>[] } {
  const audits: Record<string, unknown>[] = [];
  const keep = (obj: object): void => {
    if ('audit' in obj) audits.push({ ...obj });
  };
  const logger: Logger = { error: keep, warn: keep, info: keep, debug: () => undefined, child: () => logger };
  return { logger, audits };
}

/** Registers `efd` as the client's REQ eventfd (the server gets its own copy). */
async function registerReq(client: VfioUserClient, efd: number): Promise<void> {
  await client.setIrqs({ index: IrqIndex.REQ, start: 0, count: 1, flags: TRIGGER_EVENTFD }, [efd]);
}

describe('instance cell: stop with release requests', () => {
  const run = runDir();
  let baselineFds = 0;

  before(async () => {
    baselineFds = await warmFdBaseline(run.dir);
  });
  after(() => run.dispose());

  it('a client that releases the device when asked: stop ends "released", not forced', async () => {
    const { logger, audits } = auditLogger();
    const t = await startCell(run.dir, 'echo', { logger });
    const client = await VfioUserClient.connect(t.socket.path);
    const req = await Interrupts.enable(client, IrqIndex.REQ);
    req.once('interrupt', () => client.close()); // a cooperating VMM: unplug, close
    const counts: number[] = [];
    t.cell.on('release-requested', (count, delivered) => void (delivered && counts.push(count)));
    const outcome = await t.cell.stop({ timeoutMs: 30_000, intervalMs: 20_000 });
    assert.equal(outcome.release, 'released');
    assert.equal(outcome.requests, 1);
    assert.equal(outcome.delivered, true);
    assert.deepEqual(counts, [1]);
    assert.ok(outcome.waitedMs < 30_000);
    assert.equal(t.cell.alive, false);
    assert.deepEqual(
      audits.map((a) => [a['event'], a['audit']]),
      [
        ['audit', 'release-requested'],
        ['audit', 'released'],
      ],
    );
    t.socket.close();
  });

  it('a client that ignores the requests is asked again with an increasing count, then forced at the timeout', async () => {
    const { logger, audits } = auditLogger();
    const t = await startCell(run.dir, 'echo', { logger });
    const client = await VfioUserClient.connect(t.socket.path);
    const efd = createEventFd();
    try {
      await registerReq(client, efd);
      const counts: number[] = [];
      t.cell.on('release-requested', (count) => counts.push(count));
      const outcome = await t.cell.stop({ timeoutMs: 1500, intervalMs: 100 });
      assert.equal(outcome.release, 'forced');
      assert.ok(outcome.requests >= 2, `asked ${outcome.requests} times`);
      assert.equal(outcome.delivered, true);
      assert.ok(outcome.waitedMs >= 1500, `waited ${outcome.waitedMs} ms`);
      assert.deepEqual(
        counts,
        Array.from({ length: outcome.requests }, (_, i) => i + 1),
      );
      assert.equal(native.eventfdRead(efd), BigInt(outcome.requests), 'every request signalled the REQ eventfd once');
      await client.closed; // the forced stop closed the session
      const forced = audits.find((a) => a['audit'] === 'forced');
      assert.equal(forced?.['requests'], outcome.requests);
    } finally {
      native.close(efd);
      client.close();
    }
    t.socket.close();
  });

  it('a client that never registered a REQ eventfd cannot be asked: forced at the timeout, the audit says so', async () => {
    const { logger, audits } = auditLogger();
    const t = await startCell(run.dir, 'echo', { logger });
    const client = await VfioUserClient.connect(t.socket.path);
    const delivered: boolean[] = [];
    t.cell.on('release-requested', (_count, d) => delivered.push(d));
    const outcome = await t.cell.stop({ timeoutMs: 300, intervalMs: 100 });
    assert.equal(outcome.release, 'forced');
    assert.equal(outcome.delivered, false);
    assert.ok(outcome.requests >= 1);
    assert.ok(delivered.length >= 1 && delivered.every((d) => !d), 'no request was delivered');
    assert.equal(audits.find((a) => a['audit'] === 'release-requested')?.['delivered'], false);
    await client.closed;
    client.close();
    t.socket.close();
  });

  it('no client: the stop is idle, nothing asked; force with a client: forced at once', async () => {
    const idle = await startCell(run.dir, 'echo');
    assert.deepEqual(await idle.cell.stop({ timeoutMs: 5000 }), { release: 'idle', requests: 0, delivered: false, waitedMs: 0 });
    idle.socket.close();
    const busy = await startCell(run.dir, 'echo');
    const client = await VfioUserClient.connect(busy.socket.path);
    const efd = createEventFd();
    try {
      await registerReq(client, efd);
      assert.deepEqual(await busy.cell.stop({ force: true, timeoutMs: 60_000 }), { release: 'forced', requests: 0, delivered: false, waitedMs: 0 });
      assert.equal(native.eventfdRead(efd), -11, 'never signalled (EAGAIN)');
    } finally {
      native.close(efd);
      client.close();
    }
    busy.socket.close();
  });

  it('while the release wait runs, status is answered and a new client waits in the backlog for the next cell', async () => {
    const t = await startCell(run.dir, 'echo', {}, [{ value: '5' }]);
    const client = await VfioUserClient.connect(t.socket.path);
    const stopping = t.cell.stop({ timeoutMs: 60_000, intervalMs: 100 });
    await new Promise<void>((resolve) => t.cell.once('release-requested', () => resolve()));
    assert.equal((await t.cell.status()).client?.pid, process.pid);
    const waiting = VfioUserClient.connect(t.socket.path, { connectTimeoutMs: 30_000, timeoutMs: 30_000 }); // not accepted by the stopping cell
    await new Promise<void>((resolve) => t.cell.on('release-requested', (count) => count === 3 && resolve())); // still asking
    await t.cell.stop({ force: true });
    assert.equal((await stopping).release, 'forced');
    client.close();
    const { InstanceCell } = await import('../../src/host/cell.js');
    const next = await InstanceCell.start({ ...t.cell.spec, attrs: [{ value: '6' }] });
    const second = await waiting;
    assert.equal(u32(await second.regionRead(BAR0, 0n, 4)), 6, 'served by the next cell');
    second.close();
    await next.terminate();
    t.socket.close();
  });

  it('a forced stop during the release wait cuts it short: both stops end "forced"', async () => {
    const { logger, audits } = auditLogger();
    const t = await startCell(run.dir, 'echo', { logger });
    const client = await VfioUserClient.connect(t.socket.path);
    const efd = createEventFd();
    try {
      await registerReq(client, efd);
      const patient = t.cell.stop({ timeoutMs: 600_000, intervalMs: 60_000 });
      await new Promise<void>((resolve) => t.cell.once('release-requested', () => resolve()));
      const [first, second] = await Promise.all([patient, t.cell.stop({ force: true })]);
      assert.deepEqual(first, second);
      assert.equal(first.release, 'forced');
      assert.equal(first.requests, 1);
      assert.ok(first.waitedMs < 600_000);
      await client.closed;
      assert.equal(audits.find((a) => a['audit'] === 'forced')?.['reason'], 'forced by request');
    } finally {
      native.close(efd);
      client.close();
    }
    t.socket.close();
  });

  it('rejects bad stop options with EINVAL and keeps serving', async () => {
    const t = await startCell(run.dir, 'echo');
    await assert.rejects(t.cell.stop({ timeoutMs: -1 }), { errno: 22 });
    await assert.rejects(t.cell.stop({ timeoutMs: 100, intervalMs: 0 }), { errno: 22 });
    assert.equal(t.cell.alive, true);
    await t.close();
  });

  it('leaves no fd behind', async () => {
    assert.equal(await settledCount(openFds, baselineFds), baselineFds);
  });
});
