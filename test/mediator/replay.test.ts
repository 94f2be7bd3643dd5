/**
 * replay(): a session recorded through a mediator in front of a deterministic
 * device, replayed against a fresh instance (no difference), against modified
 * ones (each difference reported precisely), with a twin socket, with the
 * recorded timing; fds never leaked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { replay } from '../../src/mediator/replay.js';
import { silentLogger } from '../../src/log.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { DEVICE_ID_VALUE, recordSession, serveReplayDevice, tempDir } from './record-support.js';

const CAPTURE = 2 * 1024 * 1024;

test('a recorded session replays against a fresh device with no difference', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir, { captureMemory: CAPTURE });
    // The device serves in this process: its session's fds are closed when it is closed.
    await assertNoFdLeak(async () => {
      const fresh = serveReplayDevice(tmp.dir, 'fresh');
      try {
        const report = await replay(file, { to: fresh.path, log: silentLogger(), timeoutMs: 5000 });
        assert.deepEqual(report.differences, [], JSON.stringify(report.differences, null, 2));
        assert.equal(report.sessions, 1);
        assert.ok(report.messages >= 20, `messages ${report.messages}`);
        assert.equal(report.replies, report.messages);
        assert.deepEqual(report.notes, []);
      } finally {
        await fresh.close();
      }
    });
  } finally {
    tmp.close();
  }
});

test('a different ID register is reported at its REGION_READ, first differing byte and hex context', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir, { captureMemory: CAPTURE });
    const other = serveReplayDevice(tmp.dir, 'other', { id: DEVICE_ID_VALUE ^ 0x0100 });
    try {
      const report = await replay(file, { to: other.path, log: silentLogger(), timeoutMs: 5000 });
      assert.equal(report.differences.length, 1, JSON.stringify(report.differences, null, 2));
      const d = report.differences[0]!;
      assert.equal(d.kind, 'reply');
      assert.equal(d.command, 'REGION_READ');
      assert.equal(d.offset, 16 + 1); // the access header, then byte 1 of ID
      assert.deepEqual(d.fields.map((f) => f.field), ['payload']);
      assert.match(d.expectedHex!, /^0009: .* 59 4c 50 52/);
      assert.match(d.gotHex!, /^0009: .* 59 4d 50 52/);
    } finally {
      await other.close();
    }
  } finally {
    tmp.close();
  }
});
