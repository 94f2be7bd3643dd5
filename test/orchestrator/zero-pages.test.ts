/**
 * Zero pages: the copy sends all-zero memory as zero markers and the rest as
 * data (by runs of pages, across mapping windows too); a destination applies
 * a marker by zero-filling only where its memory is not zero already; over
 * the channel a marker is a 16-byte ZERO frame (feature `zero-pages`). A
 * migration to a destination whose memory holds garbage ends byte-for-byte
 * equal, locally and over TCP, with the zero pages counted in `zeroBytes`.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { ChannelFrame, decodeZero, FrameDecoder, FrameEncoder, zeroPayload } from '../../src/orchestrator/channel.js';
import { copyAllMemory, copyPages, isAllZero, zeroFill, type MemorySink } from '../../src/orchestrator/memory-copy.js';
import { migrate } from '../../src/orchestrator/migrate.js';
import { ProtocolError } from '../../src/errors.js';
import { Errno } from '../../src/protocol/errno.js';
import { GUEST, connectTo, withLocalPair, withSetup } from './remote-fixture.js';

const PAGE = 4096;
const MiB = 1 << 20;

type Call = { kind: 'write' | 'zero'; gpa: number; length: number };

/** A sink that records what it is given (and copies the data into `into`, when given). */
function recorder(into?: Uint8Array, copies = false): { sink: MemorySink; calls: Call[] } {
  const calls: Call[] = [];
  return {
    calls,
    sink: {
      copies,
      write: (gpa, data) => {
        calls.push({ kind: 'write', gpa: Number(gpa), length: data.length });
        into?.set(data, Number(gpa));
      },
      zero: (gpa, length) => {
        calls.push({ kind: 'zero', gpa: Number(gpa), length });
        into?.fill(0, Number(gpa), Number(gpa) + length);
      },
    },
  };
}

const meter = { add: () => undefined };

describe('zero pages', () => {
  it('copyAllMemory: an all-zero chunk is one marker; a mixed chunk goes as runs of data and zero pages', async () => {
    const mem = GuestMemory.create(2 * MiB);
    try {
      // Second MiB: pages 1–2 and 5 non-zero.
      for (const p of [257, 258, 261]) mem.write(BigInt(p * PAGE + 17), Uint8Array.of(0xab));
      const out = new Uint8Array(2 * MiB).fill(0xee);
      const { sink, calls } = recorder(out);
      const r = await copyAllMemory(mem, sink, meter);
      assert.deepEqual(calls, [
        { kind: 'zero', gpa: 0, length: MiB },
        { kind: 'zero', gpa: MiB, length: PAGE },
        { kind: 'write', gpa: MiB + PAGE, length: 2 * PAGE },
        { kind: 'zero', gpa: MiB + 3 * PAGE, length: 2 * PAGE },
        { kind: 'write', gpa: MiB + 5 * PAGE, length: PAGE },
        { kind: 'zero', gpa: MiB + 6 * PAGE, length: MiB - 6 * PAGE },
      ]);
      assert.deepEqual(r, { bytes: 2 * MiB, zeroBytes: 2 * MiB - 3 * PAGE });
      assert.ok(Buffer.from(out).equals(mem.read(0n, 2 * MiB)));
    } finally {
      mem.dispose();
    }
  });

  it('copyPages over a memory mapped in small windows (ranges crossing windows are copied, not viewed)', async () => {
    const mem = GuestMemory.create(64 * PAGE, { windowSize: 4 * PAGE });
    try {
      mem.write(BigInt(3 * PAGE), new Uint8Array(2 * PAGE).fill(7)); // pages 3 and 4: across a window boundary
      const out = new Uint8Array(64 * PAGE).fill(1);
      const { sink } = recorder(out);
      const r = await copyPages(mem, sink, [2, 3, 4, 5, 40], meter);
      assert.deepEqual(r, { bytes: 5 * PAGE, zeroBytes: 3 * PAGE });
      for (const p of [2, 5, 40]) assert.ok(isAllZero(out.subarray(p * PAGE, (p + 1) * PAGE)), `page ${p} zeroed`);
      assert.ok(out.subarray(3 * PAGE, 5 * PAGE).every((b) => b === 7), 'pages 3-4 copied');
      assert.equal(out[6 * PAGE], 1, 'pages not listed untouched');
    } finally {
      mem.dispose();
    }
  });

  it('a sink that does not copy gets copies, not views of the source', async () => {
    const mem = GuestMemory.create(MiB);
    try {
      mem.write(0n, new Uint8Array(PAGE).fill(9));
      const kept: Uint8Array[] = [];
      const sink: MemorySink = { copies: false, write: (_gpa, data) => void kept.push(data), zero: () => undefined };
      await copyAllMemory(mem, sink, meter);
      mem.write(0n, new Uint8Array(PAGE).fill(3));
      assert.equal(kept[0]?.[0], 9, 'the kept bytes did not change with the source');
    } finally {
      mem.dispose();
    }
  });

  it('zeroFill writes only where the memory is not zero, and marks those pages dirty', () => {
    const mem = GuestMemory.create(4 * MiB);
    try {
      mem.takeDirty();
      mem.view(2n * BigInt(MiB), PAGE).fill(5);
      assert.equal(zeroFill(mem, 0n, 4 * MiB), MiB, 'one chunk had to be written');
      assert.ok(isAllZero(mem.read(0n, 4 * MiB)));
      assert.equal(mem.takeDirty().length, MiB / PAGE);
      assert.throws(() => zeroFill(mem, BigInt(4 * MiB - PAGE), 2 * PAGE), (e: unknown) => (e as { errno?: number }).errno === Errno.EFAULT);
    } finally {
      mem.dispose();
    }
  });

  it('ZERO frames: 16 bytes of gpa and length through the checked channel; a bad length is EPROTO', () => {
    const enc = new FrameEncoder();
    const payload = zeroPayload(0x1234_5000n, 3 * MiB);
    const frames = new FrameDecoder().push(Buffer.concat([enc.header(ChannelFrame.ZERO, 0, [payload]), payload]));
    assert.equal(frames[0]?.type, ChannelFrame.ZERO);
    assert.deepEqual(decodeZero(frames[0]?.payload ?? new Uint8Array(0)), { gpa: 0x1234_5000n, length: 3 * MiB });
    assert.throws(() => decodeZero(new Uint8Array(15)), (e: unknown) => e instanceof ProtocolError && e.errno === Errno.EPROTO);
  });

  it('a local migration to a destination full of garbage: equal byte for byte, zero pages counted', () =>
    withLocalPair(async (src, dst) => {
      src.memory.write(BigInt(5 * MiB), new Uint8Array(3 * PAGE).fill(0x42));
      dst.memory.view(0n, GUEST).fill(0xee);
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000 });
      assert.equal(report.outcome, 'migrated', report.reason);
      assert.ok(report.zeroBytes > BigInt(GUEST / 2), `${report.zeroBytes} zero bytes`);
      assert.ok(report.zeroBytes <= report.bytes.precopyMemory + report.bytes.stopCopyMemory);
      assert.ok(Buffer.from(dst.memory.read(0n, GUEST)).equals(src.memory.read(0n, GUEST)));
    }, { programSource: true }));

  it('over TCP: the receiver takes zero-pages, applies ZERO frames over garbage, counts them as memory bytes', () =>
    withSetup(async (src, rx) => {
      src.memory.write(BigInt(7 * MiB), new Uint8Array(5 * PAGE).fill(0x17));
      const destination = await connectTo(rx.url, src);
      assert.equal(destination.zeroPages, true);
      rx.last?.memory.view(0n, GUEST).fill(0xee);
      const outcome = rx.nextOutcome();
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 2000 });
      assert.equal(report.outcome, 'migrated', report.reason);
      const o = await outcome;
      assert.equal(o.outcome, 'committed', o.reason);
      assert.equal(o.memoryBytes, report.bytes.precopyMemory + report.bytes.stopCopyMemory);
      assert.ok(report.zeroBytes > BigInt(GUEST / 2));
      assert.ok(Buffer.from(rx.last?.memory.read(0n, GUEST) ?? new Uint8Array(0)).equals(src.memory.read(0n, GUEST)));
      destination.close();
    }));
});
