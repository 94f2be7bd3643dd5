/**
 * Limits enforced within a step, not between phases: the time limit trips in
 * the middle of the full copy (a capped copy of a non-zero guest) and while a
 * request hangs; the downtime deadline trips while the source is stopped and a
 * switch-over step hangs (the VMM state capture), and the source runs again
 * without waiting for that step. Progress is reported during the full copy,
 * with bytes and a rate. Assertions are on structure (phase, step, bytes,
 * states); the times checked are bounded generously (the hung step's own
 * length), never tightly.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { migrate, type Progress } from '../../src/orchestrator/migrate.js';
import { localDestination } from '../../src/orchestrator/destination.js';
import { Abort, Limits } from '../../src/orchestrator/limits.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import { GUEST, withLocalPair, withSetup, connectTo, type Side } from './remote-fixture.js';

const withPair = (fn: (src: Side, dst: Side) => Promise<void>): Promise<void> => withLocalPair(fn, { programSource: true });

/** Fills the guest memory with a pattern in every 8-byte word (no page is zero). */
function fill(side: Side, seed: number): void {
  const v = side.memory.view(0n, GUEST);
  const words = new BigUint64Array(v.buffer, v.byteOffset, GUEST / 8);
  words.fill(BigInt(seed) * 0x0101_0101_0101_0101n + 1n);
}

/** What a hung step would take (ms): every abort must come well before it. */
const HUNG_MS = 20_000;

describe('migrate() limits within a step', () => {
  it('a time limit expires in the middle of the full copy: aborted in pre-copy, part of memory copied, source RUNNING, destination reset', (t) =>
    withPair(async (src, dst) => {
      fill(src, 3);
      const steps: Progress[] = [];
      const limit = 300;
      // 16 MiB at 4 MB/s: the full copy alone would take 4 s.
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000, timeoutMs: limit, bandwidthLimit: 4e6, onProgress: (p) => steps.push(p) });
      t.diagnostic(`limit ${limit} ms: ${report.reason}; migrate() returned after ${report.totalMs.toFixed(1)} ms (source resumed, destination reset)`);
      assert.equal(report.outcome, 'aborted', report.reason);
      assert.match(report.reason ?? '', /timed out after \d+ ms \(limit 300 ms\)/);
      assert.equal(report.phase, 'precopy');
      assert.equal(report.iterations, 0, 'no dirty round began');
      assert.ok(report.bytes.precopyMemory > 0n && report.bytes.precopyMemory < BigInt(GUEST), `${report.bytes.precopyMemory} of ${GUEST} bytes copied`);
      assert.equal(steps.filter((p) => p.phase === 'precopy').at(-1)?.step, 'full-copy', 'the abort came from within the full copy');
      assert.ok(report.totalMs < 3000, `aborted after ${report.totalMs} ms, not at the end of the 4 s copy`);
      assert.equal(report.downtimeMs, 0);
      assert.equal(report.sourceRecovery, 'running');
      assert.equal(await src.client.migrationState(), S.RUNNING);
      assert.equal(await dst.client.migrationState(), S.RUNNING);
    }));

  it('a time limit expires while a request hangs (a remote destination that never answers a flush): aborted at once, the source RUNNING', (t) =>
    withSetup(async (src, rx) => {
      const destination = await connectTo(rx.url, src);
      destination.flush = () => new Promise<void>(() => undefined);
      const outcome = rx.nextOutcome();
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 2000, timeoutMs: 500 });
      t.diagnostic(`limit 500 ms: ${report.reason}; migrate() returned after ${report.totalMs.toFixed(1)} ms`);
      assert.equal(report.outcome, 'aborted', report.reason);
      assert.match(report.reason ?? '', /timed out/);
      assert.equal(report.phase, 'precopy');
      assert.ok(report.totalMs < HUNG_MS / 2, `aborted after ${report.totalMs} ms`);
      assert.equal(await src.client.migrationState(), S.RUNNING);
      assert.equal((await outcome).outcome, 'abandoned');
      destination.close();
    }));

  it('the downtime deadline trips while the source is stopped and a switch-over step hangs: aborted in switch-over, the source resumed without waiting for the step', (t) =>
    withPair(async (src, dst) => {
      const steps: Progress[] = [];
      const budget = 300;
      const report = await migrate({
        source: src,
        destination: localDestination(dst),
        downtimeBudgetMs: budget,
        vmState: () => new Promise<Uint8Array>((resolve) => setTimeout(() => resolve(new Uint8Array(1)), HUNG_MS).unref()),
        onProgress: (p) => steps.push(p),
      });
      t.diagnostic(`budget ${budget} ms: ${report.reason}; the source was stopped ${report.downtimeMs.toFixed(1)} ms in all`);
      assert.equal(report.outcome, 'aborted', report.reason);
      assert.equal(report.phase, 'switchover');
      assert.match(report.reason ?? '', /downtime budget exceeded in VMM state: stopped [\d.]+ ms, at the deadline \(budget 300 ms/);
      assert.ok(report.downtimeMs > 0 && report.downtimeMs < HUNG_MS / 2, `the source was stopped ${report.downtimeMs} ms`);
      assert.ok(steps.some((p) => p.phase === 'switchover' && p.step === 'destination'), 'the VMM state step was reached');
      assert.equal(report.sourceRecovery, 'running');
      assert.equal(await src.client.migrationState(), S.RUNNING);
      assert.equal(await dst.client.migrationState(), S.RUNNING);
    }));

  it('an abort signal during the full copy aborts within it', () =>
    withPair(async (src, dst) => {
      fill(src, 5);
      const controller = new AbortController();
      const report = await migrate({
        source: src,
        destination: dst,
        downtimeBudgetMs: 2000,
        bandwidthLimit: 8e6,
        signal: controller.signal,
        onProgress: (p) => {
          if (p.step === 'full-copy' && p.stepBytes > 0) controller.abort(new Error('SIGTERM'));
        },
      });
      assert.equal(report.outcome, 'aborted');
      assert.match(report.reason ?? '', /interrupted \(SIGTERM\)/);
      assert.ok(report.bytes.precopyMemory < BigInt(GUEST), 'stopped before the copy ended');
      assert.equal(await src.client.migrationState(), S.RUNNING);
    }));

  it('progress is reported during the full copy: bytes rising toward the guest size, a rate, then done', () =>
    withPair(async (src, dst) => {
      fill(src, 7);
      const steps: Progress[] = [];
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000, bandwidthLimit: 40e6, onProgress: (p) => steps.push(p) });
      assert.equal(report.outcome, 'migrated', report.reason);
      const copy = steps.filter((p) => p.step === 'full-copy');
      assert.ok(copy.length >= 3, `${copy.length} reports during the full copy`);
      assert.ok(copy.every((p) => p.stepTotalBytes === GUEST && p.phase === 'precopy'));
      const bytes = copy.map((p) => Number(p.bytes.precopyMemory));
      assert.ok(bytes.every((b, i) => i === 0 || b >= (bytes[i - 1] as number)), 'bytes never go back');
      assert.ok((bytes.at(-1) as number) > (bytes[0] as number), 'bytes rise within the step');
      assert.ok(copy.some((p) => p.bytesPerSecond > 0), 'a rate');
      assert.equal(report.zeroBytes, 0n, 'a guest without zero pages');
      assert.equal(steps.at(-1)?.phase, 'done');
      assert.equal(steps.at(-1)?.bytes.precopyMemory, report.bytes.precopyMemory);
    }));
});

describe('Limits', () => {
  it('race() rejects with the time limit, and check() throws it from then on', async () => {
    const limits = new Limits({ started: performance.now(), timeoutMs: 30 });
    try {
      await assert.rejects(limits.race(new Promise(() => undefined)), (e: unknown) => e instanceof Abort && /timed out/.test(e.message));
      assert.throws(() => limits.check(), Abort);
    } finally {
      limits.dispose();
    }
  });

  it('a deadline trip not yet seen is forgotten when the deadline is disarmed; a time-limit trip is not', async () => {
    const limits = new Limits({ started: performance.now(), timeoutMs: 60_000 });
    try {
      limits.armDeadline(performance.now(), () => 'late');
      await new Promise((resolve) => setTimeout(resolve, 5));
      assert.equal(limits.tripped?.deadline, true);
      limits.disarmDeadline();
      assert.doesNotThrow(() => limits.check());
      limits.trip(new Abort('other'));
      limits.disarmDeadline();
      assert.throws(() => limits.check(), /other/);
    } finally {
      limits.dispose();
    }
  });
});
