/**
 * Serving on a socket someone else bound (a device host's main thread binds,
 * its worker serves): bindListening, UnixListener.fromFd, ServeOptions.listenFd
 * and the server's client credentials.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/native/addon.js';
import { bindListening, connectUnix, UnixListener } from '../../src/transport/unix-listener.js';
import type { UnixSocketTransport } from '../../src/transport/unix-socket.js';
import { SystemError } from '../../src/errors.js';
import { Errno } from '../../src/protocol/errno.js';
import { createDevice } from '../../src/device/device.js';
import { VfioUserClient } from '../../src/client/client.js';
import type { SessionClient } from '../../src/server/server.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { testDeviceDefinition } from '../support/server-fixture.js';

let dir = '';
before(() => (dir = mkdtempSync(join(tmpdir(), 'vfio-user-listen-fd-'))));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Resolves with the first transport a listener hands out. */
function firstConnection(): { onConnection: (t: UnixSocketTransport) => void; accepted: Promise<UnixSocketTransport> } {
  let resolve!: (t: UnixSocketTransport) => void;
  const accepted = new Promise<UnixSocketTransport>((r) => (resolve = r));
  return { onConnection: (t) => resolve(t), accepted };
}

describe('bindListening + UnixListener.fromFd', () => {
  it('binds 0600, accepts through fromFd, and close() leaves the socket file and the backlog to the binder', async () => {
    await assertNoFdLeak(async () => {
      const path = join(dir, 'a.sock');
      const fd = bindListening(path);
      assert.equal(statSync(path).mode & 0o777, 0o600);
      assert.equal(native.listening(fd), 1);
      const adopted = native.dup(fd);
      const first = firstConnection();
      const listener = UnixListener.fromFd(adopted, path, {}, first.onConnection);
      assert.equal(listener.path, path);
      const client = await connectUnix(path);
      const served = await first.accepted;
      assert.equal(served.peerCredentials()?.pid, process.pid);
      listener.close();
      assert.equal(existsSync(path), true); // the binder's file
      assert.equal(native.listening(fd), 1); // and its fd, still listening
      const waiting = await connectUnix(path); // queued in the backlog: nobody accepts, nobody refuses
      const second = firstConnection();
      const next = UnixListener.fromFd(native.dup(fd), path, {}, second.onConnection);
      (await second.accepted).close();
      next.close();
      for (const t of [client, served, waiting]) t.close();
      native.close(fd);
    });
  });

  it('refuses an fd that is not a listening socket, leaving it open', async () => {
    await assertNoFdLeak(() => {
      const [a, b] = native.socketPair();
      assert.throws(
        () => UnixListener.fromFd(a, 'pair', {}, () => undefined),
        (e: SystemError) => e.errno === Errno.EINVAL && /not a listening socket/.test(e.message),
      );
      assert.equal(native.listening(a), 0);
      const eventfd = native.eventfd(0, 0);
      assert.throws(() => UnixListener.fromFd(eventfd, 'eventfd', {}, () => undefined), (e: SystemError) => e.errno === 88); // ENOTSOCK
      native.close(eventfd);
      assert.throws(() => UnixListener.fromFd(eventfd, 'closed', {}, () => undefined), (e: SystemError) => e.errno === Errno.EBADF);
      for (const fd of [a, b]) assert.equal(native.close(fd), 0); // still open: fromFd did not close them
    });
  });

  it('replaces a stale socket file and refuses a live one, as listen does', () => {
    const path = join(dir, 'stale.sock');
    const old = bindListening(path);
    assert.throws(() => bindListening(path), (e: SystemError) => e.errno === Errno.EADDRINUSE);
    native.close(old); // the file stays, nobody listens: stale
    const fd = bindListening(path);
    assert.equal(native.listening(fd), 1);
    native.close(fd);
  });
});

describe('ServeOptions.listenFd', () => {
  it('serves a device on an adopted fd and reports the client; close() keeps the path', async () => {
    const path = join(dir, 'device.sock');
    const fd = bindListening(path);
    const device = createDevice(testDeviceDefinition());
    const seen: (number | undefined)[] = [];
    const server = device.serve({ path, listenFd: native.dup(fd), onClient: (c) => seen.push(c?.pid) });
    const clientOf = (): SessionClient | undefined => server.client; // not narrowed by the assertions below
    assert.equal(clientOf(), undefined);
    const before = Date.now();
    const client = await VfioUserClient.connect(path);
    await client.regionRead(0, 0n, 4); // the session has started by now
    const who = clientOf();
    assert.deepEqual({ pid: who?.pid, uid: who?.uid, gid: who?.gid }, { pid: process.pid, uid: process.getuid?.(), gid: process.getgid?.() });
    assert.ok((who?.since ?? 0) >= before && (who?.since ?? Infinity) <= Date.now());
    client.close();
    await server.idle();
    assert.equal(clientOf(), undefined);
    assert.deepEqual(seen, [process.pid, undefined]); // session start, then its end after cleanup
    await server.close();
    assert.equal(existsSync(path), true);
    device.dispose();
    native.close(fd);
  });

  it('a path-created server still removes its file on close', async () => {
    const path = join(dir, 'own.sock');
    const device = createDevice(testDeviceDefinition());
    const server = device.serve({ path });
    assert.equal(existsSync(path), true);
    await server.close();
    assert.equal(existsSync(path), false);
    device.dispose();
  });
});
