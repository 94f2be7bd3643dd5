/**
 * Callouts and notifiers as mdevctl runs them: argument order, config JSON on stdin, exit codes
 * (0 accepts, 2 passes to the next script, others veto a pre), byte order of script names,
 * post with the action's outcome, every notifier, and the pre → action → post → notify sequence.
 */
import { describe, it, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserError } from '../../src/errors.js';
import {
  calloutArgs,
  invokeWithCallouts,
  PROVIDED_VERSION,
  runCallouts,
  runNotifiers,
  vetoError,
} from '../../src/host/callouts.js';
import { recordingLogger, scriptEnv, target, type LogRecord, type ScriptEnv } from './callouts-support.js';

const ECANCELED = 125;
const UUID = '976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9';
const FAST = { timeoutMs: 5000, drainMs: 100 };

let env: ScriptEnv;
afterEach(() => env?.dispose());

describe('callouts: arguments and stdin', () => {
  it('passes -t -e -a -s -u -p in mdevctl order and the config as compact JSON on stdin', async () => {
    env = scriptEnv();
    env.script('callouts', 'rec', 'exit 0');
    const result = await runCallouts({ ...target(env, [{ size: '64M' }, { name: 'a b' }]), event: 'pre', action: 'start' }, FAST);
    assert.equal(result.outcome, 'accepted');
    assert.equal(result.script, 'rec');
    assert.deepEqual(env.linesOf('pre'), [
      `rec -t pool-small -e pre -a start -s none -u ${UUID} -p pool|{"mdev_type":"pool-small","start":"manual","attrs":[{"size":"64M"},{"name":"a b"}]}`,
    ]);
  });

  it('asks every script for its capabilities first, with the provides document on stdin', async () => {
    env = scriptEnv();
    env.script('callouts', 'rec', 'exit 0');
    await runCallouts({ ...target(env), event: 'pre', action: 'stop' }, FAST);
    const lines = env.lines();
    assert.equal(lines.length, 2);
    const [probe, pre] = lines as [string, string];
    const [args, stdin] = probe.split('|') as [string, string];
    assert.equal(args, `rec -t pool-small -e get -a capabilities -s none -u ${UUID} -p pool`);
    assert.deepEqual(JSON.parse(stdin), { provides: PROVIDED_VERSION });
    assert.match(pre, / -e pre -a stop -s none /);
  });

  it('calloutArgs builds exactly mdevctl argument vector', () => {
    env = scriptEnv(false);
    assert.deepEqual(calloutArgs(target(env), 'post', 'define', 'failure'), ['-t', 'pool-small', '-e', 'post', '-a', 'define', '-s', 'failure', '-u', UUID, '-p', 'pool']);
  });
});

describe('callouts: which script decides', () => {
  it('a pre exiting 1 vetoes, naming the script, its exit code and the first line of its stderr', async () => {
    env = scriptEnv();
    env.script('callouts', '10-policy', "[ \"$4\" = pre ] || exit 0\necho 'no GPU memory left' >&2\necho 'second line' >&2\nexit 1");
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'start' }, FAST);
    assert.equal(result.outcome, 'failed');
    assert.equal(result.vetoed, true);
    assert.equal(result.script, '10-policy');
    assert.equal(result.exitCode, 1);
    assert.equal(result.stderrLine, 'no GPU memory left');
    assert.equal(result.reason, 'start vetoed by callout 10-policy (exit 1): no GPU memory left');
    const error = vetoError(result);
    assert.ok(error instanceof VfioUserError);
    assert.equal(error.errno, ECANCELED);
    assert.equal(error.message, 'start vetoed by callout 10-policy (exit 1): no GPU memory left');
  });

  it('exit 2 ("not my type") passes to the next script; the first other exit code decides and later ones never run', async () => {
    env = scriptEnv();
    env.script('callouts', '30-last', 'exit 1');
    env.script('callouts', '20-mine', 'exit 0');
    env.script('callouts', '10-other', 'exit 2');
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'define' }, FAST);
    assert.equal(result.outcome, 'accepted');
    assert.equal(result.script, '20-mine');
    assert.deepEqual(env.linesOf('pre').map((l) => l.split(' ')[0]), ['10-other', '20-mine']);
  });

  it('tries scripts in byte order of their names (upper case before lower case, digits first)', async () => {
    env = scriptEnv();
    for (const name of ['b', 'B', 'a', '9', 'A']) env.script('callouts', name, 'exit 2');
    const result = await runCallouts({ ...target(env), event: 'post', action: 'start', state: 'success' }, FAST);
    assert.equal(result.outcome, 'none');
    assert.deepEqual(env.linesOf('post').map((l) => l.split(' ')[0]), ['9', 'A', 'B', 'a', 'b']);
  });

  it('all scripts answering 2, a missing directory, or only non-executable files: no script, nothing vetoed', async () => {
    env = scriptEnv(false);
    assert.deepEqual(await runCallouts({ ...target(env), event: 'pre', action: 'start' }, FAST), { outcome: 'none', vetoed: false });
    env.dispose();
    env = scriptEnv();
    const records: LogRecord[] = [];
    env.script('callouts', 'plain-file', 'exit 1', 0o644);
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'start' }, { ...FAST, logger: recordingLogger(records) });
    assert.equal(result.outcome, 'none');
    assert.deepEqual(env.lines(), []);
    assert.ok(records.some((r) => r.level === 'debug' && r.msg === 'not executable, skipped'));
  });

  it('a failed post is reported, not a veto', async () => {
    env = scriptEnv();
    env.script('callouts', 'p', "[ \"$4\" = post ] && { echo 'cleanup failed' >&2; exit 3; }\nexit 0");
    const result = await runCallouts({ ...target(env), event: 'post', action: 'stop', state: 'failure' }, FAST);
    assert.equal(result.outcome, 'failed');
    assert.equal(result.vetoed, false);
    assert.equal(result.reason, 'stop post callout p failed (exit 3): cleanup failed');
    assert.match(env.linesOf('post')[0] ?? '', / -e post -a stop -s failure /);
  });
});

describe('notifiers', () => {
  it('every executable notifier runs with -e notify and empty stdin, whatever the others return', async () => {
    env = scriptEnv();
    env.script('notifiers', 'n1', 'exit 1');
    env.script('notifiers', 'n2', 'exit 2');
    env.script('notifiers', 'n3', 'exit 0');
    env.script('notifiers', 'n4-not-executable', 'exit 0', 0o600);
    const runs = await runNotifiers({ ...target(env), action: 'define', state: 'success' }, FAST);
    assert.deepEqual(runs.map((r) => [r.script, r.exitCode]), [['n1', 1], ['n2', 2], ['n3', 0]]);
    assert.deepEqual(env.lines().sort(), ['n1', 'n2', 'n3'].map((n) => `${n} -t pool-small -e notify -a define -s success -u ${UUID} -p pool|`));
  });

  it('no notifiers directory: nothing runs', async () => {
    env = scriptEnv(false);
    assert.deepEqual(await runNotifiers({ ...target(env), action: 'start', state: 'none' }, FAST), []);
  });
});

describe('invokeWithCallouts: pre → action → post → notify', () => {
  function sequenceScripts(e: ScriptEnv, preExit: number): void {
    e.script('callouts', 'c', `[ "$4" = pre ] && exit ${preExit}\nexit 0`);
    e.script('notifiers', 'n', 'exit 0');
  }
  const events = (e: ScriptEnv): string[] => e.lines().map((l) => l.split(' ').slice(0, 9).filter((_, i) => i === 0 || i === 4 || i === 6 || i === 8).join(' '));

  it('a successful action: pre none, action, post success, notify success', async () => {
    env = scriptEnv();
    sequenceScripts(env, 0);
    let ran = 0;
    const value = await invokeWithCallouts({ ...target(env), action: 'start' }, async () => ++ran, FAST);
    assert.equal(value, 1);
    assert.deepEqual(events(env), ['c get capabilities none', 'c pre start none', 'c post start success', 'n notify start success']);
  });

  it('a failing action: post and notify get failure, the action error comes back', async () => {
    env = scriptEnv();
    sequenceScripts(env, 0);
    const boom = new VfioUserError('no space', { errno: 28 });
    await assert.rejects(invokeWithCallouts({ ...target(env), action: 'define' }, async () => { throw boom; }, FAST), (e) => e === boom);
    assert.deepEqual(events(env).slice(1), ['c pre define none', 'c post define failure', 'n notify define failure']);
  });

  it('a veto: the action and post are skipped, notifiers run with state none, ECANCELED', async () => {
    env = scriptEnv();
    sequenceScripts(env, 1);
    let ran = false;
    await assert.rejects(
      invokeWithCallouts({ ...target(env), action: 'stop' }, async () => { ran = true; }, FAST),
      (e: unknown) => e instanceof VfioUserError && e.errno === ECANCELED && e.message === 'stop vetoed by callout c (exit 1)',
    );
    assert.equal(ran, false);
    assert.deepEqual(events(env).slice(1), ['c pre stop none', 'n notify stop none']);
  });

  it('force: a veto is logged and the action goes on', async () => {
    env = scriptEnv();
    sequenceScripts(env, 1);
    const records: LogRecord[] = [];
    const value = await invokeWithCallouts({ ...target(env), action: 'undefine' }, async () => 'done', { ...FAST, force: true, logger: recordingLogger(records) });
    assert.equal(value, 'done');
    assert.deepEqual(events(env).slice(1), ['c pre undefine none', 'c post undefine success', 'n notify undefine success']);
    assert.ok(records.some((r) => r.level === 'warn' && r.msg === 'forcing undefine despite callout failure'));
  });
});
