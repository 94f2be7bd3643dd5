/** `vfio-user migrate --demo`: the real binary migrates a working DMA engine between two served children. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { runCli, stderrLines } from './support.js';

interface Summary {
  outcome: string;
  reason?: string;
  downtimeMs: number;
  budgetMs: number;
  totalMs: number;
  iterations: number;
  bytes: Record<string, number>;
  arcs: { side: string; from: string; to: string; ms: number }[];
  jobs: { total: number; doneOnSource: number; doneOnDestination: number; errors: number };
  memoryVerified: boolean | null;
}

describe('vfio-user migrate --demo', () => {
  it('--downtime 2s --json: migrated within the budget, memory verified, the destination finishes the jobs', async (t) => {
    const r = await runCli(['migrate', '--demo', '--downtime', '2s', '--json'], 60_000);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '', 'no progress bar off a TTY');
    const s = JSON.parse(r.stdout) as Summary;
    t.diagnostic(`downtime ${s.downtimeMs.toFixed(2)} ms of ${s.budgetMs} ms; total ${s.totalMs.toFixed(1)} ms; ${s.iterations} iterations; jobs ${s.jobs.doneOnSource} source / ${s.jobs.doneOnDestination} destination`);
    assert.equal(s.outcome, 'migrated', s.reason);
    assert.equal(s.budgetMs, 2000);
    assert.ok(s.downtimeMs > 0 && s.downtimeMs <= s.budgetMs);
    assert.ok(s.iterations >= 1);
    assert.ok(s.bytes.precopyMemory !== undefined && s.bytes.precopyMemory >= 64 << 20);
    for (const k of ['precopyDevice', 'stopCopyMemory', 'stopCopyDevice']) assert.equal(typeof s.bytes[k], 'number', k);
    assert.ok(s.arcs.some((a) => a.side === 'destination' && a.to === 'RUNNING'));
    assert.equal(s.memoryVerified, true);
    assert.equal(s.jobs.errors, 0);
    assert.equal(s.jobs.doneOnSource + s.jobs.doneOnDestination, s.jobs.total);
  });

  it('--downtime 0ms: aborted, exit 1 with a one-line reason; the source finished the jobs', async () => {
    const r = await runCli(['migrate', '--demo', '--downtime', '0ms', '--jobs', '200', '--json'], 60_000);
    assert.equal(r.code, 1);
    const lines = stderrLines(r);
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0] ?? '', /^vfio-user: migrate: aborted: did not converge/);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.outcome, 'aborted');
    assert.equal(s.downtimeMs, 0);
    assert.equal(s.jobs.doneOnSource, 200);
    assert.equal(s.jobs.errors, 0);
  });

  it('human summary; without --demo or --from a one-line error', async () => {
    const r = await runCli(['migrate', '--demo', '--downtime', '1s', '--jobs', '100'], 60_000);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^outcome +migrated$/m);
    assert.match(r.stdout, /^downtime +[\d.]+ ms of a 1000 ms budget/m);
    assert.match(r.stdout, /destination memory equals the switch-over snapshot/);
    const bad = await runCli(['migrate']);
    assert.equal(bad.code, 1);
    assert.deepEqual(stderrLines(bad), ['vfio-user: migrate: give --from SOCKET --to SOCKET|tcp://HOST:PORT (migrate a served device and its guest RAM), or --demo']);
  });

  it('--time-limit 1ms: the hard limit aborts back to the source, which finishes the jobs', async () => {
    const r = await runCli(['migrate', '--demo', '--time-limit', '1ms', '--jobs', '100', '--json'], 60_000);
    assert.equal(r.code, 1);
    const s = JSON.parse(r.stdout) as Summary;
    assert.equal(s.outcome, 'aborted');
    assert.match(s.reason ?? '', /timed out after \d+ ms \(limit 1 ms\)/);
    assert.equal(s.jobs.doneOnSource, 100);
    assert.equal(s.jobs.errors, 0);
  });

  it('rejects bad durations and counts while parsing, one line each, before anything starts', async () => {
    for (const [args, re] of [
      [['--downtime', 'fast'], /--downtime <duration>' argument 'fast' is invalid/],
      [['--downtime', '-1ms'], /--downtime <duration>' argument '-1ms' is invalid/],
      [['--time-limit', '0'], /--time-limit <duration>' argument '0' is invalid/],
      [['--jobs', '0'], /--jobs <n>' argument '0' is invalid/],
    ] as const) {
      const r = await runCli(['migrate', '--demo', ...args]);
      assert.equal(r.code, 1, args.join(' '));
      assert.equal(stderrLines(r).length, 1, r.stderr);
      assert.match(r.stderr, re);
    }
  });
});
