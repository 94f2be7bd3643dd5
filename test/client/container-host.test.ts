/**
 * A Container over a real device host (in process, the `groupfix` fixture
 * parent of test/host): two functions of one card share an isolation group,
 * a third instance is a group of its own. The container attaches the card's
 * group only whole, maps guest RAM into all three, and a member the host
 * stops is given back when its release request comes (the client closes it):
 * the host reports it released, the container forgets it and keeps serving
 * the others.
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { Container } from '../../src/client/container.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { InvalidArgumentError } from '../../src/errors.js';
import type { DeviceHost } from '../../src/host/host.js';
import { silentLogger } from '../../src/log.js';
import { hostDirs, startHost, until, type HostDirs } from '../host/host-support.js';

const GROUP_PARENT = fileURLToPath(new URL('../host/fixtures/host/group-parent.js', import.meta.url));
const [F1, F2, SOLO, F4] = ['c0000000-0000-4000-8000-000000000001', 'c0000000-0000-4000-8000-000000000002', 'c0000000-0000-4000-8000-000000000003', 'c0000000-0000-4000-8000-000000000004'] as const;

describe('Container over a device host', () => {
  let dirs: HostDirs;
  let host: DeviceHost;

  before(async () => {
    dirs = hostDirs();
    host = await startHost(dirs, { logger: silentLogger(), parents: [GROUP_PARENT] });
  });
  after(async () => {
    await host.close();
    dirs.dispose();
  });

  it('attaches a group only whole, maps into every member, takes a hot-added member alone, gives a member back on its release request', async () => {
    const f1 = (await host.start({ uuid: F1, parent: 'groupfix', mdevType: 'groupfix-fn', attrs: [{ card: 'c7' }] })).socket;
    const f2 = (await host.start({ uuid: F2, parent: 'groupfix', mdevType: 'groupfix-fn', attrs: [{ card: 'c7' }] })).socket;
    const solo = (await host.start({ uuid: SOLO, parent: 'groupfix', mdevType: 'groupfix-solo' })).socket;
    const clients: VfioUserClient[] = await Promise.all([f1, f2, solo].map((path) => VfioUserClient.connect(path, { logger: silentLogger() })));
    const [c1, c2, c3] = clients as [VfioUserClient, VfioUserClient, VfioUserClient];
    const memory = GuestMemory.create(0x10000);
    const container = new Container();
    try {
      assert.deepEqual(await c1.isolationGroup().then((g) => [g?.group, g?.self, g?.members.map((m) => m.uuid)]), ['groupfix/card=c7', F1, [F1, F2]]);
      await assert.rejects(container.attach(c1), (e) => e instanceof InvalidArgumentError && e.code === 'EINVAL' && e.message.includes(`missing ${F2} (${f2})`));
      await container.attachGroup([c1, c2]);
      await container.attach(c3); // its own group
      await container.map(memory, { iova: 0x100000n });
      assert.deepEqual(memory.attachments.map((a) => a.client), clients, 'mapped into every member');

      // A function hot-added into the card's (owned) group is claimed for us, and joins the container alone.
      const f4 = (await host.start({ uuid: F4, parent: 'groupfix', mdevType: 'groupfix-fn', attrs: [{ card: 'c7' }] })).socket;
      const c4 = await VfioUserClient.connect(f4, { logger: silentLogger() });
      clients.push(c4);
      assert.deepEqual((await c4.isolationGroup())?.members.map((m) => [m.uuid, m.claimed]), [[F1, true], [F2, true], [F4, true]]);
      await container.attach(c4);
      assert.deepEqual(memory.attachments.map((a) => a.client), clients, 'the late member received the mapping');
      c4.close();
      // The host sees the close before the stop (else the stop would find the session still there and end 'released').
      await until(async () => (await host.list()).instances.find((i) => i.uuid === F4)?.client === undefined, 'the host to see the member closed');
      assert.equal((await host.stop({ uuid: F4, timeoutMs: 60_000 })).release, 'idle');
      await until(() => container.devices.length === 3, 'the container to forget the closed member');
      assert.deepEqual(container.devices, [c1, c2, c3]);

      const asked: number[] = [];
      await c2.onReleaseRequest(({ count }) => {
        asked.push(count);
        c2.close(); // a cooperating client: give the device back
      });
      const result = await host.stop({ uuid: F2, timeoutMs: 60_000 });
      assert.equal(result.release, 'released');
      assert.equal(result.delivered, true);
      assert.deepEqual(asked.slice(0, 1), [1]);
      await until(() => container.devices.length === 2, 'the container to forget the released member');
      assert.deepEqual(container.devices, [c1, c3]);
      await container.map(memory, { iova: 0x200000n, mode: 'message' });
      assert.deepEqual(memory.attachments.map((a) => a.client), [c1, c3, c1, c3]);
      assert.deepEqual((await c1.isolationGroup())?.members.map((m) => m.uuid), [F1], 'the group lost the stopped member');
      await container.close();
      assert.deepEqual(memory.attachments, []);
    } finally {
      for (const c of clients) c.close();
      memory.dispose();
      for (const uuid of [F1, F2, SOLO, F4]) await host.stop({ uuid, force: true }).catch(() => undefined);
    }
  });
});
