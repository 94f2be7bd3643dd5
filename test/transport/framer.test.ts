import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Framer, FramingError } from '../../src/transport/framer.js';
import type { Message } from '../../src/transport/transport.js';

/** A raw message built by hand (independently of the codec). */
function rawMessage(msgId: number, cmd: number, payload: number[] | Uint8Array, msgSizeOverride?: number): Uint8Array {
  const body = payload instanceof Uint8Array ? payload : Uint8Array.from(payload);
  const bytes = new Uint8Array(16 + body.length);
  const dv = new DataView(bytes.buffer);
  dv.setUint16(0, msgId, true);
  dv.setUint16(2, cmd, true);
  dv.setUint32(4, msgSizeOverride ?? bytes.length, true);
  dv.setUint32(8, 0, true);
  dv.setUint32(12, 0, true);
  bytes.set(body, 16);
  return bytes;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function newFramer(max = 1 << 20): { framer: Framer; closed: number[] } {
  const closed: number[] = [];
  return { framer: new Framer({ maxMessageSize: max, closeFd: (fd) => closed.push(fd) }), closed };
}

function summary(m: Message): [number, number, number[], number[]] {
  return [m.header.msgId, m.header.cmd, [...m.payload], m.fds.takeAll()];
}

describe('Framer', () => {
  const a = rawMessage(1, 9, [1, 2, 3, 4, 5]);
  const b = rawMessage(2, 13, []);
  const c = rawMessage(3, 10, Array.from({ length: 40 }, (_, i) => i));

  it('parses a batch of messages from one chunk', () => {
    const { framer } = newFramer();
    const out = framer.push(concat(a, b, c));
    assert.equal(out.error, undefined);
    assert.deepEqual(out.messages.map(summary), [
      [1, 9, [1, 2, 3, 4, 5], []],
      [2, 13, [], []],
      [3, 10, Array.from({ length: 40 }, (_, i) => i), []],
    ]);
  });

  it('reassembles a stream split at every pair of offsets', () => {
    const all = concat(a, b, c);
    for (let i = 0; i <= all.length; i++) {
      for (let j = i; j <= all.length; j++) {
        const { framer } = newFramer();
        const got = [all.subarray(0, i), all.subarray(i, j), all.subarray(j)].flatMap((p) => framer.push(p).messages);
        assert.deepEqual(got.map((m) => m.header.msgId), [1, 2, 3], `split at ${i},${j}`);
        assert.deepEqual([...(got[2] as Message).payload], Array.from({ length: 40 }, (_, k) => k));
        assert.equal(framer.midMessage, false);
      }
    }
  });

  it('reassembles a stream fed one byte at a time', () => {
    const all = concat(a, b, c);
    const { framer } = newFramer();
    const got: Message[] = [];
    for (let i = 0; i < all.length; i++) got.push(...framer.push(all.subarray(i, i + 1)).messages);
    assert.deepEqual(got.map(summary).map((s) => s.slice(0, 3)), [
      [1, 9, [1, 2, 3, 4, 5]],
      [2, 13, []],
      [3, 10, Array.from({ length: 40 }, (_, i) => i)],
    ]);
  });

  it('gives a read\'s fds to the last message that starts in it', () => {
    const { framer, closed } = newFramer();
    const out = framer.push(concat(a, b), [7, 8]);
    assert.deepEqual(out.messages.map(summary), [
      [1, 9, [1, 2, 3, 4, 5], []],
      [2, 13, [], [7, 8]],
    ]);
    assert.deepEqual(closed, []);
  });

  it('gives fds to a message whose header is split across reads', () => {
    const { framer } = newFramer();
    assert.deepEqual(framer.push(c.subarray(0, 5), [4]).messages, []);
    const out = framer.push(c.subarray(5), [5]);
    assert.deepEqual(out.messages.map(summary)[0]?.[3], [4, 5]);
  });

  it('gives fds that arrive with the tail of a message to that message', () => {
    const { framer } = newFramer();
    framer.push(c.subarray(0, 20));
    const out = framer.push(c.subarray(20), [9]);
    assert.deepEqual(out.messages.map(summary)[0]?.[3], [9]);
  });

  it('gives fds to a message in progress that starts after a complete one', () => {
    const { framer } = newFramer();
    const first = framer.push(concat(a, c.subarray(0, 30)), [3]);
    assert.deepEqual(first.messages.map(summary)[0]?.[3], []);
    const second = framer.push(c.subarray(30));
    assert.deepEqual(second.messages.map(summary)[0]?.[3], [3]);
  });

  it('refuses msg_size below the header size before buffering, closing later fds', () => {
    for (const size of [0, 1, 15]) {
      const { framer, closed } = newFramer();
      const bad = rawMessage(5, 9, [], size);
      const out = framer.push(concat(a, bad), [11]);
      assert.deepEqual(out.messages.map((m) => m.header.msgId), [1]);
      assert.ok(out.error instanceof FramingError);
      assert.equal(out.error.errno, 22);
      assert.equal(out.error.header?.msgSize, size);
      assert.deepEqual(closed, [11]);
      const again = framer.push(a, [12]);
      assert.equal(again.messages.length, 0);
      assert.deepEqual(closed, [11, 12]);
    }
  });

  it('refuses msg_size over the limit from the header alone (up to 4 GiB)', () => {
    for (const size of [1025, 0x7fff_ffff, 0xffff_ffff]) {
      const { framer } = newFramer(1024);
      const out = framer.push(rawMessage(6, 10, [], size).subarray(0, 16));
      assert.ok(out.error instanceof FramingError, `size ${size}`);
      assert.match(out.error.message, /exceeds the limit/);
      assert.equal(framer.midMessage, false);
    }
  });

  it('accepts a message of exactly the limit', () => {
    const { framer } = newFramer(1024);
    const out = framer.push(rawMessage(7, 10, new Uint8Array(1024 - 16)));
    assert.equal(out.error, undefined);
    assert.equal(out.messages[0]?.payload.length, 1008);
  });

  it('refuses a header split across reads whose size is bad, closing its fds', () => {
    const { framer, closed } = newFramer(64);
    const bad = rawMessage(8, 10, [], 65);
    assert.equal(framer.push(bad.subarray(0, 3), [21]).error, undefined);
    const out = framer.push(bad.subarray(3, 16));
    assert.ok(out.error instanceof FramingError);
    assert.deepEqual(closed, [21]);
  });

  it('closes the fds of an incomplete message on dispose', () => {
    const { framer, closed } = newFramer();
    framer.push(c.subarray(0, 10), [31, 32]);
    assert.equal(framer.midMessage, true);
    framer.dispose();
    assert.deepEqual(closed, [31, 32]);
    assert.equal(framer.midMessage, false);
  });

  it('returns payloads as views of the chunk for whole messages', () => {
    const { framer } = newFramer();
    const chunk = concat(a, c);
    const out = framer.push(chunk);
    assert.equal(out.messages[0]?.payload.buffer, chunk.buffer);
  });
});
