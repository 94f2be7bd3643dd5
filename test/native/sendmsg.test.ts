import assert from 'node:assert/strict';
import { withSocketPair } from './util.js';
import { describe, it } from 'node:test';
import { createEventFd, native } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const EAGAIN = 11;
const EINVAL = 22;

function closeAll(fds: Iterable<number>): void {
  for (const fd of fds) native.close(fd);
}

/** The fds a recvmsg() reported in `meta`. */
function receivedFds(meta: Int32Array): number[] {
  return [...meta.subarray(2, 2 + (meta[0] ?? 0))];
}

describe('sendmsg / recvmsg', () => {
  it('carries data and several fds in one message', () =>
    withSocketPair((a, b) => {
      const sent = [createEventFd(1), createEventFd(2), createEventFd(3)];
      try {
        const data = new TextEncoder().encode('hello, fds');
        assert.equal(native.sendmsg(a, [data.subarray(0, 5), data.subarray(5)], sent), data.length);
        const buf = new Uint8Array(64);
        const meta = new Int32Array(2 + 8).fill(-1);
        const n = native.recvmsg(b, buf, meta);
        assert.equal(n, data.length);
        assert.deepEqual(buf.subarray(0, n), data);
        assert.equal(meta[0], 3);
        assert.equal(meta[1], 0, 'no truncation');
        const got = receivedFds(meta);
        try {
          // New fds for the same eventfds: each reads back its own counter.
          assert.deepEqual(
            got.map((fd) => native.eventfdRead(fd)),
            [1n, 2n, 3n],
          );
          for (const fd of got) assert.ok(!sent.includes(fd));
        } finally {
          closeAll(got);
        }
      } finally {
        closeAll(sent);
      }
    }));

  it('respects byteOffset of the iovecs and of the receive buffer', () =>
    withSocketPair((a, b) => {
      const backing = new Uint8Array([9, 9, 1, 2, 3, 9, 9]);
      assert.equal(native.sendmsg(a, [backing.subarray(2, 5), new Uint8Array(0)], null), 3);
      const big = new Uint8Array(16);
      const meta = new Int32Array(2);
      assert.equal(native.recvmsg(b, big.subarray(4, 6), meta), 2);
      assert.equal(native.recvmsg(b, big.subarray(10), meta), 1);
      assert.deepEqual([...big], [0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0]);
    }));

  it('closes fds beyond the room in meta and reports MSG_CTRUNC', () =>
    withSocketPair((a, b) => {
      const sent = [createEventFd(), createEventFd(), createEventFd()];
      try {
        assert.equal(native.sendmsg(a, [new Uint8Array([7])], sent), 1);
        const meta = new Int32Array(2 + 1);
        // assertNoFdLeak around withSocketPair proves the two extra fds were closed.
        assert.equal(native.recvmsg(b, new Uint8Array(4), meta), 1);
        assert.equal(meta[0], 1);
        assert.equal(meta[1], 1, 'ctrunc bit');
        closeAll(receivedFds(meta));
      } finally {
        closeAll(sent);
      }
    }));

  it('drops all fds when meta has no room', () =>
    withSocketPair((a, b) => {
      const efd = createEventFd();
      try {
        assert.equal(native.sendmsg(a, [new Uint8Array([1])], [efd]), 1);
        const meta = new Int32Array(2);
        assert.equal(native.recvmsg(b, new Uint8Array(4), meta), 1);
        assert.deepEqual([...meta], [0, 1]);
      } finally {
        native.close(efd);
      }
    }));

  it('does not merge two fd-carrying messages into one read', () =>
    withSocketPair((a, b) => {
      const efd = createEventFd();
      try {
        assert.equal(native.sendmsg(a, [new Uint8Array([1, 1])], [efd]), 2);
        assert.equal(native.sendmsg(a, [new Uint8Array([2, 2])], [efd, efd]), 2);
        const meta = new Int32Array(2 + 4);
        const buf = new Uint8Array(16);
        assert.equal(native.recvmsg(b, buf, meta), 2);
        assert.equal(meta[0], 1);
        closeAll(receivedFds(meta));
        assert.equal(native.recvmsg(b, buf, meta), 2);
        assert.equal(meta[0], 2);
        closeAll(receivedFds(meta));
      } finally {
        native.close(efd);
      }
    }));

  it('returns -EAGAIN on an empty socket and 0 at EOF', () =>
    withSocketPair((a, b) => {
      const meta = new Int32Array(4).fill(5);
      assert.equal(native.recvmsg(b, new Uint8Array(8), meta), -EAGAIN);
      assert.deepEqual([...meta.subarray(0, 2)], [0, 0]);
      assert.equal(native.shutdown(a, 1), 0);
      assert.equal(native.recvmsg(b, new Uint8Array(8), meta), 0);
    }));

  it('returns -EPIPE (no SIGPIPE) when the peer is gone', () =>
    withSocketPair((a, b) => {
      assert.equal(native.shutdown(b, 2), 0);
      assert.equal(native.sendmsg(a, [new Uint8Array(1)], null), -32);
    }));

  it('send() sends one range of a buffer, checks the range, and returns -errno', () =>
    withSocketPair((a, b) => {
      const backing = new Uint8Array([9, 1, 2, 3, 9]);
      assert.equal(native.send(a, backing.subarray(1), 0, 3), 3);
      assert.equal(native.send(a, backing, 4, 1), 1);
      assert.equal(native.send(a, backing, 5, 0), 0);
      const got = new Uint8Array(8);
      assert.equal(native.recvmsg(b, got, new Int32Array(2)), 4);
      assert.deepEqual([...got.subarray(0, 4)], [1, 2, 3, 9]);
      assert.throws(() => native.send(a, backing, 3, 3), TypeError, 'past the end');
      assert.throws(() => native.send(a, backing, 6, 0), TypeError, 'offset past the end');
      assert.throws(() => native.send(a, backing, -1, 1), TypeError);
      assert.throws(() => native.send(a, backing, 0.5, 1), TypeError);
      const chunk = new Uint8Array(1 << 16);
      let result = 0;
      for (let i = 0; i < 10_000 && result >= 0; i++) result = native.send(a, chunk, 0, chunk.length);
      assert.equal(result, -EAGAIN);
      assert.equal(native.shutdown(b, 2), 0);
      assert.equal(native.send(a, backing, 0, 1), -32, 'EPIPE, no SIGPIPE');
    }));

  it('returns -EAGAIN when the socket buffer is full', () =>
    withSocketPair((a) => {
      const chunk = new Uint8Array(1 << 16);
      let result = 0;
      for (let i = 0; i < 10_000 && result >= 0; i++) result = native.sendmsg(a, [chunk], null);
      assert.equal(result, -EAGAIN);
    }));

  it('passes Linux’s SCM_MAX_FD fds, and the kernel refuses one more with EINVAL', () =>
    withSocketPair((a, b) => {
      const { SCM_MAX_FD } = native.constants;
      const efd = createEventFd();
      try {
        const many = new Array<number>(SCM_MAX_FD + 1).fill(efd);
        assert.equal(native.sendmsg(a, [new Uint8Array(1)], many), -EINVAL);
        assert.equal(native.sendmsg(a, [new Uint8Array(1)], many.slice(1)), 1);
        const meta = new Int32Array(2 + 1024);
        assert.equal(native.recvmsg(b, new Uint8Array(1), meta), 1);
        assert.equal(meta[0], SCM_MAX_FD);
        assert.equal(meta[1], 0);
        closeAll(receivedFds(meta));
      } finally {
        native.close(efd);
      }
    }));

  it('returns -EBADF for a bad fd', () => {
    assert.equal(native.sendmsg(-1, [new Uint8Array(1)], null), -9);
    assert.equal(native.recvmsg(-1, new Uint8Array(1), new Int32Array(2)), -9);
  });

  it('throws TypeError for bad arguments', () =>
    withSocketPair((a, b) => {
      const bad = (fn: () => unknown): void => assert.throws(fn, TypeError);
      const sendmsg = native.sendmsg as (...args: unknown[]) => number;
      const recvmsg = native.recvmsg as (...args: unknown[]) => number;
      bad(() => sendmsg(a));
      bad(() => sendmsg('3', [], null));
      bad(() => sendmsg(a, 'data', null));
      bad(() => sendmsg(a, [new Uint16Array(2)], null));
      bad(() => sendmsg(a, new Array(65).fill(new Uint8Array(1)), null)); // MAX_IOV is 64
      bad(() => sendmsg(a, [new Uint8Array(1)], [1.5]));
      bad(() => sendmsg(a, [new Uint8Array(1)], new Array(1025).fill(0)));
      bad(() => sendmsg(a, [], [0]));
      bad(() => recvmsg(b, new Uint8Array(1), new Int32Array(1)));
      bad(() => recvmsg(b, new Uint8Array(1), new Uint32Array(4)));
      bad(() => recvmsg(b, new Uint8Array(0), new Int32Array(4)));
      bad(() => recvmsg(b, null, new Int32Array(4)));
    }));
});

describe('read / write / dup / eventfd / ioctl', () => {
  it('reads and writes plain bytes', () =>
    withSocketPair((a, b) => {
      assert.equal(native.write(a, new Uint8Array([1, 2, 3])), 3);
      const buf = new Uint8Array(8);
      assert.equal(native.read(b, buf), 3);
      assert.deepEqual([...buf.subarray(0, 3)], [1, 2, 3]);
      assert.equal(native.read(b, buf), -EAGAIN);
    }));

  it('ioctl passes a Uint8Array by pointer (FIONREAD)', () =>
    withSocketPair((a, b) => {
      const FIONREAD = 0x541b;
      assert.equal(native.write(a, new Uint8Array(5)), 5);
      const out = new Uint8Array(8);
      assert.equal(native.ioctl(b, FIONREAD, out.subarray(4)), 0);
      assert.equal(new DataView(out.buffer).getInt32(4, true), 5);
      assert.equal(native.ioctl(b, 0x7fff_ffff, 0), -25, 'ENOTTY');
    }));

  it('dup gives a new fd for the same socket', () =>
    withSocketPair((a, b) => {
      const copy = native.dup(a);
      assert.ok(copy > 2 && copy !== a);
      try {
        assert.equal(native.write(copy, new Uint8Array([4])), 1);
        assert.equal(native.read(b, new Uint8Array(1)), 1);
      } finally {
        native.close(copy);
      }
      assert.equal(native.dup(-1), -9);
    }));

  it('eventfd counters: bigint values, -EAGAIN when zero, semaphore mode', () =>
    assertNoFdLeak(() => {
      const efd = createEventFd();
      const sem = createEventFd(2, native.constants.EFD_SEMAPHORE);
      try {
        assert.equal(native.eventfdRead(efd), -EAGAIN);
        assert.equal(native.eventfdWrite(efd, 5n), 0);
        assert.equal(native.eventfdWrite(efd, 0xffff_ffffn), 0);
        assert.equal(native.eventfdRead(efd), 0xffff_ffffn + 5n);
        assert.equal(native.eventfdRead(efd), -EAGAIN);
        assert.equal(native.eventfdWrite(efd, 0xffff_ffff_ffff_ffffn), -EINVAL);
        assert.equal(native.eventfdRead(sem), 1n);
        assert.equal(native.eventfdRead(sem), 1n);
        assert.equal(native.eventfdRead(sem), -EAGAIN);
        const write = native.eventfdWrite as (...args: unknown[]) => number;
        assert.throws(() => write(efd, 1), TypeError);
        assert.throws(() => write(efd, -1n), TypeError);
        assert.throws(() => write(efd, 1n << 64n), TypeError);
      } finally {
        native.close(efd);
        native.close(sem);
      }
    }));

  it('close returns -EBADF for a closed fd, never throws', () => {
    assert.equal(native.close(-1), -9);
    assert.throws(() => (native.close as (fd: unknown) => number)('x'), TypeError);
  });
});
