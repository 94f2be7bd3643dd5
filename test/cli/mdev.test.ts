/**
 * `vfio-user mdev` and `lsmdev` end to end: the real binaries against a real
 * `vfio-user host` (one for this file) in temporary run and config directories,
 * every verb in the order an operator uses them — types, define, modify, start
 * (the attributes reach the device), list in each form, stop (a client is
 * asked to release the instance, then forced; released by a cooperating one;
 * --force at once), isolation groups, transient instances, mdevctl JSON files
 * with --jsonfile, undefine. Error paths: mdev-errors.test.ts.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import { RegionIndex } from '../../src/protocol/constants.js';
import { VERSION } from '../../src/version.js';
import { inParallel, startHost, type HostUnderTest } from './mdev-support.js';
import type { CliResult } from './support.js';

const U1 = '0b6f2a35-8f4e-4c6a-9d2e-6a1b2c3d4e01';
const U2 = '0b6f2a35-8f4e-4c6a-9d2e-6a1b2c3d4e02';
const U3 = '0b6f2a35-8f4e-4c6a-9d2e-6a1b2c3d4e03';
const G1 = '0b6f2a35-8f4e-4c6a-9d2e-6a1b2c3d4e11';
const G2 = '0b6f2a35-8f4e-4c6a-9d2e-6a1b2c3d4e12';
const UUID_LINE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n$/;

/** Exit 0 and nothing on stderr; returns stdout. */
function ok(r: CliResult | undefined, what: string): string {
  assert.ok(r, `${what}: ran`);
  assert.equal(r.code, 0, `${what}: exit status (stderr: ${r.stderr})`);
  assert.equal(r.stderr, '', `${what}: stderr`);
  return r.stdout;
}

/** A definition as mdevctl writes it (serde's pretty JSON, no trailing newline). */
function mdevctlFile(type: string, start: 'auto' | 'manual', attrs: Array<[string, string]>): string {
  if (attrs.length === 0) return `{\n  "mdev_type": "${type}",\n  "start": "${start}",\n  "attrs": []\n}`;
  const items = attrs.map(([k, v]) => `    {\n      "${k}": "${v}"\n    }`).join(',\n');
  return `{\n  "mdev_type": "${type}",\n  "start": "${start}",\n  "attrs": [\n${items}\n  ]\n}`;
}

describe('vfio-user mdev end to end', () => {
  let host: HostUnderTest;
  before(async () => {
    host = await startHost();
  });
  after(async () => {
    await host?.close();
  });

  it("types: mdevctl's text and JSON, --json with the attributes", async () => {
    const [text, dumped, json] = await inParallel([() => host.mdev('types', '-p', 'memory-pool'), () => host.mdev('types', '-p', 'memory-pool', '--dumpjson'), () => host.mdev('types', '--json')]);
    assert.equal(
      ok(text, 'types -p'),
      'memory-pool\n' +
        '  memory-pool-256M\n    Available instances: 4\n    Device API: vfio-pci\n    Name: memory 256M\n' +
        '    Description: memory device with 256 MiB of shared RAM in BAR0, from the 1024 MiB pool\n' +
        '  memory-pool-64M\n    Available instances: 16\n    Device API: vfio-pci\n    Name: memory 64M\n' +
        '    Description: memory device with 64 MiB of shared RAM in BAR0, from the 1024 MiB pool\n',
    );
    const dump = ok(dumped, 'types --dumpjson');
    assert.ok(!dump.endsWith('\n'), 'no trailing newline, as mdevctl');
    const parsed = JSON.parse(dump) as Array<Record<string, Array<Record<string, { available_instances: number; device_api: string }>>>>;
    assert.equal(dump, JSON.stringify(parsed, null, 2), "serde's pretty form");
    assert.deepEqual(Object.keys(parsed[0] ?? {}), ['memory-pool']);
    assert.deepEqual(parsed[0]?.['memory-pool']?.map((t) => Object.keys(t)[0]), ['memory-pool-256M', 'memory-pool-64M']);
    assert.deepEqual(Object.keys(parsed[0]?.['memory-pool']?.[1]?.['memory-pool-64M'] ?? {}), ['available_instances', 'device_api', 'name', 'description']);
    const types = JSON.parse(ok(json, 'types --json')) as Array<{ mdevType: string; attributes: Array<{ name: string }> }>;
    assert.deepEqual(types.find((t) => t.mdevType === 'memory-pool-64M')?.attributes.map((a) => a.name), ['fill', 'write']);
  });

  it('list and lsmdev with nothing running: no output, [] for --dumpjson, exit 0', async () => {
    const [list, defined, dump, lsmdev, json] = await inParallel([() => host.mdev('list'), () => host.mdev('list', '-d'), () => host.mdev('list', '--dumpjson'), () => host.lsmdev(), () => host.mdev('list', '--json')]);
    assert.equal(ok(list, 'list'), '');
    assert.equal(ok(defined, 'list -d'), '');
    assert.equal(ok(dump, 'list --dumpjson'), '[]');
    assert.equal(ok(lsmdev, 'lsmdev'), '');
    assert.deepEqual(JSON.parse(ok(json, 'list --json')), []);
  });

  it('define writes mdevctl files; a generated UUID is printed, a given one is not', async () => {
    const out = ok(await host.mdev('define', '-p', 'memory-pool', '-t', 'memory-pool-64M'), 'define');
    assert.match(out, UUID_LINE);
    const generated = out.trim();
    assert.equal(readFileSync(join(host.configDir, 'memory-pool', generated), 'utf8'), mdevctlFile('memory-pool-64M', 'manual', []));
    assert.equal(ok(await host.mdev('define', '-u', U1.toUpperCase(), '-p', 'memory-pool', '-t', 'memory-pool-64M', '-a'), 'define -u'), '');
    assert.equal(readFileSync(join(host.configDir, 'memory-pool', U1), 'utf8'), mdevctlFile('memory-pool-64M', 'auto', []));
    const expected = [`${U1} memory-pool memory-pool-64M auto\n`, `${generated} memory-pool memory-pool-64M manual\n`].sort().join('');
    assert.equal(ok(await host.mdev('list', '-d'), 'list -d'), expected);
    assert.equal(ok(await host.lsmdev('--defined'), 'lsmdev -d'), expected);
    ok(await host.mdev('undefine', '--uuid', generated), 'undefine');
    assert.equal(existsSync(join(host.configDir, 'memory-pool', generated)), false, 'its file is gone');
  });

  it('modify: attributes added at the end or at an index, deleted, start mode changed', async () => {
    ok(await host.mdev('modify', '-u', U1, '--addattr', 'write', '--value', '0x10:cafe'), 'addattr');
    ok(await host.mdev('modify', '-u', U1, '--addattr', 'fill', '--value', '5a', '--index', '0'), 'addattr -i 0');
    ok(await host.mdev('modify', '-u', U1, '--addattr', 'write', '--value', '0x20:beef'), 'addattr 3');
    ok(await host.mdev('modify', '-u', U1, '--delattr'), 'delattr (the last)');
    ok(await host.mdev('modify', '-u', U1, '-m'), 'manual');
    assert.equal(
      ok(await host.mdev('list', '-d', '-v', '-u', U1), 'list -d -v'),
      `${U1} memory-pool memory-pool-64M manual\n  Attrs:\n    @{0}: {"fill":"5a"}\n    @{1}: {"write":"0x10:cafe"}\n`,
    );
    assert.equal(readFileSync(join(host.configDir, 'memory-pool', U1), 'utf8'), mdevctlFile('memory-pool-64M', 'manual', [['fill', '5a'], ['write', '0x10:cafe']]));
    assert.equal(ok(await host.mdev('list', '-d', '-u', U1, '--dumpjson'), 'dumpjson -u'), mdevctlFile('memory-pool-64M', 'manual', [['fill', '5a'], ['write', '0x10:cafe']]));
  });

  it('start: the attributes reach the device in order; list shows it, -vv and --json its client and group; stop forces a client that cannot be asked at the timeout', async () => {
    assert.equal(ok(await host.mdev('start', '-u', U1), 'start'), '', 'nothing printed for a given UUID');
    const socket = join(host.runDir, `${U1}.sock`);
    assert.ok(existsSync(socket), 'served on <run dir>/<uuid>.sock');
    assert.equal(ok(await host.mdev('list'), 'list'), `${U1} memory-pool memory-pool-64M manual (defined)\n`);
    assert.equal(ok(await host.mdev('list', '-d'), 'list -d'), `${U1} memory-pool memory-pool-64M manual (active)\n`);
    const client = await VfioUserClient.connect(socket);
    try {
      const bytes = await client.regionRead(RegionIndex.BAR0, 0x0en, 4);
      assert.deepEqual([...bytes], [0x5a, 0x5a, 0xca, 0xfe], 'fill 5a, then write 0x10:cafe over it');
      const vv = ok(await host.mdev('list', '-vv'), 'list -vv');
      assert.equal(vv.split('\n')[0], `${U1} memory-pool memory-pool-64M manual (defined)`);
      assert.match(vv, new RegExp(`\n {2}State: active\n {2}Socket: ${socket}\n {2}Group: memory-pool/${U1}\n {2}Client: pid ${process.pid}, uid ${process.getuid?.()}, gid \\d+, since \\d{4}-`));
      const [status] = JSON.parse(ok(await host.mdev('list', '--json'), 'list --json')) as Array<{ uuid: string; state: string; socket: string; group: string; client?: { pid: number } }>;
      assert.deepEqual([status?.uuid, status?.state, status?.socket, status?.group, status?.client?.pid], [U1, 'active', socket, `memory-pool/${U1}`, process.pid]);
      // This client registered no REQ eventfd: it cannot be asked, so it is forced off at the timeout.
      const forced = ok(await host.mdev('stop', '-u', U1, '--timeout', '300ms'), 'stop --timeout');
      assert.match(forced, new RegExp(`^${U1}: forced: its client did not release it within \\d+ ms \\(\\d+ release requests?; no REQ channel registered by the client\\)\n$`));
      await assert.rejects(client.regionRead(RegionIndex.BAR0, 0n, 4), 'the session was closed');
      const asked = host.stderr().split('\n').find((l) => l.includes('"event":"instance-stopping"') && l.includes(U1));
      assert.match(asked ?? '', /"timeoutMs":300\b/, 'the host waited the --timeout given');
      assert.ok(host.stderr().split('\n').some((l) => l.includes('"audit":"forced"') && l.includes(U1)), 'the forced stop is in the audit trail');
    } finally {
      client.close();
    }
    assert.equal(ok(await host.mdev('list'), 'list after stop'), '');
    assert.equal(existsSync(socket), false, 'its socket is removed');
  });

  it('groups: functions of one card share a group (viable once all run, owned by the first client); stop asks the owner to release, --force at once', async () => {
    ok(await host.mdev('start', '-u', G1, '-p', 'gpio-bank', '-t', 'gpio-bank-4'), 'start G1');
    ok(await host.mdev('stop', '-u', G1), 'stop G1 (idle: nothing printed)');
    const file = join(host.dir, 'card.json');
    writeFileSync(file, JSON.stringify({ mdev_type: 'gpio-bank-4', start: 'manual', attrs: [{ card: 'c1' }] }));
    ok(await host.mdev('start', '-u', G1, '-p', 'gpio-bank', '--jsonfile', file), 'start G1 on card c1');
    ok(await host.mdev('define', '-u', G2, '-p', 'gpio-bank', '--jsonfile', file), 'define G2 on card c1');
    const row = (uuid: string, state: string, claimed: string): RegExp => new RegExp(`${uuid}\\s+${state}\\s+${claimed}\n`);
    const before = ok(await host.mdev('groups'), 'groups');
    assert.match(before, /^GROUP\s+PARENT\s+VIABLE\s+OWNER\s+MEMBER\s+STATE\s+CLAIMED\n/);
    assert.match(before, new RegExp(`\ngpio-bank/card=c1\\s+gpio-bank\\s+no\\s+-\\s+${G1}\\s+active\\s+no\n\\s+${G2}\\s+inactive\\s+no\n`));
    ok(await host.mdev('start', '-u', G2), 'start G2');
    const client = await VfioUserClient.connect(join(host.runDir, `${G1}.sock`));
    const second = await VfioUserClient.connect(join(host.runDir, `${G2}.sock`));
    try {
      const [group] = (JSON.parse(ok(await host.mdev('groups', '--json'), 'groups --json')) as Array<{ group: string; viable: boolean; owner: { pid: number } | null; members: { uuid: string }[] }>).filter((g) => g.group === 'gpio-bank/card=c1');
      assert.deepEqual([group?.viable, group?.owner?.pid, group?.members.map((m) => m.uuid)], [true, process.pid, [G1, G2]]);
      const owned = ok(await host.mdev('groups'), 'groups');
      assert.match(owned, new RegExp(`gpio-bank/card=c1\\s+gpio-bank\\s+yes\\s+pid ${process.pid}, uid ${process.getuid?.()}\\s+`));
      assert.match(owned, row(G2, 'active', 'yes'));
      assert.match(ok(await host.mdev('list', '-vv', '-u', G1), 'list -vv'), /\n {2}Group: gpio-bank\/card=c1\n/);
      const conflict = await host.mdev('stop', '-u', G1, '--force', '--timeout', '1s');
      assert.equal(conflict.code, 2, conflict.stderr);
      await client.onReleaseRequest(() => client.close());
      assert.match(ok(await host.mdev('stop', '-u', G1, '--timeout', '60s'), 'stop G1'), new RegExp(`^${G1}: released by its client after \\d+ release requests? \\(\\d+ ms\\)\n$`));
      assert.equal(ok(await host.mdev('stop', '-u', G2, '--force'), 'stop G2 --force'), `${G2}: forced: its client's session was closed\n`);
    } finally {
      client.close();
      second.close();
    }
    ok(await host.mdev('undefine', '-u', G2), 'undefine G2');
    assert.doesNotMatch(ok(await host.mdev('groups'), 'groups'), /card=c1/);
  });

  it('a transient start prints its UUID; define -u promotes it; undefine leaves it running', async () => {
    const out = ok(await host.mdev('start', '-p', 'memory-pool', '-t', 'memory-pool-64M'), 'start transient');
    assert.match(out, UUID_LINE);
    const uuid = out.trim();
    assert.equal(ok(await host.mdev('list', '-u', uuid), 'list -u'), `${uuid} memory-pool memory-pool-64M manual\n`);
    ok(await host.mdev('define', '-u', uuid, '--auto'), 'define -u of a running instance');
    assert.equal(ok(await host.mdev('list', '-u', uuid), 'list -u'), `${uuid} memory-pool memory-pool-64M auto (defined)\n`);
    ok(await host.mdev('undefine', '-u', uuid, '-p', 'memory-pool'), 'undefine');
    assert.equal(ok(await host.mdev('list', '-u', uuid), 'still running'), `${uuid} memory-pool memory-pool-64M manual\n`);
    ok(await host.mdev('stop', '-u', uuid), 'stop (no client)');
  });

  it("mdevctl JSON files: --jsonfile takes one unchanged; --dumpjson -u gives it back byte for byte", async () => {
    const file = join(host.dir, 'mdev.json');
    const text = mdevctlFile('memory-pool-64M', 'manual', [['write', '0x0:c0ffee'], ['write', '0x2:00']]);
    writeFileSync(file, text);
    ok(await host.mdev('define', '-u', U2, '-p', 'memory-pool', '--jsonfile', file), 'define --jsonfile');
    assert.equal(readFileSync(join(host.configDir, 'memory-pool', U2), 'utf8'), text);
    assert.equal(ok(await host.mdev('list', '-d', '-u', U2, '--dumpjson'), 'dumpjson'), text);
    ok(await host.mdev('start', '-u', U3, '-p', 'memory-pool', '--jsonfile', file), 'start --jsonfile');
    assert.equal(ok(await host.lsmdev('-u', U3, '--dumpjson'), 'lsmdev --dumpjson'), text, "a running instance's attributes");
    const client = await VfioUserClient.connect(join(host.runDir, `${U3}.sock`));
    try {
      assert.deepEqual([...(await client.regionRead(RegionIndex.BAR0, 0n, 3))], [0xc0, 0xff, 0x00]);
    } finally {
      client.close();
    }
    ok(await host.mdev('stop', '-u', U3), 'stop');
    const nested = JSON.parse(ok(await host.mdev('list', '-d', '--dumpjson'), 'list -d --dumpjson')) as unknown;
    assert.deepEqual(nested, [{ 'memory-pool': [{ [U1]: JSON.parse(mdevctlFile('memory-pool-64M', 'manual', [['fill', '5a'], ['write', '0x10:cafe']])) }, { [U2]: JSON.parse(text) }] }]);
  });

  it('undefine without -p removes every definition of the UUID; --version', async () => {
    ok(await host.mdev('undefine', '-u', U1), 'undefine U1');
    ok(await host.mdev('undefine', '-u', U2), 'undefine U2');
    assert.equal(ok(await host.mdev('list', '-d'), 'list -d'), '');
    const [mdevVersion, lsmdevVersion] = await Promise.all([host.mdev('-V'), host.lsmdev('--version')]);
    assert.equal(ok(mdevVersion, '-V'), `${VERSION}\n`);
    assert.equal(ok(lsmdevVersion, 'lsmdev --version'), `${VERSION}\n`);
  });
});
