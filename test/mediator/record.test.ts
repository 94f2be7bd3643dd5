/**
 * The recorder and the recording format: what a session through a mediator
 * leaves in the file (header, sessions, both directions, fd metadata, memory
 * content, timing), the bounded write queue (drops noted, never growth), the
 * size limit, and creation errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { createRecorder } from '../../src/mediator/record.js';
import { RecordingReader } from '../../src/mediator/record-reader.js';
import { RECORD_FORMAT_VERSION, type MessageRecord, type RecordEntry } from '../../src/mediator/record-format.js';
import type { MediatorSessionContext } from '../../src/mediator/types.js';
import { Command, HeaderFlags } from '../../src/protocol/constants.js';
import { native } from '../../src/native/addon.js';
import { silentLogger } from '../../src/log.js';
import { VERSION } from '../../src/version.js';
import { RAM, recordSession, tempDir } from './record-support.js';

async function readAll(file: string): Promise<{ reader: RecordingReader; records: RecordEntry[] }> {
  const reader = await RecordingReader.open(file);
  const records: RecordEntry[] = [];
  for await (const r of reader.records()) records.push(r);
  return { reader, records };
}

const messages = (records: RecordEntry[]): MessageRecord[] => records.filter((r): r is MessageRecord => r.type === 'message');

function fakeContext(id: number): MediatorSessionContext {
  return { id, client: { pid: 1, uid: 2, gid: 3 }, log: silentLogger(), state: new Map(), version: undefined } as unknown as MediatorSessionContext;
}

test('a session through a mediator: header, session records, both directions, fd metadata, memory content, timing', async () => {
  const tmp = tempDir();
  try {
    const { file, recorder } = await recordSession(tmp.dir, { captureMemory: 2 * 1024 * 1024 });
    const { reader, records } = await readAll(file);
    assert.equal(reader.truncated, undefined);
    assert.equal(reader.header.version, RECORD_FORMAT_VERSION);
    assert.equal(reader.header.packageVersion, VERSION);
    assert.match(reader.header.upstream!, /recorded\.sock$/);
    assert.equal(reader.header.upstreamSide, false);
    assert.equal(reader.header.captureMemory, 2 * 1024 * 1024);
    assert.equal(records[0]!.type, 'session-start');
    assert.equal((records[0] as unknown as { info: { client: { pid: number } } }).info.client.pid, process.pid);
    assert.equal(records.at(-1)!.type, 'session-end');
    assert.ok(records.every((r) => r.session === 1));
    const msgs = messages(records);
    assert.ok(msgs.every((m) => m.side === 'client'));
    assert.equal(msgs[0]!.header.cmd, Command.VERSION);
    assert.equal(msgs[0]!.direction, 'in');
    for (let i = 1; i < records.length; i++) assert.ok(records[i]!.timeNs >= records[i - 1]!.timeNs, 'times never go back');

    const map = msgs.find((m) => m.header.cmd === Command.DMA_MAP && m.fds.length === 1)!;
    const { F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_SEAL } = native.constants;
    assert.deepEqual({ ...map.fds[0]!, link: '', ident: 0 }, { kind: 'memfd', size: RAM.size, seals: F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, link: '', content: true, ident: 0 });
    assert.match(map.fds[0]!.link, /^\/memfd:guest-ram/);
    const content = records.filter((r) => r.type === 'content');
    assert.equal(content.length, 1, 'one 1 MiB chunk; the rest is zeros and left out');
    assert.equal(content[0]!.index, map.index + 1);
    assert.equal(content[0]!.type === 'content' && content[0]!.data[0x100], 5);

    const irqs = msgs.find((m) => m.header.cmd === Command.DEVICE_SET_IRQS && m.direction === 'in')!;
    assert.deepEqual(irqs.fds.map((f) => [f.kind, f.content]), [['eventfd', false], ['eventfd', false]]);
    const bar2 = msgs.filter((m) => m.header.cmd === Command.DEVICE_GET_REGION_INFO && m.direction === 'out' && m.fds.length === 1);
    assert.equal(bar2.length, 1);
    assert.equal(bar2[0]!.fds[0]!.kind, 'memfd');
    // One identity per distinct file in the session.
    const idents = [bar2[0]!.fds[0]!.ident, map.fds[0]!.ident, irqs.fds[0]!.ident, irqs.fds[1]!.ident];
    assert.ok(idents.every((i) => i > 0));
    assert.equal(new Set(idents).size, 4);
    const deviceRequests = msgs.filter((m) => m.direction === 'out' && (m.header.flags & HeaderFlags.TYPE_MASK) === HeaderFlags.TYPE_COMMAND);
    assert.deepEqual([...new Set(deviceRequests.map((m) => m.header.cmd))].sort(), [Command.DMA_READ, Command.DMA_WRITE]);
    const stats = recorder.stats();
    assert.equal(stats.sessions, 1);
    assert.equal(stats.droppedRecords, 0);
    assert.equal(stats.records, records.length);
    assert.equal(stats.bytes, statSync(file).size);
  } finally {
    tmp.close();
  }
});

test('upstream: true records the upstream side too; without captureMemory no content is kept', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir, { upstream: true });
    const { reader, records } = await readAll(file);
    assert.equal(reader.header.upstreamSide, true);
    const msgs = messages(records);
    const up = msgs.filter((m) => m.side === 'upstream');
    assert.ok(up.length > 10);
    assert.ok(up.some((m) => m.direction === 'out') && up.some((m) => m.direction === 'in'));
    assert.equal(records.filter((r) => r.type === 'content').length, 0);
    assert.ok(msgs.filter((m) => m.header.cmd === Command.DMA_MAP).every((m) => m.fds.every((f) => !f.content)));
  } finally {
    tmp.close();
  }
});

test('a disk slower than the traffic: records are dropped whole, counted and noted, the queue never grows past its bound', async () => {
  const tmp = tempDir();
  try {
    const file = join(tmp.dir, 'flood.vfrec');
    const recorder = createRecorder(file, { bufferBytes: 8192, log: silentLogger() });
    const ctx = fakeContext(7);
    const payload = new Uint8Array(1000).fill(0xab);
    const header = { msgId: 1, cmd: Command.REGION_WRITE, msgSize: 16 + payload.length, flags: 0, errorNo: 0 };
    // All in one tick: the first writev is under way, nothing drains meanwhile.
    for (let i = 0; i < 500; i++) recorder.onMessage({ side: 'client', direction: 'in', channel: 'main', header: { ...header, msgId: i }, payload, fds: [], timeNs: process.hrtime.bigint() }, ctx);
    const during = recorder.stats();
    assert.ok(during.droppedRecords > 400, `dropped ${during.droppedRecords}`);
    assert.ok(during.bytes < 8192 * 2 + 1000, `accepted ${during.bytes} bytes`);
    await new Promise((r) => setTimeout(r, 50));
    recorder.onMessage({ side: 'client', direction: 'in', channel: 'main', header, payload, fds: [], timeNs: process.hrtime.bigint() }, ctx);
    recorder.onSessionEnd!(ctx, 'client closed');
    await recorder.close();
    const { records } = await readAll(file);
    const notes = records.filter((r) => r.type === 'note');
    assert.equal(notes.length, 1);
    assert.equal(notes[0]!.type === 'note' && notes[0]!.note.kind, 'dropped');
    assert.equal(notes[0]!.type === 'note' && notes[0]!.note.records, during.droppedRecords);
    const kept = messages(records);
    assert.equal(kept.length + during.droppedRecords, 501);
    assert.equal(records.at(-1)!.type, 'session-end');
    assert.equal(recorder.stats().bytes, statSync(file).size);
  } finally {
    tmp.close();
  }
});

test('maxBytes: the file stays under it and ends with a limit note', async () => {
  const tmp = tempDir();
  try {
    const file = join(tmp.dir, 'small.vfrec');
    const recorder = createRecorder(file, { maxBytes: 16 * 1024, log: silentLogger() });
    const ctx = fakeContext(1);
    const payload = new Uint8Array(600);
    for (let i = 0; i < 100; i++) {
      recorder.onMessage({ side: 'client', direction: 'in', channel: 'main', header: { msgId: i, cmd: Command.REGION_WRITE, msgSize: 616, flags: 0, errorNo: 0 }, payload, fds: [], timeNs: process.hrtime.bigint() }, ctx);
      await new Promise((r) => setImmediate(r));
    }
    await recorder.close();
    assert.ok(statSync(file).size <= 16 * 1024);
    assert.equal(recorder.stats().limitReached, true);
    const { records } = await readAll(file);
    const last = records.at(-1)!;
    assert.equal(last.type === 'note' && last.note.kind, 'limit');
  } finally {
    tmp.close();
  }
});

test('createRecorder: a missing directory fails at once (ENOENT), a bad option EINVAL; a bad message is left out; close is idempotent', async () => {
  const tmp = tempDir();
  try {
    assert.throws(() => createRecorder(join(tmp.dir, 'no', 'such.vfrec')), { code: 'ENOENT' });
    assert.throws(() => createRecorder(join(tmp.dir, 'x.vfrec'), { maxBytes: -1 }), { name: 'InvalidArgumentError', errno: 22 });
    const recorder = createRecorder(join(tmp.dir, 'empty.vfrec'), { log: silentLogger() });
    // A tap never throws: a message that cannot be encoded is left out and counted.
    const bad = { msgId: 0x1_0000, cmd: Command.REGION_READ, msgSize: 16, flags: 0, errorNo: 0 };
    assert.doesNotThrow(() => recorder.onMessage({ side: 'client', direction: 'in', channel: 'main', header: bad, payload: new Uint8Array(0), fds: [], timeNs: 0n }, fakeContext(1)));
    assert.equal(recorder.stats().droppedRecords, 1);
    await recorder.close();
    await recorder.close();
    const { records } = await readAll(join(tmp.dir, 'empty.vfrec'));
    assert.deepEqual(records.map((r) => r.type), ['session-start']);
  } finally {
    tmp.close();
  }
});
