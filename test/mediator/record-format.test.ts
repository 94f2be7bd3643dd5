/**
 * The recording format as a reader sees it: every record type round-trips; a
 * file cut at any byte reads up to its last whole record; corrupt, hostile and
 * random files end in a RecordingFormatError naming the record — never a
 * crash, another error, or an allocation their length fields ask for.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { RecordingFormatError, RecordingReader } from '../../src/mediator/record-reader.js';
import {
  MAX_RECORD_BODY, RECORD_FORMAT_VERSION, encodeContentRecord, encodeFilePrefix, encodeMessageRecord, encodeNote, encodeSessionEnd, encodeSessionStart,
  type RecordEntry, type RecordingHeader,
} from '../../src/mediator/record-format.js';
import { Command } from '../../src/protocol/constants.js';
import { prngU32 } from '../support/prng.js';
import { concat } from '../migration/stream-fixtures.js';
import { tempDir } from './record-support.js';

const HEADER: RecordingHeader = {
  format: 'vfio-user-recording', version: RECORD_FORMAT_VERSION, created: '2026-12-07T21:00:00.000Z', createdUnixMs: 0,
  package: 'vfio-user', packageVersion: 'test', upstreamSide: false, captureMemory: 0,
};


/** A small recording: one of each record type. */
function sample(): { bytes: Uint8Array; bounds: number[] } {
  const payload = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
  const records = [
    encodeSessionStart(1, 10n, { client: { pid: 42, uid: 0, gid: 0 } }),
    encodeMessageRecord(1, 20n, {
      side: 'client', direction: 'in', channel: 'main', header: { msgId: 3, cmd: Command.DMA_MAP, msgSize: 24, flags: 0, errorNo: 0 }, payload,
    }, [{ kind: 'memfd', size: 8192, seals: 7, link: '/memfd:ram (deleted)', content: true, ident: 1 }, { kind: 'eventfd', size: 0, seals: undefined, link: 'anon_inode:[eventfd]', content: false, ident: 0 }]),
    encodeContentRecord(1, 20n, 0, 4096, new Uint8Array([9, 9, 9])),
    encodeMessageRecord(1, 30n, { side: 'upstream', direction: 'out', channel: 'twin', header: { msgId: 3, cmd: Command.DMA_MAP, msgSize: 16, flags: 0x21, errorNo: 22 }, payload: new Uint8Array(0) }, []),
    encodeNote(0, 35n, { kind: 'dropped', records: 2 }),
    encodeSessionEnd(1, 40n, 'client closed'),
  ];
  const prefix = encodeFilePrefix(HEADER);
  const bounds = [prefix.length];
  for (const r of records) bounds.push(bounds.at(-1)! + r.length);
  return { bytes: concat([prefix, ...records]), bounds };
}

async function readFile(path: string): Promise<{ records: RecordEntry[]; reader: RecordingReader }> {
  const reader = await RecordingReader.open(path);
  const records: RecordEntry[] = [];
  for await (const r of reader.records()) records.push(r);
  return { records, reader };
}

test('every record type round-trips', async () => {
  const tmp = tempDir();
  try {
    const file = join(tmp.dir, 'a.vfrec');
    writeFileSync(file, sample().bytes);
    const { records, reader } = await readFile(file);
    assert.deepEqual(reader.header, HEADER);
    assert.deepEqual(records.map((r) => [r.type, r.index, r.session, r.timeNs]), [
      ['session-start', 0, 1, 10n], ['message', 1, 1, 20n], ['content', 2, 1, 20n], ['message', 3, 1, 30n], ['note', 4, 0, 35n], ['session-end', 5, 1, 40n],
    ]);
    const m = records[1]!;
    assert.ok(m.type === 'message');
    assert.deepEqual([m.side, m.direction, m.channel, m.truncated, [...m.payload]], ['client', 'in', 'main', false, [1, 2, 3, 4, 5, 6, 7, 8]]);
    assert.deepEqual(m.fds, [
      { kind: 'memfd', size: 8192, seals: 7, link: '/memfd:ram (deleted)', content: true, ident: 1 },
      { kind: 'eventfd', size: 0, seals: undefined, link: 'anon_inode:[eventfd]', content: false, ident: 0 },
    ]);
    const c = records[2]!;
    assert.ok(c.type === 'content');
    assert.deepEqual([c.fd, c.at, [...c.data]], [0, 4096, [9, 9, 9]]);
    const u = records[3]!;
    assert.ok(u.type === 'message');
    assert.deepEqual([u.side, u.direction, u.channel, u.header.errorNo, u.header.flags], ['upstream', 'out', 'twin', 22, 0x21]);
    assert.deepEqual(records[4]!.type === 'note' && records[4]!.note, { kind: 'dropped', records: 2 });
    assert.equal(records[5]!.type === 'session-end' && records[5]!.reason, 'client closed');
    assert.equal(records[1]!.offset, sample().bounds[1]);
  } finally {
    tmp.close();
  }
});

test('a file cut at any byte reads up to its last whole record and says where it stopped', async () => {
  const tmp = tempDir();
  try {
    const { bytes, bounds } = sample();
    const file = join(tmp.dir, 'cut.vfrec');
    for (let cut = bounds[0]!; cut <= bytes.length; cut++) {
      writeFileSync(file, bytes.subarray(0, cut));
      const { records, reader } = await readFile(file);
      const whole = bounds.filter((b) => b <= cut).length - 1;
      assert.equal(records.length, whole, `cut at ${cut}`);
      if (bounds.includes(cut)) assert.equal(reader.truncated, undefined, `cut at ${cut}`);
      else assert.deepEqual([reader.truncated?.record, reader.truncated?.offset], [whole, bounds[whole]], `cut at ${cut}`);
    }
    for (let cut = 0; cut < bounds[0]!; cut += 3) {
      writeFileSync(file, bytes.subarray(0, cut));
      await assert.rejects(RecordingReader.open(file), (e: unknown) => e instanceof RecordingFormatError && e.record === undefined && e.errno === 22, `cut at ${cut}`);
    }
  } finally {
    tmp.close();
  }
});

test('corrupt files: a flipped byte, a hostile length, a newer version, not a recording — each a clear error', async () => {
  const tmp = tempDir();
  try {
    const { bytes, bounds } = sample();
    const file = join(tmp.dir, 'bad.vfrec');
    const expectError = async (data: Uint8Array, pattern: RegExp, record?: number): Promise<void> => {
      writeFileSync(file, data);
      await assert.rejects(
        readFile(file),
        (e: unknown) => e instanceof RecordingFormatError && pattern.test(e.message) && e.record === record,
      );
    };
    const flipped = bytes.slice();
    const at = bounds[3]! + 20;
    flipped[at] = flipped[at]! ^ 0x40;
    await expectError(flipped, /^record 3 \(byte \d+\): checksum mismatch/, 3);
    const hostile = bytes.slice();
    new DataView(hostile.buffer).setUint32(bounds[2]!, 0xffff_fff0, true);
    await expectError(hostile, /^record 2 \(byte \d+\): body length 4294967280 is outside 16\.\.\d+/, 2);
    const newer = bytes.slice();
    new DataView(newer.buffer).setUint32(8, RECORD_FORMAT_VERSION + 1, true);
    await expectError(newer, /format version 2 \(this reader knows 1 to 1\)/);
    await expectError(new TextEncoder().encode('{"hello": "world"}\n'), /is not a vfio-user recording/);
    const hugeHeader = bytes.slice();
    new DataView(hugeHeader.buffer).setUint32(12, 0x7fff_ffff, true);
    await expectError(hugeHeader, /header JSON of 2147483647 bytes exceeds 65536/);
  } finally {
    tmp.close();
  }
});

test('random record bodies with valid checksums: decoded or refused with RecordingFormatError, nothing else', async () => {
  const tmp = tempDir();
  try {
    const next = prngU32(0x5eed);
    const prefix = encodeFilePrefix(HEADER);
    const file = join(tmp.dir, 'fuzz.vfrec');
    let refused = 0;
    for (let round = 0; round < 400; round++) {
      // A real body with a few bytes changed (or a random one), reframed with a correct checksum.
      const start = sample().bounds;
      const k = 1 + (next() % (start.length - 1));
      const body = sample().bytes.slice(start[k - 1]! + 8, start[k]!);
      if (round % 4 === 0) for (let i = 0; i < body.length; i++) body[i] = next() & 0xff;
      else for (let i = 0; i < 1 + (next() % 4); i++) body[next() % body.length] = next() & 0xff;
      const frame = new Uint8Array(8);
      new DataView(frame.buffer).setUint32(0, body.length, true);
      new DataView(frame.buffer).setUint32(4, crc32(body), true);
      writeFileSync(file, concat([prefix, frame, body]));
      try {
        await readFile(file);
      } catch (error) {
        assert.ok(error instanceof RecordingFormatError, `round ${round}: ${String(error)}`);
        assert.match(error.message, /^record 0 \(byte \d+\): /);
        refused++;
      }
    }
    assert.ok(refused > 100, `refused ${refused}`);
  } finally {
    tmp.close();
  }
});

test('a length field at the bound and a file that does not hold it: reported truncated, not an error', async () => {
  const tmp = tempDir();
  try {
    const file = join(tmp.dir, 'claim.vfrec');
    const frame = new Uint8Array(8 + 100);
    new DataView(frame.buffer).setUint32(0, MAX_RECORD_BODY, true);
    writeFileSync(file, concat([encodeFilePrefix(HEADER), frame]));
    const { records, reader } = await readFile(file);
    assert.deepEqual(records, []);
    assert.deepEqual(reader.truncated, { record: 0, offset: readFileSync(file).length - 108, needed: 8 + MAX_RECORD_BODY, present: 108 });
  } finally {
    tmp.close();
  }
});
