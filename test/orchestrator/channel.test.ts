/**
 * Unit tests of the migration channel's pure codec (src/orchestrator/channel.ts):
 * frame header layout, the chained CRC, reassembly from arbitrary chunking,
 * detection of corrupted / lost / repeated / reordered frames, and the message
 * and MEMORY payload codecs. Expected bytes are built by hand (DataView, a
 * literal computed with Python's zlib, and `zlib.crc32`), never with FrameEncoder.
 */
import { prngUnit } from '../support/prng.js';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as zlib from 'node:zlib';
import { ProtocolError } from '../../src/errors.js';
import { Errno } from '../../src/protocol/errno.js';
import {
  CHANNEL_MAGIC,
  CHANNEL_VERSION,
  ChannelFrame,
  FRAME_HEADER_SIZE,
  FrameDecoder,
  FrameEncoder,
  MAX_FRAME_PAYLOAD,
  decodeMemory,
  decodeMessage,
  encodeMessage,
  memoryPrefix,
  type Frame,
} from '../../src/orchestrator/channel.js';

/** `zlib.crc32` exists from Node 20.15 / 22.2 on. */
const zlibCrc32: ((data: Uint8Array, value?: number) => number) | undefined = (zlib as Partial<typeof zlib>).crc32;
const NO_ZLIB_CRC = zlibCrc32 === undefined ? 'this Node has no zlib.crc32 to compute the expected CRC independently' : false;

interface Spec {
  type: number;
  id: number;
  payload: Uint8Array;
}

/** Encodes `specs` with one FrameEncoder (one direction of a channel) into one stream. */
function encodeStream(specs: readonly Spec[]): { stream: Buffer; frames: Buffer[] } {
  const enc = new FrameEncoder();
  const frames = specs.map((s) => Buffer.concat([enc.header(s.type, s.id, [s.payload]), s.payload]));
  return { stream: Buffer.concat(frames), frames };
}

/** Deterministic bytes. */
function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >>> 8)) & 0xff;
  return b;
}


function assertFrames(actual: readonly Frame[], specs: readonly Spec[]): void {
  assert.equal(actual.length, specs.length);
  actual.forEach((f, i) => {
    const s = specs[i]!;
    assert.equal(f.type, s.type, `frame ${i} type`);
    assert.equal(f.seq, i, `frame ${i} seq`);
    assert.equal(f.id, s.id, `frame ${i} id`);
    assert.equal(f.payload.length, s.payload.length, `frame ${i} length`);
    assert.ok(Buffer.from(f.payload).equals(Buffer.from(s.payload)), `frame ${i} payload`);
  });
}

function protocolError(errno: number): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof ProtocolError, `expected a ProtocolError, got ${String(e)}`);
    assert.equal(e.errno, errno, `errno ${e.errno} (${e.message}), expected ${errno}`);
    return true;
  };
}

/** A header written field by field, independently of FrameEncoder. */
function handHeader(f: { magic?: number; version?: number; type: number; seq: number; id: number; length: number; crc?: number }): Buffer {
  const h = Buffer.alloc(FRAME_HEADER_SIZE);
  const v = new DataView(h.buffer, h.byteOffset, h.length);
  v.setUint32(0, f.magic ?? 0x434d4656, true);
  v.setUint16(4, f.version ?? 1, true);
  v.setUint16(6, f.type, true);
  v.setUint32(8, f.seq, true);
  v.setUint32(12, f.id, true);
  v.setUint32(16, f.length, true);
  v.setUint32(20, f.crc ?? 0, true);
  return h;
}

describe('channel constants', () => {
  it('match the documented layout', () => {
    assert.equal(Buffer.from('VFMC', 'latin1').readUInt32LE(0), CHANNEL_MAGIC);
    assert.equal(CHANNEL_VERSION, 1);
    assert.equal(FRAME_HEADER_SIZE, 24);
    assert.equal(MAX_FRAME_PAYLOAD, 16 * 1024 * 1024 + 8);
    assert.deepEqual(ChannelFrame, { REQUEST: 1, RESPONSE: 2, MEMORY: 3, DEVICE_DATA: 4, NOTICE: 5, ZERO: 6 });
    assert.deepEqual([Errno.EPROTO, Errno.EBADMSG, Errno.EMSGSIZE], [71, 74, 90]);
  });
});

describe('FrameEncoder golden bytes', () => {
  const p1 = Buffer.from('hello');
  const p2 = Buffer.from([0xde, 0xad, 0xbe, 0xef]);

  it('writes the exact header of a known frame (literal computed with Python zlib)', () => {
    const enc = new FrameEncoder();
    const h1 = enc.header(ChannelFrame.REQUEST, 0x01020304, [p1]);
    assert.equal(h1.toString('hex'), '56464d43010001000000000004030201050000000694b168');
    const h2 = enc.header(ChannelFrame.MEMORY, 0, [p2]);
    assert.equal(h2.toString('hex'), '56464d43010003000100000000000000040000009395da68');
    assert.equal(h1.subarray(0, 4).toString('latin1'), 'VFMC');
  });

  it('matches a header built with a DataView and the zlib CRC chain', { skip: NO_ZLIB_CRC }, () => {
    const crc32 = zlibCrc32!;
    const enc = new FrameEncoder();
    const h1 = enc.header(ChannelFrame.REQUEST, 0x01020304, [p1.subarray(0, 2), p1.subarray(2)]);
    const e1 = handHeader({ type: 1, seq: 0, id: 0x01020304, length: 5 });
    const crc1 = crc32(Buffer.concat([e1.subarray(0, 20), p1]), 0);
    e1.writeUInt32LE(crc1, 20);
    assert.deepEqual(h1, e1);
    // The second frame's CRC continues from the first: crc32(header2[0..20] ++ payload2, crc1).
    const h2 = enc.header(ChannelFrame.MEMORY, 0, [p2]);
    const e2 = handHeader({ type: 3, seq: 1, id: 0, length: 4 });
    const crc2 = crc32(Buffer.concat([e2.subarray(0, 20), p2]), crc1);
    e2.writeUInt32LE(crc2, 20);
    assert.deepEqual(h2, e2);
    assert.notEqual(crc2, crc32(Buffer.concat([e2.subarray(0, 20), p2]), 0), 'the chain matters');
    // A zero-length payload: the CRC covers the 20 header bytes only.
    const h3 = enc.header(ChannelFrame.NOTICE, 9, []);
    const e3 = handHeader({ type: 5, seq: 2, id: 9, length: 0 });
    e3.writeUInt32LE(crc32(e3.subarray(0, 20), crc2), 20);
    assert.deepEqual(h3, e3);
  });

  it('decodes hand-built frames', () => {
    const stream = Buffer.from(
      '56464d43010001000000000004030201050000000694b168' + p1.toString('hex') +
      '56464d43010003000100000000000000040000009395da68' + p2.toString('hex'),
      'hex',
    );
    const frames = new FrameDecoder().push(stream);
    assertFrames(frames, [
      { type: ChannelFrame.REQUEST, id: 0x01020304, payload: p1 },
      { type: ChannelFrame.MEMORY, id: 0, payload: p2 },
    ]);
  });
});

describe('FrameDecoder round trip', () => {
  const small: Spec[] = [
    { type: ChannelFrame.REQUEST, id: 1, payload: bytes(3, 1) },
    { type: ChannelFrame.DEVICE_DATA, id: 0, payload: new Uint8Array(0) },
    { type: ChannelFrame.RESPONSE, id: 0xffffffff, payload: bytes(7, 2) },
  ];
  const big: Spec[] = [
    { type: ChannelFrame.REQUEST, id: 1, payload: bytes(0, 0) },
    { type: ChannelFrame.MEMORY, id: 0, payload: bytes(1, 1) },
    { type: ChannelFrame.DEVICE_DATA, id: 0, payload: bytes(4095, 2) },
    { type: ChannelFrame.MEMORY, id: 0, payload: bytes(1 << 20, 3) },
    { type: ChannelFrame.RESPONSE, id: 0xfffffffe, payload: bytes(1, 4) },
    { type: ChannelFrame.NOTICE, id: 0, payload: bytes(0, 5) },
    { type: ChannelFrame.DEVICE_DATA, id: 0, payload: bytes(4095, 6) },
  ];

  it('fed whole', () => {
    const { stream } = encodeStream(big);
    const d = new FrameDecoder();
    assertFrames(d.push(stream), big);
    assert.equal(d.pending, 0);
  });

  it('a multi-part payload (header over several parts) decodes as one', () => {
    const enc = new FrameEncoder();
    const parts = [bytes(10, 1), bytes(0, 2), bytes(5, 3)];
    const stream = Buffer.concat([enc.header(ChannelFrame.MEMORY, 0, parts), ...parts]);
    assertFrames(new FrameDecoder().push(stream), [{ type: ChannelFrame.MEMORY, id: 0, payload: Buffer.concat(parts) }]);
  });

  it('split in two at every byte offset (3 small frames)', () => {
    const { stream } = encodeStream(small);
    for (let k = 0; k <= stream.length; k++) {
      const d = new FrameDecoder();
      const out = [...d.push(stream.subarray(0, k)), ...d.push(stream.subarray(k))];
      assertFrames(out, small);
      assert.equal(d.pending, 0, `split at ${k}`);
    }
  });

  it('fed one byte at a time (3 small frames), each frame returned as soon as complete', () => {
    const { stream, frames } = encodeStream(small);
    const ends = new Set<number>();
    let at = 0;
    for (const f of frames) ends.add((at += f.length));
    const d = new FrameDecoder();
    const out: Frame[] = [];
    for (let i = 0; i < stream.length; i++) {
      const got = d.push(stream.subarray(i, i + 1));
      assert.equal(got.length, ends.has(i + 1) ? 1 : 0, `after byte ${i}`);
      out.push(...got);
    }
    assertFrames(out, small);
  });

  it('fed in random-sized chunks (seeded)', () => {
    const { stream } = encodeStream(big);
    for (const seed of [1, 2, 3, 42, 0xc0ffee]) {
      const rnd = prngUnit(seed);
      const d = new FrameDecoder();
      const out: Frame[] = [];
      for (let at = 0; at < stream.length; ) {
        const max = rnd() < 0.2 ? 40 : 300_000;
        const n = Math.min(stream.length - at, 1 + Math.floor(rnd() * max));
        // Fresh copies, so no view into the input is relied upon across pushes.
        out.push(...d.push(Buffer.from(stream.subarray(at, at + n))));
        at += n;
      }
      assertFrames(out, big);
      assert.equal(d.pending, 0, `seed ${seed}`);
    }
  });

  it('accepts a payload of exactly MAX_FRAME_PAYLOAD', () => {
    const payload = Buffer.alloc(MAX_FRAME_PAYLOAD, 0xa5);
    const { stream } = encodeStream([{ type: ChannelFrame.MEMORY, id: 0, payload }]);
    assertFrames(new FrameDecoder().push(stream), [{ type: ChannelFrame.MEMORY, id: 0, payload }]);
  });
});

describe('FrameDecoder detects corruption', () => {
  const specs: Spec[] = [
    { type: ChannelFrame.REQUEST, id: 0x0a0b0c0d, payload: bytes(5, 1) },
    { type: ChannelFrame.MEMORY, id: 0, payload: bytes(10, 2) },
  ];

  /**
   * For every byte of a 2-frame stream and every one of the 255 values it can be
   * changed to, a fresh decoder is fed the corrupted stream one byte at a time.
   * Asserted, for a byte of frame F at offset `o` within it:
   * - every frame returned equals the original frame of the same index, and no
   *   frame at index ≥ F is ever returned;
   * - o in 0..5 (magic, version), 8..11 (seq): push throws ProtocolError EPROTO;
   * - o in 6..7 (type), 12..15 (id), 20..23 (crc), ≥ 24 (payload): EBADMSG;
   * - o in 16..19 (length): the new length L' > MAX_FRAME_PAYLOAD → EMSGSIZE;
   *   L' ≤ the bytes after F's header in the stream → F completes with the
   *   wrong payload boundary → EBADMSG; otherwise (more bytes than the stream
   *   holds, ≤ MAX) → no throw: the decoder waits for more bytes (pending > 0)
   *   having returned exactly the frames before F.
   */
  it('every single-byte change of a 2-frame stream', () => {
    const { stream, frames } = encodeStream(specs);
    const starts = [0, frames[0]!.length];
    const counts = { EPROTO: 0, EBADMSG: 0, EMSGSIZE: 0, waits: 0 };
    for (let pos = 0; pos < stream.length; pos++) {
      const f = pos < starts[1]! ? 0 : 1;
      const o = pos - starts[f]!;
      for (let x = 1; x < 256; x++) {
        const bad = Buffer.from(stream);
        bad[pos] = bad[pos]! ^ x;
        let expected: number | 'waits';
        if (o < 6 || (o >= 8 && o < 12)) expected = Errno.EPROTO;
        else if (o >= 16 && o < 20) {
          const len = bad.readUInt32LE(starts[f]! + 16);
          const orig = specs[f]!.payload.length;
          const available = bad.length - starts[f]! - FRAME_HEADER_SIZE;
          expected = len > MAX_FRAME_PAYLOAD ? Errno.EMSGSIZE : len <= available && len !== orig ? Errno.EBADMSG : 'waits';
        } else expected = Errno.EBADMSG;

        const d = new FrameDecoder();
        const out: Frame[] = [];
        let error: unknown;
        for (let i = 0; i < bad.length && error === undefined; i++) {
          try {
            out.push(...d.push(bad.subarray(i, i + 1)));
          } catch (e) {
            error = e;
          }
        }
        const what = `byte ${pos} ^ 0x${x.toString(16)}`;
        assertFrames(out, specs.slice(0, f));
        if (expected === 'waits') {
          assert.equal(error, undefined, what);
          assert.ok(d.pending > 0, what);
          counts.waits++;
        } else {
          assert.ok(error instanceof ProtocolError, `${what}: ${String(error)}`);
          assert.equal(error.errno, expected, `${what}: ${error.message}`);
          counts[expected === Errno.EPROTO ? 'EPROTO' : expected === Errno.EBADMSG ? 'EBADMSG' : 'EMSGSIZE']++;
        }
      }
    }
    // Each class actually occurred.
    for (const [k, n] of Object.entries(counts)) assert.ok(n > 0, `${k}: ${n}`);
  });

  it('a corrupted stream fed whole throws the same way', () => {
    const { stream } = encodeStream(specs);
    const bad = Buffer.from(stream);
    const at = FRAME_HEADER_SIZE + 5 + FRAME_HEADER_SIZE + 3; // a payload byte of frame 1
    bad[at] = bad[at]! ^ 0x01;
    assert.throws(() => new FrameDecoder().push(bad), protocolError(Errno.EBADMSG));
  });
});

describe('FrameDecoder refuses lost, repeated and reordered frames', () => {
  const specs: Spec[] = [0, 1, 2, 3].map((i) => ({ type: ChannelFrame.DEVICE_DATA, id: 0, payload: bytes(16 + i, i) }));
  const { frames } = encodeStream(specs);
  const [a, b, c, d] = frames as [Buffer, Buffer, Buffer, Buffer];

  function feed(parts: Buffer[]): { out: Frame[]; error: unknown } {
    const dec = new FrameDecoder();
    const out: Frame[] = [];
    for (const p of parts) {
      try {
        out.push(...dec.push(p));
      } catch (error) {
        return { out, error };
      }
    }
    return { out, error: undefined };
  }

  it('the intact stream passes', () => {
    const { out, error } = feed([a, b, c, d]);
    assert.equal(error, undefined);
    assertFrames(out, specs);
  });

  it('a dropped frame: EPROTO (seq)', () => {
    const { out, error } = feed([a, c, d]);
    assertFrames(out, specs.slice(0, 1));
    assert.ok(protocolError(Errno.EPROTO)(error));
  });

  it('a dropped frame with the next frame renumbered: EBADMSG (the seq is under the CRC)', () => {
    const c2 = Buffer.from(c);
    c2.writeUInt32LE(1, 8);
    const { out, error } = feed([a, c2, d]);
    assertFrames(out, specs.slice(0, 1));
    assert.ok(protocolError(Errno.EBADMSG)(error));
  });

  it('a dropped frame, the next one renumbered and re-checksummed from the sender chain: EBADMSG', { skip: NO_ZLIB_CRC }, () => {
    const crc32 = zlibCrc32!;
    // The sender's chain value after b (its own header's crc), used to re-sign c as seq 1.
    const crcB = b.readUInt32LE(20);
    const c2 = Buffer.from(c);
    c2.writeUInt32LE(1, 8);
    c2.writeUInt32LE(crc32(Buffer.concat([c2.subarray(0, 20), c2.subarray(FRAME_HEADER_SIZE)]), crcB), 20);
    const { out, error } = feed([a, c2, d]);
    assertFrames(out, specs.slice(0, 1));
    assert.ok(protocolError(Errno.EBADMSG)(error));
  });

  it('a repeated frame: EPROTO (seq)', () => {
    const { out, error } = feed([a, b, b, c]);
    assertFrames(out, specs.slice(0, 2));
    assert.ok(protocolError(Errno.EPROTO)(error));
  });

  it('a repeated frame fed in the same chunk as the original: EPROTO, nothing returned', () => {
    const { out, error } = feed([Buffer.concat([a, a])]);
    assert.equal(out.length, 0);
    assert.ok(protocolError(Errno.EPROTO)(error));
  });

  it('two swapped frames: EPROTO (seq)', () => {
    const { out, error } = feed([a, c, b, d]);
    assertFrames(out, specs.slice(0, 1));
    assert.ok(protocolError(Errno.EPROTO)(error));
  });

  it('two swapped frames with their seq fields swapped back: EBADMSG', () => {
    const c1 = Buffer.from(c);
    c1.writeUInt32LE(1, 8);
    const b2 = Buffer.from(b);
    b2.writeUInt32LE(2, 8);
    const { out, error } = feed([a, c1, b2, d]);
    assertFrames(out, specs.slice(0, 1));
    assert.ok(protocolError(Errno.EBADMSG)(error));
  });

  it('a frame of another channel (its own chain) spliced in: EBADMSG', () => {
    // Another channel whose frame 0 differs from a: its frame 1 has seq 1 but a CRC chained from a different value.
    const other = encodeStream([
      { type: ChannelFrame.DEVICE_DATA, id: 0, payload: bytes(16, 98) },
      { type: ChannelFrame.DEVICE_DATA, id: 0, payload: bytes(17, 99) },
    ]).frames[1]!;
    const { out, error } = feed([a, other]);
    assertFrames(out, specs.slice(0, 1));
    assert.ok(protocolError(Errno.EBADMSG)(error));
  });
});

describe('FrameDecoder header checks', () => {
  it('wrong magic: EPROTO on the header alone, before any payload', () => {
    const h = handHeader({ magic: 0x434d4657, type: 1, seq: 0, id: 0, length: 100 });
    const d = new FrameDecoder();
    assert.deepEqual(d.push(h.subarray(0, 23)), []);
    assert.throws(() => d.push(h.subarray(23)), protocolError(Errno.EPROTO));
  });

  it('wrong version (2): EPROTO on the header alone, even with a correct CRC', { skip: NO_ZLIB_CRC }, () => {
    const payload = bytes(100, 1);
    const h = handHeader({ version: 2, type: 1, seq: 0, id: 0, length: payload.length });
    h.writeUInt32LE(zlibCrc32!(Buffer.concat([h.subarray(0, 20), payload])), 20);
    assert.throws(() => new FrameDecoder().push(h), protocolError(Errno.EPROTO));
  });

  it('wrong version (2) without a CRC: EPROTO', () => {
    const h = handHeader({ version: 2, type: 1, seq: 0, id: 0, length: 0 });
    assert.throws(() => new FrameDecoder().push(h), protocolError(Errno.EPROTO));
  });

  it('a first frame with seq ≠ 0: EPROTO', () => {
    const h = handHeader({ type: 1, seq: 1, id: 0, length: 0 });
    assert.throws(() => new FrameDecoder().push(h), protocolError(Errno.EPROTO));
  });

  it('a length > MAX_FRAME_PAYLOAD: EMSGSIZE on the header alone', () => {
    for (const length of [MAX_FRAME_PAYLOAD + 1, 0xffffffff]) {
      const h = handHeader({ type: ChannelFrame.MEMORY, seq: 0, id: 0, length });
      assert.throws(() => new FrameDecoder().push(h), protocolError(Errno.EMSGSIZE));
    }
  });

  it('a length of exactly MAX_FRAME_PAYLOAD is awaited, not refused', () => {
    const d = new FrameDecoder();
    assert.deepEqual(d.push(handHeader({ type: ChannelFrame.MEMORY, seq: 0, id: 0, length: MAX_FRAME_PAYLOAD })), []);
    assert.equal(d.pending, FRAME_HEADER_SIZE);
  });
});

describe('FrameEncoder limits', () => {
  it('refuses a payload > MAX_FRAME_PAYLOAD with EMSGSIZE, and keeps its state', () => {
    const enc = new FrameEncoder();
    assert.throws(() => enc.header(ChannelFrame.MEMORY, 0, [Buffer.alloc(MAX_FRAME_PAYLOAD + 1)]), protocolError(Errno.EMSGSIZE));
    assert.throws(
      () => enc.header(ChannelFrame.MEMORY, 0, [Buffer.alloc(MAX_FRAME_PAYLOAD), Buffer.alloc(1)]),
      protocolError(Errno.EMSGSIZE),
    );
    // The refused frames consumed neither a seq nor a CRC step: the next one is still frame 0.
    const p = bytes(3, 1);
    const stream = Buffer.concat([enc.header(ChannelFrame.REQUEST, 5, [p]), p]);
    assertFrames(new FrameDecoder().push(stream), [{ type: ChannelFrame.REQUEST, id: 5, payload: p }]);
  });
});

describe('encodeMessage / decodeMessage', () => {
  const roundTrip = (head: unknown, body?: Uint8Array): { head: unknown; body: Uint8Array } =>
    decodeMessage(Buffer.concat(encodeMessage(head, body)));

  it('bigint values round trip, nested', () => {
    const head = {
      zero: 0n,
      max: 2n ** 64n - 1n,
      neg: -(2n ** 63n),
      list: [1n, { deep: [2n ** 64n - 1n, 'x', null] }, 3],
      plain: 7,
      s: 'text',
    };
    assert.deepEqual(roundTrip(head).head, head);
    assert.equal(roundTrip(0n).head, 0n);
    assert.deepEqual(roundTrip([2n ** 64n - 1n]).head, [2n ** 64n - 1n]);
  });

  it('the JSON carries bigints as {"$bigint":"…"}', () => {
    const [len, json] = encodeMessage({ a: 2n ** 64n - 1n }) as [Buffer, Buffer];
    assert.equal(json.toString(), '{"a":{"$bigint":"18446744073709551615"}}');
    assert.equal(len.readUInt32LE(0), json.length);
  });

  it('a string that looks like a bigint stays a string', () => {
    const head = { a: '123n', b: '123', c: ['18446744073709551615'], d: { $bigint: 5n } };
    const back = roundTrip(head).head as typeof head;
    assert.deepEqual(back, head);
    assert.equal(typeof back.a, 'string');
    assert.equal(typeof back.b, 'string');
  });

  it('preserves a binary body; no body part when the body is empty', () => {
    const body = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const parts = encodeMessage({ op: 'x' }, body);
    assert.equal(parts.length, 3);
    const back = decodeMessage(Buffer.concat(parts));
    assert.deepEqual(back.head, { op: 'x' });
    assert.ok(Buffer.from(back.body).equals(body));
    assert.equal(encodeMessage({ op: 'x' }).length, 2);
    assert.equal(roundTrip({ op: 'x' }).body.length, 0);
  });

  it('decodes a payload that is a view at an odd offset of a larger buffer', () => {
    const msg = Buffer.concat(encodeMessage({ n: 1n }, Buffer.from([9, 8, 7])));
    const big = Buffer.concat([Buffer.alloc(3, 0xee), msg, Buffer.alloc(5, 0xee)]);
    const view = new Uint8Array(big.buffer, big.byteOffset + 3, msg.length);
    const back = decodeMessage(view);
    assert.deepEqual(back.head, { n: 1n });
    assert.deepEqual([...back.body], [9, 8, 7]);
  });

  it('a message through a frame round trip', () => {
    const parts = encodeMessage({ gpa: 2n ** 64n - 1n }, bytes(100, 3));
    const enc = new FrameEncoder();
    const stream = Buffer.concat([enc.header(ChannelFrame.REQUEST, 3, parts), ...parts]);
    const [f] = new FrameDecoder().push(stream);
    const back = decodeMessage(f!.payload);
    assert.deepEqual(back.head, { gpa: 2n ** 64n - 1n });
    assert.ok(Buffer.from(back.body).equals(bytes(100, 3)));
  });

  it('malformed payloads: EPROTO', () => {
    for (const n of [0, 1, 3]) assert.throws(() => decodeMessage(new Uint8Array(n)), protocolError(Errno.EPROTO), `${n} bytes`);
    const past = Buffer.concat(encodeMessage({ a: 1 }));
    past.writeUInt32LE(past.length - 4 + 1, 0);
    assert.throws(() => decodeMessage(past), protocolError(Errno.EPROTO), 'JSON length past the end');
    const huge = Buffer.from([0xff, 0xff, 0xff, 0xff, 0x7b, 0x7d]);
    assert.throws(() => decodeMessage(huge), protocolError(Errno.EPROTO), 'JSON length 2^32-1');
    const bad = Buffer.from('{"a":', 'utf8');
    const invalid = Buffer.concat([Buffer.from([bad.length, 0, 0, 0]), bad]);
    assert.throws(() => decodeMessage(invalid), protocolError(Errno.EPROTO), 'invalid JSON');
    assert.throws(() => decodeMessage(Buffer.from([0, 0, 0, 0])), protocolError(Errno.EPROTO), 'empty JSON');
    const notBig = Buffer.from('{"$bigint":"12x"}');
    assert.throws(
      () => decodeMessage(Buffer.concat([Buffer.from([notBig.length, 0, 0, 0]), notBig])),
      protocolError(Errno.EPROTO),
      'a $bigint that is not an integer',
    );
  });

  it('a JSON length that exactly fills the payload leaves an empty body', () => {
    const back = decodeMessage(Buffer.concat(encodeMessage([1, 2])));
    assert.deepEqual(back.head, [1, 2]);
    assert.equal(back.body.length, 0);
  });
});

describe('memoryPrefix / decodeMemory', () => {
  it('gpa round trip', () => {
    for (const gpa of [0n, 1n, 0x1000n, 0xfedcba9876543210n, 2n ** 64n - 1n]) {
      const prefix = memoryPrefix(gpa);
      assert.equal(prefix.length, 8);
      assert.equal(prefix.readBigUInt64LE(0), gpa);
      const data = bytes(13, Number(gpa & 0xffn));
      const back = decodeMemory(Buffer.concat([prefix, data]));
      assert.equal(back.gpa, gpa);
      assert.ok(Buffer.from(back.data).equals(data));
    }
  });

  it('writes the gpa little-endian', () => {
    assert.equal(memoryPrefix(0x0102030405060708n).toString('hex'), '0807060504030201');
  });

  it('exactly 8 bytes: empty data; a view at an odd offset decodes', () => {
    assert.equal(decodeMemory(memoryPrefix(5n)).data.length, 0);
    const big = Buffer.concat([Buffer.alloc(1), memoryPrefix(2n ** 64n - 1n), Buffer.from([1, 2])]);
    const back = decodeMemory(new Uint8Array(big.buffer, big.byteOffset + 1, 10));
    assert.equal(back.gpa, 2n ** 64n - 1n);
    assert.deepEqual([...back.data], [1, 2]);
  });

  it('a payload < 8 bytes: EPROTO', () => {
    for (const n of [0, 1, 7]) assert.throws(() => decodeMemory(new Uint8Array(n)), protocolError(Errno.EPROTO), `${n} bytes`);
  });
});
