/**
 * A remote migration's link broken at every phase — pre-copy memory, the
 * switch-over (destination STOP), stop-copy (device stream), resume
 * (destination RUNNING), the commit not yet sent — and the budget exceeded:
 * the source runs again with its state and memory intact, the receiver resets
 * its device and releases the side. A commit whose reply is lost is resolved
 * by asking the receiver (commit-resolution.test.ts has the whole matrix).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConnectionClosedError } from '../../src/errors.js';
import { migrate } from '../../src/orchestrator/migrate.js';
import { RemoteDestination } from '../../src/orchestrator/remote.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import { GUEST, assertSourceKeepsWorking, prepareFaultRun, saveState, withSetup } from './remote-fixture.js';

type Cut = (d: RemoteDestination) => void;

/** Closes the channel the first time `method` is called with a matching argument (before it runs). */
function cutAt(method: 'writeMemory' | 'writeZeroes' | 'writeDeviceData' | 'setMigrationState' | 'complete', when: (arg: unknown) => boolean = () => true): Cut {
  return (d) => {
    const original = (d[method] as (...a: unknown[]) => Promise<void>).bind(d);
    let done = false;
    (d as unknown as Record<string, unknown>)[method] = async (...args: unknown[]) => {
      if (!done && when(args[0])) {
        done = true;
        d.close();
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      return original(...args);
    };
  };
}

const cases: Array<{ phase: string; cut: Cut; outcome: 'failed' | 'aborted' }> = [
  // 4 MiB into the full copy, sent as data or as a zero-page marker.
  { phase: 'pre-copy (guest memory)', cut: (d) => (['writeMemory', 'writeZeroes'] as const).forEach((m) => cutAt(m, (gpa) => gpa === 4n << 20n)(d)), outcome: 'failed' },
  { phase: 'stop-copy (device stream)', cut: cutAt('writeDeviceData'), outcome: 'failed' },
  { phase: 'switch-over (destination STOP)', cut: cutAt('setMigrationState', (s) => s === S.STOP), outcome: 'failed' },
  { phase: 'resume (destination RUNNING)', cut: cutAt('setMigrationState', (s) => s === S.RUNNING), outcome: 'failed' },
  { phase: 'commit not sent', cut: cutAt('complete'), outcome: 'failed' },
];

describe('remote migration faults at every phase', () => {
  for (const c of cases) {
    it(`link lost at ${c.phase}: source RUNNING and intact, destination reset and released`, () =>
      withSetup(async (src, rx) => {
        const { before, destination, outcome } = await prepareFaultRun(src, rx);
        c.cut(destination);
        const report = await migrate({ source: src, destination, downtimeBudgetMs: 5000 });
        assert.equal(report.outcome, c.outcome, report.reason);
        assert.equal(report.sourceRecovery, 'running');
        await assertSourceKeepsWorking(src, rx, await outcome, before);
      }));
  }

  it('budget that never fits (remote): aborted after the iteration limit, source RUNNING, destination reset', () =>
    withSetup(async (src, rx) => {
      const { before, destination, outcome } = await prepareFaultRun(src, rx);
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 0.001, maxPrecopyIterations: 2 });
      assert.equal(report.outcome, 'aborted');
      assert.match(report.reason ?? '', /did not converge in 2 pre-copy iterations/);
      assert.equal(report.downtimeMs, 0, 'the source never stopped');
      await assertSourceKeepsWorking(src, rx, await outcome, before);
    }));

  it('budget exceeded in stop-copy (a slow link for the device stream): aborted, source RUNNING, destination reset', () =>
    withSetup(async (src, rx) => {
      const { before, destination, outcome } = await prepareFaultRun(src, rx);
      const write = destination.writeDeviceData.bind(destination);
      // Each write of the device stream takes 3 s, far past a budget that leaves a loaded machine room for the rest.
      destination.writeDeviceData = async (data) => {
        await new Promise((resolve) => setTimeout(resolve, 3000));
        return write(data);
      };
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 500 });
      assert.equal(report.outcome, 'aborted', report.reason);
      assert.match(report.reason ?? '', /downtime budget exceeded in device stream/);
      assert.ok(report.downtimeMs > 0 && report.downtimeMs < 3000, `the source was stopped, then resumed without waiting for the slow write (${report.downtimeMs} ms)`);
      await assertSourceKeepsWorking(src, rx, await outcome, before);
    }));

  it('the commit reply lost: the sender asks the receiver, which committed: migrated, the source stopped for good with its state intact', () =>
    withSetup(async (src, rx) => {
      const { before, destination, outcome } = await prepareFaultRun(src, rx);
      const complete = destination.complete.bind(destination);
      destination.complete = async () => {
        await complete();
        destination.close();
        throw new ConnectionClosedError('the reply was lost');
      };
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 5000 });
      assert.equal(report.outcome, 'migrated', report.reason);
      assert.equal(report.phase, 'done');
      assert.match(report.resolution ?? '', new RegExp(`the receiver confirmed migration ${destination.migrationId} committed`));
      assert.equal((await outcome).outcome, 'committed');
      assert.equal(await src.client.migrationState(), S.STOP, 'the source left STOP_COPY for STOP, never RUNNING');
      assert.deepEqual(await saveState(src.engine), before.state);
      assert.ok(Buffer.from(src.memory.read(0n, GUEST)).equals(before.memory));
      assert.equal(await rx.last?.client.migrationState(), S.RUNNING, 'the destination runs');
      destination.close();
    }));
});
