/**
 * The device-state stream: golden layout, round trips at every chunking,
 * exhaustive single-byte corruption and truncation, identity and version
 * refusals, hostile lengths and bytes after the end.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError, ProtocolError } from '../../src/errors.js';
import { Errno } from '../../src/protocol/errno.js';
import { StreamFlag, type StreamIdentity, type StreamRecord, type StreamRecordKind } from '../../src/migration/stream-format.js';
import { StreamReader, type StreamReaderOptions } from '../../src/migration/stream-reader.js';
import { StreamWriter, decodeStream, encodeStream } from '../../src/migration/stream.js';
import { WireBuilder } from '../support/wire-builder.js';
import { buildHeader, buildRecord, buildRecordHeader, concat, noise, prng } from './stream-fixtures.js';

const ID: StreamIdentity = { deviceType: 'dma-engine', pciVendor: 0x4e58, pciDevice: 0x0001, stateVersion: 3 };
const OPTS: StreamReaderOptions = { expected: ID };
const HDR = { vendor: ID.pciVendor, device: ID.pciDevice, stateVersion: ID.stateVersion, deviceType: ID.deviceType };

type Rec = { kind: StreamRecordKind; payload: Uint8Array };
/** Every kind, an empty payload, and one record bigger than the reader's initial 64 KiB buffer. */
const RECORDS: Rec[] = [
  { kind: 'config', payload: noise(256, 1) },
  { kind: 'full', payload: noise(1000, 2) },
  { kind: 'delta', payload: new Uint8Array(0) },
  { kind: 'delta', payload: noise(17, 3) },
  { kind: 0x80, payload: noise(5, 4) },
  { kind: 0xfe, payload: noise(1, 5) },
  { kind: 'full', payload: noise(70_000, 6) },
];
const SMALL: Rec[] = [
  { kind: 'config', payload: noise(8, 7) },
  { kind: 'full', payload: noise(13, 8) },
  { kind: 'delta', payload: new Uint8Array(0) },
  { kind: 0x81, payload: noise(3, 9) },
];

const isEinval = (e: unknown): boolean => e instanceof ProtocolError && e.errno === Errno.EINVAL;
const refused = (re: RegExp) => (e: unknown): boolean => isEinval(e) && re.test((e as Error).message);

/** Feeds `bytes` in the given chunk sizes (cycled) and finishes. */
function feed(bytes: Uint8Array, sizes: readonly number[], options = OPTS): StreamRecord[] {
  const reader = new StreamReader(options);
  const out: StreamRecord[] = [];
  for (let at = 0, i = 0; at < bytes.length; i++) {
    const n = sizes[i % sizes.length]!;
    out.push(...reader.push(bytes.subarray(at, at + n)));
    at += n;
  }
  reader.finish();
  assert.equal(reader.complete, true);
  return out;
}

function assertSame(got: readonly StreamRecord[], want: readonly Rec[]): void {
  assert.equal(got.length, want.length);
  got.forEach((r, i) => {
    assert.equal(r.kind, want[i]!.kind, `record ${i + 1} kind`);
    assert.equal(r.index, i + 1);
    assert.ok(Buffer.from(r.payload).equals(want[i]!.payload), `record ${i + 1} payload`);
  });
}

/** Pushes everything then finishes; returns the error, or undefined if the stream was accepted. */
function verdict(bytes: Uint8Array, options = OPTS): unknown {
  const reader = new StreamReader(options);
  try {
    reader.push(bytes);
    reader.finish();
    return undefined;
  } catch (e) {
    return e;
  }
}

describe('stream: golden layout (independent builder)', () => {
  it('header, records and end record byte for byte', () => {
    const header = buildHeader({ ...HDR, flags: StreamFlag.PreCopy });
    const one = buildRecord(0x03, 1, Uint8Array.of(1, 2, 3), bitwiseChainOf(header));
    const two = buildRecord(0x02, 2, new Uint8Array(0), one.crc);
    const end = buildRecord(0xff, 3, new WireBuilder().u32(2).u64(3).build(), two.crc);
    const w = new StreamWriter();
    assert.deepEqual(w.begin(ID, StreamFlag.PreCopy), header);
    assert.deepEqual(w.record('config', Uint8Array.of(1, 2, 3)), one.bytes);
    assert.deepEqual(w.record('delta', new Uint8Array(0)), two.bytes);
    assert.deepEqual(w.end(), end.bytes);
    assert.equal(header.length, 24 + 'dma-engine'.length + 4);
  });
});

describe('stream: round trip', () => {
  const bytes = encodeStream(ID, RECORDS);
  it('in one piece, with summary', () => {
    const { records, summary } = decodeStream(bytes, OPTS);
    assertSame(records, RECORDS);
    assert.deepEqual(summary, { identity: ID, flags: 0, records: 7, payloadBytes: 71_279 });
  });
  it('at every chunk size 1..64', () => {
    for (let size = 1; size <= 64; size++) assertSame(feed(bytes, [size]), RECORDS);
  });
  it('at 100 random chunkings, empty chunks included', () => {
    for (let seed = 1; seed <= 100; seed++) {
      const next = prng(seed);
      const max = [3, 50, 5000, 100_000][seed % 4]!;
      const sizes = Array.from({ length: 64 }, () => next() % (max + 1));
      if (!sizes.some((s) => s > 0)) sizes.push(1);
      assertSame(feed(bytes, sizes), RECORDS);
    }
  });
  it('returns each record as soon as its CRC arrives', () => {
    const small = encodeStream(ID, SMALL);
    const reader = new StreamReader(OPTS);
    const seen: number[] = [];
    for (let i = 0; i < small.length; i++) for (const r of reader.push(small.subarray(i, i + 1))) seen.push(r.index);
    assert.deepEqual(seen, [1, 2, 3, 4]);
    assert.equal(reader.complete, true);
    assert.equal(reader.finish().records, 4);
  });
  it('a stream with no data records', () => assertSame(decodeStream(encodeStream(ID, []), OPTS).records, []));
});

describe('stream: corruption and truncation of a small stream', () => {
  const good = encodeStream(ID, SMALL);
  it('every single-byte corruption, at every offset and with 3 patterns, is refused with EINVAL', () => {
    for (let at = 0; at < good.length; at++) {
      for (const xor of [0x01, 0x80, 0xff]) {
        const bad = good.slice();
        bad[at]! ^= xor;
        const e = verdict(bad);
        assert.ok(isEinval(e), `byte ${at} ^ 0x${xor.toString(16)} accepted or wrong error: ${String(e)}`);
      }
    }
  });
  it('the same corruptions fed one byte at a time are refused too', () => {
    for (let at = 0; at < good.length; at++) {
      const bad = good.slice();
      bad[at]! ^= 0x10;
      assert.throws(() => feed(bad, [1]), isEinval, `byte ${at}`);
    }
  });
  it('a flipped payload byte names the record', () => {
    const bad = good.slice();
    bad[good.length - 28 - 4 - 1]! ^= 1; // last payload byte of record #4
    assert.throws(() => decodeStream(bad, OPTS), refused(/corrupted record #4/));
  });
  it('every truncation is accepted so far but refused by finish()', () => {
    for (let at = 0; at < good.length; at++) {
      const reader = new StreamReader(OPTS);
      const got = reader.push(good.subarray(0, at));
      assertSame(got, SMALL.slice(0, got.length));
      assert.equal(reader.complete, false);
      assert.throws(() => reader.finish(), refused(/truncated/), `cut at ${at}`);
    }
  });
  it('a dropped, repeated or swapped record is refused', () => {
    const w = new StreamWriter();
    const parts = [w.begin(ID), ...SMALL.map((r) => w.record(r.kind, r.payload)), w.end()];
    const drop = concat([parts[0]!, parts[1]!, parts[3]!, parts[4]!, parts[5]!]);
    const repeat = concat([parts[0]!, parts[1]!, parts[1]!, ...parts.slice(2)]);
    const swap = concat([parts[0]!, parts[2]!, parts[1]!, ...parts.slice(3)]);
    for (const bad of [drop, repeat, swap]) assert.throws(() => decodeStream(bad, OPTS), refused(/carries sequence number/));
  });
  it('a record spliced in from another stream of the same device fails the CRC chain', () => {
    const w1 = new StreamWriter();
    const w2 = new StreamWriter();
    const a = [w1.begin(ID), w1.record('full', Uint8Array.of(1)), w1.end()];
    w2.begin(ID, StreamFlag.PreCopy);
    const foreign = w2.record('full', Uint8Array.of(1));
    assert.throws(() => decodeStream(concat([a[0]!, foreign, a[2]!]), OPTS), refused(/corrupted record #1/));
  });
  it('bytes after the end record are refused, in the same chunk or later', () => {
    assert.throws(() => decodeStream(concat([good, Uint8Array.of(0)]), OPTS), refused(/after the end record/));
    const reader = new StreamReader(OPTS);
    reader.push(good);
    assert.throws(() => reader.push(Uint8Array.of(0)), refused(/after the end record/));
  });
  it('a refused reader stays refused', () => {
    const reader = new StreamReader(OPTS);
    assert.throws(() => reader.push(Uint8Array.of(0x41)), refused(/not a vfio-user migration stream/));
    assert.throws(() => reader.push(good), refused(/not a vfio-user migration stream/));
    assert.throws(() => reader.finish(), refused(/not a vfio-user migration stream/));
  });
  it('end-record totals that disagree with the stream are refused', () => {
    const header = buildHeader(HDR);
    const chain = bitwiseChainOf(header);
    const rec = buildRecord(0x01, 1, Uint8Array.of(9, 9), chain);
    for (const [count, bytes] of [[2, 2], [1, 3]] as const) {
      const end = buildRecord(0xff, 2, new WireBuilder().u32(count).u64(bytes).build(), rec.crc);
      assert.throws(() => decodeStream(concat([header, rec.bytes, end.bytes]), OPTS), refused(/end record says/));
    }
  });
});

/** The CRC stored at the end of a hand-built header. */
function bitwiseChainOf(header: Uint8Array): number {
  const n = header.length;
  return (header[n - 4]! | (header[n - 3]! << 8) | (header[n - 2]! << 16) | (header[n - 1]! << 24)) >>> 0;
}

/** A hand-built stream: `header` then one full record and a matching end record. */
function withHeader(header: Uint8Array): Uint8Array {
  const rec = buildRecord(0x01, 1, Uint8Array.of(7), bitwiseChainOf(header));
  const end = buildRecord(0xff, 2, new WireBuilder().u32(1).u64(1).build(), rec.crc);
  return concat([header, rec.bytes, end.bytes]);
}

describe('stream: header and identity refusals', () => {
  it('the hand-built stream is accepted (control)', () => assert.equal(verdict(withHeader(buildHeader(HDR))), undefined));
  const cases: Array<[string, Partial<Parameters<typeof buildHeader>[0]>, RegExp]> = [
    ['wrong magic', { magic: 'VFUMIGXX' }, /not a vfio-user migration stream/],
    ['format version 2', { version: 2 }, /format version 2 not supported/],
    ['format version 0', { version: 0 }, /format version 0 not supported/],
    ['empty device type', { deviceType: '' }, /empty device type/],
    ['unknown flag bit', { flags: 0x8000_0000 }, /unknown flags 0x80000000/],
    ['reserved byte set', { reserved: 1 }, /reserved byte/],
    ['device type not UTF-8', { typeBytes: Uint8Array.of(0x64, 0xff, 0x6d) }, /not valid UTF-8/],
    ['another device type', { deviceType: 'gpio' }, /'gpio' \(PCI 4e58:0001, state v3\), this device is 'dma-engine'/],
    ['another PCI vendor', { vendor: 0x1af4 }, /PCI 1af4:0001.*this device is 'dma-engine' \(PCI 4e58:0001/],
    ['another PCI device', { device: 0x1000 }, /PCI 4e58:1000.*PCI 4e58:0001/],
    ['a newer state version', { stateVersion: 4 }, /state version 4 is newer than the 3/],
    ['an older state version, not accepted', { stateVersion: 2 }, /state version 2 is older than 3/],
  ];
  for (const [name, fields, re] of cases) {
    it(name, () => assert.ok(refused(re)(verdict(withHeader(buildHeader({ ...HDR, ...fields }))))));
  }
  it('a wrong magic is refused at its first byte, before the header is complete', () => {
    assert.throws(() => new StreamReader(OPTS).push(Uint8Array.of(0x56, 0x46, 0x00)), refused(/bad magic/));
  });
  it('older state versions accepted by list or predicate; newer never', () => {
    const old = withHeader(buildHeader({ ...HDR, stateVersion: 2 }));
    assert.equal(verdict(old, { expected: ID, acceptStateVersions: [1, 2] }), undefined);
    assert.equal(verdict(old, { expected: ID, acceptStateVersions: (v) => v >= 2 }), undefined);
    assert.ok(isEinval(verdict(old, { expected: ID, acceptStateVersions: [1] })));
    const reader = new StreamReader({ expected: ID, acceptStateVersions: [2] });
    reader.push(old);
    assert.equal(reader.identity?.stateVersion, 2);
    const newer = withHeader(buildHeader({ ...HDR, stateVersion: 4 }));
    assert.ok(isEinval(verdict(newer, { expected: ID, acceptStateVersions: () => true })));
  });
  it('bad reader options are the caller’s error', () => {
    const bad = (e: unknown): boolean => e instanceof InvalidArgumentError && e.errno === Errno.EINVAL;
    assert.throws(() => new StreamReader({ expected: { ...ID, deviceType: '' } }), bad);
    assert.throws(() => new StreamReader({ expected: ID, maxRecordBytes: 2 ** 30 + 1 }), bad);
    assert.throws(() => new StreamReader({ expected: ID, maxRecordBytes: -1 }), bad);
  });
});

describe('stream: record framing refusals', () => {
  const header = buildHeader(HDR);
  const push = (tail: Uint8Array, options = OPTS): unknown => {
    try {
      new StreamReader(options).push(concat([header, tail]));
      return undefined;
    } catch (e) {
      return e;
    }
  };
  it('a hostile 4 GiB length is refused from the record header alone, without allocating', () => {
    const before = process.memoryUsage().arrayBuffers;
    for (const length of [0xffff_ffff, 0x4000_0001]) {
      assert.ok(refused(/length \d+ exceeds the 1073741824-byte limit/)(push(buildRecordHeader(0x01, 1, length))));
    }
    assert.ok(process.memoryUsage().arrayBuffers - before < 16 << 20);
  });
  it('a record just under the limit is not allocated before its bytes arrive', () => {
    const reader = new StreamReader(OPTS);
    const before = process.memoryUsage().arrayBuffers;
    assert.deepEqual(reader.push(concat([header, buildRecordHeader(0x01, 1, 0x4000_0000), new Uint8Array(10)])), []);
    assert.ok(process.memoryUsage().arrayBuffers - before < 16 << 20);
    assert.throws(() => reader.finish(), refused(/inside record #1 \(10 of 1073741824 payload bytes\)/));
  });
  it('a constructor limit: maxRecordBytes bytes pass, one more is refused', () => {
    const chain = bitwiseChainOf(header);
    const ok = buildRecord(0x01, 1, new Uint8Array(100), chain);
    assert.equal(push(ok.bytes, { expected: ID, maxRecordBytes: 100 }), undefined);
    assert.ok(refused(/exceeds the 100-byte limit/)(push(buildRecordHeader(0x01, 1, 101), { expected: ID, maxRecordBytes: 100 })));
    const empty = encodeStream(ID, [{ kind: 'delta', payload: new Uint8Array(0) }]);
    assert.equal(decodeStream(empty, { expected: ID, maxRecordBytes: 0 }).summary.records, 1, 'the limit is not applied to the end record');
  });
  const framing: Array<[string, Uint8Array, RegExp]> = [
    ['unknown tag 0x04', buildRecordHeader(0x04, 1, 0), /unknown tag 0x4/],
    ['tag 0', buildRecordHeader(0x00, 1, 0), /unknown tag 0x0/],
    ['end record of the wrong size', buildRecordHeader(0xff, 1, 13), /end record of 13 bytes/],
    ['sequence number 0', buildRecordHeader(0x01, 0, 0), /carries sequence number 0/],
    ['reserved bytes', Uint8Array.of(0x01, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0), /reserved bytes/],
  ];
  for (const [name, tail, re] of framing) it(name, () => assert.ok(refused(re)(push(tail))));
});
