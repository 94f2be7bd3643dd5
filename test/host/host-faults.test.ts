/**
 * DeviceHost faults: callouts vetoing (nothing done) and forced, a cell that
 * dies being logged, shown failed and restarted on the same socket (and left
 * failed after too many deaths), auto definitions started at start with the
 * bad ones logged and skipped (corrupt file, unknown parent, failing
 * attribute), stale sockets replaced, a clean close, and run directories we
 * must refuse.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { VfioUserError } from '../../src/errors.js';
import type { DeviceHost } from '../../src/host/host.js';
import { hostDirs, recordingLogger, startHost, until, writeCallout, type HostDirs } from './host-support.js';

const U1 = 'aaaaaaaa-1111-4111-8111-111111111111';
const U2 = 'aaaaaaaa-2222-4222-8222-222222222222';
const U3 = 'aaaaaaaa-3333-4333-8333-333333333333';
const U4 = 'aaaaaaaa-4444-4444-8444-444444444444';
const U5 = 'aaaaaaaa-5555-4555-8555-555555555555';

const code = (name: string, pattern?: RegExp) => (e: unknown) => e instanceof VfioUserError && e.code === name && (pattern === undefined || pattern.test(e.message));
const u32 = (bytes: Uint8Array): number => new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);

/** Leaves a socket file nobody listens on at `path`, as a process killed with SIGKILL does. */
async function staleSocket(path: string): Promise<void> {
  const script = `require('node:net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'));`;
  await new Promise((resolve) => spawn(process.execPath, ['-e', script]).once('close', resolve));
  assert.ok(statSync(path).isSocket());
}

describe('DeviceHost: callouts', () => {
  let dirs: HostDirs;
  let host: DeviceHost;
  let log: string;
  const logger = recordingLogger();

  before(async () => {
    dirs = hostDirs();
    log = join(dirs.root, 'callouts.log');
    writeCallout(dirs.configDir, '10-veto', log, { vetoAction: 'start' });
    writeCallout(dirs.configDir, '50-notify', join(dirs.root, 'notify.log'), { kind: 'notifiers' });
    host = await startHost(dirs, { logger });
  });
  after(async () => {
    await host.close();
    dirs.dispose();
  });

  it('a vetoing pre-callout fails start with ECANCELED, nothing started; force goes on; each call gets mdevctl\'s arguments and the config on stdin', async () => {
    await assert.rejects(host.start({ uuid: U1, parent: 'hostfix', mdevType: 'hostfix-echo', attrs: [{ value: '3' }] }), code('ECANCELED', /start vetoed by callout 10-veto \(exit 1\): no start for you/));
    assert.equal(existsSync(join(dirs.runDir, `${U1}.sock`)), false);
    assert.deepEqual((await host.list()).instances, []);
    assert.ok(logger.named('callout-vetoed').some((e) => e.uuid === U1 && e.action === 'start'));
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    assert.ok(lines.includes(`-t hostfix-echo -e pre -a start -s none -u ${U1} -p hostfix | {"mdev_type":"hostfix-echo","start":"manual","attrs":[{"value":"3"}]}`), lines.join('\n'));
    assert.equal(lines.some((l) => l.includes('-e post -a start')), false); // vetoed: no post callout

    const forced = await host.start({ uuid: U1, parent: 'hostfix', mdevType: 'hostfix-echo', force: true });
    assert.equal(forced.state, 'active');
    const after = readFileSync(log, 'utf8');
    assert.match(after, new RegExp(`-e post -a start -s success -u ${U1} -p hostfix`));
    const notified = readFileSync(join(dirs.root, 'notify.log'), 'utf8');
    assert.match(notified, new RegExp(`-e notify -a start -s none -u ${U1}`)); // the vetoed one
    assert.match(notified, new RegExp(`-e notify -a start -s success -u ${U1}`));
    await host.stop({ uuid: U1 });
    assert.match(readFileSync(log, 'utf8'), new RegExp(`-e pre -a stop -s none -u ${U1} -p hostfix \\| \\{"mdev_type":"hostfix-echo"`));
  });

  it('a vetoed define writes nothing; a failing start still runs its post callout with state failure', async () => {
    writeCallout(dirs.configDir, '05-veto-define', join(dirs.root, 'define.log'), { vetoAction: 'define' });
    await assert.rejects(host.define({ uuid: U2, parent: 'hostfix', mdevType: 'hostfix-echo' }), code('ECANCELED', /define vetoed by callout 05-veto-define/));
    assert.equal(existsSync(join(dirs.configDir, 'hostfix', U2)), false);
    await assert.rejects(host.start({ uuid: U2, parent: 'hostfix', mdevType: 'hostfix-echo', attrs: [{ fail: '1' }], force: true }), code('ERANGE'));
    // 05-veto-define comes first and accepts start (exit 0), so it alone handles start's callouts (mdevctl: the first script that does not exit 2).
    assert.match(readFileSync(join(dirs.root, 'define.log'), 'utf8'), new RegExp(`-e post -a start -s failure -u ${U2}`));
  });
});

describe('DeviceHost: a cell that dies', () => {
  let dirs: HostDirs;
  let host: DeviceHost;
  const logger = recordingLogger();

  before(async () => {
    dirs = hostDirs();
    host = await startHost(dirs, { logger, restart: { initialDelayMs: 20, maxDelayMs: 100, maxRestarts: 2, windowMs: 60_000 } });
  });
  after(async () => {
    await host.close();
    dirs.dispose();
  });

  /** Makes the crash instance's worker throw (a read of BAR0 schedules an uncaught exception). */
  async function crash(socket: string): Promise<void> {
    const client = await VfioUserClient.connect(socket);
    try {
      await client.regionRead(0, 0n, 4);
    } catch {
      // the worker may die before the reply
    }
    await client.closed;
    client.close();
  }

  it('is logged, shown failed, restarted on the same socket; after too many deaths it stays failed until stopped', async () => {
    const started = await host.start({ uuid: U3, parent: 'hostfix', mdevType: 'hostfix-crash' });
    await crash(started.socket);
    await until(() => logger.named('instance-failed').some((e) => e.uuid === U3 && /a device bug outside any request/.test(String(e.reason))), 'instance-failed');
    const restarted = await until(async () => {
      const [s] = (await host.list({ uuid: U3 })).instances;
      return s?.state === 'active' && s.restarts === 1 ? s : undefined;
    }, 'the restart');
    assert.equal(restarted?.socket, started.socket);
    assert.ok(logger.named('instance-restarted').some((e) => e.uuid === U3 && e.restarts === 1));
    const client = await VfioUserClient.connect(started.socket); // served again on the same path
    assert.equal((await client.deviceInfo()).numRegions > 0, true);
    client.close();

    await until(async () => !(await host.list({ uuid: U3 })).instances[0]?.client, 'the client to be gone');
    await crash(started.socket);
    await until(async () => (await host.list({ uuid: U3 })).instances[0]?.restarts === 2, 'the second restart');
    await until(async () => (await host.list({ uuid: U3 })).instances[0]?.state === 'active', 'active again');
    await crash(started.socket);
    const failed = await until(async () => {
      const [s] = (await host.list({ uuid: U3 })).instances;
      return s?.state === 'failed' && logger.named('instance-restart-abandoned').length > 0 ? s : undefined;
    }, 'the instance to be left failed');
    assert.match(failed?.failure ?? '', /a device bug outside any request/);
    assert.equal(failed?.restarts, 2);
    assert.equal((await host.types()).find((t) => t.mdevType === 'hostfix-crash')?.availableInstances, 2); // still holds its slot
    await host.stop({ uuid: U3 });
    assert.equal(existsSync(started.socket), false);
    assert.deepEqual((await host.list()).instances, []);
  });
});

describe('DeviceHost: start-up and shutdown', () => {
  let dirs: HostDirs;
  before(() => {
    dirs = hostDirs();
    const def = (parent: string, uuid: string, text: string): void => {
      mkdirSync(join(dirs.configDir, parent), { recursive: true });
      writeFileSync(join(dirs.configDir, parent, uuid), text);
    };
    def('hostfix', U1, JSON.stringify({ mdev_type: 'hostfix-echo', start: 'auto', attrs: [{ value: '42' }] }));
    def('hostfix', U2, JSON.stringify({ mdev_type: 'hostfix-echo', start: 'manual', attrs: [] }));
    def('hostfix', U3, '{"mdev_type": "hostfix-echo", "start": "auto", "attrs": [');
    def('ghost', U4, JSON.stringify({ mdev_type: 'ghost-x', start: 'auto', attrs: [] }));
    def('hostfix', U5, JSON.stringify({ mdev_type: 'hostfix-echo', start: 'auto', attrs: [{ fail: 'now' }] }));
  });
  after(() => dirs.dispose());

  it('starts the auto definitions; a corrupt file, an unknown parent and a failing attribute are logged and skipped', async () => {
    const logger = recordingLogger();
    mkdirSync(dirs.runDir, { mode: 0o700 });
    await staleSocket(join(dirs.runDir, 'control.sock'));
    await staleSocket(join(dirs.runDir, `${U1}.sock`));
    const host = await startHost(dirs, { logger });
    try {
      const running = (await host.list()).instances;
      assert.deepEqual(running.map((i) => [i.uuid, i.state, i.start]), [[U1, 'active', 'auto']]);
      const client = await VfioUserClient.connect(join(dirs.runDir, `${U1}.sock`)); // the stale socket was replaced
      assert.equal(u32(await client.regionRead(0, 0n, 4)), 42);
      const failures = logger.named('autostart-failed');
      assert.ok(failures.some((e) => e.uuid === U4 && e.reason === 'parent not loaded'));
      assert.ok(failures.some((e) => e.uuid === U5 && /refused on purpose/.test(String(e.reason))));
      assert.ok(logger.events.some((e) => e.level === 'warn' && JSON.stringify(e).includes(U3)), 'the corrupt definition is reported');
      assert.equal((await host.list({ defined: true })).definitions.some((d) => d.uuid === U3), false);

      // close: the client is told, the sockets and control.sock are removed
      await host.close();
      await client.closed;
      client.close();
      assert.deepEqual(readdirSync(dirs.runDir), []);
    } finally {
      await host.close();
    }
  });

  it('close while a start is in progress leaves nothing running: no socket, no worker', async () => {
    const other = hostDirs();
    try {
      const host = await startHost(other, { autostart: false });
      const starting = host.start({ parent: 'hostfix', mdevType: 'hostfix-echo' }).then(
        (s) => s.uuid,
        (e: Error) => e,
      );
      await host.close();
      await starting; // succeeded just before the close, or refused: either way the close stopped it
      assert.deepEqual(readdirSync(other.runDir), []);
      assert.equal(host.instanceCount, 0);
      await assert.rejects(host.start({ parent: 'hostfix', mdevType: 'hostfix-echo' }), code('EIO', /shutting down/));
    } finally {
      other.dispose();
    }
  });

  it('refuses a run dir owned by another uid, or group-writable (EPERM), and a run dir path too long for sockets (EINVAL)', { skip: process.getuid?.() !== 0 ? 'needs root to chown' : false }, async () => {
    const other = join(dirs.root, 'other');
    mkdirSync(other, { mode: 0o700 });
    chownSync(other, 65534, 65534);
    await assert.rejects(startHost({ ...dirs, runDir: other }), code('EPERM', /owned by uid 65534/));
    const open = join(dirs.root, 'open');
    mkdirSync(open);
    chmodSync(open, 0o770);
    await assert.rejects(startHost({ ...dirs, runDir: open }), code('EPERM', /group- or world-writable/));
    await assert.rejects(startHost({ ...dirs, runDir: join(dirs.root, 'x'.repeat(80)) }), code('EINVAL', /too long/));
    assert.equal(existsSync(join(open, 'control.sock')), false);
  });
});
