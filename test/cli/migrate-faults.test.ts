/**
 * Issue 11 finding 8 with the real binaries: `migrate --demo --to tcp://…`
 * and `migrate-listen` stopped by SIGTERM or SIGKILL at chosen phases
 * (VFIO_USER_FAULT_PAUSE, src/cli/fault-pause.ts: the process stops at the
 * point and the test signals it there — no random sleeps). Every run asserts
 * the device ran on exactly one side (or, when a side was SIGKILLed, on at
 * most one, with the source held), the outcome and phase reported by every
 * side that survived, the same migration id on both, and nothing left behind:
 * no process started under the run's TMPDIR, no temp dir or socket.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { createDmaEngineDevice } from '../../src/devices/dma-engine.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import { MAIN, serve } from './support.js';

interface Proc {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  exited: Promise<number | null>;
  /** Resolves with the first match of `re` in stdout + stderr. */
  waitFor(re: RegExp): Promise<RegExpExecArray>;
}

function start(args: string[], env: Record<string, string>): Proc {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  let err = '';
  const waiters: Array<{ re: RegExp; resolve: (m: RegExpExecArray) => void }> = [];
  const check = (): void => {
    for (const w of [...waiters]) {
      const m = w.re.exec(out + err);
      if (m) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  };
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
    check();
  });
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
    check();
  });
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const timer = setTimeout(() => child.kill('SIGKILL'), 90_000); // a watchdog only: a loaded machine is slow
  void exited.then(() => clearTimeout(timer));
  return {
    child, out: () => out, err: () => err, exited,
    waitFor: (re) => new Promise((resolve, reject) => {
      const m = re.exec(out + err);
      if (m) return resolve(m);
      waiters.push({ re, resolve });
      void exited.then(() => reject(new Error(`exited before ${re}: ${err}`)));
    }),
  };
}

interface SenderSummary {
  outcome: string;
  phase: string;
  interrupted?: string;
  migrationId?: string;
  reason?: string;
  sourceRecovery?: string;
  memoryVerified: boolean | null;
  jobs: { total: number; doneOnSource: number; doneOnDestination: number; errors: number };
}

interface ReceiverReport {
  outcome: string;
  phase: string;
  migrationId?: string;
  reason?: string;
  note?: string;
  demo?: { doneOnDestination: number; memoryVerified: boolean };
}

/** A receiving host (migrate-listen on an engine served here) and a sender, both under their own TMPDIR. */
async function scenario(fault: { sender?: string; receiver?: string }, senderArgs: string[] = []): Promise<{
  sender: Proc; receiver: Proc; url: string; tmp: string; destinationState(): Promise<number>; close(): Promise<void>;
}> {
  const tmp = mkdtempSync(join(tmpdir(), 'vfio-user-faults-'));
  const engine = createDmaEngineDevice();
  const served = serve(engine.device);
  const receiver = start(['migrate-listen', '--port', '0', '--socket', served.path, '--json'], { TMPDIR: tmp, ...(fault.receiver ? { VFIO_USER_FAULT_PAUSE: fault.receiver } : {}) });
  const url = (await receiver.waitFor(/listening (tcp:\/\/\S+)/))[1] as string;
  const sender = start(['migrate', '--demo', '--to', url, '--jobs', '60', '--downtime', '5s', '--json', ...senderArgs], { TMPDIR: tmp, ...(fault.sender ? { VFIO_USER_FAULT_PAUSE: fault.sender } : {}) });
  return {
    sender, receiver, url, tmp,
    async destinationState() {
      const c = await VfioUserClient.connect(served.path, { connectTimeoutMs: 5000 });
      try {
        return await c.migrationState();
      } finally {
        c.close();
      }
    },
    async close() {
      sender.child.kill('SIGKILL');
      receiver.child.kill('SIGKILL');
      await Promise.all([sender.exited, receiver.exited]);
      await served.close();
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

/** The last of the JSON documents (pretty-printed, one after another) on a stdout. */
const lastJson = <T>(text: string): T => JSON.parse(text.trim().split(/\n(?=\{)/).at(-1) ?? 'null') as T;

/** No process runs with `tmp` in its command line (the serve children), and nothing is left in `tmp`. */
function assertNothingLeft(tmp: string): void {
  const left: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmd.includes(tmp)) left.push(`${pid}: ${cmd.replaceAll('\0', ' ')}`);
    } catch {
      // gone meanwhile
    }
  }
  assert.deepEqual(left, [], 'processes left behind');
  assert.deepEqual(readdirSync(tmp), [], 'temp dirs or sockets left behind');
}

describe('migrate / migrate-listen stopped at chosen phases (two processes)', { concurrency: 4 }, () => {
  it('receiver SIGTERM when the commit arrived: abandoned in phase commit, the sender resumes its source (runs once, on the source)', async () => {
    const s = await scenario({ receiver: 'receiver:commit' });
    try {
      await s.receiver.waitFor(/fault-pause receiver:commit/);
      s.receiver.child.kill('SIGTERM');
      const [rc, sc] = await Promise.all([s.receiver.exited, s.sender.exited]);
      const sent = lastJson<SenderSummary>(s.sender.out());
      const got = lastJson<ReceiverReport>(s.receiver.out());
      assert.equal(sent.outcome, 'failed', sent.reason);
      assert.equal(sent.sourceRecovery, 'running', 'the source runs again');
      assert.equal(sent.phase, 'commit');
      assert.match(sent.reason ?? '', /receiver abandoned migration/);
      assert.equal(got.outcome, 'abandoned');
      assert.equal(got.phase, 'commit');
      assert.equal(got.migrationId, sent.migrationId);
      assert.match(s.receiver.err(), new RegExp(`SIGTERM: abandoning migration ${sent.migrationId} in phase commit`));
      assert.equal(sc, 1);
      assert.equal(rc, 1, 'stopped by SIGTERM with a migration abandoned');
      assert.equal(sent.jobs.doneOnSource, 60, 'the source ran every job itself');
      assert.equal(sent.jobs.doneOnDestination, 0);
      assert.equal(await s.destinationState(), S.RUNNING, 'the destination device was reset to RUNNING');
      assertNothingLeft(s.tmp);
    } finally {
      await s.close();
    }
  });

  it('receiver SIGTERM after the commit: it keeps serving the committed destination and says so; migrate-resolve answers committed (runs once, on the destination)', async () => {
    const s = await scenario({ receiver: 'receiver:committed' });
    try {
      const id = (await s.receiver.waitFor(/fault-pause receiver:committed pid \d+ migration (\S+)/))[1] as string;
      const [committed, unknown] = [start(['migrate-resolve', '--to', s.url, '--id', id], {}), start(['migrate-resolve', '--to', s.url, '--id', 'no-such-migration'], {})];
      assert.equal(await committed.exited, 0, committed.err());
      assert.match(committed.out(), new RegExp(`^committed migration ${id} \\(receiver phase done\\): the destination runs the device: stop the source for good`, 'm'));
      assert.equal(await unknown.exited, 1);
      assert.match(unknown.out(), /^unknown migration no-such-migration .*keep the source held/m);
      s.receiver.child.kill('SIGTERM');
      await s.receiver.waitFor(/SIGTERM: migration (\S+) is committed and its device runs here: serving it until its sender is done/);
      const [rc, sc] = await Promise.all([s.receiver.exited, s.sender.exited]);
      const sent = lastJson<SenderSummary>(s.sender.out());
      const got = lastJson<ReceiverReport>(s.receiver.out());
      assert.equal(sc, 0, s.sender.err());
      assert.equal(sent.outcome, 'migrated');
      assert.equal(sent.phase, 'done');
      assert.equal(sent.memoryVerified, true);
      assert.equal(got.outcome, 'committed');
      assert.equal(got.phase, 'done');
      assert.equal(got.migrationId, sent.migrationId);
      assert.match(got.note ?? '', /released after its workload/);
      assert.equal(got.demo?.doneOnDestination, sent.jobs.doneOnDestination);
      assert.equal(sent.jobs.doneOnSource + sent.jobs.doneOnDestination, 60);
      assert.ok(sent.jobs.doneOnSource >= 0 && sent.jobs.doneOnDestination >= 0);
      assert.equal(rc, 0, 'the committed destination ran to its end');
      assertNothingLeft(s.tmp);
    } finally {
      await s.close();
    }
  });

  it('sender SIGTERM while it warms up: aborted in phase warm-up, promptly; the receiver abandons; no uncaught error', async () => {
    const s = await scenario({ sender: 'sender:warm-up' });
    try {
      await s.sender.waitFor(/fault-pause sender:warm-up/);
      s.sender.child.kill('SIGTERM');
      const sc = await s.sender.exited;
      const sent = lastJson<SenderSummary>(s.sender.out());
      assert.equal(sc, 1);
      assert.equal(sent.outcome, 'aborted');
      assert.equal(sent.phase, 'warm-up');
      assert.equal(sent.interrupted, 'SIGTERM');
      assert.equal(sent.sourceRecovery, 'running');
      assert.doesNotMatch(s.sender.err(), /Error|at .*\.js/, 'one line, no stack');
      await s.receiver.waitFor(/"outcome": "abandoned"/);
      s.receiver.child.kill('SIGTERM');
      assert.equal(await s.receiver.exited, 0, 'an idle receiver stops at once, cleanly');
      assert.match(s.receiver.err(), /SIGTERM: no migration in progress; stopped/);
      const got = lastJson<ReceiverReport>(s.receiver.out());
      assert.equal(got.outcome, 'abandoned');
      assert.equal(got.phase, 'precopy');
      assert.equal(got.migrationId, sent.migrationId);
      assertNothingLeft(s.tmp);
    } finally {
      await s.close();
    }
  });

  it('receiver SIGKILL after it committed: the sender cannot learn the outcome, holds the source (never runs twice) and prints the migrate-resolve line', async () => {
    const s = await scenario({ receiver: 'receiver:committed' }, ['--resolve-timeout', '500ms']);
    try {
      await s.receiver.waitFor(/fault-pause receiver:committed/);
      s.receiver.child.kill('SIGKILL');
      const sc = await s.sender.exited;
      const sent = lastJson<SenderSummary>(s.sender.out());
      assert.equal(sc, 1);
      assert.equal(sent.outcome, 'failed');
      assert.equal(sent.sourceRecovery, 'held', 'the source never runs again on its own');
      assert.equal(sent.phase, 'commit');
      assert.match(sent.reason ?? '', new RegExp(`vfio-user migrate-resolve --to ${s.url} --id ${sent.migrationId}`));
      const resolve = start(['migrate-resolve', '--to', s.url, '--id', sent.migrationId ?? '?'], {});
      assert.equal(await resolve.exited, 1);
      assert.match(resolve.err(), /ECONNREFUSED.*keep the source held/);
      assertNothingLeft(s.tmp);
    } finally {
      await s.close();
    }
  });
});
