/**
 * The x-isolation-group extension on a plain DeviceServer (docs/protocol-extensions.md §8): advertised only with a
 * group, GET (JSON, argsz too small answered with the size needed), SET (one notification eventfd), PROBE, and
 * no received fd left open on any path.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { RemoteError } from '../../src/errors.js';
import { createEventFd, memfdCreate, native } from '../../src/native/addon.js';
import { Command, DeviceFeatureFlags } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { encodeDeviceFeature } from '../../src/protocol/feature.js';
import {
  decodeIsolationGroupData,
  encodeIsolationGroupData,
  isolationGroupFeatureOf,
  type IsolationGroupView,
} from '../../src/protocol/isolation-group.js';
import { decodeVersion, encodeVersion } from '../../src/protocol/version.js';
import { IsolationGroupState } from '../../src/server/isolation-group.js';
import type { ServeOptions } from '../../src/server/server.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { serveTestDevice, type ServedDevice } from '../support/server-fixture.js';
import { qemuVersionRequest } from '../support/qemu-version.js';
import { StepClient } from '../support/step-client.js';

const { GET, SET } = DeviceFeatureFlags;
const INDEX = 0x8004;

function view(generation: number, members = 2): IsolationGroupView {
  return {
    group: 'p/card0',
    parent: 'p',
    generation,
    viable: generation % 2 === 1,
    owner: generation > 1 ? { pid: 4242, uid: 1000, gid: 100 } : null,
    // Given unsorted: the server sorts by uuid.
    members: Array.from({ length: members }, (_, i) => ({
      uuid: `00000000-0000-4000-8000-${(members - i).toString(16).padStart(12, '0')}`,
      socket: `/run/vfio-user/p/${members - i}.sock`,
      state: 'active' as const,
      claimed: generation > 1,
    })),
  };
}

async function withGroup(state: IsolationGroupState | undefined, fn: (client: VfioUserClient, served: ServedDevice) => Promise<void>, options: Omit<ServeOptions, 'path'> = {}): Promise<void> {
  const served = serveTestDevice(undefined, { ...options, ...(state ? { isolationGroup: state } : {}) });
  const client = await VfioUserClient.connect(served.path);
  try {
    await fn(client, served);
  } finally {
    client.close();
    await served.close();
  }
}

/** DEVICE_FEATURE SET of the extension with `data`, sending `fds`; resolves with the reply (fds closed). */
async function set(client: VfioUserClient, fds: number[], data = new Uint8Array(0)): Promise<void> {
  const m = await client.request(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 8 + data.length, flags: INDEX | SET, data }), { fds });
  m.fds.closeRemaining();
}

const einval = (e: unknown): boolean => e instanceof RemoteError && e.errno === Errno.EINVAL;

describe('x-isolation-group', () => {
  it('is advertised only by a server given a group (and one that has a view now)', async () => {
    await withGroup(undefined, async (client) => {
      assert.equal(isolationGroupFeatureOf(client.serverAdvertised?.extra), undefined);
      await assert.rejects(client.deviceFeature(INDEX | GET), einval);
      assert.equal(await client.probeFeature(INDEX, GET), false);
    });
    await withGroup(new IsolationGroupState(), async (client) => {
      assert.equal(isolationGroupFeatureOf(client.serverAdvertised?.extra), undefined, 'a source without a view');
    });
    await withGroup(new IsolationGroupState(view(1)), async (client) => {
      assert.deepEqual(client.serverAdvertised?.extra, { 'x-isolation-group': { feature: INDEX } });
    });
  });

  it('GET: the group as JSON, members sorted; a too small argsz is answered with the size needed', () =>
    withGroup(new IsolationGroupState(view(3, 3)), async (client) => {
      const expected = encodeIsolationGroupData(view(3, 3));
      const small = await client.deviceFeature(INDEX | GET, new Uint8Array(0), 16);
      assert.equal(small.data.length, 0, 'the header alone');
      assert.equal(small.argsz, 8 + expected.length, 'the size needed');
      const full = await client.deviceFeature(INDEX | GET, new Uint8Array(0), small.argsz);
      assert.equal(full.argsz, small.argsz);
      assert.deepEqual(full.data, expected);
      const got = decodeIsolationGroupData(full.data);
      assert.deepEqual(
        got.members.map((m) => m.socket),
        ['/run/vfio-user/p/1.sock', '/run/vfio-user/p/2.sock', '/run/vfio-user/p/3.sock'],
      );
      assert.deepEqual([got.group, got.parent, got.generation, got.viable, got.owner?.pid], ['p/card0', 'p', 3, true, 4242]);
      const json = new TextDecoder().decode(full.data.subarray(8));
      assert.equal(new DataView(full.data.buffer, full.data.byteOffset).getUint32(0, true), json.length);
      assert.equal(JSON.parse(json).members.length, 3);
    }));

  it('PROBE GET, SET and GET|SET succeed (both ops are supported); GET|SET without PROBE fails', () =>
    withGroup(new IsolationGroupState(view(1)), async (client) => {
      assert.equal(await client.probeFeature(INDEX, GET), true);
      assert.equal(await client.probeFeature(INDEX, SET), true);
      assert.equal(await client.probeFeature(INDEX, GET | SET), true);
      await assert.rejects(client.deviceFeature(INDEX | GET | SET), einval);
    }));

  it('SET refuses data, two fds and a non-eventfd with EINVAL, closing every fd it received', async () => {
    const state = new IsolationGroupState(view(1));
    await assertNoFdLeak(() =>
      withGroup(state, async (client) => {
        const a = createEventFd();
        const b = createEventFd();
        const mem = memfdCreate('not-an-eventfd', 4096);
        try {
          await assert.rejects(set(client, [a], new Uint8Array(8)), einval);
          await assert.rejects(set(client, [a, b]), einval);
          await assert.rejects(set(client, [mem]), einval);
          await assert.rejects(client.deviceFeature(INDEX | GET | SET), einval);
          state.set(view(2));
          assert.equal(native.eventfdRead(a), -11, 'nothing registered by a refused SET');
        } finally {
          for (const fd of [a, b, mem]) native.close(fd);
        }
      }),
    );
  });

  it('SET registers one eventfd, signalled on every generation change; replaced and unregistered fds are closed', async () => {
    const state = new IsolationGroupState(view(1));
    await assertNoFdLeak(() =>
      withGroup(state, async (client) => {
        const first = createEventFd();
        const second = createEventFd();
        try {
          await set(client, [first]);
          state.set(view(1)); // same generation: no signal
          assert.equal(native.eventfdRead(first), -11);
          state.set(view(2));
          state.set(view(3));
          assert.equal(native.eventfdRead(first), 2n, 'one per change');
          await set(client, [second]); // replaces: the server's copy of `first` is closed
          state.set(view(4));
          assert.equal(native.eventfdRead(first), -11);
          assert.equal(native.eventfdRead(second), 1n);
          await set(client, []); // unregisters
          state.set(view(5));
          assert.equal(native.eventfdRead(second), -11);
          await set(client, [second]);
        } finally {
          native.close(first);
          native.close(second);
        }
      }),
    ); // the last registration's copy was closed with the session
  });

  it('a registration after a GET that is already stale signals at once', () => {
    const state = new IsolationGroupState(view(1));
    return withGroup(state, async (client) => {
      const efd = createEventFd();
      try {
        assert.equal(decodeIsolationGroupData((await client.deviceFeature(INDEX | GET)).data).generation, 1);
        state.set(view(2)); // nobody registered yet
        await set(client, [efd]);
        assert.equal(native.eventfdRead(efd), 1n);
      } finally {
        native.close(efd);
      }
    });
  });

  it('a VERSION too short for the member: not advertised, not offered', async () => {
    const served = serveTestDevice(undefined, { isolationGroup: new IsolationGroupState(view(1)) });
    const client = await StepClient.connect(served.path);
    try {
      await client.ok(Command.VERSION, encodeVersion({ major: 0, minor: 2, capabilities: { maxMsgFds: 8 } }));
      await client.fails(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 4096, flags: INDEX | GET, data: new Uint8Array(0) }), Errno.EINVAL);
    } finally {
      client.close();
      await served.close();
    }
  });

  it('QEMU (recognised by its VERSION) is not told: it would print "spurious capabilities" on every attach', async () => {
    const served = serveTestDevice(undefined, { isolationGroup: new IsolationGroupState(view(1)) });
    const client = await StepClient.connect(served.path);
    try {
      const reply = await client.ok(Command.VERSION, qemuVersionRequest());
      assert.equal(decodeVersion(reply.payload).capabilities?.extra, undefined);
      await client.fails(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 4096, flags: INDEX | GET, data: new Uint8Array(0) }), Errno.EINVAL);
    } finally {
      client.close();
      await served.close();
    }
  });

  it('a malformed view is refused by the state, which keeps the previous one', () => {
    const state = new IsolationGroupState(view(1));
    assert.throws(() => state.set({ ...view(2), members: [{ uuid: 'x', socket: 's', state: 'gone', claimed: false }] } as never), /state must be/);
    assert.throws(() => state.set({ ...view(2), generation: -1 }), /generation/);
    assert.equal(state.current()?.generation, 1);
  });
});
