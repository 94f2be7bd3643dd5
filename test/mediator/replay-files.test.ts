/**
 * replay() with what can go wrong around it: several sessions in one file, a
 * recording cut short by a crash, a corrupt one, a device that hangs up, one
 * that cannot be reached, a session that is not in the file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { replay } from '../../src/mediator/replay.js';
import { RecordingFormatError, RecordingReader } from '../../src/mediator/record-reader.js';
import { createRecorder } from '../../src/mediator/record.js';
import { encodeFilePrefix, encodeMessageRecord, encodeSessionStart } from '../../src/mediator/record-format.js';
import { Command, HeaderFlags } from '../../src/protocol/constants.js';
import { Mediator } from '../../src/mediator/mediator.js';
import { silentLogger } from '../../src/log.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { driveSession, recordSession, serveReplayDevice, tempDir } from './record-support.js';

const CAPTURE = 2 * 1024 * 1024;

test('two sessions in one file: both replayed in order on their own connections; --session picks one', async () => {
  const tmp = tempDir();
  try {
    const served = serveReplayDevice(tmp.dir, 'recorded');
    const file = join(tmp.dir, 'two.vfrec');
    const recorder = createRecorder(file, { captureMemory: CAPTURE, log: silentLogger() });
    const mediator = await Mediator.listen({ upstream: served.path, listen: join(tmp.dir, 'm.sock'), taps: [recorder], log: silentLogger() });
    try {
      await driveSession(mediator.path);
      await driveSession(mediator.path, { twinSocket: true });
    } finally {
      await mediator.close();
      await served.close();
      await recorder.close();
    }
    assert.equal(recorder.stats().sessions, 2);
    const fresh = serveReplayDevice(tmp.dir, 'fresh');
    try {
      const both = await replay(file, { to: fresh.path, log: silentLogger(), timeoutMs: 5000 });
      assert.equal(both.sessions, 2);
      assert.deepEqual(both.differences, [], JSON.stringify(both.differences, null, 2));
      const second = await replay(file, { to: fresh.path, log: silentLogger(), session: 2 });
      assert.equal(second.sessions, 1);
      assert.equal(second.messages * 2, both.messages);
      assert.deepEqual(second.differences, []);
      await assert.rejects(replay(file, { to: fresh.path, session: 9 }), { name: 'InvalidArgumentError', message: /has no session 9 \(it has 1, 2\)/ });
    } finally {
      await fresh.close();
    }
  } finally {
    tmp.close();
  }
});

test('a recording cut short (a crash): replayed up to its last whole record, the cut noted', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir, { captureMemory: CAPTURE });
    const size = readFileSync(file).length;
    truncateSync(file, Math.floor(size * 0.6) + 3);
    const fresh = serveReplayDevice(tmp.dir, 'fresh');
    try {
      const report = await replay(file, { to: fresh.path, log: silentLogger(), timeoutMs: 5000 });
      assert.deepEqual(report.differences, []);
      assert.ok(report.truncated);
      assert.ok(report.messages > 5);
      assert.match(report.notes.join('\n'), /the file ends inside record \d+ \(byte \d+\): replayed up to the last whole record/);
    } finally {
      await fresh.close();
    }
  } finally {
    tmp.close();
  }
});

test('a corrupt recording is refused before anything is sent, naming the record', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir);
    const bytes = readFileSync(file);
    const reader = await RecordingReader.open(file);
    let target = 0;
    for await (const r of reader.records()) if (r.index === 10) target = r.offset;
    bytes[target + 30] = bytes[target + 30]! ^ 0xff;
    writeFileSync(file, bytes);
    let connections = 0;
    const server = await listen(join(tmp.dir, 'counting.sock'), () => connections++);
    try {
      await assert.rejects(replay(file, { to: join(tmp.dir, 'counting.sock') }), (e: unknown) => e instanceof RecordingFormatError && e.record === 10 && /checksum mismatch/.test(e.message));
      assert.equal(connections, 0);
    } finally {
      server.close();
    }
  } finally {
    tmp.close();
  }
});

function listen(path: string, onConnection: (socket: import('node:net').Socket) => void): Promise<Server> {
  const server = createServer(onConnection);
  return new Promise((resolve) => server.listen(path, () => resolve(server)));
}

test('a device that hangs up: one closed difference, the rest not replayed, nothing leaked', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir);
    const path = join(tmp.dir, 'rude.sock');
    const server = await listen(path, (socket) => socket.once('data', () => socket.destroy()));
    try {
      await assertNoFdLeak(async () => {
        const report = await replay(file, { to: path, log: silentLogger(), timeoutMs: 5000 });
        assert.equal(report.differences.length, 1, JSON.stringify(report.differences, null, 2));
        assert.deepEqual([report.differences[0]!.kind, report.differences[0]!.command, report.differences[0]!.index], ['closed', 'VERSION', 0]);
        assert.equal(report.messages, 1);
      });
    } finally {
      server.close();
    }
  } finally {
    tmp.close();
  }
});

test('a device that does not answer: timeout differences after timeoutMs', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir);
    const path = join(tmp.dir, 'mute.sock');
    const sockets: import('node:net').Socket[] = [];
    const server = await listen(path, (socket) => void sockets.push(socket.on('data', () => {})));
    try {
      const report = await replay(file, { to: path, log: silentLogger(), timeoutMs: 200 });
      assert.ok(report.differences.length >= 1);
      assert.deepEqual([report.differences[0]!.kind, report.differences[0]!.command], ['timeout', 'VERSION']);
      assert.equal(report.replies, 0);
    } finally {
      for (const s of sockets) s.destroy();
      server.close();
    }
  } finally {
    tmp.close();
  }
});

test('a device that cannot be reached, a file that is not there: the system error', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir);
    await assert.rejects(replay(file, { to: join(tmp.dir, 'nobody.sock') }), { name: 'SystemError', errno: 2 });
    await assert.rejects(replay(join(tmp.dir, 'missing.vfrec'), { to: join(tmp.dir, 'nobody.sock') }), { code: 'ENOENT' });
    await assert.rejects(replay(file, { to: 'x', timing: 'fast' as 'asap' }), { name: 'InvalidArgumentError' });
  } finally {
    tmp.close();
  }
});

test('a hostile recording asking for thousands of fds: refused beyond 4096 per session (send-failed), all closed after', async () => {
  const tmp = tempDir();
  try {
    const file = join(tmp.dir, 'fds.vfrec');
    const metas = Array.from({ length: 253 }, () => ({ kind: 'eventfd' as const, size: 0, seals: undefined, link: 'anon_inode:[eventfd]', content: false, ident: 0 }));
    const records = [encodeSessionStart(1, 0n, {})];
    for (let i = 0; i < 20; i++) {
      const header = { msgId: i, cmd: Command.DEVICE_SET_IRQS, msgSize: 16 + 20, flags: HeaderFlags.NO_REPLY, errorNo: 0 };
      records.push(encodeMessageRecord(1, BigInt(i), { side: 'client', direction: 'in', channel: 'main', header, payload: new Uint8Array(20) }, metas));
    }
    writeFileSync(file, Buffer.concat([encodeFilePrefix({ format: 'vfio-user-recording', version: 1, created: '', createdUnixMs: 0, package: 'x', packageVersion: 'x', upstreamSide: false, captureMemory: 0 }), ...records]));
    const path = join(tmp.dir, 'sink.sock');
    await assertNoFdLeak(async () => {
      const sockets: import('node:net').Socket[] = [];
      const server = await listen(path, (socket) => void sockets.push(socket.on('data', () => {})));
      try {
        const report = await replay(file, { to: path, log: silentLogger(), timeoutMs: 1000 });
        assert.equal(report.messages, 20);
        assert.deepEqual(report.differences.map((d) => d.kind), ['send-failed', 'send-failed', 'send-failed', 'send-failed']);
        assert.match(report.differences[0]!.summary, /more than 4096 fds in one session/);
      } finally {
        for (const s of sockets) s.destroy();
        await new Promise((resolve) => server.close(resolve));
      }
    });
  } finally {
    tmp.close();
  }
});
