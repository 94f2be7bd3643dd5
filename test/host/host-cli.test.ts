/**
 * `vfio-user host` as a real process: the ready line, SIGTERM (clients told,
 * sockets removed, exit 0), a second host on the same run dir refused, and
 * SIGKILL then restart: the stale control and instance sockets are replaced
 * and every `auto` instance is back on the same path, serving the same
 * device.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { connectHost } from '../../src/host/control-client.js';
import { FIXTURE_PARENT, hostDirs, spawnHost, type HostDirs } from './host-support.js';

const AUTO = 'cccccccc-1111-4111-8111-111111111111';
const MANUAL = 'cccccccc-2222-4222-8222-222222222222';
const u32 = (bytes: Uint8Array): number => new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);

describe('vfio-user host (a child process)', () => {
  let dirs: HostDirs;
  let args: string[];
  before(() => {
    dirs = hostDirs();
    args = ['--run-dir', dirs.runDir, '--config-dir', dirs.configDir, '--parent', FIXTURE_PARENT];
  });
  after(() => dirs.dispose());

  it('prints its ready line, refuses a second host on the same run dir, stops on SIGTERM removing every socket (exit 0)', async () => {
    const host = spawnHost(args);
    try {
      const ready = await host.ready;
      assert.equal(ready, `host ready: control ${join(dirs.runDir, 'control.sock')}, 3 parents, 0 instances`);
      const second = spawnHost([...args, '--no-builtin-parents']);
      const { code } = await second.exited;
      assert.equal(code, 1);
      assert.equal(second.stderr().trim(), `vfio-user: ${join(dirs.runDir, 'control.sock')}: another host is running (its control socket answers)`);

      const api = await connectHost(join(dirs.runDir, 'control.sock'));
      const started = await api.start({ parent: 'hostfix', mdevType: 'hostfix-echo', attrs: [{ value: '5' }] });
      api.close();
      const client = await VfioUserClient.connect(started.socket);
      assert.equal(u32(await client.regionRead(0, 0n, 4)), 5);
      host.child.kill('SIGTERM');
      assert.deepEqual(await host.exited, { code: 0, signal: null });
      await client.closed; // told by its connection closing
      client.close();
      assert.deepEqual(readdirSync(dirs.runDir), []);
      const events = host
        .stderr()
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { event?: string });
      assert.deepEqual(
        ['host-started', 'instance-started', 'client-connected', 'host-stopping', 'instance-stopped', 'host-stopped'].filter((e) => !events.some((x) => x.event === e)),
        [],
      );
    } finally {
      host.child.kill('SIGKILL');
    }
  });

  it('exits 1 with one line when a parent does not load', async () => {
    const bad = spawnHost(['--run-dir', join(dirs.root, 'run2'), '--config-dir', dirs.configDir, '--parent', join(dirs.root, 'missing-parent.js')]);
    assert.equal((await bad.exited).code, 1);
    const lines = bad.stderr().trim().split('\n');
    assert.equal(lines.length, 1, bad.stderr());
    assert.match(lines[0] ?? '', /^vfio-user: .*missing-parent\.js/);
    assert.equal(existsSync(join(dirs.root, 'run2', 'control.sock')), false);
  });

  it('after SIGKILL, a new host replaces the stale sockets, brings every auto instance back on the same path and removes the other stale sockets', async () => {
    const first = spawnHost([...args, '--json']);
    let second: ReturnType<typeof spawnHost> | undefined;
    try {
      assert.equal(JSON.parse(await first.ready).instances, 0);
      const api = await connectHost(join(dirs.runDir, 'control.sock'));
      await api.define({ uuid: AUTO, parent: 'hostfix', mdevType: 'hostfix-echo', start: 'auto', attrs: [{ value: '77' }] });
      await api.define({ uuid: MANUAL, parent: 'hostfix', mdevType: 'hostfix-echo' });
      const auto = await api.start({ uuid: AUTO });
      await api.start({ uuid: MANUAL });
      api.close();
      first.child.kill('SIGKILL');
      assert.equal((await first.exited).signal, 'SIGKILL');
      const socket = join(dirs.runDir, `${AUTO}.sock`);
      assert.equal(auto.socket, socket);
      assert.ok(statSync(socket).isSocket(), 'the killed host left its sockets');
      assert.ok(statSync(join(dirs.runDir, 'control.sock')).isSocket());

      second = spawnHost(args);
      assert.equal(await second.ready, `host ready: control ${join(dirs.runDir, 'control.sock')}, 3 parents, 1 instances`);
      const client = await VfioUserClient.connect(socket);
      assert.equal(u32(await client.regionRead(0, 0n, 4)), 77);
      client.close();
      assert.equal(existsSync(join(dirs.runDir, `${MANUAL}.sock`)), false); // a stale socket of an instance not restarted is removed
      const api2 = await connectHost(join(dirs.runDir, 'control.sock'));
      assert.deepEqual((await api2.list()).instances.map((i) => [i.uuid, i.state]), [[AUTO, 'active']]);
      await api2.start({ uuid: MANUAL });
      api2.close();
      second.child.kill('SIGTERM');
      assert.equal((await second.exited).code, 0);
      assert.deepEqual(readdirSync(dirs.runDir), []);
    } finally {
      first.child.kill('SIGKILL');
      second?.child.kill('SIGKILL');
    }
  });
});
