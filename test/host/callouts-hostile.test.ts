/**
 * Broken and hostile callout scripts cannot hurt the host: a script past its timeout is killed
 * with its process group (a pre then vetoes), a background child holding stdout does not hang
 * the call, output is bounded, stdin left unread is fine, non-UTF-8 output is decoded, scripts
 * that die by a signal or cannot start are skipped as mdevctl skips them.
 */
import { describe, it, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { VfioUserError } from '../../src/errors.js';
import { execScript } from '../../src/host/callouts-exec.js';
import { runCallouts, runNotifiers } from '../../src/host/callouts.js';
import { processGone, readPid, recordingLogger, scriptEnv, target, type LogRecord, type ScriptEnv } from './callouts-support.js';

let env: ScriptEnv;
afterEach(() => env?.dispose());

describe('callouts: hostile scripts', () => {
  it('a pre running past the timeout is killed with its child and vetoes the action', async () => {
    env = scriptEnv();
    const pidFile = env.file('child.pid');
    env.script('callouts', 'slow', `[ "$4" = pre ] || exit 0\nsleep 30 &\necho $! > '${pidFile}'\nwait\nexit 0`);
    // 1 s: the script must have written the pid file before it is killed, even on a loaded machine.
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'start' }, { timeoutMs: 1000 });
    assert.equal(result.outcome, 'failed');
    assert.equal(result.vetoed, true);
    assert.equal(result.timedOut, true);
    assert.equal(result.exitCode, null);
    assert.equal(result.reason, 'start vetoed by callout slow (timed out after 1000 ms)');
    assert.equal(await processGone(await readPid(pidFile)), true, 'the sleeping child was killed with the group');
  });

  it('a script leaving a background child on its stdout does not hang the call; the child goes with the group', async () => {
    env = scriptEnv();
    const pidFile = env.file('bg.pid');
    env.script('callouts', 'daemonizer', `[ "$4" = pre ] || exit 0\nsleep 30 &\necho $! > '${pidFile}'\nexit 0`);
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'start' }, { timeoutMs: 20_000, drainMs: 100 });
    assert.equal(result.outcome, 'accepted');
    assert.equal(result.timedOut, false);
    assert.equal(await processGone(await readPid(pidFile)), true);
  });

  it('a background child that redirected its output is left alone', async () => {
    env = scriptEnv();
    const pidFile = env.file('daemon.pid');
    env.script('callouts', 'polite', `[ "$4" = pre ] || exit 0\nsleep 30 > /dev/null 2>&1 < /dev/null &\necho $! > '${pidFile}'\nexit 0`);
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'start' }, { timeoutMs: 20_000, drainMs: 100 });
    assert.equal(result.outcome, 'accepted');
    const pid = await readPid(pidFile);
    assert.equal(await processGone(pid, 300), false, 'still running');
    process.kill(pid, 'SIGKILL');
  });

  it('output beyond the bound is read and discarded', async () => {
    env = scriptEnv();
    const path = env.script('callouts', 'loud', 'head -c 3000000 /dev/zero\nhead -c 3000000 /dev/zero >&2\nexit 0', 0o755, false);
    const run = await execScript(path, [], undefined, { maxOutputBytes: 65536, timeoutMs: 20_000 });
    assert.equal(run.exitCode, 0);
    assert.equal(run.stdout.length, 65536);
    assert.equal(run.stderr.length, 65536);
    assert.equal(run.truncated, true);
  });

  it('endless output is bounded and ended by the timeout', async () => {
    env = scriptEnv();
    const path = env.script('callouts', 'yes', 'exec yes', 0o755, false);
    const run = await execScript(path, [], undefined, { maxOutputBytes: 1000, timeoutMs: 300 });
    assert.equal(run.timedOut, true);
    assert.equal(run.stdout.length, 1000);
    assert.equal(run.truncated, true);
  });

  it('a script exiting without reading a large stdin (EPIPE) is fine', async () => {
    env = scriptEnv();
    env.script('callouts', 'deaf', 'exit 0', 0o755, false);
    const huge = [{ blob: 'x'.repeat(4 << 20) }];
    const result = await runCallouts({ ...target(env, huge), event: 'pre', action: 'define' }, { timeoutMs: 20_000 });
    assert.equal(result.outcome, 'accepted');
    assert.equal(result.script, 'deaf');
  });

  it('non-UTF-8 stderr is decoded with replacement characters', async () => {
    env = scriptEnv();
    env.script('callouts', 'binary', "[ \"$4\" = pre ] || exit 0\nprintf '\\377\\376bad\\n' >&2\nexit 1");
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'start' }, { timeoutMs: 20_000 });
    assert.equal(result.vetoed, true);
    assert.equal(result.stderrLine, '\uFFFD\uFFFDbad');
  });

  it('a script killed by a signal of its own is skipped (warn), as mdevctl does; the next one decides', async () => {
    env = scriptEnv();
    env.script('callouts', 'a-suicide', '[ "$4" = pre ] && kill -TERM $$\nexit 0');
    env.script('callouts', 'b-judge', '[ "$4" = pre ] && exit 4\nexit 0');
    const records: LogRecord[] = [];
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'start' }, { timeoutMs: 20_000, logger: recordingLogger(records) });
    assert.equal(result.script, 'b-judge');
    assert.equal(result.reason, 'start vetoed by callout b-judge (exit 4)');
    assert.ok(records.some((r) => r.level === 'warn' && r.fields.signal === 'SIGTERM'));
  });

  it('a script that cannot start (bad interpreter) and a directory are skipped', async () => {
    env = scriptEnv();
    const dir = join(env.configDir, 'scripts.d', 'callouts');
    writeFileSync(join(dir, 'a-bad-interp'), '#!/nonexistent/interpreter\nexit 1\n', { mode: 0o755 });
    mkdirSync(join(dir, 'b-directory'), { mode: 0o755 });
    env.script('callouts', 'c-ok', 'exit 0');
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'start' }, { timeoutMs: 20_000 });
    assert.equal(result.outcome, 'accepted');
    assert.equal(result.script, 'c-ok');
  });

  it('a capabilities probe that hangs is killed and skipped; the script still answers pre', async () => {
    env = scriptEnv();
    env.script('callouts', 'stuck-probe', '[ "$4" = get ] && exec sleep 30\nexit 0');
    // The timeout also bounds the quick pre that follows: 1 s leaves room on a loaded machine.
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'start' }, { timeoutMs: 1000 });
    assert.equal(result.outcome, 'accepted');
    assert.deepEqual(env.lines().map((l) => l.split(' ')[4]), ['get', 'pre']);
  });

  it('a notifier past its timeout is killed; the others run', async () => {
    env = scriptEnv();
    env.script('notifiers', 'a-sleeper', 'exec sleep 30');
    env.script('notifiers', 'b-quick', 'exit 0');
    const runs = await runNotifiers({ ...target(env), action: 'stop', state: 'success' }, { timeoutMs: 60_000, notifierTimeoutMs: 1000, notifierConcurrency: 1 });
    assert.deepEqual(runs, [
      { script: 'a-sleeper', exitCode: null, timedOut: true },
      { script: 'b-quick', exitCode: 0, timedOut: false },
    ]);
  });

  it('aborting the signal (host shutdown) kills a running script at once; a pre then vetoes', async () => {
    env = scriptEnv();
    const pidFile = env.file('aborted.pid');
    env.script('callouts', 'long', `[ "$4" = pre ] || exit 0\necho $$ > '${pidFile}'\nexec sleep 30`);
    const controller = new AbortController();
    const pending = runCallouts({ ...target(env), event: 'pre', action: 'stop' }, { timeoutMs: 60_000, signal: controller.signal });
    const pid = await readPid(pidFile);
    controller.abort();
    const result = await pending;
    assert.equal(result.vetoed, true);
    assert.equal(result.reason, 'stop vetoed by callout long (aborted)');
    assert.equal(await processGone(pid), true);
    const after = await execScript(join(env.configDir, 'scripts.d', 'callouts', 'long'), [], undefined, { signal: controller.signal });
    assert.equal(after.aborted, true, 'not started once aborted');
  });

  it('bad options are EINVAL before anything runs', async () => {
    env = scriptEnv();
    env.script('callouts', 'x', 'exit 0');
    for (const options of [{ timeoutMs: 0 }, { timeoutMs: Number.NaN }, { maxOutputBytes: -1 }, { drainMs: 1.5 }, { notifierConcurrency: 0 }]) {
      await assert.rejects(runCallouts({ ...target(env), event: 'pre', action: 'start' }, options), (e: unknown) => e instanceof VfioUserError && e.code === 'EINVAL', JSON.stringify(options));
    }
    assert.deepEqual(env.lines(), []);
  });
});

