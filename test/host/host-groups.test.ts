/**
 * Isolation groups in a DeviceHost (in process, the `groupfix` fixture parent), with real clients: this
 * process and a client process of its own (ownership is per pid). Viability and one owner across members
 * (the errno a refused client sees), the owner's death releasing the group, a member hot-added into an owned
 * group claimed for its owner (who is told), a member failing, and the audit lines of each decision.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { VfioUserError } from '../../src/errors.js';
import type { DeviceHost } from '../../src/host/host.js';
import { hostDirs, recordingLogger, startHost, until, type HostDirs } from './host-support.js';

const GROUP_PARENT = fileURLToPath(new URL('./fixtures/host/group-parent.js', import.meta.url));
const GROUP_CLIENT = fileURLToPath(new URL('./fixtures/host/group-client.js', import.meta.url));

/** What the client process printed for one socket. */
interface Attach {
  socket: string;
  ok: boolean;
  errno?: string;
  message?: string;
}

/** A client process: its attaches, its pid, and how to end it. */
interface OtherClient {
  attaches: Attach[];
  pid: number;
  kill(): Promise<void>;
}

/** Runs the client process (`probe`: attach and exit; `hold`: attach and stay) and waits until it has tried every socket. */
function otherClient(mode: 'probe' | 'hold', sockets: readonly string[]): Promise<OtherClient> {
  const child = spawn(process.execPath, [GROUP_CLIENT, mode, ...sockets], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    let out = '';
    const attaches: Attach[] = [];
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      for (let nl = out.indexOf('\n'); nl >= 0; nl = out.indexOf('\n')) {
        const line = JSON.parse(out.slice(0, nl)) as Attach & { done?: boolean; pid?: number };
        out = out.slice(nl + 1);
        if (line.done) {
          resolve({
            attaches,
            pid: line.pid ?? -1,
            kill: async () => {
              child.kill('SIGKILL');
              await exited;
            },
          });
        } else attaches.push(line);
      }
    });
    void exited.then(() => reject(new Error('the client process exited before it was done')));
  });
}

const refusedWith = (code: string, pattern: RegExp) => (e: unknown) => {
  assert.ok(e instanceof VfioUserError, String(e));
  assert.equal(e.code, code, e.message);
  assert.match(e.message, pattern);
  return true;
};

describe('DeviceHost isolation groups', () => {
  let dirs: HostDirs;
  let host: DeviceHost;
  const logger = recordingLogger();
  const audits = (name: string): Record<string, unknown>[] => logger.events.filter((e) => e.event === 'audit' && e.audit === name);
  const fn = async (uuid: string, card: string): Promise<string> => (await host.start({ uuid, parent: 'groupfix', mdevType: 'groupfix-fn', attrs: [{ card }] })).socket;
  const groupNamed = async (id: string) => (await host.groups()).find((g) => g.group === id);

  before(async () => {
    dirs = hostDirs();
    host = await startHost(dirs, { logger, parents: [GROUP_PARENT] });
  });
  after(async () => {
    await host.close();
    dirs.dispose();
  });

  it('one owner across the members: its process attaches them all, another process is refused EBUSY until the owner leaves', async () => {
    const [A, B, S] = ['a1000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000002', 'a1000000-0000-4000-8000-000000000003'];
    const a = await fn(A, 'c1');
    const b = await fn(B, 'c1');
    const s = (await host.start({ uuid: S, parent: 'groupfix', mdevType: 'groupfix-solo' })).socket;
    const first = await VfioUserClient.connect(a);
    let second: VfioUserClient | undefined;
    try {
      const other = await otherClient('probe', [b, s]);
      assert.deepEqual(other.attaches.map((x) => [x.socket, x.ok, x.errno]), [[b, false, 'EBUSY'], [s, true, undefined]]);
      assert.match(other.attaches[0]?.message ?? '', /owned by another client/);
      second = await VfioUserClient.connect(b); // the owner's own process: admitted
      const group = await groupNamed('groupfix/card=c1');
      assert.ok(group);
      assert.equal(group.viable, true);
      assert.deepEqual(group.owner, { pid: process.pid, uid: process.getuid?.(), gid: process.getgid?.() });
      assert.deepEqual(group.members.map((m) => [m.uuid, m.state, m.claimed]), [[A, 'active', true], [B, 'active', true]]);
      assert.equal((await host.list({ uuid: B })).instances[0]?.group, 'groupfix/card=c1');
      assert.equal((await host.list({ uuid: S })).instances[0]?.group, `groupfix/${S}`);
      const claim = audits('claim').find((e) => e.group === 'groupfix/card=c1');
      assert.deepEqual(claim?.owner, group.owner);
      const refusal = audits('refuse').find((e) => e.uuid === B);
      assert.equal(refusal?.errno, 'EBUSY');
      assert.equal((refusal?.client as { pid: number }).pid, other.pid);
      assert.match(String(refusal?.reason), new RegExp(`owned by pid ${process.pid}`));
    } finally {
      first.close();
      second?.close();
    }
    await until(async () => (await groupNamed('groupfix/card=c1'))?.owner === null, 'the group to be released');
    assert.ok(audits('release').some((e) => e.group === 'groupfix/card=c1'));
    const next = await otherClient('probe', [b]);
    assert.deepEqual(next.attaches.map((x) => x.ok), [true], 'released: the next client claims it');
    for (const uuid of [A, B, S]) await host.stop({ uuid });
    assert.equal(await groupNamed('groupfix/card=c1'), undefined, 'no member left: no group');
  });

  it('a group with a defined member that is not running is not viable: attaching refused EPERM, until it runs', async () => {
    const [C, D] = ['a2000000-0000-4000-8000-000000000001', 'a2000000-0000-4000-8000-000000000002'];
    await host.define({ uuid: C, parent: 'groupfix', mdevType: 'groupfix-fn', attrs: [{ card: 'c2' }] });
    const d = await fn(D, 'c2');
    const group = await groupNamed('groupfix/card=c2');
    assert.deepEqual(group?.members.map((m) => [m.uuid, m.state]), [[C, 'inactive'], [D, 'active']]);
    assert.equal(group?.viable, false);
    await assert.rejects(VfioUserClient.connect(d), refusedWith('EPERM', /not viable/));
    const refusal = audits('refuse').find((e) => e.uuid === D);
    assert.equal(refusal?.errno, 'EPERM');
    assert.match(String(refusal?.reason), new RegExp(`member ${C} inactive`));
    await host.start({ uuid: C });
    assert.equal((await groupNamed('groupfix/card=c2'))?.viable, true);
    const client = await VfioUserClient.connect(d);
    client.close();
    await until(async () => (await groupNamed('groupfix/card=c2'))?.owner === null, 'the group to be released');
    await host.stop({ uuid: C });
    await host.stop({ uuid: D });
    await host.undefine({ uuid: C });
  });

  it("the owner's death releases the group; the next client claims it", async () => {
    const [E, F] = ['a3000000-0000-4000-8000-000000000001', 'a3000000-0000-4000-8000-000000000002'];
    const e = await fn(E, 'c3');
    const f = await fn(F, 'c3');
    const owner = await otherClient('hold', [e]);
    try {
      assert.deepEqual(owner.attaches.map((x) => x.ok), [true]);
      await until(async () => (await groupNamed('groupfix/card=c3'))?.owner?.pid === owner.pid, 'the client process to own the group');
      await assert.rejects(VfioUserClient.connect(f), refusedWith('EBUSY', /owned by another client/));
    } finally {
      await owner.kill();
    }
    await until(async () => (await groupNamed('groupfix/card=c3'))?.owner === null, 'the dead owner to release the group');
    const released = audits('release').find((e2) => e2.group === 'groupfix/card=c3');
    assert.equal((released?.owner as { pid: number }).pid, owner.pid);
    const client = await VfioUserClient.connect(f);
    try {
      assert.equal((await groupNamed('groupfix/card=c3'))?.owner?.pid, process.pid);
    } finally {
      client.close();
    }
    await host.stop({ uuid: E });
    await host.stop({ uuid: F });
  });

  it('a member started into an owned group is claimed for the owner (another client refused EBUSY) and the owner is told', async () => {
    const [G, H] = ['a4000000-0000-4000-8000-000000000001', 'a4000000-0000-4000-8000-000000000002'];
    const g = await fn(G, 'c4');
    const client = await VfioUserClient.connect(g);
    let second: VfioUserClient | undefined;
    try {
      const before = await client.isolationGroup();
      assert.equal(before?.group, 'groupfix/card=c4');
      assert.equal(before?.owner?.pid, process.pid);
      const changes: number[] = [];
      const stopWatching = await client.onGroupChange((view) => changes.push(view.generation));
      const h = await fn(H, 'c4');
      const hotAdd = audits('hot-add-claim').find((e) => e.uuid === H);
      assert.equal((hotAdd?.owner as { pid: number }).pid, process.pid);
      await until(() => changes.length > 0, 'the owner to be told of the new member');
      const after = await client.isolationGroup();
      assert.ok(after && before && after.generation > before.generation);
      assert.deepEqual(after.members.map((m) => [m.uuid, m.claimed]), [[G, true], [H, true]]);
      const other = await otherClient('probe', [h]);
      assert.deepEqual(other.attaches.map((x) => x.errno), ['EBUSY'], 'the new member is held for the owner');
      second = await VfioUserClient.connect(h);
      await stopWatching();
    } finally {
      client.close();
      second?.close();
    }
    await until(async () => (await groupNamed('groupfix/card=c4'))?.owner === null, 'the group to be released');
    await host.stop({ uuid: G });
    await host.stop({ uuid: H });
  });

  it('a member crashing inside an owned group makes it non-viable, logged, and the owner told', async () => {
    const [K, X] = ['a5000000-0000-4000-8000-000000000001', 'a5000000-0000-4000-8000-000000000002'];
    const k = await fn(K, 'c5');
    const x = (await host.start({ uuid: X, parent: 'groupfix', mdevType: 'groupfix-crash', attrs: [{ card: 'c5' }] })).socket;
    const owner = await VfioUserClient.connect(k);
    const crasher = await VfioUserClient.connect(x);
    try {
      const before = await owner.isolationGroup();
      assert.equal(before?.viable, true);
      const told: boolean[] = [];
      const stopWatching = await owner.onGroupChange((view) => told.push(view.viable));
      await crasher.regionRead(0, 0n, 4).catch(() => undefined); // its worker dies
      await until(() => audits('member-failed').some((e) => e.uuid === X), 'the failure to be logged');
      const failed = audits('member-failed').find((e) => e.uuid === X);
      assert.equal(failed?.group, 'groupfix/card=c5');
      assert.equal((failed?.owner as { pid: number }).pid, process.pid);
      await until(() => told.includes(false), 'the owner to be told the group is not viable');
      await stopWatching();
      await until(async () => (await host.list({ uuid: X })).instances[0]?.state === 'active', 'the crashed member to be restarted');
      await until(async () => (await groupNamed('groupfix/card=c5'))?.viable === true, 'the group to be viable again');
    } finally {
      owner.close();
      crasher.close();
    }
    await host.stop({ uuid: K });
    await host.stop({ uuid: X });
  });
});
