/**
 * The producing side of the device-state stream: StreamWriter's call order and
 * argument checks, and StreamSource handing out MIG_DATA_READ-sized pieces with
 * its pending / initial / dirty byte counts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError, StateError } from '../../src/errors.js';
import { Errno } from '../../src/protocol/errno.js';
import { type StreamIdentity, type StreamRecordKind } from '../../src/migration/stream-format.js';
import { StreamSource, StreamWriter, decodeStream, encodeStream } from '../../src/migration/stream.js';
import { concat, noise } from './stream-fixtures.js';

const ID: StreamIdentity = { deviceType: 'dma-engine', pciVendor: 0x4e58, pciDevice: 0x0001, stateVersion: 3 };
const RECORDS: Array<{ kind: StreamRecordKind; payload: Uint8Array }> = [
  { kind: 'config', payload: noise(256, 1) },
  { kind: 'full', payload: noise(3 << 20, 2) },
  { kind: 'delta', payload: noise(4099, 3) },
  { kind: 'delta', payload: new Uint8Array(0) },
  { kind: 0x90, payload: noise(7, 4) },
];

const badArg = (e: unknown): boolean => e instanceof InvalidArgumentError && e.errno === Errno.EINVAL;
const badState = (e: unknown): boolean => e instanceof StateError && e.errno === Errno.EINVAL;

function filledSource(): StreamSource {
  const source = new StreamSource(ID);
  for (const r of RECORDS) source.record(r.kind, r.payload);
  source.end();
  return source;
}

describe('StreamSource.read', () => {
  const whole = encodeStream(ID, RECORDS);
  for (const size of [1, 7, 4096, 1 << 20]) {
    it(`in reads of ${size} bytes returns exactly the encoded stream`, () => {
      const source = filledSource();
      assert.equal(source.pendingBytes, whole.length);
      const parts: Uint8Array[] = [];
      while (source.pendingBytes > 0) {
        const before = source.pendingBytes;
        const part = source.read(size);
        assert.equal(part.length, Math.min(size, before), 'a read is short only when the queue runs out');
        assert.equal(source.pendingBytes, before - part.length);
        parts.push(part);
      }
      assert.ok(Buffer.from(concat(parts)).equals(whole));
      assert.equal(source.read(size).length, 0);
      assert.equal(source.done, true);
    });
  }
  it('read(0) and reads of an empty queue return nothing; bad sizes are refused', () => {
    const source = new StreamSource(ID);
    assert.equal(source.read(0).length, 0);
    source.read(1 << 20);
    assert.equal(source.read(10).length, 0);
    assert.equal(source.done, false, 'not done before end()');
    for (const n of [-1, 1.5, Number.NaN]) assert.throws(() => source.read(n), badArg);
  });
  it('interleaves queueing and reading (pre-copy), and the reader accepts the result', () => {
    const source = new StreamSource(ID);
    const parts: Uint8Array[] = [source.read(5)];
    for (const r of RECORDS) {
      source.record(r.kind, r.payload);
      parts.push(source.read(1000));
    }
    source.end();
    while (!source.done) parts.push(source.read(65_536));
    const { records } = decodeStream(concat(parts), { expected: ID });
    assert.equal(records.length, RECORDS.length);
  });
});

describe('StreamSource: initial and dirty bytes', () => {
  it('delta records count as dirty, the rest as initial, and both fall as bytes are read', () => {
    const source = new StreamSource(ID);
    const header = source.pendingBytes;
    assert.equal(source.pendingInitialBytes, header);
    source.record('full', new Uint8Array(100));
    source.record('delta', new Uint8Array(50));
    assert.equal(source.pendingInitialBytes, header + 116);
    assert.equal(source.pendingDirtyBytes, 66);
    source.read(header + 100);
    assert.equal(source.pendingInitialBytes, 16);
    assert.equal(source.pendingDirtyBytes, 66);
    source.read(20);
    assert.equal(source.pendingInitialBytes, 0);
    assert.equal(source.pendingDirtyBytes, 62);
    source.read(62);
    assert.equal(source.pendingBytes, 0);
    assert.equal(source.pendingDirtyBytes, 0);
    assert.equal(source.records, 2);
  });
});

describe('StreamWriter: order and arguments', () => {
  it('refuses calls out of order with StateError', () => {
    const w = new StreamWriter();
    assert.throws(() => w.record('full', new Uint8Array(1)), badState);
    assert.throws(() => w.end(), badState);
    w.begin(ID);
    assert.throws(() => w.begin(ID), badState);
    w.end();
    assert.throws(() => w.record('full', new Uint8Array(1)), badState);
    assert.throws(() => w.end(), badState);
    assert.equal(w.state, 'ended');
  });
  it('refuses kinds outside full/delta/config/0x80..0xfe', () => {
    const w = new StreamWriter();
    w.begin(ID);
    for (const kind of [0, 1, 0x7f, 0xff, 0x100, 0x80 + 0.5, 'state' as StreamRecordKind]) {
      assert.throws(() => w.record(kind, new Uint8Array(1)), badArg, String(kind));
    }
    assert.equal(w.records, 0);
  });
  it('refuses identities and flags that do not fit the header', () => {
    const cases: StreamIdentity[] = [
      { ...ID, deviceType: '' },
      { ...ID, deviceType: 'x'.repeat(256) },
      { ...ID, deviceType: 'é'.repeat(128) },
      { ...ID, pciVendor: 0x10000 },
      { ...ID, pciDevice: -1 },
      { ...ID, stateVersion: 2 ** 32 },
    ];
    for (const id of cases) assert.throws(() => new StreamWriter().begin(id), badArg);
    assert.throws(() => new StreamWriter().begin(ID, 2), badArg);
    assert.doesNotThrow(() => new StreamWriter().begin({ ...ID, deviceType: 'x'.repeat(255) }));
  });
  it('counts records and payload bytes', () => {
    const w = new StreamWriter();
    w.begin(ID);
    w.record('full', new Uint8Array(10));
    w.record(0x80, new Uint8Array(5));
    assert.deepEqual([w.records, w.payloadBytes], [2, 15]);
  });
});
