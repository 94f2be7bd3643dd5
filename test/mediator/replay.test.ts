/**
 * replay(): a session recorded through a mediator in front of a deterministic
 * device, replayed against a fresh instance (no difference), against modified
 * ones (each difference reported precisely), with a twin socket, with the
 * recorded timing; fds never leaked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { replay } from '../../src/mediator/replay.js';
import { RecordingReader } from '../../src/mediator/record-reader.js';
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

test('a different PCI device id is reported in the config-space read, at byte 2 of the data', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir, { captureMemory: CAPTURE });
    const other = serveReplayDevice(tmp.dir, 'other', { deviceId: 0x5a11 });
    try {
      const report = await replay(file, { to: other.path, log: silentLogger(), timeoutMs: 5000 });
      assert.equal(report.differences.length, 1, JSON.stringify(report.differences, null, 2));
      const d = report.differences[0]!;
      assert.deepEqual([d.kind, d.command, d.offset], ['reply', 'REGION_READ', 16 + 2]);
      assert.equal(d.summary, 'payload: expected byte 18 = 0x10, got 0x11');
    } finally {
      await other.close();
    }
  } finally {
    tmp.close();
  }
});

test('a DMA engine that copies differently: the DMA_WRITE it sends and both checksum reads are reported', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir, { captureMemory: CAPTURE });
    const other = serveReplayDevice(tmp.dir, 'other', { add: 2 });
    try {
      const report = await replay(file, { to: other.path, log: silentLogger(), timeoutMs: 5000 });
      assert.deepEqual(report.differences.map((d) => [d.kind, d.command]), [
        ['device-request', 'DMA_WRITE'],
        ['reply', 'REGION_READ'],
        ['reply', 'REGION_READ'],
      ], JSON.stringify(report.differences, null, 2));
      const dma = report.differences[0]!;
      assert.equal(dma.offset, 16); // addr and count agree; the first data byte differs
      assert.deepEqual(dma.fields.map((f) => f.field), ['payload']);
      const capped = await replay(file, { to: other.path, log: silentLogger(), timeoutMs: 5000, maxDifferences: 1 });
      assert.deepEqual([capped.differences.length, capped.omitted], [1, 2]);
    } finally {
      await other.close();
    }
  } finally {
    tmp.close();
  }
});

test('without captureMemory the DMA memfd is recreated empty: what the device read from it differs', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir);
    const fresh = serveReplayDevice(tmp.dir, 'fresh');
    try {
      const report = await replay(file, { to: fresh.path, log: silentLogger(), timeoutMs: 5000 });
      assert.deepEqual(report.differences.map((d) => [d.kind, d.command]), [['device-request', 'DMA_WRITE'], ['reply', 'REGION_READ']]);
    } finally {
      await fresh.close();
    }
  } finally {
    tmp.close();
  }
});

test('a session with a twin socket: the device DMA on the twin is answered and compared, no difference', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir, { captureMemory: CAPTURE, twinSocket: true });
    const reader = await RecordingReader.open(file);
    let twin = 0;
    for await (const r of reader.records()) if (r.type === 'message' && r.channel === 'twin') twin++;
    assert.ok(twin >= 4, `${twin} messages on the twin socket`);
    const fresh = serveReplayDevice(tmp.dir, 'fresh');
    try {
      const report = await replay(file, { to: fresh.path, log: silentLogger(), timeoutMs: 5000 });
      assert.deepEqual(report.differences, [], JSON.stringify(report.differences, null, 2));
    } finally {
      await fresh.close();
    }
  } finally {
    tmp.close();
  }
});

test("timing 'recorded' keeps the recorded pause; 'asap' is not held by it", async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir, { captureMemory: CAPTURE, pauseMs: 600 });
    const fresh = serveReplayDevice(tmp.dir, 'fresh');
    try {
      const recorded = await replay(file, { to: fresh.path, log: silentLogger(), timing: 'recorded' });
      assert.deepEqual(recorded.differences, []);
      assert.ok(recorded.durationMs >= 550, `${recorded.durationMs} ms`);
      const asap = await replay(file, { to: fresh.path, log: silentLogger(), timing: 'asap' });
      assert.deepEqual(asap.differences, []);
    } finally {
      await fresh.close();
    }
  } finally {
    tmp.close();
  }
});
