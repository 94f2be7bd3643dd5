import assert from 'node:assert/strict';
import { constants as bufferConstants } from 'node:buffer';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { SystemError } from '../../src/errors.js';
import { mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { runChild } from './util.js';

const { PAGE_SIZE, PROT_READ } = native.constants;
/** A mapping just over 4 GiB, and the largest ArrayBuffer this Node makes (4 GiB in Node 20, 2^53 - 1 from 22). */
const LARGE = 2 ** 32 + PAGE_SIZE;
const { MAX_LENGTH } = bufferConstants;

/** Lines of /proc/self/maps naming the memfd `name`. */
function mappingsOf(name: string): number {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((line) => line.includes(`/memfd:${name} `)).length;
}

/** Runs `fn` with a fresh memfd of `size` bytes, closed afterwards. */
async function withMemfd(name: string, size: number, fn: (fd: number) => unknown): Promise<void> {
  await assertNoFdLeak(async () => {
    const fd = memfdCreate(name, size);
    try {
      await fn(fd);
    } finally {
      native.close(fd);
    }
  });
}

describe('mmap / munmap', () => {
  it('maps a memfd: two mappings share memory, fstat reports the size', () =>
    withMemfd('share', 4 * PAGE_SIZE, (fd) => {
      assert.deepEqual(native.fstat(fd).size, 4 * PAGE_SIZE);
      const a = mapFd(fd, 0, 4 * PAGE_SIZE, true);
      const b = mapFd(fd, PAGE_SIZE, PAGE_SIZE, true);
      assert.equal(a.byteLength, 4 * PAGE_SIZE);
      new Uint8Array(a)[PAGE_SIZE + 3] = 42;
      assert.equal(new Uint8Array(b)[3], 42);
      native.msync(a);
      assert.equal(unmap(a), true);
      assert.equal(unmap(b), true);
      assert.equal(mappingsOf('share'), 0);
    }));

  it('munmap detaches: views become empty, a second munmap returns false', () =>
    withMemfd('detach', PAGE_SIZE, (fd) => {
      const ab = mapFd(fd, 0, PAGE_SIZE, true);
      const whole = new Uint8Array(ab);
      const part = new Uint32Array(ab, 8, 4);
      const view = new DataView(ab);
      whole[0] = 1;
      assert.equal(mappingsOf('detach'), 1);
      assert.equal(native.munmap(ab), true);
      assert.equal(mappingsOf('detach'), 0);
      assert.equal(ab.byteLength, 0);
      assert.equal(whole.length, 0);
      assert.equal(whole.byteLength, 0);
      assert.equal(part.length, 0);
      assert.equal(whole[0], undefined);
      assert.equal(part[1], undefined);
      whole[0] = 7; // ignored, not a crash
      assert.throws(() => view.getUint8(0), TypeError);
      assert.equal(native.munmap(ab), false);
      native.msync(ab); // no-op on an empty buffer
    }));

  it('munmap of a buffer it did not map returns false', () => {
    assert.equal(native.munmap(new ArrayBuffer(16)), false);
    assert.equal(native.munmap(new Uint8Array(PAGE_SIZE * 2).buffer), false);
    const transferred = new ArrayBuffer(8);
    structuredClone(transferred, { transfer: [transferred] });
    assert.equal(native.munmap(transferred), false);
    assert.throws(() => (native.munmap as (b: unknown) => boolean)(new Uint8Array(8)), TypeError);
  });

  it('maps read-only with PROT_READ', () =>
    withMemfd('ro', PAGE_SIZE, (fd) => {
      const rw = mapFd(fd, 0, PAGE_SIZE, true);
      const ro = mapFd(fd, 0, PAGE_SIZE, false);
      new Uint8Array(rw)[100] = 9;
      assert.equal(new Uint8Array(ro)[100], 9);
      unmap(rw);
      unmap(ro);
    }));

  it('rejects bad arguments and reports kernel errors as SystemError', () =>
    withMemfd('bad', 2 * PAGE_SIZE, (fd) => {
      assert.throws(() => native.mmap(fd, 0, 0, PROT_READ), TypeError);
      assert.throws(() => native.mmap(fd, 0, PAGE_SIZE, 0), TypeError);
      assert.throws(() => native.mmap(fd, 0, PAGE_SIZE, 4), TypeError);
      assert.throws(() => native.mmap(fd, -PAGE_SIZE, PAGE_SIZE, PROT_READ), TypeError);
      assert.throws(
        () => native.mmap(fd, 100, PAGE_SIZE, PROT_READ),
        (error: Error & { errno?: number; syscall?: string }) =>
          error.message === 'mmap: Invalid argument' && error.errno === 22 && error.syscall === 'mmap',
      );
      assert.throws(
        () => mapFd(fd, 100, PAGE_SIZE, true),
        (error) => error instanceof SystemError && error.errno === 22 && error.syscall === 'mmap',
      );
      assert.throws(
        () => mapFd(-1, 0, PAGE_SIZE, true),
        (error) => error instanceof SystemError && error.code === 'EBADF',
      );
      assert.equal(mappingsOf('bad'), 0);
    }));

  it(`${LARGE > MAX_LENGTH ? 'refuses' : 'maps'} more than 4 GiB (this Node's ArrayBuffer limit: ${MAX_LENGTH}) without leaking the mapping`, () =>
    withMemfd('huge', 0, (fd) => {
      native.ftruncate(fd, LARGE); // sparse: costs nothing
      if (LARGE > MAX_LENGTH) {
        // Node 20: 4 GiB at most
        assert.throws(() => mapFd(fd, 0, LARGE, true), /larger than/);
      } else {
        // Node 22 and later: the whole mapping is addressable, past 4 GiB included
        const whole = mapFd(fd, 0, LARGE, true);
        assert.equal(whole.byteLength, LARGE);
        new Uint8Array(whole)[2 ** 32 + 1] = 7;
        const lastPage = mapFd(fd, 2 ** 32, PAGE_SIZE, false);
        assert.equal(new Uint8Array(lastPage)[1], 7);
        unmap(lastPage);
        unmap(whole);
      }
      assert.equal(mappingsOf('huge'), 0);
    }));

  it('GC unmaps forgotten buffers, never twice (child with --expose-gc)', async () => {
    const result = await runChild('gc-child.js', ['mmap'], { nodeArgs: ['--expose-gc'] });
    assert.equal(result.stderr, '');
    assert.equal(result.code, 0, result.stdout);
    const report = JSON.parse(result.stdout) as { baseline: number; peak: number; final: number };
    assert.ok(report.final <= report.baseline + 1, result.stdout);
  });
});
