/**
 * DeviceHost in process (temp run and config dirs, the `hostfix` fixture
 * parent): every HostApi operation, each error path with its errno and
 * nothing changed, the rollback of a failing attribute, availability and
 * ENOSPC, per-UUID serialization, a client blocking stop, and the same
 * errors carried over the control socket.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { VfioUserError } from '../../src/errors.js';
import { connectHost } from '../../src/host/control-client.js';
import type { DeviceHost } from '../../src/host/host.js';
import { hostDirs, openFds, recordingLogger, startHost, until, type HostDirs } from './host-support.js';

const U1 = '11111111-1111-4111-8111-111111111111';
const U2 = '22222222-2222-4222-8222-222222222222';
const U3 = '33333333-3333-4333-8333-333333333333';
const U4 = '44444444-4444-4444-8444-444444444444';
const BAR0 = 0;

const errno = (code: string, pattern?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof VfioUserError, `not a VfioUserError: ${String(e)}`);
  assert.equal(e.code, code, e.message);
  if (pattern) assert.match(e.message, pattern);
  assert.equal(e.message.includes('\n'), false);
  return true;
};

const u32 = (bytes: Uint8Array): number => new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);

describe('DeviceHost', () => {
  let dirs: HostDirs;
  let host: DeviceHost;
  const logger = recordingLogger();

  before(async () => {
    dirs = hostDirs();
    host = await startHost(dirs, { logger, builtinParents: true });
  });
  after(async () => {
    await host.close();
    dirs.dispose();
  });

  const available = async (mdevType: string): Promise<number> => (await host.types()).find((t) => t.mdevType === mdevType)?.availableInstances ?? -1;

  it('reports its status and the parent types with availability', async () => {
    const status = await host.status();
    assert.equal(status.pid, process.pid);
    assert.equal(status.controlSocket, join(dirs.runDir, 'control.sock'));
    assert.deepEqual(status.parents.map((p) => p.name), ['memory-pool', 'gpio-bank', 'hostfix']);
    const types = await host.types({ parent: 'hostfix' });
    assert.deepEqual(types.map((t) => [t.mdevType, t.availableInstances]), [['hostfix-echo', 3], ['hostfix-big', 1], ['hostfix-crash', 3]]);
    assert.deepEqual(types[0]?.attributes.map((a) => a.name), ['value', 'fail']);
    assert.deepEqual(await host.types({ parent: 'nope' }), []);
    assert.equal(statSync(dirs.runDir).mode & 0o777, 0o700);
    assert.equal(statSync(status.controlSocket).mode & 0o777, 0o600);
  });

  it('starts a transient instance with its attributes applied, serves it on <runDir>/<uuid>.sock, shows its client, forces it off with force', async () => {
    const status = await host.start({ uuid: U1.toUpperCase(), parent: 'hostfix', mdevType: 'hostfix-echo', attrs: [{ value: '7' }, { value: '1234' }] });
    assert.equal(status.uuid, U1);
    assert.equal(status.state, 'active');
    assert.equal(status.socket, join(dirs.runDir, `${U1}.sock`));
    assert.equal(status.defined, false);
    assert.equal(statSync(status.socket).mode & 0o777, 0o600);
    assert.equal(await available('hostfix-echo'), 2);
    assert.equal(await available('hostfix-big'), 1);
    const client = await VfioUserClient.connect(status.socket);
    try {
      assert.equal(u32(await client.regionRead(BAR0, 0n, 4)), 1234); // attributes applied in order: the last value wins
      const listed = await until(async () => {
        const [one] = (await host.list({ uuid: U1 })).instances;
        return one?.client ? one : undefined;
      }, 'the client to show in list');
      assert.equal(listed?.client?.pid, process.pid);
      assert.equal(listed?.client?.uid, process.getuid?.());
      assert.ok(logger.named('client-connected').some((e) => e.uuid === U1 && (e.client as { pid: number }).pid === process.pid));
      const stopped = await host.stop({ uuid: U1, force: true });
      assert.equal(stopped.uuid, U1);
      assert.deepEqual([stopped.release, stopped.requests], ['forced', 0], 'forced at once: no release request');
      await client.closed; // the client was told: its connection closed
    } finally {
      client.close();
    }
    assert.equal(existsSync(join(dirs.runDir, `${U1}.sock`)), false);
    assert.deepEqual((await host.list()).instances, []);
    assert.equal(await available('hostfix-echo'), 3);
    assert.ok(logger.named('instance-started').some((e) => e.uuid === U1));
    assert.ok(logger.named('instance-stopped').some((e) => e.uuid === U1 && e.force === true));
  });

  it('rolls back an instance whose attribute fails: nothing left (no socket, no record, no fd, availability intact)', async () => {
    const fds = openFds();
    await assert.rejects(host.start({ uuid: U2, parent: 'hostfix', mdevType: 'hostfix-echo', attrs: [{ value: '5' }, { fail: 'x' }] }), errno('ERANGE', /attribute 1.*fail.*refused on purpose/));
    await assert.rejects(host.start({ uuid: U2, parent: 'hostfix', mdevType: 'hostfix-echo', attrs: [{ value: 'not a number' }] }), errno('EINVAL', /value not a number is not a u32/));
    assert.equal(existsSync(join(dirs.runDir, `${U2}.sock`)), false);
    assert.deepEqual((await host.list()).instances, []);
    assert.equal(await available('hostfix-echo'), 3);
    await until(() => openFds() <= fds, 'the failed workers\' fds to be closed');
    // Each rollback leaves one structured line for the operator: which instance, the errno, the reason.
    const failed = logger.named('instance-start-failed').filter((e) => e.uuid === U2);
    assert.deepEqual(failed.map((e) => [e.level, e.parent, e.mdevType, e.errno]), [['warn', 'hostfix', 'hostfix-echo', 'ERANGE'], ['warn', 'hostfix', 'hostfix-echo', 'EINVAL']]);
    assert.match(String(failed[0]?.reason), /attribute 1.*fail.*refused on purpose/);
  });

  it('refuses bad requests before any side effect, each with one line and its errno', async () => {
    const cases: [() => Promise<unknown>, string, RegExp][] = [
      [() => host.start({ parent: 'nope', mdevType: 'nope-x' }), 'ENOENT', /Unable to find parent device 'nope'/],
      [() => host.start({ parent: 'HOSTFIX', mdevType: 'hostfix-echo' }), 'ENOENT', /Did you mean 'hostfix'/],
      [() => host.start({ parent: 'hostfix', mdevType: 'hostfix-none' }), 'ENOENT', /does not support mdev type hostfix-none/],
      [() => host.start({ parent: 'hostfix', mdevType: 'hostfix-echo', attrs: [{ colour: 'red' }] }), 'EINVAL', /attribute 0 \(colour\).*accepts value, fail/],
      [() => host.start({ uuid: 'not-a-uuid', parent: 'hostfix', mdevType: 'hostfix-echo' }), 'EINVAL', /invalid UUID/],
      [() => host.start({ parent: 'hostfix', mdevType: 'hostfix-echo', config: { mdev_type: 'hostfix-echo', start: 'manual', attrs: [] } }), 'EINVAL', /conflicts with a type/],
      [() => host.start({ parent: 'hostfix', mdevType: 'hostfix-echo', start: 'auto' }), 'EINVAL', /start mode/],
      [() => host.start({ uuid: U3 }), 'ENOENT', /is not defined/],
      [() => host.start({ mdevType: 'hostfix-echo' }), 'EINVAL', /insufficiently specified/],
      [() => host.start({ parent: 'hostfix', mdevType: 'hostfix-echo', attrs: [{ a: '1', b: '2' }] as never }), 'EINVAL', /./],
      [() => host.stop({ uuid: U3 }), 'ENOENT', /is not running/],
      [() => host.stop({} as never), 'EINVAL', /UUID is required/],
      [() => host.define({ uuid: U3 }), 'EINVAL', /no parent specified/],
      [() => host.define({ uuid: U3, parent: 'hostfix' }), 'EINVAL', /no type specified/],
      [() => host.define({ uuid: U3, parent: 'hostfix', mdevType: 'hostfix-nope' }), 'ENOENT', /does not support/],
      [() => host.undefine({ uuid: U3 }), 'ENOENT', /No devices match/],
      [() => host.modify({ uuid: U3, start: 'auto' }), 'ENOENT', /is not defined/],
      [() => host.modify({ uuid: U3 }), 'EINVAL', /nothing to change/],
      [() => host.list({ uuid: 'x' }), 'EINVAL', /invalid UUID/],
      [() => host.types({ parent: 5 } as never), 'EINVAL', /parent must be/],
    ];
    for (const [call, code, pattern] of cases) await assert.rejects(call(), errno(code, pattern));
    assert.deepEqual((await host.list()).instances, []);
    assert.deepEqual((await host.list({ defined: true })).definitions, []);
    assert.equal(existsSync(join(dirs.configDir, 'hostfix')), false);
  });

  it('runs a UUID once: two concurrent starts → one wins, the other EEXIST', async () => {
    const results = await Promise.allSettled([
      host.start({ uuid: U2, parent: 'hostfix', mdevType: 'hostfix-echo' }),
      host.start({ uuid: U2, parent: 'hostfix', mdevType: 'hostfix-echo' }),
    ]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    const failed = results.find((r) => r.status === 'rejected');
    assert.ok(failed && failed.status === 'rejected');
    errno('EEXIST', /already exists/)(failed.reason);
    assert.equal((await host.list()).instances.length, 1);
    await host.stop({ uuid: U2 });
  });

  it('refuses beyond capacity with ENOSPC, and one big instance uses two slots', async () => {
    await host.start({ uuid: U1, parent: 'hostfix', mdevType: 'hostfix-big' });
    assert.equal(await available('hostfix-echo'), 1);
    assert.equal(await available('hostfix-big'), 0);
    await assert.rejects(host.start({ uuid: U2, parent: 'hostfix', mdevType: 'hostfix-big' }), errno('ENOSPC', /hostfix-big: no available instances/));
    await host.start({ uuid: U2, parent: 'hostfix', mdevType: 'hostfix-echo' });
    await assert.rejects(host.start({ uuid: U3, parent: 'hostfix', mdevType: 'hostfix-echo' }), errno('ENOSPC', /no available instances/));
    assert.equal(existsSync(join(dirs.runDir, `${U3}.sock`)), false);
    await host.stop({ uuid: U1 });
    await host.stop({ uuid: U2 });
    assert.equal(await available('hostfix-echo'), 3);
  });

  it('defines, lists, modifies, starts by UUID, and undefines (mdevctl files)', async () => {
    const defined = await host.define({ uuid: U3, parent: 'hostfix', mdevType: 'hostfix-echo', attrs: [{ value: '1' }] });
    assert.deepEqual(defined, { uuid: U3, parent: 'hostfix', config: { mdev_type: 'hostfix-echo', start: 'manual', attrs: [{ value: '1' }] }, active: false });
    const file = join(dirs.configDir, 'hostfix', U3);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { mdev_type: 'hostfix-echo', start: 'manual', attrs: [{ value: '1' }] });
    await assert.rejects(host.define({ uuid: U3, parent: 'hostfix', mdevType: 'hostfix-echo' }), errno('EEXIST', /already defined/));
    const generated = await host.define({ parent: 'hostfix', mdevType: 'hostfix-big', start: 'auto' });
    assert.match(generated.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);

    await host.modify({ uuid: U3, addAttr: { name: 'value', value: '99' } });
    await host.modify({ uuid: U3, addAttr: { name: 'value', value: '0', index: 0 } });
    const modified = await host.modify({ uuid: U3, start: 'auto' });
    assert.deepEqual(modified.config, { mdev_type: 'hostfix-echo', start: 'auto', attrs: [{ value: '0' }, { value: '1' }, { value: '99' }] });
    assert.deepEqual((await host.modify({ uuid: U3, delAttr: { index: 1 } })).config.attrs, [{ value: '0' }, { value: '99' }]);
    await assert.rejects(host.modify({ uuid: U3, delAttr: { index: 5 } }), errno('EINVAL'));
    await assert.rejects(host.modify({ uuid: U3, addAttr: { name: 'colour', value: 'red' } }), errno('EINVAL', /colour/));
    await assert.rejects(host.modify({ uuid: U3, mdevType: 'hostfix-nope' }), errno('ENOENT'));
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')).attrs, [{ value: '0' }, { value: '99' }]); // refused changes wrote nothing

    const listed = (await host.list({ defined: true })).definitions;
    assert.deepEqual(listed.map((d) => d.uuid).sort(), [U3, generated.uuid].sort());
    assert.deepEqual((await host.list({ defined: true, uuid: U3 })).definitions.map((d) => d.active), [false]);

    const started = await host.start({ uuid: U3 });
    assert.equal(started.defined, true);
    assert.equal(started.start, 'auto');
    assert.deepEqual(started.attrs, [{ value: '0' }, { value: '99' }]);
    const client = await VfioUserClient.connect(started.socket);
    assert.equal(u32(await client.regionRead(BAR0, 0n, 4)), 99);
    client.close();
    assert.deepEqual((await host.list({ defined: true, uuid: U3 })).definitions.map((d) => d.active), [true]);
    await assert.rejects(host.start({ uuid: U3, parent: 'hostfix', mdevType: 'hostfix-big' }), errno('EINVAL', /already exists on parent hostfix with type hostfix-echo/));
    await assert.rejects(host.start({ uuid: U3 }), errno('EEXIST'));

    // undefine leaves the running instance; define by UUID alone takes the running instance's parent, type and attributes
    assert.deepEqual((await host.undefine({ uuid: U3 })).removed.map((d) => [d.parent, d.active]), [['hostfix', true]]);
    assert.equal(existsSync(file), false);
    assert.equal((await host.list({ uuid: U3 })).instances[0]?.defined, false);
    const promoted = await host.define({ uuid: U3 });
    assert.deepEqual(promoted.config, { mdev_type: 'hostfix-echo', start: 'manual', attrs: [{ value: '0' }, { value: '99' }] });
    await until(async () => !(await host.list({ uuid: U3 })).instances[0]?.client, 'the client to be gone');
    await host.stop({ uuid: U3 });
    await host.undefine({ uuid: U3, parent: 'hostfix' });
    await host.undefine({ uuid: generated.uuid });
    assert.deepEqual((await host.list({ defined: true })).definitions, []);
  });

  it('lets a UUID be defined under two parents but run once; UUID-only operations then need a parent', async () => {
    await host.define({ uuid: U4, parent: 'hostfix', mdevType: 'hostfix-echo' });
    await host.define({ uuid: U4, parent: 'memory-pool', mdevType: 'memory-pool-64M', attrs: [{ fill: 'a5' }] });
    await assert.rejects(host.start({ uuid: U4 }), errno('EINVAL', /Multiple definitions found for device .*hostfix, memory-pool.*specify a parent/));
    await assert.rejects(host.modify({ uuid: U4, start: 'auto' }), errno('EINVAL', /Multiple definitions/));
    const running = await host.start({ uuid: U4, parent: 'memory-pool' });
    assert.equal(running.mdevType, 'memory-pool-64M');
    await assert.rejects(host.start({ uuid: U4, parent: 'hostfix' }), errno('EEXIST', /running on memory-pool/));
    assert.equal((await host.modify({ uuid: U4, parent: 'hostfix', start: 'auto' })).config.start, 'auto');
    await host.stop({ uuid: U4 });
    const { removed } = await host.undefine({ uuid: U4 });
    assert.deepEqual(removed.map((d) => d.parent), ['hostfix', 'memory-pool']);
    assert.deepEqual((await host.list({ defined: true })).definitions, []);
  });

  it('carries the same errors over the control socket', async () => {
    const api = await connectHost(host.controlSocket);
    try {
      assert.equal((await api.status()).pid, process.pid);
      await assert.rejects(api.start({ parent: 'nope', mdevType: 'x' }), errno('ENOENT', /Unable to find parent device 'nope'/));
      await assert.rejects(api.start({ parent: 'hostfix', mdevType: 'hostfix-echo', attrs: [{ fail: '1' }] }), errno('ERANGE', /refused on purpose/));
      const started = await api.start({ parent: 'hostfix', mdevType: 'hostfix-echo' });
      assert.equal((await api.list()).instances[0]?.uuid, started.uuid);
      await api.stop({ uuid: started.uuid });
    } finally {
      api.close();
    }
  });
});
