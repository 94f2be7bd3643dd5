/**
 * Remote live migration between processes on loopback TCP with the real
 * binary: `vfio-user migrate-listen` (the receiving host: its own DMA engine,
 * or one given by --socket) and `vfio-user migrate --demo --to tcp://…` (the
 * sending host). A migration that commits is verified on both ends; a
 * receiver killed in the middle of pre-copy leaves the source running its jobs
 * to the end and the destination device in the documented state a new client
 * recovers from.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { recoverMigration } from '../../src/client/migration-recovery.js';
import { createDmaEngineDevice } from '../../src/devices/dma-engine.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import { MAIN, runCli, serve } from './support.js';

interface Listener {
  child: ChildProcess;
  url: string;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** Starts `migrate-listen --port 0 …` and waits for its `listening tcp://…` line. */
async function listen(args: string[]): Promise<Listener> {
  const child = spawn(process.execPath, [MAIN, 'migrate-listen', '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => void (stdout += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = /listening (tcp:\/\/\S+)/.exec(stderr);
      if (m?.[1]) resolve(m[1]);
    });
    void exited.then((code) => reject(new Error(`migrate-listen exited ${code}: ${stderr}`)));
  });
  return { child, url, stdout: () => stdout, stderr: () => stderr, exited };
}

interface Summary {
  outcome: string;
  reason?: string;
  sourceRecovery?: string;
  destination: string;
  downtimeMs: number;
  budgetMs: number;
  iterations: number;
  bytes: Record<string, number>;
  jobs: { total: number; doneOnSource: number; doneOnDestination: number; errors: number; firstErrors: string[] };
  memoryVerified: boolean | null;
}

describe('vfio-user migrate --to tcp:// → migrate-listen (two processes, loopback)', () => {
  it('migrates the working engine and its guest RAM; the receiver verifies memory and finishes the jobs', async (t) => {
    const listener = await listen(['--once', '--json']);
    try {
      const r = await runCli(['migrate', '--demo', '--to', listener.url, '--jobs', '1500', '--downtime', '5s', '--json'], 90_000);
      assert.equal(r.code, 0, r.stderr + r.stdout);
      const s = JSON.parse(r.stdout) as Summary;
      t.diagnostic(`downtime ${s.downtimeMs.toFixed(2)} ms of ${s.budgetMs}; ${s.iterations} iterations; jobs ${s.jobs.doneOnSource} source / ${s.jobs.doneOnDestination} destination`);
      assert.equal(s.outcome, 'migrated', s.reason);
      assert.equal(s.destination, listener.url);
      assert.ok(s.downtimeMs > 0 && s.downtimeMs <= 5000);
      assert.ok((s.bytes.precopyMemory ?? 0) >= 64 << 20);
      assert.equal(s.memoryVerified, true);
      assert.deepEqual(s.jobs.firstErrors, []);
      assert.ok(s.jobs.doneOnDestination > 0, 'the destination ran part of the workload');
      assert.equal(s.jobs.doneOnSource + s.jobs.doneOnDestination, 1500);
      assert.equal(await listener.exited, 0, listener.stderr());
      const received = JSON.parse(listener.stdout().trim()) as { outcome: string; memoryBytes: number; demo: { memoryVerified: boolean; doneOnDestination: number; failures: string[] } };
      assert.equal(received.outcome, 'committed');
      assert.equal(received.memoryBytes, (s.bytes.precopyMemory ?? 0) + (s.bytes.stopCopyMemory ?? 0));
      assert.deepEqual(received.demo, { memoryVerified: true, doneOnDestination: s.jobs.doneOnDestination, failures: [] });
    } finally {
      listener.child.kill('SIGKILL');
    }
  });

  it('the receiver killed mid-pre-copy: the sender fails cleanly, the source finishes every job; the destination device is left RESUMING and a new client recovers it', async () => {
    const engine = createDmaEngineDevice();
    const served = serve(engine.device);
    const listener = await listen(['--socket', served.path]);
    try {
      // A 20 MB/s cap stretches pre-copy of 64 MiB to ~3 s; the receiver dies once the destination device is RESUMING (pre-copy under way).
      const sender = runCli(['migrate', '--demo', '--to', listener.url, '--bandwidth', '20M', '--jobs', '300', '--json'], 90_000);
      const deadline = performance.now() + 30_000;
      while (!engine.device.connected && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
      assert.ok(engine.device.connected, 'the receiver connected to the destination device');
      while (engine.device.migration?.state !== S.RESUMING && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
      assert.equal(engine.device.migration?.state, S.RESUMING, 'the orchestrator set the destination RESUMING');
      listener.child.kill('SIGKILL');
      const r = await sender;
      assert.equal(r.code, 1);
      const s = JSON.parse(r.stdout) as Summary;
      assert.equal(s.outcome, 'failed');
      assert.equal(s.sourceRecovery, 'running');
      assert.deepEqual(s.jobs.firstErrors, []);
      assert.equal(s.jobs.doneOnSource, 300);
      // The receiver's session died with it: the device keeps RESUMING (docs/migration-faults.md) until a client recovers it.
      const client = await VfioUserClient.connect(served.path);
      try {
        assert.equal(await client.migrationState(), S.RESUMING);
        const recovered = await recoverMigration(client);
        assert.equal(recovered.to, S.RUNNING);
        assert.equal(await client.migrationState(), S.RUNNING);
      } finally {
        client.close();
      }
    } finally {
      listener.child.kill('SIGKILL');
      await served.close();
    }
  });

  it('an unreachable receiver: exit 1 with a one-line reason, nothing migrated', async () => {
    const r = await runCli(['migrate', '--demo', '--to', 'tcp://127.0.0.1:1', '--jobs', '30'], 30_000);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^vfio-user: migrate: tcp:\/\/127\.0\.0\.1:1: connect tcp:\/\/127\.0\.0\.1:1: ECONNREFUSED/m);
    const bad = await runCli(['migrate', '--demo', '--to', 'http://x:1'], 30_000);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /is not a migration address \(tcp:\/\/HOST:PORT\)/);
  });

  it('--bandwidth takes a size per second (values.ts syntax); a bad one is refused while parsing', async () => {
    for (const bad of ['0', 'fast', '-1M']) {
      const r = await runCli(['migrate', '--demo', '--bandwidth', bad]);
      assert.equal(r.code, 1, bad);
      assert.match(r.stderr, new RegExp(`--bandwidth <rate>' argument '${bad}' is invalid`));
    }
  });
});
