import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createEventFd, mapFd, memfdCreate, native, socketPair, unmap } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { checkPattern, fillPattern, runChild, waitFor } from './util.js';

const SIZE = 1 << 20;

describe('shared memory across processes', () => {
  it('passes a memfd and eventfds to a child; both sides see each other’s writes', () =>
    assertNoFdLeak(async () => {
      const [socket, childEnd] = socketPair();
      const memfd = memfdCreate('vfio-user-test-shared', SIZE);
      const toParent = createEventFd();
      const toChild = createEventFd();
      const buffer = mapFd(memfd, 0, SIZE, true);
      let childOpen = true;
      try {
        const child = runChild('peer-child.js', ['peer'], { extraFd: childEnd });
        native.close(childEnd); // the child has its own copy as fd 3
        childOpen = false;
        assert.equal(native.sendmsg(socket, [new Uint8Array([1])], [memfd, toParent, toChild]), 1);

        // Woken by the child's eventfd write through a Poller: no busy loop.
        await waitFor(toParent);
        assert.equal(native.eventfdRead(toParent), 1n);
        const mem = new Uint8Array(buffer);
        assert.equal(checkPattern(mem, 7), -1, 'the child’s pattern is in our mapping');
        fillPattern(mem, 13);
        assert.equal(native.eventfdWrite(toChild, 1n), 0);

        await waitFor(socket);
        const reply = new Uint8Array(128);
        const n = native.read(socket, reply);
        assert.equal(new TextDecoder().decode(reply.subarray(0, Math.max(n, 0))), `ok ${SIZE}`);
        const result = await child;
        assert.equal(result.stderr, '');
        assert.equal(result.code, 0);
      } finally {
        unmap(buffer);
        for (const fd of [socket, memfd, toParent, toChild]) native.close(fd);
        if (childOpen) native.close(childEnd);
      }
    }));
});
