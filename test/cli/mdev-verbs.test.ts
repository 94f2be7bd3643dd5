/**
 * `vfio-user mdev` against a fake host (in process): each verb's options become
 * the request mdevctl's semantics call for, and its output is mdevctl's
 * (checked against mdevctl's own test data where it has some), `--json` the
 * host's shapes, `-vv` the runtime lines. The end-to-end tests through the
 * real binary and a real host are test/cli/mdev*.test.ts.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import type { DefinitionEntry, HostApi, StopResult, TypeInfo } from '../../src/host/api.js';
import type { GroupView, InstanceStatus } from '../../src/host/types.js';
import { VfioUserError } from '../../src/errors.js';
import { registerMdev } from '../../src/cli/commands/mdev.js';
import { formatStatusLines } from '../../src/cli/commands/mdev-format.js';
import { mdevDefine, mdevList, mdevModify, mdevStart, readJsonFile } from '../../src/cli/commands/mdev-verbs.js';

const FIXTURES = fileURLToPath(new URL('../../../test/host/fixtures/mdevctl/', import.meta.url));
const fixture = (name: string): string => readFileSync(join(FIXTURES, name), 'utf8');

const U1 = '9f579710-6ffc-4201-987a-4ffa0fb1f3a5';
const U2 = '4a0a190f-dcf3-4def-9342-c48768f0c940';
const device1 = JSON.parse(fixture('list/device1.json')) as DefinitionEntry['config'];
const device2 = JSON.parse(fixture('list/device2.json')) as DefinitionEntry['config'];
/** mdevctl's test set-up of list/defined*: device2 as U2 under 0000:00:02.0, device1 as U1 under both parents. */
const DEFINITIONS: DefinitionEntry[] = [
  { uuid: U1, parent: '0000:00:03.0', config: device1, active: false },
  { uuid: U1, parent: '0000:00:02.0', config: device1, active: false },
  { uuid: U2, parent: '0000:00:02.0', config: device2, active: false },
];

function instance(overrides: Partial<InstanceStatus> = {}): InstanceStatus {
  return {
    uuid: '976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9', parent: '0000:00:02.0', mdevType: 'arbitrary_type1', state: 'active',
    socket: '/run/vfio-user/976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9.sock', attrs: [], defined: false, restarts: 0, ...overrides,
  };
}

/** A host that records each request and answers from `answers`. */
class FakeHost implements HostApi {
  readonly calls: Array<[string, unknown]> = [];
  instances: InstanceStatus[] = [];
  definitions: DefinitionEntry[] = [];
  types_: TypeInfo[] = [];
  closed = 0;
  failWith: VfioUserError | undefined;

  #call<T>(op: string, request: unknown, result: T): Promise<T> {
    this.calls.push([op, request]);
    return this.failWith ? Promise.reject(this.failWith) : Promise.resolve(result);
  }
  status(): never {
    throw new Error('not used');
  }
  types(request?: { parent?: string }) {
    return this.#call('types', request, this.types_);
  }
  list(request?: { defined?: boolean }) {
    return this.#call('list', request, { instances: this.instances, definitions: request?.defined ? this.definitions : [] });
  }
  define(request: { uuid?: string; parent?: string }) {
    return this.#call('define', request, { uuid: request.uuid ?? '11111111-2222-4333-8444-555555555555', parent: request.parent ?? 'p', config: device2, active: false });
  }
  undefine(request: unknown) {
    return this.#call('undefine', request, { removed: [] });
  }
  start(request: { uuid?: string }) {
    return this.#call('start', request, instance(request.uuid === undefined ? {} : { uuid: request.uuid }));
  }
  stopResult: StopResult = { ...instance(), release: 'idle', requests: 0, waitedMs: 0 };
  groups_: GroupView[] = [];
  stop(request: unknown) {
    return this.#call('stop', request, this.stopResult);
  }
  groups() {
    return this.#call('groups', undefined, this.groups_);
  }
  modify(request: unknown) {
    return this.#call('modify', request, DEFINITIONS[0] as DefinitionEntry);
  }
  close(): void {
    this.closed++;
  }
}

/** Runs `vfio-user mdev ARGS…` in process against `host`; returns what it wrote. */
async function mdev(host: FakeHost, ...args: string[]): Promise<string> {
  let text = '';
  const program = new Command().exitOverride();
  registerMdev(program, { connect: () => Promise.resolve(host), out: { write: (t) => void (text += t) } });
  await program.parseAsync(['mdev', '--control', '/nonexistent/control.sock', ...args], { from: 'user' });
  return text;
}

describe('mdev verbs against a fake host', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-user-mdev-verbs-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("list -d prints mdevctl's text, -v its attributes, --dumpjson its JSON (no trailing newline)", async () => {
    const host = new FakeHost();
    host.definitions = DEFINITIONS;
    assert.equal(await mdev(host, 'list', '-d'), fixture('list/defined.text'));
    assert.equal(await mdev(host, 'list', '--defined', '-v'), fixture('list/defined-verbose.text'));
    assert.equal(await mdev(host, 'list', '-d', '--dumpjson'), fixture('list/defined.json'));
    assert.deepEqual(host.calls[0], ['list', { defined: true }]);
    assert.equal(host.closed, 3, 'one connection per command, closed');
  });

  it('list -u/-p reach the host (normalized UUID); one match dumps the bare config', async () => {
    const host = new FakeHost();
    host.definitions = DEFINITIONS.filter((d) => d.parent === '0000:00:02.0' && d.uuid === U1);
    const out = await mdev(host, 'list', '-d', '-u', U1.toUpperCase().replaceAll('-', ''), '-p', '0000:00:02.0', '--dumpjson');
    assert.equal(out, fixture('list/defined-uuid-parent.json'));
    assert.deepEqual(host.calls[0], ['list', { uuid: U1, parent: '0000:00:02.0', defined: true }]);
  });

  it('list of running instances: mdevctl line, " (defined)" mark, nothing at all when none', async () => {
    const host = new FakeHost();
    assert.equal(await mdev(host, 'list'), '');
    assert.equal(await mdev(host, 'list', '--dumpjson'), '[]');
    host.instances = [instance({ defined: true, start: 'auto', attrs: [{ fill: 'a5' }] })];
    assert.equal(await mdev(host, 'list'), '976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9 0000:00:02.0 arbitrary_type1 auto (defined)\n');
    assert.equal(await mdev(host, 'list', '-v'), '976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9 0000:00:02.0 arbitrary_type1 auto (defined)\n  Attrs:\n    @{0}: {"fill":"a5"}\n');
  });

  it('list -vv adds state, socket, client and migration; --json is the host’s InstanceStatus[]', async () => {
    const host = new FakeHost();
    const since = Date.UTC(2026, 11, 7, 15, 30);
    const busy = instance({ client: { pid: 4242, uid: 1000, gid: 1001, since }, migrationState: 'RUNNING' });
    host.instances = [busy];
    assert.equal(
      await mdev(host, 'list', '-vv'),
      `976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9 0000:00:02.0 arbitrary_type1 manual\n  State: active\n  Socket: ${busy.socket}\n` +
        '  Client: pid 4242, uid 1000, gid 1001, since 2026-12-07T15:30:00.000Z\n  Migration: RUNNING\n',
    );
    const json = await mdev(host, 'list', '--json');
    assert.deepEqual(JSON.parse(json), [busy]);
    assert.ok(json.endsWith('}\n]\n'), 'our --json ends with a newline, as every --json of the CLI (only --dumpjson is without, as mdevctl)');
  });

  it('list -d -vv shows the state of the running definitions (asking the host for instances too)', async () => {
    const host = new FakeHost();
    host.definitions = [{ uuid: U2, parent: '0000:00:02.0', config: device2, active: true }, { uuid: U1, parent: '0000:00:02.0', config: device1, active: false }];
    host.instances = [instance({ uuid: U2, mdevType: device2.mdev_type, defined: true, start: 'auto', socket: '/r/u2.sock' })];
    const out = await mdev(host, 'list', '-d', '-vv', '-p', '0000:00:02.0');
    const lines = out.split('\n');
    assert.equal(lines[0], `${U2} 0000:00:02.0 i915-GVTg_V5_8 auto (active)`);
    assert.deepEqual(lines.slice(1, 4), ['  State: active', '  Socket: /r/u2.sock', '  Client: none']);
    assert.equal(lines[4], `${U1} 0000:00:02.0 vfio_ap-passthrough manual`);
    assert.equal(out.split('  State: inactive\n').length, 2, 'U1 is not running');
    assert.deepEqual(host.calls, [['list', { parent: '0000:00:02.0', defined: true }], ['list', { parent: '0000:00:02.0' }]]);
  });

  it('formatStatusLines: restarts and failure only when there are some', () => {
    assert.equal(formatStatusLines(undefined), '  State: inactive\n');
    const failed = formatStatusLines(instance({ state: 'failed', restarts: 2, failure: 'worker stalled past the 5 s watchdog' }));
    assert.match(failed, /^ {2}State: failed\n {2}Socket: .*\n {2}Client: none\n {2}Restarts: 2\n {2}Failure: worker stalled past the 5 s watchdog\n$/);
    assert.doesNotMatch(formatStatusLines(instance()), /Restarts|Failure|Migration/);
  });

  it('list -vv shows the group after the socket; the plain, -v and --dumpjson forms do not change', async () => {
    const host = new FakeHost();
    host.instances = [instance({ group: 'gpio-bank/card=c1', defined: true })];
    const vv = await mdev(host, 'list', '-vv');
    assert.deepEqual(vv.split('\n').slice(1, 4), ['  State: active', `  Socket: ${host.instances[0]?.socket}`, '  Group: gpio-bank/card=c1']);
    assert.equal(await mdev(host, 'list'), '976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9 0000:00:02.0 arbitrary_type1 manual (defined)\n');
    assert.doesNotMatch(await mdev(host, 'list', '--dumpjson'), /group/);
    assert.equal((JSON.parse(await mdev(host, 'list', '--json')) as InstanceStatus[])[0]?.group, 'gpio-bank/card=c1');
  });

  it('stop --timeout reaches the host in ms; the line says released or forced, after how many requests', async () => {
    const host = new FakeHost();
    const uuid = instance().uuid;
    host.stopResult = { ...instance(), release: 'released', requests: 2, waitedMs: 350, delivered: true };
    assert.equal(await mdev(host, 'stop', '-u', U1, '--timeout', '5s'), `${uuid}: released by its client after 2 release requests (350 ms)\n`);
    host.stopResult = { ...instance(), release: 'forced', requests: 1, waitedMs: 5000, delivered: false };
    assert.equal(await mdev(host, 'stop', '-u', U1), `${uuid}: forced: its client did not release it within 5000 ms (1 release request; no REQ channel registered by the client)\n`);
    host.stopResult = { ...instance(), release: 'forced', requests: 0, waitedMs: 0 };
    assert.equal(await mdev(host, 'stop', '-u', U1, '-f'), `${uuid}: forced: its client's session was closed\n`);
    assert.deepEqual(JSON.parse(await mdev(host, 'stop', '-u', U1, '--json')), host.stopResult);
    assert.deepEqual(host.calls.map((c) => c[1]), [{ uuid: U1, timeoutMs: 5000 }, { uuid: U1 }, { uuid: U1, force: true }, { uuid: U1 }]);
  });

  it('groups: a table, one row per member (the group on its first), or --json the host’s GroupView[]', async () => {
    const host = new FakeHost();
    assert.equal(await mdev(host, 'groups'), '', 'no group: nothing printed');
    host.groups_ = [
      { group: 'gpio-bank/card=c1', parent: 'gpio-bank', generation: 3, viable: true, owner: { pid: 4242, uid: 1000, gid: 1000 }, members: [
        { uuid: U1, socket: '/r/1.sock', state: 'active', claimed: true },
        { uuid: U2, socket: '/r/2.sock', state: 'active', claimed: true },
      ] },
      { group: `memory-pool/${U2}`, parent: 'memory-pool', generation: 1, viable: false, owner: null, members: [{ uuid: U2, socket: '/r/2.sock', state: 'failed', claimed: false }] },
    ];
    const text = await mdev(host, 'groups');
    assert.deepEqual(text.split('\n'), [
      'GROUP                                             PARENT       VIABLE  OWNER               MEMBER                                STATE   CLAIMED',
      `gpio-bank/card=c1                                 gpio-bank    yes     pid 4242, uid 1000  ${U1}  active  yes`,
      `                                                                                           ${U2}  active  yes`,
      `memory-pool/${U2}  memory-pool  no      -                   ${U2}  failed  no`,
      '',
    ]);
    assert.deepEqual(JSON.parse(await mdev(host, 'groups', '--json')), host.groups_);
  });

  it("types prints mdevctl's text and JSON from the host's TypeInfo", async () => {
    const host = new FakeHost();
    host.types_ = [
      { parent: '0000:00:03.0', mdevType: 'nvidia-36', name: 'GRID M10-0Q', description: '', deviceApi: 'vfio-pci', availableInstances: 16, attributes: [] },
      { parent: '0000:00:03.0', mdevType: 'nvidia-155', name: 'GRID M10-2B', description: '', deviceApi: 'vfio-pci', availableInstances: 4, attributes: [] },
    ];
    assert.equal(await mdev(host, 'types', '-p', '0000:00:03.0'), fixture('types/parent-match-2.text'));
    assert.equal(await mdev(host, 'types', '-p', '0000:00:03.0', '--dumpjson'), fixture('types/parent-match-2.json'));
    assert.deepEqual(JSON.parse(await mdev(host, 'types', '--json')), host.types_);
    assert.deepEqual(host.calls.map((c) => c[1]), [{ parent: '0000:00:03.0' }, { parent: '0000:00:03.0' }, {}]);
  });

  it('define: -t/-a become the request; the UUID is printed only when generated', async () => {
    const host = new FakeHost();
    assert.equal(await mdev(host, 'define', '-p', 'memory-pool', '-t', 'memory-pool-64M', '-a'), '11111111-2222-4333-8444-555555555555\n');
    assert.equal(await mdev(host, 'define', '-u', U1, '--parent', 'memory-pool', '--type', 'memory-pool-64M'), '');
    assert.equal(await mdev(host, 'define', '-u', U1), '', 'a running instance promoted by its UUID alone');
    assert.deepEqual(host.calls.map((c) => c[1]), [
      { parent: 'memory-pool', mdevType: 'memory-pool-64M', start: 'auto' },
      { uuid: U1, parent: 'memory-pool', mdevType: 'memory-pool-64M', start: 'manual' },
      { uuid: U1, start: 'manual' },
    ]);
  });

  it("define/start/modify --jsonfile send mdevctl's file unchanged as the config", async () => {
    const file = join(dir, 'device1.json');
    writeFileSync(file, fixture('list/device1.json'));
    const host = new FakeHost();
    await mdev(host, 'define', '-u', U1, '-p', 'memory-pool', '--jsonfile', file);
    assert.equal(await mdev(host, 'start', '-p', 'memory-pool', '--jsonfile', file), '976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9\n');
    await mdev(host, 'modify', '-u', U1, '-p', 'memory-pool', '--jsonfile', file);
    assert.deepEqual(host.calls, [
      ['define', { uuid: U1, parent: 'memory-pool', config: device1 }],
      ['start', { parent: 'memory-pool', config: device1 }],
      ['modify', { uuid: U1, parent: 'memory-pool', config: device1 }],
    ]);
  });

  it("mdevctl's argument checks fail before the host is asked (its words, EINVAL)", async () => {
    const file = join(dir, 'ok.json');
    writeFileSync(file, '{"mdev_type":"memory-pool-64M","start":"manual"}');
    const cases: Array<[() => Promise<void>, string]> = [
      [() => mdevDefine(new FakeHost(), { uuid: U1, type: 'memory-pool-64M' }), 'No parent specified'],
      [() => mdevDefine(new FakeHost(), { parent: 'memory-pool' }), 'No type specified'],
      [() => mdevDefine(new FakeHost(), { uuid: U1, jsonfile: file }), `Parent device required to define device via ${JSON.stringify(file)}`],
      [() => mdevStart(new FakeHost(), { parent: 'memory-pool' }), 'Device is insufficiently specified'],
      [() => mdevStart(new FakeHost(), { uuid: U1, jsonfile: file }), 'Parent device required to start device via json file'],
      [() => mdevModify(new FakeHost(), { uuid: U1, jsonfile: file }), 'Parent device required to modify device via json file'],
      [() => mdevModify(new FakeHost(), { uuid: U1, auto: true, manual: true }), "'auto' and 'manual' are mutually exclusive"],
      [() => mdevModify(new FakeHost(), { uuid: U1, addattr: 'fill' }), 'No attribute value provided'],
    ];
    for (const [call, message] of cases) {
      await assert.rejects(call(), (e: unknown) => e instanceof VfioUserError && e.message === message && e.errno === 22, message);
    }
  });

  it('modify: --addattr/--value/-i, --delattr, -a/-m, -t map onto the request', async () => {
    const host = new FakeHost();
    await mdev(host, 'modify', '-u', U1, '--addattr', 'fill', '--value', 'a5', '-i', '0');
    await mdev(host, 'modify', '-u', U1, '-p', 'memory-pool', '--addattr', 'write', '--value', '0x10:cafe');
    await mdev(host, 'modify', '-u', U1, '--delattr', '--index', '3');
    await mdev(host, 'modify', '-u', U1, '--delattr');
    await mdev(host, 'modify', '-u', U1, '-a', '-t', 'memory-pool-256M');
    await mdev(host, 'modify', '-u', U1, '--manual');
    assert.deepEqual(host.calls.map((c) => c[1]), [
      { uuid: U1, addAttr: { name: 'fill', value: 'a5', index: 0 } },
      { uuid: U1, parent: 'memory-pool', addAttr: { name: 'write', value: '0x10:cafe' } },
      { uuid: U1, delAttr: { index: 3 } },
      { uuid: U1, delAttr: {} },
      { uuid: U1, mdevType: 'memory-pool-256M', start: 'auto' },
      { uuid: U1, start: 'manual' },
    ]);
  });

  it('start, stop --force, undefine: requests, --json output, failures named by verb with the host’s errno', async () => {
    const host = new FakeHost();
    assert.equal(await mdev(host, 'start', '-u', U1), '', 'UUID given: nothing printed');
    assert.equal(await mdev(host, 'stop', '-u', U1, '--force'), '', 'no client: nothing printed');
    assert.equal(await mdev(host, 'stop', '-u', U1), '');
    assert.deepEqual(JSON.parse(await mdev(host, 'undefine', '-u', U1, '-p', 'memory-pool', '--json')), { removed: [] });
    assert.deepEqual(JSON.parse(await mdev(host, 'start', '-p', 'memory-pool', '-t', 'memory-pool-64M', '--json')), instance());
    assert.deepEqual(host.calls.map((c) => c[1]), [{ uuid: U1 }, { uuid: U1, force: true }, { uuid: U1 }, { uuid: U1, parent: 'memory-pool' }, { parent: 'memory-pool', mdevType: 'memory-pool-64M' }]);
    host.calls.length = 0;
    await mdev(host, 'start', '-u', U1, '-f');
    await mdev(host, 'define', '-u', U1, '-p', 'memory-pool', '-t', 'memory-pool-64M', '--force');
    await mdev(host, 'undefine', '-u', U1, '-f');
    await mdev(host, 'modify', '-u', U1, '-a', '-f');
    assert.deepEqual(host.calls.map((c) => c[1]), [
      { force: true, uuid: U1 },
      { force: true, uuid: U1, parent: 'memory-pool', mdevType: 'memory-pool-64M', start: 'manual' },
      { uuid: U1, force: true },
      { uuid: U1, force: true, start: 'auto' },
    ], "-f/--force (mdevctl's: go on despite a vetoing pre-callout) reaches the host");
    host.failWith = new VfioUserError('instance 9f579710 has a client (pid 7); stop --force closes its session', { errno: 16 });
    await assert.rejects(mdev(host, 'stop', '-u', U1), (e: unknown) => e instanceof VfioUserError && e.errno === 16 && e.message === 'mdev stop: instance 9f579710 has a client (pid 7); stop --force closes its session');
    assert.equal(host.closed, 10, 'the connection is closed after a failure too');
  });

  it('readJsonFile: an unreadable or malformed file is one line with its errno', () => {
    const missing = join(dir, 'missing.json');
    assert.throws(() => readJsonFile(missing), (e: unknown) => e instanceof VfioUserError && e.errno === 2 && e.message === `Unable to read file ${JSON.stringify(missing)}: ENOENT`);
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, '{"mdev_type": "x", "start": "sometimes"}');
    assert.throws(() => readJsonFile(bad), (e: unknown) => e instanceof VfioUserError && e.errno === 22 && e.message.startsWith(`${bad}: "start"`));
  });

  it('list/mdevList: the list of definitions goes to --json as DefinitionEntry[]', async () => {
    const host = new FakeHost();
    host.definitions = DEFINITIONS;
    let text = '';
    await mdevList(host, { defined: true, json: true }, { write: (t) => void (text += t) });
    assert.deepEqual(JSON.parse(text), DEFINITIONS);
  });
});
