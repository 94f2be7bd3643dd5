/**
 * A cell's clients are admitted by the host's main thread (the isolation-group owner and viability rules live
 * there), and read their group with the x-isolation-group extension the cell's worker serves.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { RemoteError } from '../../src/errors.js';
import { createEventFd, native } from '../../src/native/addon.js';
import { Command, DeviceFeatureFlags } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { decodeIsolationGroupData, isolationGroupFeatureOf, type IsolationGroupView } from '../../src/protocol/isolation-group.js';
import type { CellPeer } from '../../src/host/cell.js';
import { openFds, runDir, settledCount, startCell, u32, warmFdBaseline } from './cell-support.js';

const BAR0 = 0;
const { GET, SET } = DeviceFeatureFlags;

/** A refusal at VERSION, with this errno. */
function refusedWith(errno: number): (e: unknown) => boolean {
  return (e) => e instanceof RemoteError && e.errno === errno && e.command === Command.VERSION;
}

function groupOf(uuid: string, generation: number, owner: CellPeer | null = null): IsolationGroupView {
  return {
    group: 'cells/card0',
    parent: 'cells',
    generation,
    viable: true,
    owner,
    members: [
      { uuid: 'ffffffff-0000-4000-8000-000000000001', socket: '/run/x/f.sock', state: 'inactive', claimed: false },
      { uuid, socket: `/run/x/${uuid}.sock`, state: 'active', claimed: owner !== null },
    ],
  };
}

describe('instance cell: admission and the isolation group', () => {
  const run = runDir();
  let baselineFds = 0;

  before(async () => {
    baselineFds = await warmFdBaseline(run.dir);
  });
  after(() => run.dispose());

  it('asks the admission hook with the client credentials; admitted clients are served, refused ones get the errno', async () => {
    const asked: CellPeer[] = [];
    let answer: { ok: true } | { ok: false; errno: number; message: string } = { ok: true };
    const t = await startCell(run.dir, 'echo', { admit: (client) => (asked.push(client), Promise.resolve(answer)) }, [{ value: '9' }]);
    try {
      const first = await VfioUserClient.connect(t.socket.path);
      assert.equal(u32(await first.regionRead(BAR0, 0n, 4)), 9);
      first.close();
      await new Promise<void>((resolve) => t.cell.once('client', (c) => c === undefined && resolve()));
      assert.deepEqual(asked, [{ pid: process.pid, uid: process.getuid?.(), gid: process.getgid?.() }]);
      answer = { ok: false, errno: Errno.EBUSY, message: 'group cells/card0 is owned by pid 1' };
      await assert.rejects(VfioUserClient.connect(t.socket.path), refusedWith(Errno.EBUSY));
      t.cell.setAdmission(() => ({ ok: false, errno: Errno.EPERM, message: 'not viable' })); // synchronous hooks too
      await assert.rejects(VfioUserClient.connect(t.socket.path), refusedWith(Errno.EPERM));
      t.cell.setAdmission(undefined);
      const again = await VfioUserClient.connect(t.socket.path);
      again.close();
      assert.equal(asked.length, 2, 'the replaced hooks were not asked');
    } finally {
      await t.close();
    }
  });

  it('a hook that throws, rejects or answers garbage refuses with EPERM; the cell goes on serving', async () => {
    const hooks = [
      () => {
        throw new Error('hook bug');
      },
      () => Promise.reject(new Error('hook bug')),
      () => ({ ok: 'yes' }) as never,
      () => ({ ok: false, errno: -5, message: 'negative' }) as never,
    ];
    const t = await startCell(run.dir, 'echo');
    try {
      for (const hook of hooks) {
        t.cell.setAdmission(hook);
        await assert.rejects(VfioUserClient.connect(t.socket.path), refusedWith(Errno.EPERM));
      }
      t.cell.setAdmission(() => ({ ok: true }));
      const client = await VfioUserClient.connect(t.socket.path);
      assert.equal(u32(await client.regionRead(BAR0, 0n, 4)), 0);
      client.close();
    } finally {
      await t.close();
    }
  });

  it('a hook that does not answer in time refuses with EAGAIN; its late ok is reported as abandoned', async () => {
    let release!: () => void;
    const late = new Promise<void>((resolve) => (release = resolve));
    const t = await startCell(run.dir, 'echo', { admitTimeoutMs: 200, admit: () => late.then(() => ({ ok: true }) as const) });
    try {
      const abandoned = new Promise<CellPeer>((resolve) => t.cell.once('admission-abandoned', resolve));
      await assert.rejects(VfioUserClient.connect(t.socket.path), refusedWith(Errno.EAGAIN));
      release();
      assert.equal((await abandoned).pid, process.pid);
      assert.equal((await t.cell.status()).client, undefined, 'no session was started');
    } finally {
      await t.close();
    }
  });

  it('a stop while the verdict is pending closes the waiting client; a late ok is reported as abandoned', async () => {
    let release!: () => void;
    let asked!: () => void;
    const late = new Promise<void>((resolve) => (release = resolve));
    const waiting = new Promise<void>((resolve) => (asked = resolve));
    const t = await startCell(run.dir, 'echo', { admit: () => (asked(), late.then(() => ({ ok: true }) as const)) });
    const abandoned = new Promise<CellPeer>((resolve) => t.cell.once('admission-abandoned', resolve));
    const connecting = VfioUserClient.connect(t.socket.path).then(
      (client) => (client.close(), 'served'),
      (error: Error) => error.message,
    );
    await waiting;
    assert.equal((await t.cell.stop()).release, 'idle', 'an admission in progress is no client');
    assert.match(await connecting, /closed/);
    release();
    assert.equal((await abandoned).pid, process.pid);
    t.socket.close();
  });

  it('serves its group with x-isolation-group: advertised, GET with self, generation pushed with setGroup signals the eventfd', async () => {
    const t = await startCell(run.dir, 'echo', {}, [], (uuid) => groupOf(uuid, 1));
    const uuid = t.cell.spec.uuid;
    const client = await VfioUserClient.connect(t.socket.path);
    const efd = createEventFd();
    try {
      const index = isolationGroupFeatureOf(client.serverAdvertised?.extra);
      assert.equal(index, 0x8004);
      const read = async (): Promise<IsolationGroupView> => decodeIsolationGroupData((await client.deviceFeature((index as number) | GET, new Uint8Array(0), 8 + 4096)).data);
      const view = await read();
      assert.equal(view.self, uuid);
      assert.equal(view.generation, 1);
      assert.deepEqual(
        view.members.map((m) => m.uuid),
        ['ffffffff-0000-4000-8000-000000000001', uuid].sort(),
      );
      await client.request(Command.DEVICE_FEATURE, featureSet(index as number), { fds: [efd] }).then((m) => m.fds.closeRemaining());
      await t.cell.setGroup(groupOf(uuid, 1)); // same generation: no signal
      assert.equal(native.eventfdRead(efd), -11);
      const owner = { pid: process.pid, uid: 0, gid: 0 };
      await t.cell.setGroup(groupOf(uuid, 2, owner));
      assert.equal(native.eventfdRead(efd), 1n, 'signalled once for the new generation');
      const after = await read();
      assert.equal(after.generation, 2);
      assert.deepEqual(after.owner, owner);
      await assert.rejects(t.cell.setGroup({ ...groupOf(uuid, 3), viable: 'yes' } as never), { errno: Errno.EINVAL });
    } finally {
      native.close(efd);
      client.close();
      await t.close();
    }
  });

  it('without a group the extension is not advertised; a group set later is offered to the next client', async () => {
    const t = await startCell(run.dir, 'echo');
    try {
      const before = await VfioUserClient.connect(t.socket.path);
      assert.equal(isolationGroupFeatureOf(before.serverAdvertised?.extra), undefined);
      await assert.rejects(before.deviceFeature(0x8004 | GET), (e: RemoteError) => e.errno === Errno.EINVAL);
      before.close();
      await new Promise<void>((resolve) => t.cell.once('client', (c) => c === undefined && resolve()));
      await t.cell.setGroup(groupOf(t.cell.spec.uuid, 7));
      const later = await VfioUserClient.connect(t.socket.path);
      assert.equal(isolationGroupFeatureOf(later.serverAdvertised?.extra), 0x8004);
      assert.equal(decodeIsolationGroupData((await later.deviceFeature(0x8004 | GET)).data).generation, 7);
      later.close();
    } finally {
      await t.close();
    }
  });

  it('refuses a malformed initial group with EINVAL before starting anything', async () => {
    await assert.rejects(
      startCell(run.dir, 'echo', {}, [], (uuid) => ({ ...groupOf(uuid, 1), owner: { pid: 'me' } }) as never),
      (e: Error & { errno?: number }) => e.errno === Errno.EINVAL && /owner\.pid/.test(e.message),
    );
  });

  it('leaves no fd behind', async () => {
    assert.equal(await settledCount(openFds, baselineFds), baselineFds);
  });
});

/** A DEVICE_FEATURE SET of `index` with empty data (the eventfd goes with the message). */
function featureSet(index: number): Uint8Array {
  const payload = new Uint8Array(8);
  const view = new DataView(payload.buffer);
  view.setUint32(0, 8, true);
  view.setUint32(4, index | SET, true);
  return payload;
}
