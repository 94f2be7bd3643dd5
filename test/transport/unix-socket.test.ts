import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createEventFd, mapFd, memfdCreate, native, socketPair, unmap } from '../../src/native/addon.js';
import { UnixSocketTransport } from '../../src/transport/unix-socket.js';
import { UnixListener, connectUnix } from '../../src/transport/unix-listener.js';
import { FramingError } from '../../src/transport/framer.js';
import { ConnectionClosedError, SystemError } from '../../src/errors.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { collect } from '../support/collector.js';

let dir = '';
before(() => (dir = mkdtempSync(join(tmpdir(), 'vfio-user-transport-'))));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A raw 16-byte header, built by hand. */
function header(msgId: number, cmd: number, msgSize: number, flags = 0): Uint8Array {
  const b = new Uint8Array(16);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, msgId, true);
  dv.setUint16(2, cmd, true);
  dv.setUint32(4, msgSize, true);
  dv.setUint32(8, flags, true);
  return b;
}

function pair(options = {}): [UnixSocketTransport, UnixSocketTransport] {
  const [a, b] = socketPair();
  return [new UnixSocketTransport(a, options), new UnixSocketTransport(b, options)];
}

describe('UnixSocketTransport', () => {
  it('exchanges messages with payloads in both directions', async () => {
    await assertNoFdLeak(async () => {
      const [a, b] = pair();
      const ca = collect(a);
      const cb = collect(b);
      a.send({ msgId: 1, cmd: 9, flags: 0 }, Uint8Array.of(1, 2, 3));
      b.send({ msgId: 1, cmd: 9, flags: 1 }, [Uint8Array.of(4), Uint8Array.of(5, 6)]);
      const [mb, ma] = await Promise.all([cb.message(0), ca.message(0)]);
      assert.deepEqual([mb.header.msgId, mb.header.cmd, mb.header.msgSize, [...mb.payload]], [1, 9, 19, [1, 2, 3]]);
      assert.deepEqual([ma.header.flags, [...ma.payload]], [1, [4, 5, 6]]);
      a.close();
      assert.equal(await cb.closed, undefined);
      assert.equal(await ca.closed, undefined);
    });
  });

  it('passes a memfd and an eventfd with the message they belong to', async () => {
    await assertNoFdLeak(async () => {
      const [a, b] = pair();
      collect(a);
      const cb = collect(b);
      const mem = memfdCreate('guest', 4096);
      const efd = createEventFd();
      a.send({ msgId: 1, cmd: 13, flags: 0 });
      a.send({ msgId: 2, cmd: 2, flags: 0 }, new Uint8Array(32), [mem, efd]);
      a.send({ msgId: 3, cmd: 13, flags: 0 });
      native.close(mem); // send never takes ownership
      native.close(efd);
      const m2 = await cb.message(1);
      await cb.message(2);
      assert.deepEqual(cb.messages.map((m) => m.fds.count), [0, 2, 0]);
      const gotMem = m2.fds.take(0);
      const gotEfd = m2.fds.take(1);
      const view = new Uint8Array(mapFd(gotMem, 0, 4096, true));
      view[7] = 42;
      assert.equal(native.eventfdWrite(gotEfd, 5n), 0);
      assert.equal(native.eventfdRead(gotEfd), 5n);
      unmap(view.buffer as ArrayBuffer);
      native.close(gotMem);
      native.close(gotEfd);
      a.close();
      b.close();
    });
  });

  it('closes fds nobody claims when the message is disposed of', async () => {
    await assertNoFdLeak(async () => {
      const [a, b] = pair();
      collect(a);
      const cb = collect(b);
      const efd = createEventFd();
      a.send({ msgId: 1, cmd: 4, flags: 0 }, new Uint8Array(16), [efd, efd, efd]);
      native.close(efd);
      const m = await cb.message(0);
      assert.equal(m.fds.remaining, 3);
      m.fds.closeRemaining();
      assert.equal(m.fds.remaining, 0);
      a.close();
      b.close();
    });
  });

  it('delivers a burst of 20,000 queued messages in order', async () => {
    const [a, b] = pair();
    collect(a);
    const cb = collect(b);
    const n = 20_000;
    for (let i = 0; i < n; i++) a.send({ msgId: i & 0xffff, cmd: 10, flags: 0 }, Uint8Array.of(i & 0xff, (i >> 8) & 0xff));
    await cb.message(n - 1);
    for (let i = 0; i < n; i++) {
      const m = cb.messages[i]!;
      assert.equal(m.payload[0]! | (m.payload[1]! << 8), i & 0xffff, `message ${i}`);
    }
    a.close();
    b.close();
  });

  it('queues large messages under back-pressure, then drains (and fds survive queuing)', async () => {
    await assertNoFdLeak(async () => {
      const [a, b] = pair({ highWaterMark: 512 * 1024 });
      const ca = collect(a);
      b.pause(); // the reader stalls, so the writer's socket buffer fills
      const cb = collect(b);
      const big = new Uint8Array(1024 * 1024 - 16);
      for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
      const results: boolean[] = [];
      const efd = createEventFd();
      for (let i = 0; i < 4; i++) results.push(a.send({ msgId: i, cmd: 10, flags: 0 }, big, i === 3 ? [efd] : []));
      native.close(efd);
      assert.ok(a.pendingWriteBytes > 0, 'some of the 4 MiB had to be queued');
      assert.equal(results.at(-1), false, 'send reports back-pressure');
      b.resume();
      const last = await cb.message(3);
      for (const m of cb.messages) assert.deepEqual(m.payload, big);
      assert.equal(last.fds.count, 1);
      last.fds.closeRemaining();
      await new Promise((r) => setImmediate(r));
      assert.equal(a.pendingWriteBytes, 0);
      assert.equal(ca.drains, 1);
      a.close();
      b.close();
    });
  });

  it('gathers no more than 64 chunks into one sendmsg when small messages follow large ones', async () => {
    const [fdA, fdB] = socketPair();
    const a = new UnixSocketTransport(fdA, { coalesceWrites: true });
    const b = new UnixSocketTransport(fdB);
    collect(a);
    const cb = collect(b);
    const big = new Uint8Array(2000).fill(7);
    // 32 large messages are 64 chunks (header + payload each); the small ones after them are staged.
    for (let i = 0; i < 32; i++) a.send({ msgId: i, cmd: 9, flags: 0 }, big);
    for (let i = 32; i < 40; i++) a.send({ msgId: i, cmd: 9, flags: 0 }, Uint8Array.of(i));
    await cb.message(39);
    assert.deepEqual(cb.messages.map((m) => m.header.msgId), Array.from({ length: 40 }, (_, i) => i));
    assert.deepEqual(cb.messages[39]!.payload, Uint8Array.of(39));
    a.close();
    b.close();
  });

  it('keeps the bytes and order of small (staged) and large messages mixed under back-pressure', async () => {
    const [fdA, fdB] = socketPair();
    const a = new UnixSocketTransport(fdA, { coalesceWrites: true });
    const b = new UnixSocketTransport(fdB);
    collect(a);
    b.pause(); // the writer's socket buffer fills: staged bytes must be copied before the stage is reused
    const cb = collect(b);
    const big = new Uint8Array(256 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 13) & 0xff;
    const small = (i: number): Uint8Array => Uint8Array.from({ length: 1 + (i % 40) }, (_, k) => (i + k) & 0xff);
    const expected: Uint8Array[] = [];
    let id = 0;
    for (let tick = 0; tick < 4; tick++) {
      for (let i = 0; i < 300; i++) {
        const payload = i % 100 === 50 ? big : small(id);
        a.send({ msgId: id, cmd: 9, flags: 0 }, payload);
        expected.push(payload);
        id++;
      }
      await new Promise((r) => setImmediate(r)); // the coalesced batch is flushed (and partly queued)
    }
    assert.ok(a.pendingWriteBytes > 0, 'part of it had to be queued');
    b.resume();
    await cb.message(id - 1);
    cb.messages.forEach((m, i) => {
      assert.equal(m.header.msgId, i);
      assert.deepEqual(m.payload, expected[i], `message ${i}`);
    });
    a.close();
    b.close();
  });

  it('reports a peer that closes mid-message as a connection error', async () => {
    const [fdA, fdB] = socketPair();
    const t = new UnixSocketTransport(fdB);
    const c = collect(t);
    native.sendmsg(fdA, [header(1, 10, 100), new Uint8Array(10)], null);
    native.close(fdA);
    const error = await c.closed;
    assert.ok(error instanceof ConnectionClosedError);
    assert.equal(error.errno, 104);
    assert.equal(c.messages.length, 0);
  });

  it('reports a truncated header followed by EOF, closing the fds that came with it', async () => {
    await assertNoFdLeak(async () => {
      const [fdA, fdB] = socketPair();
      const t = new UnixSocketTransport(fdB);
      const c = collect(t);
      const efd = createEventFd();
      native.sendmsg(fdA, [header(1, 2, 48).subarray(0, 7)], [efd]);
      native.close(efd);
      native.close(fdA);
      assert.ok((await c.closed) instanceof ConnectionClosedError);
    });
  });

  it('refuses an oversized msg_size from the header and stays writable for a last reply', async () => {
    await assertNoFdLeak(async () => {
      const [fdA, fdB] = socketPair();
      const t = new UnixSocketTransport(fdB, { maxMessageSize: 4096 });
      const c = collect(t, true);
      const efd = createEventFd();
      native.sendmsg(fdA, [header(7, 10, 0xffff_fff0), new Uint8Array(64)], [efd]);
      native.close(efd);
      const error = await c.streamError;
      assert.ok(error instanceof FramingError);
      assert.equal(error.header?.msgId, 7);
      t.send({ msgId: 7, cmd: 10, flags: 0x21, errorNo: 22 });
      const reply = new Uint8Array(64);
      const meta = new Int32Array(4);
      await new Promise((r) => setTimeout(r, 10));
      assert.equal(native.recvmsg(fdA, reply, meta), 16);
      assert.equal(new DataView(reply.buffer).getUint32(12, true), 22);
      t.close();
      native.close(fdA);
    });
  });

  it('treats fds beyond the per-read room as lost: stream error, all closed', async () => {
    await assertNoFdLeak(async () => {
      const [fdA, fdB] = socketPair();
      const t = new UnixSocketTransport(fdB, { maxReceiveFds: 2 });
      const c = collect(t);
      const efd = createEventFd();
      native.sendmsg(fdA, [header(1, 8, 36), new Uint8Array(20)], [efd, efd, efd]);
      native.close(efd);
      const error = await c.closed;
      assert.ok(error instanceof FramingError);
      assert.equal(error.errno, 90);
      native.close(fdA);
    });
  });

  it('coalesces sends made in one tick into one system call when asked, keeping order and fds with their message', async () => {
    await assertNoFdLeak(async () => {
      const [fdA, fdB] = socketPair();
      const a = new UnixSocketTransport(fdA, { coalesceWrites: true });
      const b = new UnixSocketTransport(fdB);
      collect(a);
      const cb = collect(b);
      // Each system call: ['send', bytes] for staged small messages, ['sendmsg', chunks, fds] otherwise.
      const calls: (string | number)[][] = [];
      const realSendmsg = native.sendmsg;
      const realSend = native.send;
      native.sendmsg = (fd, data, fds) => (calls.push(['sendmsg', data.length, fds?.length ?? 0]), realSendmsg(fd, data, fds));
      native.send = (fd, buf, offset, length) => (calls.push(['send', length]), realSend(fd, buf, offset, length));
      try {
        const efd = createEventFd();
        for (let i = 0; i < 5; i++) a.send({ msgId: i, cmd: 9, flags: 0 }, Uint8Array.of(i));
        a.send({ msgId: 5, cmd: 8, flags: 0 }, new Uint8Array(20), [efd]); // flushes what precedes it, goes with its fd
        for (let i = 6; i < 9; i++) a.send({ msgId: i, cmd: 9, flags: 0 }, Uint8Array.of(i));
        native.close(efd);
        assert.deepEqual(calls, [['send', 5 * 17], ['sendmsg', 2, 1]], 'the first five together, then the fd message; the rest wait for the microtask');
        await cb.message(8);
        assert.deepEqual(calls, [['send', 5 * 17], ['sendmsg', 2, 1], ['send', 3 * 17]]);
      } finally {
        native.sendmsg = realSendmsg;
        native.send = realSend;
      }
      assert.deepEqual(cb.messages.map((m) => [m.header.msgId, m.fds.count]), [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [5, 1], [6, 0], [7, 0], [8, 0]]);
      cb.messages.forEach((m) => m.fds.closeRemaining());
      a.close();
      b.close();
    });
  });

  it('reads the next request right after replying when the peer already sent it (no wake-up in between)', async () => {
    const [fdA, peer] = socketPair();
    const server = new UnixSocketTransport(fdA);
    let turns = 0; // event-loop turns seen so far
    let done = false;
    const turn = (): void => {
      turns++;
      if (!done) setImmediate(turn);
    };
    turn();
    const seen: number[] = [];
    const request = (id: number): Uint8Array => header(id, 9, 16);
    const all = new Promise<void>((resolve) =>
      server.start({
        onMessage(m) {
          seen.push(turns);
          server.send({ msgId: m.header.msgId, cmd: 9, flags: 1 });
          // A peer sharing our CPU runs during the send and writes its next request before we poll again.
          if (m.header.msgId < 9) assert.equal(native.sendmsg(peer, [request(m.header.msgId + 1)], null), 16);
          else resolve();
        },
        onClose() {},
      }),
    );
    assert.equal(native.sendmsg(peer, [request(0)], null), 16);
    await all;
    done = true;
    assert.equal(seen.length, 10);
    assert.deepEqual(seen, new Array(10).fill(seen[0]), 'all ten handled in one wake-up');
    const replies = new Uint8Array(1024);
    assert.equal(native.recvmsg(peer, replies, new Int32Array(2)), 10 * 16, 'every reply went out');
    server.close();
    native.close(peer);
  });

  it('refuses to send on a closed transport', () => {
    const [a, b] = pair();
    a.close();
    b.close();
    assert.throws(() => a.send({ msgId: 1, cmd: 1, flags: 0 }), ConnectionClosedError);
  });
});

describe('UnixListener / connectUnix', () => {
  it('listens with mode 0600, accepts, reports peer credentials, removes the socket on close', async () => {
    const path = join(dir, 'listen.sock');
    const accepted: UnixSocketTransport[] = [];
    const listener = UnixListener.listen(path, {}, (t) => accepted.push(t));
    assert.equal(statSync(path).mode & 0o777, 0o600);
    const client = await connectUnix(path);
    const cc = collect(client);
    while (accepted.length === 0) await new Promise((r) => setImmediate(r));
    const server = accepted[0]!;
    assert.deepEqual(server.peerCredentials(), { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
    const cs = collect(server);
    client.send({ msgId: 5, cmd: 1, flags: 0 }, Uint8Array.of(0, 0, 2, 0, 0));
    const m = await cs.message(0);
    server.send({ msgId: m.header.msgId, cmd: 1, flags: 1 }, m.payload);
    assert.equal((await cc.message(0)).header.msgId, 5);
    listener.close();
    assert.throws(() => statSync(path));
    client.close();
    server.close();
  });

  it('replaces a stale socket file but refuses one that is served', async () => {
    const path = join(dir, 'stale.sock');
    const first = UnixListener.listen(path, {}, (t) => t.close());
    assert.throws(() => UnixListener.listen(path, {}, () => {}), (e: unknown) => e instanceof SystemError && e.errno === 98);
    first.close();
    // A crashed server leaves its socket file behind with nobody listening.
    const s = native.unixSocket();
    native.bind(s, path);
    native.close(s);
    const replaced = UnixListener.listen(path, {}, (t) => t.close());
    const c = await connectUnix(path);
    c.close();
    replaced.close();
  });

  it('does not replace a path that is not a socket', () => {
    const path = join(dir, 'regular-file');
    writeFileSync(path, 'precious');
    let listener: UnixListener | undefined;
    assert.throws(
      () => (listener = UnixListener.listen(path, {}, () => {})),
      (e: unknown) => e instanceof SystemError && e.errno === 98,
    );
    listener?.close();
    assert.equal(readFileSync(path, 'utf8'), 'precious');
  });

  it('fails to connect to a missing socket with ENOENT and to a dead one with ECONNREFUSED', async () => {
    await assert.rejects(connectUnix(join(dir, 'missing.sock')), (e: unknown) => e instanceof SystemError && e.errno === 2);
    const path = join(dir, 'dead.sock');
    const s = native.unixSocket();
    native.bind(s, path);
    native.close(s);
    await assert.rejects(connectUnix(path), (e: unknown) => e instanceof SystemError && e.errno === 111);
  });
});
