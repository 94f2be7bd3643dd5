/**
 * The live-migration orchestrator on two served DMA engines: a migration
 * while a batch runs (the destination finishes it, guest memory and device
 * state arrive whole), an impossible budget (aborted, the source keeps
 * working, the destination reset), a destination lost mid-pre-copy, and the
 * compatibility check.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DESCRIPTOR_SIZE, DescriptorStatus, decodeResult } from '../../src/devices/dma-descriptor.js';
import { fnv1a32 } from '../../src/devices/fnv1a.js';
import { migrate, MigrationCompatibilityError, type Progress } from '../../src/orchestrator/migrate.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import { post as postJobs, program, withLocalPair, type Side } from './remote-fixture.js';

const MiB = 1 << 20;
const GUEST = 32 * MiB;
const SRC = 1 * MiB;
const DST = 16 * MiB;
const LEN = 256 * 1024;

const withPair = (fn: (src: Side, dst: Side) => Promise<void>, dstSize = GUEST): Promise<void> => withLocalPair(fn, { size: GUEST, dstSize });

/** Posts copy jobs `from … to-1` (job i: SRC + i·LEN → DST + i·LEN, seeded data) and rings the doorbell. */
const post = (side: Side, from: number, to: number): Promise<Uint8Array[]> => postJobs(side, from, to, { src: SRC, dst: DST, len: LEN, seed: 100 });

function assertJobsDone(side: Side, data: Uint8Array[], from: number): void {
  data.forEach((bytes, n) => {
    const i = from + n;
    assert.deepEqual(decodeResult(side.memory.read(BigInt(i * DESCRIPTOR_SIZE), DESCRIPTOR_SIZE)), { checksum: fnv1a32(bytes), status: DescriptorStatus.DONE }, `descriptor ${i}`);
    assert.ok(Buffer.from(side.memory.read(BigInt(DST + i * LEN), LEN)).equals(bytes), `bytes of job ${i}`);
  });
}

const save = (side: Side): Promise<Uint8Array> | Uint8Array => {
  const m = side.engine.device.definition.migration;
  assert.ok(m);
  return m.save();
};

describe('migrate()', () => {
  it('migrates a working engine and its guest memory within the budget; the destination finishes the batch and takes new jobs', async (t) => {
    await withPair(async (src, dst) => {
      await program(src);
      const data = await post(src, 0, 56);
      while (src.engine.engineState().completed < 2) await new Promise((resolve) => setImmediate(resolve));
      const progress: Progress[] = [];
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000, onProgress: (p) => progress.push(p) });
      t.diagnostic(`downtime ${report.downtimeMs.toFixed(2)} ms (projected ${report.projectedDowntimeMs.toFixed(2)}) of 2000 ms budget; total ${report.totalMs.toFixed(1)} ms; ${report.iterations} iterations; bytes ${JSON.stringify(report.bytes, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v))}`);
      assert.equal(report.outcome, 'migrated', report.reason);
      assert.ok(report.downtimeMs <= 2000);
      assert.equal(report.bytes.precopyMemory >= BigInt(GUEST), true);
      assert.ok(report.bytes.stopCopyDevice > 0n);
      assert.ok(progress.some((p) => p.phase === 'precopy') && progress.at(-1)?.phase === 'done');
      assert.equal(await dst.client.migrationState(), S.RUNNING);
      assert.equal(await src.client.migrationState(), S.STOP);
      const k = src.engine.engineState().completed;
      assert.ok(k >= 2 && k <= 56, `${k} jobs done on the source`);
      t.diagnostic(`${k} of 56 jobs done on the source`);
      await dst.engine.idle();
      assert.equal(dst.engine.engineState().completed, 56, 'the destination finished the batch');
      assertJobsDone(dst, data, 0);
      assert.ok(Buffer.from(dst.memory.read(BigInt(SRC), 56 * LEN)).equals(src.memory.read(BigInt(SRC), 56 * LEN)), 'job sources');
      const more = await post(dst, 56, 60);
      await dst.engine.idle();
      assertJobsDone(dst, more, 56);
    });
  });

  it('an idle engine: guest memory and device state equal on both sides', async () => {
    await withPair(async (src, dst) => {
      await program(src);
      await post(src, 0, 8);
      await src.engine.idle();
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000 });
      assert.equal(report.outcome, 'migrated', report.reason);
      assert.deepEqual(await save(dst), await save(src));
      assert.ok(Buffer.from(dst.memory.read(0n, GUEST)).equals(src.memory.read(0n, GUEST)), 'guest memory byte for byte');
    });
  });

  it('a 0 ms budget aborts: the source keeps RUNNING and processing, the destination is reset', async () => {
    await withPair(async (src, dst) => {
      await program(src);
      const data = await post(src, 0, 16);
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 0, maxPrecopyIterations: 5 });
      assert.equal(report.outcome, 'aborted');
      assert.match(report.reason ?? '', /did not converge/);
      assert.equal(report.sourceRecovery, 'running');
      assert.equal(report.downtimeMs, 0, 'the source never stopped');
      assert.equal(await src.client.migrationState(), S.RUNNING);
      assert.equal(await dst.client.migrationState(), S.RUNNING);
      assert.equal(dst.engine.engineState().enabled, false, 'the destination was reset');
      await src.engine.idle();
      assertJobsDone(src, data, 0);
      const more = await post(src, 16, 20);
      await src.engine.idle();
      assertJobsDone(src, more, 16);
    });
  });

  it('a destination lost mid-pre-copy: failed, the source RUNNING', async () => {
    await withPair(async (src, dst) => {
      await program(src);
      const data = await post(src, 0, 16);
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000, onProgress: (p) => p.phase === 'precopy' && dst.client.close() });
      assert.ok(report.outcome === 'failed' || report.outcome === 'aborted', report.outcome);
      assert.ok(report.reason);
      assert.equal(await src.client.migrationState(), S.RUNNING);
      await src.engine.idle();
      assertJobsDone(src, data, 0);
    });
  });

  it('refuses different guest memory sizes before changing anything', async () => {
    await withPair(async (src, dst) => {
      await assert.rejects(migrate({ source: src, destination: dst, downtimeBudgetMs: 2000 }), (e: unknown) => e instanceof MigrationCompatibilityError && /memory sizes differ/.test(e.message));
      assert.equal(await src.client.migrationState(), S.RUNNING);
      assert.equal(await dst.client.migrationState(), S.RUNNING);
    }, GUEST / 2);
  });
});
