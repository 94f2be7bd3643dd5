/**
 * The control socket (src/host/control.ts) and its client (control-client.ts)
 * against a scripted HostApi: replies in order, errors carried with their
 * errno, malformed JSON and unknown ops answered without closing, an oversize
 * line answered EMSGSIZE and closed, the connection limit, a stale socket
 * replaced, a live one refused, mode 0600, and a refused uid (allowed list
 * excluding ours, checked from a child process running as another uid when we
 * are root).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { VfioUserError } from '../../src/errors.js';
import { Errno } from '../../src/protocol/errno.js';
import type { HostApi, HostStatus, StopResult } from '../../src/host/api.js';
import { ControlServer, type ControlReply } from '../../src/host/control.js';
import { connectHost } from '../../src/host/control-client.js';
import type { InstanceStatus } from '../../src/host/types.js';

/** Resolves once `check()` is true (polled). */
async function until(check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const STATUS: HostStatus = { pid: 1, runDir: '/r', configDir: '/c', controlSocket: '/r/control.sock', parents: [], instances: 0, startedAt: 5 };

/** A HostApi whose answers the test decides: `start` fails with the errno named in its uuid, `stop` waits for `release`. */
function scriptedApi(): HostApi & { calls: string[]; release(): void } {
  const calls: string[] = [];
  let release: () => void = () => {};
  const held = new Promise<void>((resolve) => (release = resolve));
  const none = { instances: [], definitions: [] };
  return {
    calls,
    release: () => release(),
    status: async () => (calls.push('status'), STATUS),
    types: async (r) => (calls.push(`types:${r?.parent ?? ''}`), []),
    list: async (r) => (calls.push(`list:${JSON.stringify(r)}`), none),
    define: async (r) => ({ uuid: r.uuid ?? 'x', parent: r.parent ?? 'p', config: { mdev_type: 'p-t', start: 'manual', attrs: [] }, active: false }),
    undefine: async () => ({ removed: [] }),
    start: async (r) => {
      const errno = Errno[r.uuid as keyof typeof Errno];
      if (errno !== undefined) throw new VfioUserError(`start ${r.uuid}: refused`, { errno });
      if (r.uuid === 'bug') throw new TypeError('a bug');
      return { uuid: r.uuid } as InstanceStatus;
    },
    stop: async (r) => {
      await held;
      return { uuid: r.uuid } as StopResult;
    },
    groups: async () => (calls.push('groups'), []),
    modify: async () => {
      throw new VfioUserError('not defined', { errno: Errno.ENOENT });
    },
  };
}

/** Sends raw lines, collects reply lines until the socket closes or `count` replies came. */
function raw(path: string, text: string | Buffer, count: number): Promise<{ replies: ControlReply[]; closed: boolean }> {
  return new Promise((resolve, reject) => {
    const socket: Socket = createConnection(path);
    const replies: ControlReply[] = [];
    let buffer = '';
    const done = (closed: boolean): void => {
      socket.destroy();
      resolve({ replies, closed });
    };
    socket.on('error', (e: NodeJS.ErrnoException) => (e.code === 'EPIPE' || e.code === 'ECONNRESET' ? undefined : reject(e)));
    socket.on('data', (d: Buffer) => {
      buffer += d.toString();
      for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
        replies.push(JSON.parse(buffer.slice(0, nl)) as ControlReply);
        buffer = buffer.slice(nl + 1);
      }
      if (replies.length >= count) done(false);
    });
    socket.on('close', () => done(true));
    socket.write(text);
  });
}


/** Why the test running a client as uid 65534 cannot run here (not root; this Node binary not executable by that uid, e.g. under /root), or false. */
function otherUidSkip(): string | false {
  if (process.getuid?.() !== 0) return 'needs root to run a client as another uid';
  const probe = spawnSync(process.execPath, ['-e', '0'], { uid: 65534, gid: 65534, stdio: 'ignore' });
  return probe.status === 0 ? false : `uid 65534 cannot run ${process.execPath} (${probe.error?.message ?? `exit ${probe.status}`})`;
}
describe('control socket', () => {
  let dir: string;
  let path: string;
  let api: ReturnType<typeof scriptedApi>;
  let server: ControlServer;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-user-control-'));
    path = join(dir, 'control.sock');
    api = scriptedApi();
    server = await ControlServer.listen(path, api, { limits: { maxLineBytes: 4096 } });
  });
  after(async () => {
    api.release();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('is a 0600 socket', () => {
    const st = statSync(path);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);
  });

  it('carries every operation and its result', async () => {
    const host = await connectHost(path);
    try {
      assert.deepEqual(await host.status(), STATUS);
      assert.deepEqual(await host.types({ parent: 'pool' }), []);
      assert.deepEqual(await host.list({ defined: true }), { instances: [], definitions: [] });
      assert.equal((await host.define({ uuid: 'u1', parent: 'q' })).parent, 'q');
      assert.deepEqual(await host.undefine({ uuid: 'u1' }), { removed: [] });
      assert.equal((await host.start({ uuid: 'fine' })).uuid, 'fine');
      assert.ok(api.calls.includes('types:pool'));
      assert.ok(api.calls.includes('list:{"defined":true}'));
    } finally {
      host.close();
    }
  });

  it("rejects with the host's errno and message", async () => {
    const host = await connectHost(path);
    try {
      for (const name of ['EBUSY', 'ENOSPC', 'ECANCELED', 'EEXIST'] as const) {
        await assert.rejects(host.start({ uuid: name }), (e: VfioUserError) => e instanceof VfioUserError && e.errno === Errno[name] && e.message === `start ${name}: refused`);
      }
      await assert.rejects(host.modify({ uuid: 'x' }), (e: VfioUserError) => e.code === 'ENOENT' && e.message === 'not defined');
      // An error without an errno (a bug in the host) is EIO, the connection stays usable.
      await assert.rejects(host.start({ uuid: 'bug' }), (e: VfioUserError) => e.code === 'EIO' && e.message === 'a bug');
      assert.equal((await host.status()).pid, 1);
    } finally {
      host.close();
    }
  });

  it('answers malformed JSON, a non-object, a missing id and an unknown op with EINVAL, and keeps the connection', async () => {
    const lines = ['{not json', '[1,2]', '{"op":"status"}', '{"id":7,"op":"reboot"}', '{"id":8,"op":"list","args":3}', '{"id":9,"op":"status"}'];
    const { replies, closed } = await raw(path, `${lines.join('\n')}\n`, lines.length);
    assert.equal(closed, false);
    assert.deepEqual(
      replies.map((r) => [r.id, r.ok, r.ok ? undefined : r.error.errno]),
      [[null, false, 'EINVAL'], [null, false, 'EINVAL'], [null, false, 'EINVAL'], [7, false, 'EINVAL'], [8, false, 'EINVAL'], [9, true, undefined]],
    );
  });

  it('answers an oversize line with EMSGSIZE and closes', async () => {
    const { replies, closed } = await raw(path, `{"id":1,"op":"status","pad":"${'x'.repeat(8192)}"}\n`, 2);
    assert.equal(closed, true);
    assert.equal(replies.length, 1);
    assert.equal(replies[0]?.ok, false);
    assert.equal(replies[0]?.ok === false && replies[0].error.errno, 'EMSGSIZE');
  });

  it('answers requests in order even when an earlier one is slow', async () => {
    setTimeout(() => api.release(), 50);
    const { replies } = await raw(path, '{"id":"a","op":"stop","args":{"uuid":"slow"}}\n{"id":"b","op":"status"}\n', 2);
    assert.deepEqual(replies.map((r) => r.id), ['a', 'b']);
  });

  it("carries groups; waits for a stop's release timeout beyond the client's op timeout", async () => {
    const slowPath = join(dir, 'slow.sock');
    const base = scriptedApi();
    const slowApi: HostApi & { calls: string[] } = {
      ...base,
      stop: async (r) => {
        await new Promise((resolve) => setTimeout(resolve, 300));
        return { uuid: r.uuid, release: 'released', requests: 1, waitedMs: 300 } as StopResult;
      },
    };
    const slow = await ControlServer.listen(slowPath, slowApi);
    const host = await connectHost(slowPath, { timeoutMs: 100 });
    try {
      assert.deepEqual(await host.groups(), []);
      assert.ok(base.calls.includes('groups'));
      assert.equal((await host.stop({ uuid: 'u', timeoutMs: 60_000 })).release, 'released', 'the op timeout grows by the release timeout');
      await assert.rejects(host.stop({ uuid: 'u' }), (e: VfioUserError) => e.code === 'ETIMEDOUT', 'without a release timeout: the op timeout alone');
    } finally {
      host.close();
      await slow.close();
    }
  });

  it('refuses to start on a path another host answers on (EADDRINUSE), and on a non-socket (EEXIST)', async () => {
    await assert.rejects(ControlServer.listen(path, api), (e: VfioUserError) => e.code === 'EADDRINUSE');
    const file = join(dir, 'file.sock');
    writeFileSync(file, 'not a socket');
    await assert.rejects(ControlServer.listen(file, api), (e: VfioUserError) => e.code === 'EEXIST');
    assert.equal(statSync(file).isFile(), true);
  });
  it('refuses a connection beyond the limit with EAGAIN', async () => {
    const limited = await ControlServer.listen(join(dir, 'limited.sock'), api, { limits: { maxConnections: 3 } });
    const held = await Promise.all([connectHost(limited.path), connectHost(limited.path), connectHost(limited.path)]);
    try {
      await Promise.all(held.map((h) => h.status())); // all three admitted
      const extra = await connectHost(limited.path);
      await assert.rejects(extra.status(), (e: VfioUserError) => e.code === 'EAGAIN' && /too many control connections \(3\)/.test(e.message));
      extra.close();
    } finally {
      held.forEach((h) => h.close());
      await limited.close();
    }
  });
});

describe('control socket: a client that does not read its replies', () => {
  it('stops being read from (the host does not buffer its replies without bound), and gets every reply in order once it reads', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-control-'));
    let calls = 0;
    const big = 'x'.repeat(100_000);
    const api = { ...scriptedApi(), types: async () => (calls++, [{ big }] as never) };
    const server = await ControlServer.listen(join(dir, 'control.sock'), api, { limits: { maxQueuedRequests: 4, maxBufferedReplyBytes: 64 * 1024 } });
    const total = 200; // 20 MB of replies: far beyond what the kernel's socket buffers hold
    const socket = createConnection(server.path);
    try {
      await new Promise((resolve) => socket.once('connect', resolve));
      socket.pause(); // never read
      for (let id = 0; id < total; id++) socket.write(`{"id":${id},"op":"types"}\n`);
      let seen = -1;
      await until(async () => {
        const before = calls;
        await new Promise((resolve) => setTimeout(resolve, 300));
        seen = calls;
        return calls === before;
      });
      assert.ok(seen < total, `the host answered ${seen} of ${total} requests nobody read`);
      const ids: number[] = [];
      let buffer = '';
      socket.on('data', (d: Buffer) => {
        buffer += d.toString();
        for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
          ids.push((JSON.parse(buffer.slice(0, nl)) as ControlReply).id as number);
          buffer = buffer.slice(nl + 1);
        }
      });
      socket.resume();
      await until(async () => ids.length === total);
      assert.deepEqual(ids, Array.from({ length: total }, (_, i) => i));
      assert.equal(calls, total);
    } finally {
      socket.destroy();
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('control socket: stale path, refused uid, no host', () => {
  let dir: string;
  before(() => (dir = mkdtempSync(join(tmpdir(), 'vfio-user-control-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('replaces a stale socket left by a dead server and removes its file on close', async () => {
    // A socket file nobody listens on: a server killed with SIGKILL leaves it behind.
    const script = `const net=require('node:net');const s=net.createServer();s.listen(${JSON.stringify(join(dir, 'killed.sock'))},()=>process.kill(process.pid,'SIGKILL'));`;
    await new Promise((resolve) => spawn(process.execPath, ['-e', script]).once('close', resolve));
    const killed = join(dir, 'killed.sock');
    assert.ok(statSync(killed).isSocket(), 'the killed server left its socket file');
    const server = await ControlServer.listen(killed, scriptedApi());
    const host = await connectHost(killed);
    assert.equal((await host.status()).pid, 1);
    host.close();
    await server.close();
    assert.equal(existsSync(killed), false);
  });

  it('says there is no host at a missing or dead socket, in one line', async () => {
    const missing = join(dir, 'none.sock');
    await assert.rejects(connectHost(missing), (e: VfioUserError) => e.code === 'ENOENT' && e.message === `no vfio-user host at ${missing} (start one: vfio-user host)`);
    const script = `const net=require('node:net');const s=net.createServer();s.listen(${JSON.stringify(join(dir, 'dead.sock'))},()=>process.kill(process.pid,'SIGKILL'));`;
    await new Promise((resolve) => spawn(process.execPath, ['-e', script]).once('close', resolve));
    await assert.rejects(connectHost(join(dir, 'dead.sock')), (e: VfioUserError) => e.code === 'ECONNREFUSED' && /^no vfio-user host at .*dead\.sock \(start one: vfio-user host\)$/.test(e.message));
  });

  it('refuses a uid that is not allowed with EPERM (another uid in a child process, when we are root)', { skip: otherUidSkip() }, async () => {
    const sub = join(dir, 'perm');
    const path = join(sub, 'control.sock');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(sub, { mode: 0o755 });
    chmodSync(dir, 0o755);
    const server = await ControlServer.listen(path, scriptedApi(), { allowedUids: [4242] });
    chmodSync(path, 0o666); // let the other uid reach the socket: the peer check alone must refuse it
    try {
      const client = fileURLToPath(new URL('../../src/host/control-client.js', import.meta.url));
      const script = `const { connectHost } = await import(${JSON.stringify(client)});
        const h = await connectHost(${JSON.stringify(path)});
        try { await h.status(); console.log('allowed'); } catch (e) { console.log(e.code + ' ' + e.message); } finally { h.close(); }`;
      const run = (uid: number): Promise<string> =>
        new Promise((resolve, reject) => {
          const child = spawn(process.execPath, ['--input-type=module', '-e', script], { uid, gid: uid, stdio: ['ignore', 'pipe', 'inherit'] });
          let out = '';
          child.stdout.on('data', (d: Buffer) => (out += d.toString()));
          child.once('error', reject);
          child.once('close', () => resolve(out.trim()));
        });
      assert.equal(await run(65534), "EPERM uid 65534 is not allowed on this host's control socket (vfio-user host --allow-uid 65534)");
      assert.equal(await run(4242), 'allowed');
    } finally {
      await server.close();
    }
  });
});
