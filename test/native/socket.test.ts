import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SystemError } from '../../src/errors.js';
import { callNative, closeFd, createEventFd, native, peerCredentials, throwIfErrno } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { waitFor } from './util.js';

const EAGAIN = 11;

describe('UNIX listening sockets', () => {
  let dir = '';
  before(() => (dir = mkdtempSync(join(tmpdir(), 'vfio-user-native-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('listen / accept / connect over a path; peerCred names us', () =>
    assertNoFdLeak(async () => {
      const path = join(dir, 'listen.sock');
      const server = callNative(() => native.unixSocket());
      const client = callNative(() => native.unixSocket());
      let conn = -1;
      try {
        native.bind(server, path);
        assert.ok(statSync(path).isSocket());
        native.listen(server, 4);
        assert.equal(native.accept(server), -EAGAIN);
        assert.equal(native.connect(client, path), 0);
        await waitFor(server);
        conn = throwIfErrno(native.accept(server), 'accept');
        const expected = { pid: process.pid, uid: process.getuid?.(), gid: process.getgid?.() };
        assert.deepEqual(native.peerCred(conn), expected);
        assert.deepEqual(peerCredentials(client), expected);
        assert.equal(native.write(client, new Uint8Array([1, 2])), 2);
        await waitFor(conn);
        const buf = new Uint8Array(4);
        assert.equal(native.read(conn, buf), 2);
      } finally {
        native.close(client);
        native.close(server);
        if (conn >= 0) closeFd(conn);
      }
    }));

  it('connect returns -errno; bind, listen and peerCred throw', () =>
    assertNoFdLeak(() => {
      const fd = native.unixSocket();
      try {
        assert.equal(native.connect(fd, join(dir, 'missing.sock')), -2, 'ENOENT');
        native.bind(fd, join(dir, 'taken.sock'));
        const other = native.unixSocket();
        try {
          assert.throws(() => native.bind(other, join(dir, 'taken.sock')), {
            message: 'bind: Address already in use',
            errno: 98,
            syscall: 'bind',
          });
          assert.throws(
            () => callNative(() => native.bind(other, join(dir, 'taken.sock')), 'taken.sock'),
            (error) =>
              error instanceof SystemError &&
              error.errno === 98 &&
              error.syscall === 'bind' &&
              error.message === 'bind (taken.sock): EADDRINUSE 98' &&
              (error.cause as { syscall?: string }).syscall === 'bind',
          );
          // Linux answers for an unconnected socket: no pid, uid and gid (uid_t)-1.
          assert.deepEqual(peerCredentials(other), { pid: 0, uid: 2 ** 32 - 1, gid: 2 ** 32 - 1 });
          const notSocket = createEventFd();
          try {
            assert.throws(
              () => peerCredentials(notSocket),
              (e) => e instanceof SystemError && e.syscall === 'getsockopt' && e.errno === 88,
            );
          } finally {
            native.close(notSocket);
          }
        } finally {
          native.close(other);
        }
      } finally {
        native.close(fd);
      }
    }));

  it('rejects bad paths with TypeError', () =>
    assertNoFdLeak(() => {
      const fd = native.unixSocket();
      try {
        assert.throws(() => native.bind(fd, 'x'.repeat(108)), TypeError);
        assert.throws(() => native.bind(fd, ''), TypeError);
        assert.throws(() => native.bind(fd, 'a\0b'), TypeError);
        assert.throws(() => native.connect(fd, 42 as unknown as string), TypeError);
      } finally {
        native.close(fd);
      }
    }));

  it('helpers: throwIfErrno and closeFd', () => {
    assert.equal(throwIfErrno(5, 'read'), 5);
    assert.throws(
      () => throwIfErrno(-EAGAIN, 'recvmsg'),
      (e) => e instanceof SystemError && e.code === 'EAGAIN' && e.syscall === 'recvmsg',
    );
    assert.throws(() => closeFd(-1), (e) => e instanceof SystemError && e.code === 'EBADF');
  });
});
