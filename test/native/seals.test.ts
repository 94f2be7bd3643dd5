import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';
import { Errno } from '../../src/protocol/errno.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const { PAGE_SIZE, MFD_ALLOW_SEALING, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE } =
  native.constants;

/** Runs `fn` with a fresh memfd of `size` bytes, closed afterwards. */
async function withMemfd(size: number, flags: number, fn: (fd: number) => unknown): Promise<void> {
  await assertNoFdLeak(async () => {
    const fd = memfdCreate('vfio-user-test-seals', size, flags);
    try {
      await fn(fd);
    } finally {
      native.close(fd);
    }
  });
}

/** Asserts that `call` throws the addon's Error for `syscall` failing with `errno`. */
function throwsErrno(call: () => unknown, syscall: string, errno: number): void {
  assert.throws(
    call,
    (error: Error & { errno?: number; syscall?: string }) => error.errno === errno && error.syscall === syscall,
  );
}

describe('file seals (getSeals / addSeals)', () => {
  it('exports the Linux seal constants', () => {
    assert.deepEqual([F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE], [1, 2, 4, 8]);
    assert.ok(Object.isFrozen(native.constants));
  });

  it('F_SEAL_SHRINK on a sealable memfd: read back, ftruncate smaller fails with EPERM', () =>
    withMemfd(4 * PAGE_SIZE, MFD_ALLOW_SEALING, (fd) => {
      assert.equal(native.getSeals(fd), 0);
      assert.equal(native.addSeals(fd, F_SEAL_SHRINK), 0);
      assert.equal(native.getSeals(fd), F_SEAL_SHRINK);
      throwsErrno(() => native.ftruncate(fd, PAGE_SIZE), 'ftruncate', Errno.EPERM);
      assert.equal(native.fstat(fd).size, 4 * PAGE_SIZE);
      native.ftruncate(fd, 8 * PAGE_SIZE); // growing is still allowed
      assert.equal(native.fstat(fd).size, 8 * PAGE_SIZE);
      assert.equal(native.addSeals(fd, F_SEAL_GROW), 0);
      assert.equal(native.getSeals(fd), F_SEAL_SHRINK | F_SEAL_GROW);
      throwsErrno(() => native.ftruncate(fd, 9 * PAGE_SIZE), 'ftruncate', Errno.EPERM);
    }));

  it('a memfd without MFD_ALLOW_SEALING is sealed with F_SEAL_SEAL: addSeals returns -EPERM', () =>
    withMemfd(2 * PAGE_SIZE, 0, (fd) => {
      assert.equal(native.getSeals(fd), F_SEAL_SEAL);
      assert.equal(native.addSeals(fd, F_SEAL_SHRINK), -Errno.EPERM);
      assert.equal(native.getSeals(fd), F_SEAL_SEAL);
      native.ftruncate(fd, PAGE_SIZE); // not sealed against shrinking
      assert.equal(native.fstat(fd).size, PAGE_SIZE);
    }));

  it('F_SEAL_SEAL stops further seals; F_SEAL_WRITE is -EBUSY under a writable mapping', () =>
    withMemfd(PAGE_SIZE, MFD_ALLOW_SEALING, (fd) => {
      const buffer = mapFd(fd, 0, PAGE_SIZE, true);
      try {
        assert.equal(native.addSeals(fd, F_SEAL_WRITE), -Errno.EBUSY);
      } finally {
        unmap(buffer);
      }
      assert.equal(native.addSeals(fd, F_SEAL_SEAL), 0);
      assert.equal(native.addSeals(fd, F_SEAL_SHRINK), -Errno.EPERM);
      assert.equal(native.getSeals(fd), F_SEAL_SEAL);
    }));

  it('returns -errno for fds that cannot be sealed and TypeError for bad arguments', () =>
    assertNoFdLeak(() => {
      const [a, b] = native.socketPair();
      try {
        assert.equal(native.getSeals(a), -Errno.EINVAL);
        assert.equal(native.addSeals(a, F_SEAL_SHRINK), -Errno.EINVAL);
      } finally {
        native.close(a);
        native.close(b);
      }
      assert.equal(native.getSeals(-1), -Errno.EBADF);
      assert.equal(native.addSeals(-1, F_SEAL_SHRINK), -Errno.EBADF);
      const getSeals = native.getSeals as (...args: unknown[]) => number;
      const addSeals = native.addSeals as (...args: unknown[]) => number;
      assert.throws(() => getSeals(), TypeError);
      assert.throws(() => getSeals('3'), TypeError);
      assert.throws(() => addSeals(0), TypeError);
      assert.throws(() => addSeals(0, 1.5), TypeError);
    }));
});
