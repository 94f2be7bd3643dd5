/**
 * The `x-isolation-group` extension from the client's side, against our own
 * server (sample devices served in-process with `isolationGroup` and
 * `admit`): discovery, the group view, the argsz retry for a big group,
 * change notification, refusals at VERSION, and Container.attachGroup's
 * rules (every member together, viable groups only).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import { Container } from '../../src/client/container.js';
import type { TraceEvent } from '../../src/client/core.js';
import { InvalidArgumentError, ProtocolError, RemoteError, StateError } from '../../src/errors.js';
import { silentLogger, type Logger } from '../../src/log.js';
import type { IsolationGroupMember, IsolationGroupView } from '../../src/protocol/isolation-group.js';
import { IsolationGroupState } from '../../src/server/isolation-group.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { FakeServer, answerDeviceInfo, versionPayload } from '../support/fake-server.js';
import { wb } from '../support/wire-builder.js';
import { serveSample, withDevices, type Served } from './container-fixture.js';

const FEATURE_CMD = 16;
const GET = 1 << 16;
const E = { EPERM: 1, EBUSY: 16, ENOTSUP: 95 } as const;

const uuid = (n: number): string => `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`;

/** A group of `n` active members, none claimed, no owner. */
function groupOf(n: number, socketOf: (i: number) => string = (i) => `/run/vfio-user/${uuid(i)}.sock`): IsolationGroupView {
  const members: IsolationGroupMember[] = Array.from({ length: n }, (_, i) => ({ uuid: uuid(i), socket: socketOf(i), state: 'active', claimed: false }));
  return { group: 'card0/fn', generation: 1, viable: true, owner: null, members };
}

/** The group as member `i` serves it (with `self`). */
const asMember = (view: IsolationGroupView, i: number): IsolationGroupView => ({ ...view, self: uuid(i) });

/** Serves one DMA engine per member of `view` (member i's state has `self` = its uuid), runs `fn`, closes everything. */
async function withGroup(view: IsolationGroupView, fn: (served: Served[], states: IsolationGroupState[]) => Promise<void>): Promise<void> {
  const states = view.members.map((_, i) => new IsolationGroupState(asMember(view, i)));
  const served = states.map((isolationGroup) => serveSample('dma-engine', { isolationGroup }));
  try {
    await fn(served, states);
  } finally {
    for (const s of served) await s.close();
  }
}

const connect = (s: Served, trace?: (e: TraceEvent) => void): Promise<VfioUserClient> =>
  VfioUserClient.connect(s.path, { logger: silentLogger(), ...(trace ? { trace } : {}) });

describe('client: x-isolation-group', () => {
  it('discovers the advertised feature and reads the group; a server without it is its own group', () =>
    withGroup(groupOf(2), async ([first]) => {
      const client = await connect(first as Served);
      try {
        assert.equal(client.isolationGroupFeature, 0x8004);
        assert.deepEqual(await client.isolationGroup(), asMember(groupOf(2), 0));
      } finally {
        client.close();
      }
      await withDevices(['memory'], async ([plain]) => {
        assert.ok(plain);
        assert.equal(plain.isolationGroupFeature, undefined);
        assert.equal(await plain.isolationGroup(), undefined);
        await assert.rejects(plain.onGroupChange(() => undefined), (e) => e instanceof ProtocolError && e.errno === E.ENOTSUP);
      });
    }));

  it('retries the GET with the argsz the server asks for when the group does not fit', () => {
    const long = groupOf(40, (i) => `/run/vfio-user/a-rather-long-directory-name-for-the-test/${uuid(i)}.sock`);
    return withGroup(groupOf(1), async ([served], [state]) => {
      assert.ok(served && state);
      state.set({ ...long, self: uuid(0) });
      const trace: TraceEvent[] = [];
      const client = await connect(served, (e) => trace.push(e));
      try {
        const view = await client.isolationGroup();
        assert.equal(view?.members.length, 40);
        assert.deepEqual(view?.members.map((m) => m.socket), long.members.map((m) => m.socket));
        const gets = trace.filter((e) => e.direction === 'send' && e.header.cmd === FEATURE_CMD);
        const argsz = gets.map((e) => new DataView(e.payload.buffer, e.payload.byteOffset).getUint32(0, true));
        const json = new TextEncoder().encode(JSON.stringify(long)).length;
        assert.equal(gets.length, 2, 'one GET too small, one retry');
        assert.ok(json > 4096, `the group's JSON (${json} bytes) must not fit the first GET`);
        assert.ok(argsz[1] !== undefined && argsz[0] !== undefined && argsz[1] > argsz[0] && argsz[1] >= 16 + json, `argsz ${argsz.join(' then ')}`);
        assert.ok(gets.every((e) => (new DataView(e.payload.buffer, e.payload.byteOffset).getUint32(4, true) & GET) !== 0));
      } finally {
        client.close();
      }
    });
  });

  it('onGroupChange calls back with the new view after each change; dispose unregisters; no fd left', () =>
    assertNoFdLeak(() =>
      withGroup(groupOf(2), async ([served], [state]) => {
        assert.ok(served && state);
        const client = await connect(served);
        try {
          const views: IsolationGroupView[] = [];
          let wake: (() => void) | undefined;
          const dispose = await client.onGroupChange((v) => {
            views.push(v);
            wake?.();
          });
          const next = async (n: number): Promise<IsolationGroupView> => {
            while (views.length < n) await new Promise<void>((resolve) => (wake = resolve));
            return views[n - 1] as IsolationGroupView;
          };
          const failed = groupOf(2);
          failed.generation = 2;
          failed.viable = false;
          (failed.members[1] as IsolationGroupMember).state = 'failed';
          state.set(asMember(failed, 0));
          const seen = await next(1);
          assert.equal(seen.generation, 2);
          assert.equal(seen.viable, false);
          assert.deepEqual(seen.members.map((m) => m.state), ['active', 'failed']);
          state.set(asMember({ ...groupOf(3), generation: 3 }, 0));
          assert.deepEqual((await next(2)).members.map((m) => m.uuid), [uuid(0), uuid(1), uuid(2)]);
          await dispose();
          await dispose();
          state.set(asMember({ ...groupOf(3), generation: 4 }, 0));
          // One round trip after the change: a notification would have been read by now.
          assert.equal((await client.isolationGroup())?.generation, 4);
          await new Promise((resolve) => setImmediate(resolve));
          assert.equal(views.length, 2, 'nothing heard after dispose');
        } finally {
          client.close();
        }
      }),
    ));

  it('a change listener that throws is logged; the others still hear the change', () =>
    withGroup(groupOf(1), async ([served], [state]) => {
      assert.ok(served && state);
      const errors: unknown[] = [];
      const logger: Logger = { ...silentLogger(), error: (o: object) => void errors.push(o) };
      const client = await VfioUserClient.connect(served.path, { logger });
      try {
        let heard: (v: IsolationGroupView) => void = () => undefined;
        const seen = new Promise<IsolationGroupView>((resolve) => (heard = resolve));
        await client.onGroupChange(() => {
          throw new Error('listener bug');
        });
        await client.onGroupChange((v) => heard(v));
        state.set(asMember({ ...groupOf(1), generation: 7 }, 0));
        assert.equal((await seen).generation, 7);
        await new Promise((resolve) => setImmediate(resolve));
        assert.equal(errors.length, 1, 'the failing listener was logged');
      } finally {
        client.close();
      }
    }));

  it('turns refusals at VERSION into errors that say why (EBUSY owned, EPERM not viable)', async () => {
    for (const [errno, pattern] of [
      [E.EBUSY, /isolation group is owned by another client \(EBUSY\)/],
      [E.EPERM, /not viable: a member of its isolation group is not active \(EPERM\)/],
    ] as const) {
      const served = serveSample('dma-engine', { isolationGroup: new IsolationGroupState(groupOf(1)), admit: () => Promise.resolve({ ok: false, errno, message: 'test' }) });
      try {
        await assert.rejects(connect(served), (e) => {
          assert.ok(e instanceof RemoteError, String(e));
          assert.equal(e.errno, errno);
          assert.equal(e.command, 1);
          assert.match(e.message, pattern);
          assert.ok(e.message.includes(served.path), 'names the socket');
          return true;
        });
      } finally {
        await served.close();
      }
    }
  });
});

describe('Container.attachGroup with isolation groups', () => {
  it('requires every member of the group, naming the missing ones', () =>
    withGroup(groupOf(3), async (served) => {
      const clients = await Promise.all(served.map((s) => connect(s)));
      const container = new Container();
      try {
        await assert.rejects(container.attach(clients[0] as VfioUserClient), (e) => {
          assert.ok(e instanceof InvalidArgumentError);
          assert.equal(e.code, 'EINVAL');
          assert.match(e.message, /card0\/fn has 3 members/);
          assert.ok(e.message.includes(`${uuid(1)} (/run/vfio-user/${uuid(1)}.sock)`) && e.message.includes(uuid(2)), e.message);
          assert.ok(!e.message.includes(`missing ${uuid(0)}`));
          return true;
        });
        await assert.rejects(container.attachGroup(clients.slice(0, 2)), (e) => e instanceof InvalidArgumentError && e.message.includes(uuid(2)) && !e.message.includes(uuid(1)));
        assert.deepEqual(container.devices, [], 'a refused group leaves nothing attached');
        await container.attachGroup(clients);
        assert.deepEqual(container.devices, clients);
        // Detaching one member takes its whole group out.
        assert.equal((await container.detach(clients[1] as VfioUserClient)).length, 3);
        await container.close();
      } finally {
        for (const c of clients) c.close();
      }
    }));

  it('refuses a group that is not viable (EPERM)', () => {
    const view = groupOf(2);
    view.viable = false;
    (view.members[1] as IsolationGroupMember).state = 'inactive';
    return withGroup(view, async (served) => {
      const clients = await Promise.all(served.map((s) => connect(s)));
      try {
        await assert.rejects(new Container().attachGroup(clients), (e) => e instanceof StateError && e.code === 'EPERM' && e.message.includes(`${uuid(1)} (inactive)`));
      } finally {
        for (const c of clients) c.close();
      }
    });
  });
});

describe('client: x-isolation-group against malformed replies', () => {
  const caps = '{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"x-isolation-group":{"feature":32772}}}';
  const feature = (argsz: number, data: Uint8Array = new Uint8Array(0)): Uint8Array => wb().u32(argsz).u32(0x8004 | GET).bytes(data).build();
  const groupData = (json: string): Uint8Array => {
    const text = new TextEncoder().encode(json);
    return wb().u32(text.length).u32(0).bytes(text).build();
  };
  const rows: Array<{ name: string; reply: (argsz: number) => Uint8Array }> = [
    { name: 'JSON that does not parse', reply: () => feature(24, groupData('{"group":')) },
    { name: 'a member badly typed', reply: () => feature(60, groupData('{"group":"g","generation":1,"viable":true,"owner":null,"members":[{"uuid":1}]}')) },
    { name: 'a length beyond the data', reply: () => feature(16, wb().u32(4000).u32(0).build()) },
    { name: 'an empty reply that asks for no more room', reply: (argsz) => feature(argsz) },
    { name: 'an empty reply asking for 2 MiB', reply: () => feature(2 << 20) },
    { name: 'an empty reply asking for more at every try', reply: (argsz) => feature(argsz + 4096) },
  ];
  for (const row of rows) {
    it(`${row.name}: EPROTO, and the client stays usable`, () =>
      assertNoFdLeak(async () => {
        const fake = FakeServer.start({
          onVersion: (m, c) => c.reply(m, versionPayload(0, 2, caps)),
          responder: (m, c) => {
            if (m.header.cmd === FEATURE_CMD) c.reply(m, row.reply(new DataView(m.payload.buffer, m.payload.byteOffset).getUint32(0, true)));
            else answerDeviceInfo(m, c);
          },
        });
        const client = await VfioUserClient.connect(fake.path, { logger: silentLogger() });
        try {
          assert.equal(client.isolationGroupFeature, 0x8004);
          await assert.rejects(client.isolationGroup(), (e) => e instanceof ProtocolError && e.code === 'EPROTO');
          assert.equal((await client.deviceInfo()).numRegions, 9);
        } finally {
          client.close();
          await fake.close();
        }
      }));
  }
});
