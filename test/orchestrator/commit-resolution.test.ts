/**
 * Issue 11 finding 8, in process: a remote migration interrupted at every
 * phase — the receiver shut down (its SIGTERM path), the sender aborted (its
 * SIGTERM path), the commit's reply lost with the receiver committed, not
 * committed, or unreachable — ends with the device running on exactly one
 * side, and both sides reporting the outcome and the phase. The receiver
 * answers `outcome` by migration id, and the question fences a migration
 * still in progress.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { ConnectionClosedError } from '../../src/errors.js';
import { migrate } from '../../src/orchestrator/migrate.js';
import { RemoteDestination } from '../../src/orchestrator/remote.js';
import type { ReceiverOptions } from '../../src/orchestrator/receiver.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { GUEST, IOVA, assertSourceKeepsWorking, prepareFaultRun, program, saveState, withSetup, type Receiving, type Side } from './remote-fixture.js';

/** The device runs on exactly one side: the source (RUNNING) xor the receiver's device (committed, RUNNING). */
async function assertRunsOnce(src: Side, rx: Receiving, committed: boolean): Promise<void> {
  const source = await src.client.migrationState();
  if (committed) {
    assert.notEqual(source, S.RUNNING, 'the source must not run once the destination committed');
    assert.equal(await rx.last?.client.migrationState(), S.RUNNING, 'the destination runs');
  } else {
    assert.equal(source, S.RUNNING, 'the source runs again');
  }
}

/** Receiver options whose hook `at` runs `fn` once (a deterministic fault point). */
function hookAt(at: 'beforeCommit' | 'afterCommit', fn: () => void | Promise<void>): Partial<ReceiverOptions> {
  return { [at]: async () => fn() };
}

describe('commit resolution and shutdown at every phase (in process)', { concurrency: 4 }, () => {
  const phases: Array<{ phase: 'precopy' | 'switchover' | 'commit'; arm: (d: RemoteDestination, fire: () => void) => void }> = [
    // At 4 MiB of the full copy, as data or as a zero-page marker, whichever it is.
    { phase: 'precopy', arm: (d, fire) => (['writeMemory', 'writeZeroes'] as const).forEach((m) => wrapOnce(d, m, (gpa) => gpa === 4n << 20n, fire)) },
    { phase: 'switchover', arm: (d, fire) => wrapOnce(d, 'writeDeviceData', () => true, fire) },
    { phase: 'commit', arm: (d, fire) => wrapOnce(d, 'complete', () => true, fire) },
  ];

  for (const p of phases) {
    it(`receiver shut down (SIGTERM) at ${p.phase}: abandoned there, the sender told, the source RUNNING`, () => {
      let receiving: Receiving | undefined;
      return withSetup(async (src, rx) => {
        receiving = rx;
        const { before, destination, outcome } = await prepareFaultRun(src, rx);
        p.arm(destination, () => {
          const decided = rx.receiver.shutdown('SIGTERM');
          assert.equal(decided?.outcome, 'abandoned');
        });
        const report = await migrate({ source: src, destination, downtimeBudgetMs: 5000 });
        const received = await outcome;
        assert.equal(report.outcome, 'failed', report.reason);
        assert.equal(report.sourceRecovery, 'running');
        assert.equal(report.migrationId, destination.migrationId);
        assert.equal(received.migrationId, destination.migrationId);
        assert.match(received.reason ?? '', /SIGTERM/);
        if (p.phase === 'commit') {
          assert.equal(report.phase, 'commit');
          assert.equal(received.phase, 'commit');
        } else {
          assert.equal(report.phase, p.phase === 'precopy' ? 'precopy' : 'switchover');
          assert.equal(received.phase, 'precopy', 'the receiver had not been told STOP yet');
        }
        assert.match(report.reason ?? '', /receiver abandoned migration/);
        await assertSourceKeepsWorking(src, rx, received, before);
        assert.equal(rx.receiver.outcomeOf(destination.migrationId).outcome, 'abandoned');
      }).finally(() => assert.ok(receiving));
    });

    it(`sender aborted (SIGTERM) at ${p.phase === 'commit' ? 'destination RUNNING, before the commit' : p.phase}: aborted, the receiver abandoned, the source RUNNING`, () =>
      withSetup(async (src, rx) => {
        const { before, destination, outcome } = await prepareFaultRun(src, rx);
        const controller = new AbortController();
        if (p.phase === 'commit') wrapOnce(destination, 'setMigrationState', (s) => s === S.RUNNING, () => controller.abort(new Error('SIGTERM')));
        else p.arm(destination, () => controller.abort(new Error('SIGTERM')));
        const report = await migrate({ source: src, destination, downtimeBudgetMs: 5000, signal: controller.signal });
        assert.equal(report.outcome, 'aborted', report.reason);
        assert.match(report.reason ?? '', /interrupted \(SIGTERM\)/);
        assert.equal(report.phase, p.phase === 'precopy' ? 'precopy' : 'switchover');
        const received = await outcome;
        assert.equal(received.outcome, 'abandoned');
        await assertSourceKeepsWorking(src, rx, received, before);
      }));
  }

  it('receiver shut down after the commit: nothing torn down, the sender migrated, the destination runs', () => {
    const box: { rx?: Receiving } = {};
    return withSetup(async (src, rx) => {
      box.rx = rx;
      const { destination, outcome } = await prepareFaultRun(src, rx);
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 5000 });
      assert.equal(report.outcome, 'migrated', report.reason);
      assert.equal(report.phase, 'done');
      assert.equal((await outcome).outcome, 'committed');
      destination.close();
      await assertRunsOnce(src, rx, true);
    }, hookAt('afterCommit', () => assert.equal(box.rx?.receiver.shutdown('SIGTERM'), undefined, 'no migration in progress: the committed one is not touched')));
  });

  it('the commit reply lost, the receiver never got the commit: the question fences it, abandoned, the source RUNNING', () =>
    withSetup(async (src, rx) => {
      const { before, destination, outcome } = await prepareFaultRun(src, rx);
      const holdChannel = destination.complete.bind(destination);
      destination.complete = async () => {
        void holdChannel; // the commit never leaves; the link looks lost to the sender only
        throw new ConnectionClosedError('the link was lost in the commit round trip');
      };
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 5000 });
      assert.equal(report.outcome, 'failed');
      assert.equal(report.sourceRecovery, 'running');
      assert.equal(report.phase, 'commit');
      assert.match(report.reason ?? '', /the receiver abandoned migration .* before committing \(its phase commit: the sender lost the link/);
      await assertSourceKeepsWorking(src, rx, await outcome, before);
    }));

  it('the commit reply lost and the receiver unreachable: the source held, intact, until migrate-resolve asks', () => {
    const box: { rx?: Receiving } = {};
    return withSetup(async (src, rx) => {
      box.rx = rx;
      await program(src);
      const before = { memory: src.memory.read(0n, GUEST), state: await saveState(src.engine) };
      const destination = await RemoteDestination.connect(rx.url, { memory: { size: src.memory.size, iova: IOVA }, resolveTimeoutMs: 300 });
      const complete = destination.complete.bind(destination);
      destination.complete = async () => {
        await complete();
        destination.close();
        throw new ConnectionClosedError('the reply was lost');
      };
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 5000 });
      assert.equal(report.outcome, 'failed');
      assert.equal(report.sourceRecovery, 'held');
      assert.equal(report.phase, 'commit');
      assert.match(report.reason ?? '', new RegExp(`vfio-user migrate-resolve --to ${rx.url} --id ${destination.migrationId}`));
      assert.equal(await src.client.migrationState(), S.STOP_COPY, 'held');
      assert.deepEqual(await saveState(src.engine), before.state);
      assert.ok(Buffer.from(src.memory.read(0n, GUEST)).equals(before.memory));
      assert.equal(rx.receiver.outcomeOf(destination.migrationId).outcome, 'committed', 'what the operator is told');
      await assertRunsOnce(src, rx, true);
    }, hookAt('afterCommit', () => box.rx?.receiver.close()));
  });

  it('outcome by id: unknown for a stranger, abandoned (fenced) for one in progress; a used id is refused EEXIST', () =>
    withSetup(async (src, rx) => {
      await program(src);
      assert.equal((await RemoteDestination.queryOutcome(rx.url, 'never-seen')).outcome, 'unknown');
      const destination = await RemoteDestination.connect(rx.url, { memory: { size: src.memory.size, iova: IOVA }, migrationId: 'mig-1' });
      const outcome = rx.nextOutcome();
      assert.equal(rx.receiver.outcomeOf('mig-1').outcome, 'in-progress');
      const answer = await RemoteDestination.queryOutcome(rx.url, 'mig-1');
      assert.deepEqual({ outcome: answer.outcome, phase: answer.phase }, { outcome: 'abandoned', phase: 'precopy' });
      assert.equal((await outcome).outcome, 'abandoned');
      await assert.rejects(destination.describe(), /abandoned migration mig-1/);
      destination.close();
      await assert.rejects(RemoteDestination.connect(rx.url, { memory: { size: src.memory.size, iova: IOVA }, migrationId: 'mig-1' }), (e: Error & { errno?: number }) => e.errno === Errno.EEXIST);
      await assert.rejects(RemoteDestination.queryOutcome(rx.url, 'bad id!'), /not a migration id/);
      const c = await VfioUserClient.connect(rx.served.path);
      try {
        assert.equal(await c.migrationState(), S.RUNNING, 'the fenced destination was reset');
      } finally {
        c.close();
      }
    }));

  it('the receiver lost before the migration starts (the sender warming up): a failed report, no uncaught error', () =>
    withSetup(async (src, rx) => {
      await program(src);
      const unhandled: unknown[] = [];
      const onUnhandled = (e: unknown): void => void unhandled.push(e);
      process.on('unhandledRejection', onUnhandled);
      try {
        const destination = await RemoteDestination.connect(rx.url, { memory: { size: src.memory.size, iova: IOVA } });
        const outcome = rx.nextOutcome();
        rx.receiver.shutdown('SIGTERM');
        assert.equal((await outcome).outcome, 'abandoned');
        await new Promise((resolve) => setTimeout(resolve, 20));
        const report = await migrate({ source: src, destination, downtimeBudgetMs: 5000 });
        assert.equal(report.outcome, 'failed');
        assert.equal(report.sourceRecovery, 'running');
        assert.match(report.reason ?? '', /receiver abandoned migration/);
        assert.equal(await src.client.migrationState(), S.RUNNING);
        destination.close();
        await new Promise((resolve) => setImmediate(resolve));
        assert.deepEqual(unhandled, []);
      } finally {
        process.off('unhandledRejection', onUnhandled);
      }
    }));
});

/** Runs `fire` once, the first time `method` is called with a matching argument, before the call. */
function wrapOnce(d: RemoteDestination, method: 'writeMemory' | 'writeZeroes' | 'writeDeviceData' | 'setMigrationState' | 'complete', when: (arg: unknown) => boolean, fire: () => void): void {
  const original = (d[method] as (...a: unknown[]) => Promise<void>).bind(d);
  let done = false;
  (d as unknown as Record<string, unknown>)[method] = async (...args: unknown[]) => {
    if (!done && when(args[0])) {
      done = true;
      fire();
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return original(...args);
  };
}
