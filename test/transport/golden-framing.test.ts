/**
 * Every golden message through the framer and the transports: split at every
 * byte offset, batched with all the others, cut the way Linux cuts reads around
 * fds, and sent for real over a socket pair with real fds.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Framer } from '../../src/transport/framer.js';
import { UnixSocketTransport } from '../../src/transport/unix-socket.js';
import { createMemoryTransportPair } from '../../src/transport/memory.js';
import { concatChunks, frameOutgoing } from '../../src/transport/outgoing.js';
import { createEventFd, native, socketPair } from '../../src/native/addon.js';
import type { Message } from '../../src/transport/transport.js';
import { GOLDENS, goldenStream, type Golden } from '../support/golden.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { collect } from '../support/collector.js';

const FAKE_FD_BASE = 10_000;

function fakeFds(n: number, base = FAKE_FD_BASE): number[] {
  return Array.from({ length: n }, (_, i) => base + i);
}

function checkMessage(m: Message, g: Golden, where: string): void {
  assert.deepEqual({ ...m.header }, g.header, `${g.name}: header ${where}`);
  assert.deepEqual(g.decode(m.payload), g.value, `${g.name}: decoded ${where}`);
  assert.equal(m.fds.count, g.fds, `${g.name}: fds ${where}`);
}

function newFramer(closed: number[] = []): Framer {
  return new Framer({ maxMessageSize: 1 << 20, closeFd: (fd) => closed.push(fd) });
}

/** A small deterministic PRNG so failures reproduce. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

describe('golden messages through the framer', () => {
  it('re-parses every golden split at every byte offset, fds with the header', () => {
    for (const g of GOLDENS) {
      for (let k = 1; k < g.bytes.length; k++) {
        const framer = newFramer();
        const first = framer.push(g.bytes.subarray(0, k), fakeFds(g.fds));
        const second = framer.push(g.bytes.subarray(k));
        const got = [...first.messages, ...second.messages];
        assert.equal(got.length, 1, `${g.name} split at ${k}`);
        checkMessage(got[0]!, g, `split at ${k}`);
      }
    }
  });

  it('re-parses all goldens batched in one read', () => {
    const { bytes } = goldenStream();
    const out = newFramer().push(bytes);
    assert.equal(out.error, undefined);
    assert.equal(out.messages.length, GOLDENS.length);
    out.messages.forEach((m, i) => assert.deepEqual(GOLDENS[i]!.decode(m.payload), GOLDENS[i]!.value, GOLDENS[i]!.name));
  });

  it('re-parses the stream cut into random reads that end where Linux ends them (after an fd segment)', () => {
    const { bytes, ends } = goldenStream();
    const starts = [0, ...ends.slice(0, -1)];
    for (let seed = 1; seed <= 50; seed++) {
      const random = prng(seed);
      const cuts = new Set<number>();
      for (let i = 0; i < 40; i++) cuts.add(1 + Math.floor(random() * (bytes.length - 1)));
      GOLDENS.forEach((g, i) => {
        if (g.fds > 0) cuts.add(starts[i]! + 1 + Math.floor(random() * g.bytes.length));
      });
      const sorted = [...cuts].filter((c) => c < bytes.length).sort((a, b) => a - b);
      const framer = newFramer();
      const got: Message[] = [];
      let from = 0;
      for (const to of [...sorted, bytes.length]) {
        const fds = GOLDENS.flatMap((g, i) => (starts[i]! >= from && starts[i]! < to ? fakeFds(g.fds, FAKE_FD_BASE + i * 16) : []));
        got.push(...framer.push(bytes.subarray(from, to), fds).messages);
        from = to;
      }
      assert.equal(got.length, GOLDENS.length, `seed ${seed}`);
      got.forEach((m, i) => {
        checkMessage(m, GOLDENS[i]!, `seed ${seed}`);
        assert.deepEqual(m.fds.takeAll(), fakeFds(GOLDENS[i]!.fds, FAKE_FD_BASE + i * 16));
      });
    }
  });
});

describe('golden messages through the transports', () => {
  it('frames each golden byte for byte from its header fields and payload', () => {
    for (const g of GOLDENS) {
      const { msgId, cmd, flags, errorNo } = g.header;
      assert.deepEqual(concatChunks(frameOutgoing({ msgId, cmd, flags, errorNo }, g.bytes.subarray(16))), g.bytes, g.name);
    }
  });

  it('the in-memory pair delivers every golden whole, in 1-byte and in 7-byte chunks', async () => {
    for (const chunkSize of [1, 7, 1 << 20]) {
      const [a, b] = createMemoryTransportPair({ chunkSize });
      collect(a);
      const cb = collect(b);
      for (const g of GOLDENS) a.send({ ...g.header }, g.bytes.subarray(16), fakeFds(g.fds));
      await cb.message(GOLDENS.length - 1);
      cb.messages.forEach((m, i) => checkMessage(m, GOLDENS[i]!, `chunk ${chunkSize}`));
      a.close();
      await cb.closed;
    }
  });

  it('a real socket pair carries every golden with real fds, in order, leaking nothing', async () => {
    await assertNoFdLeak(async () => {
      const [fa, fb] = socketPair();
      const a = new UnixSocketTransport(fa);
      const b = new UnixSocketTransport(fb);
      collect(a);
      const cb = collect(b);
      const efd = createEventFd();
      for (const g of GOLDENS) a.send({ ...g.header }, g.bytes.subarray(16), Array(g.fds).fill(efd));
      native.close(efd);
      await cb.message(GOLDENS.length - 1);
      cb.messages.forEach((m, i) => {
        checkMessage(m, GOLDENS[i]!, 'over a socket');
        m.fds.closeRemaining();
      });
      a.close();
      assert.equal(await cb.closed, undefined);
    });
  });
});
