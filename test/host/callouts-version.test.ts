/**
 * mdevctl's versioned callouts (`{"provides": …}` / `{"supports": …}`) and `get attributes`,
 * following the cases of mdevctl's own tests (src/tests/callouts.rs, testdata/callouts/).
 */
import { describe, it, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserError } from '../../src/errors.js';
import {
  findVersionedScript,
  getAttributes,
  invokeWithCallouts,
  parseAttributesOutput,
  parseSupports,
  runCallouts,
  type CalloutOptions,
} from '../../src/host/callouts.js';
import { scriptEnv, supportsJson, target, type ScriptEnv } from './callouts-support.js';

const ALL_ACTIONS = ['start', 'stop', 'define', 'undefine', 'modify', 'attributes', 'capabilities'];
const ALL_EVENTS = ['pre', 'post', 'notify', 'get'];
const FAST: CalloutOptions = { timeoutMs: 5000, drainMs: 100 };
const errno = (name: string, value: number) => (e: unknown) => e instanceof VfioUserError && e.errno === value && e.code === name;

let env: ScriptEnv;
afterEach(() => env?.dispose());

/** A script answering the capabilities probe with `supports` (exit `probeRc`), pre with `pre`, get attributes with `attrs`. */
function versioned(e: ScriptEnv, name: string, supports: string, options: { probeRc?: number; pre?: string; attrs?: string } = {}): void {
  e.script(
    'callouts',
    name,
    [
      'case "$4" in',
      `  get) case "$6" in capabilities) echo '${supports}'; exit ${options.probeRc ?? 0};; attributes) ${options.attrs ?? 'exit 1'};; esac; exit 1;;`,
      `  pre) ${options.pre ?? 'exit 0'};;`,
      'esac',
      'exit 0',
    ].join('\n'),
  );
}

describe('versioned callout scripts', () => {
  it('the versioned script is the only one used, even after an accepting unversioned one (mdevctl "version_mix_fail")', async () => {
    env = scriptEnv();
    env.script('callouts', '00-rc0', 'exit 0');
    versioned(env, '10-ver', supportsJson(ALL_ACTIONS, ALL_EVENTS), { pre: 'exit 1' });
    const found = await findVersionedScript(target(env), FAST);
    assert.equal(found?.path.endsWith('/10-ver'), true);
    assert.deepEqual(found?.actions, ALL_ACTIONS);
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'start' }, FAST);
    assert.equal(result.vetoed, true);
    assert.equal(result.script, '10-ver');
    assert.deepEqual(env.linesOf('pre').map((l) => l.split(' ')[0]), ['10-ver']);
  });

  it('an unversioned script exiting 1 before a versioned one does not veto ("version_mix_pass")', async () => {
    env = scriptEnv();
    env.script('callouts', '00-rc1', 'exit 1');
    versioned(env, '10-ver', supportsJson(ALL_ACTIONS, ALL_EVENTS));
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'start' }, FAST);
    assert.equal(result.outcome, 'accepted');
    assert.equal(result.script, '10-ver');
  });

  it('a valid supports answer with exit 1 still makes the script versioned; exit 2 does not', async () => {
    env = scriptEnv();
    versioned(env, 'ver', supportsJson(ALL_ACTIONS, ALL_EVENTS), { probeRc: 1 });
    assert.notEqual(await findVersionedScript(target(env), FAST), null);
    env.dispose();
    env = scriptEnv();
    versioned(env, 'ver', supportsJson(ALL_ACTIONS, ALL_EVENTS), { probeRc: 2 });
    assert.equal(await findVersionedScript(target(env), FAST), null);
  });

  it('an action the versioned script does not list fails (vetoes modify), others pass ("missing_modify")', async () => {
    env = scriptEnv();
    versioned(env, 'ver', supportsJson(['start', 'stop', 'define', 'undefine', 'attributes', 'capabilities'], ALL_EVENTS));
    const modify = await runCallouts({ ...target(env), event: 'pre', action: 'modify' }, FAST);
    assert.equal(modify.vetoed, true);
    assert.equal(modify.reason, "modify vetoed by callout ver: does not support action 'modify'");
    assert.deepEqual(env.linesOf('pre'), [], 'not run at all');
    const start = await runCallouts({ ...target(env), event: 'pre', action: 'start' }, FAST);
    assert.equal(start.outcome, 'accepted');
  });

  it('live needs a versioned script listing the live event', async () => {
    env = scriptEnv();
    versioned(env, 'ver', supportsJson(ALL_ACTIONS, ALL_EVENTS));
    const live = await runCallouts({ ...target(env), event: 'live', action: 'modify' }, FAST);
    assert.equal(live.reason, "modify vetoed by callout ver: does not support event 'live'");
  });

  it('live without a versioned script fails, whatever the unversioned scripts say', async () => {
    env = scriptEnv();
    env.script('callouts', 'rc0', 'exit 0');
    const live = await runCallouts({ ...target(env), event: 'live', action: 'modify' }, FAST);
    assert.equal(live.vetoed, true);
    assert.equal(live.reason, 'modify vetoed: no callout script with version support found that supports live modify');
    assert.deepEqual(env.linesOf('live'), []);
  });

  it('for the versioned script, exit 2 on pre is a failure, not "next script"', async () => {
    env = scriptEnv();
    versioned(env, 'a-ver', supportsJson(ALL_ACTIONS, ALL_EVENTS), { pre: 'exit 2' });
    env.script('callouts', 'b-other', 'exit 0');
    const result = await runCallouts({ ...target(env), event: 'pre', action: 'stop' }, FAST);
    assert.equal(result.reason, 'stop vetoed by callout a-ver (exit 2)');
  });

  it('unknown action and event names in supports are accepted; invalid or provides-only answers are not', () => {
    assert.deepEqual(parseSupports(Buffer.from(supportsJson([...ALL_ACTIONS, 'dummy'], [...ALL_EVENTS, 'dummy']))), { version: 2, actions: [...ALL_ACTIONS, 'dummy'], events: [...ALL_EVENTS, 'dummy'] });
    assert.deepEqual(parseSupports(Buffer.from(`${supportsJson(['start'], ['pre'])}\0\0`)), { version: 2, actions: ['start'], events: ['pre'] });
    const provides = JSON.stringify({ provides: { version: 2, actions: ALL_ACTIONS, events: ALL_EVENTS } });
    for (const bad of ['', 'This output is bad', '{"supports":{{{', '{"supports":null}', provides, '{"supports":{"version":-1,"actions":[],"events":[]}}', '{"supports":{"version":2,"actions":[1],"events":[]}}', '{"supports":{"actions":[],"events":[]}}', '[]']) {
      assert.equal(parseSupports(Buffer.from(bad)), undefined, bad);
    }
    assert.equal(parseSupports(Buffer.from([0xff, 0xfe, 0x7b, 0x7d])), undefined, 'non-UTF-8');
  });

  it('invokeWithCallouts probes once and gives the versioned script to the action', async () => {
    env = scriptEnv();
    versioned(env, 'ver', supportsJson(ALL_ACTIONS, ALL_EVENTS));
    const seen = await invokeWithCallouts({ ...target(env), action: 'define' }, async (v) => v?.path, FAST);
    assert.equal(seen?.endsWith('/ver'), true);
    assert.equal(env.lines().filter((l) => l.includes('-a capabilities')).length, 1);
    assert.equal(env.linesOf('post').length, 1);
  });
});

describe('get attributes', () => {
  it('returns the array the versioned script prints, with stdin closed and state none', async () => {
    env = scriptEnv();
    versioned(env, 'ver', supportsJson(ALL_ACTIONS, ALL_EVENTS), { attrs: `echo '[{"assign_adapter": "5"}, {"assign_domain": "0x47"}]'; exit 0` });
    assert.deepEqual(await getAttributes(target(env), FAST), [{ assign_adapter: '5' }, { assign_domain: '0x47' }]);
    const line = env.lines().find((l) => l.includes('-a attributes'));
    assert.equal(line, 'ver -t pool-small -e get -a attributes -s none -u 976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9 -p pool|');
  });

  it('an unversioned script: the first not exiting 2 answers (NUL-terminated output accepted)', async () => {
    env = scriptEnv();
    env.script('callouts', 'a-other', 'exit 2');
    env.script('callouts', 'b-mine', `[ "$6" = attributes ] || exit 0\nprintf '[{"attribute0": "VALUE"}]\\0'`);
    assert.deepEqual(await getAttributes(target(env), FAST), [{ attribute0: 'VALUE' }]);
  });

  it('no script, empty output or JSON null: undefined; [{}]: none', async () => {
    env = scriptEnv(false);
    assert.equal(await getAttributes(target(env), FAST), undefined);
    assert.equal(parseAttributesOutput(Buffer.from(''), 's'), undefined);
    assert.equal(parseAttributesOutput(Buffer.from('null\n'), 's'), undefined);
    assert.deepEqual(parseAttributesOutput(Buffer.from('[{}]'), 's'), []);
  });

  it('bad output is EINVAL naming the script', () => {
    for (const bad of ['{"a":"1"}', '[{"a":"1","b":"2"}]', '[{"a":1}]', '["a"]', '[{"a":"1"}', 'nonsense']) {
      assert.throws(() => parseAttributesOutput(Buffer.from(bad), 'gpu-script'), (e: unknown) => errno('EINVAL', 22)(e) && (e as Error).message.includes('gpu-script'), bad);
    }
  });

  it('a failing script is EIO, a timed-out one ETIMEDOUT, a versioned one without attributes ENOTSUP', async () => {
    env = scriptEnv();
    env.script('callouts', 'fails', "[ \"$6\" = attributes ] || exit 0\necho 'sysfs gone' >&2\nexit 1");
    await assert.rejects(getAttributes(target(env), FAST), (e: unknown) => errno('EIO', 5)(e) && (e as Error).message === 'get attributes: callout fails failed (exit 1): sysfs gone');
    env.dispose();
    env = scriptEnv();
    env.script('callouts', 'hangs', '[ "$6" = attributes ] && exec sleep 30\nexit 0');
    await assert.rejects(getAttributes(target(env), { timeoutMs: 1000 }), errno('ETIMEDOUT', 110));
    env.dispose();
    env = scriptEnv();
    versioned(env, 'ver', supportsJson(['start'], ALL_EVENTS));
    await assert.rejects(getAttributes(target(env), FAST), errno('ENOTSUP', 95));
  });
});
