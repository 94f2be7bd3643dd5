/**
 * `vfio-user replay` as a user runs it: exit 0 and one summary line when the
 * device answers as recorded, 1 with each difference listed, 2 for usage
 * errors and files or devices that cannot be used; --json is the report.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { runCli } from '../cli/support.js';
import { recordSession, serveReplayDevice, tempDir } from './record-support.js';

test('vfio-user replay: 0 same, 1 differences (listed, or as JSON), 2 usage and I/O errors', async () => {
  const tmp = tempDir();
  try {
    const { file } = await recordSession(tmp.dir, { captureMemory: 2 * 1024 * 1024 });
    const fresh = serveReplayDevice(tmp.dir, 'fresh');
    const other = serveReplayDevice(tmp.dir, 'other', { deviceId: 0x5a11 });
    try {
      const same = await runCli(['replay', file, '--to', fresh.path]);
      assert.equal(same.code, 0, same.stderr);
      assert.match(same.stdout, /^replayed .*session\.vfrec against .*fresh\.sock: 1 session, \d+ messages, \d+ replies, no differences \(\d+ ms\)\n$/);

      const diff = await runCli(['replay', file, '--to', other.path, '--timing', 'recorded']);
      assert.equal(diff.code, 1, diff.stderr);
      const lines = diff.stdout.trimEnd().split('\n');
      assert.match(lines[0]!, /, 1 difference \(\d+ ms\)$/);
      assert.match(lines[1]!, /^session 1 #\d+ REGION_READ \(msgId \d+, record \d+\) reply: payload: expected byte 18 = 0x10, got 0x11$/);
      assert.match(lines[2]!, /^ {2}expected 000a: /);
      assert.match(lines[3]!, /^ {2}got {6}000a: /);

      const json = await runCli(['replay', file, '--to', other.path, '--json']);
      assert.equal(json.code, 1);
      const report = JSON.parse(json.stdout) as { sessions: number; differences: { kind: string; offset: number }[] };
      assert.equal(report.sessions, 1);
      assert.deepEqual(report.differences.map((d) => [d.kind, d.offset]), [['reply', 18]]);

      const missing = await runCli(['replay', join(tmp.dir, 'none.vfrec'), '--to', fresh.path]);
      assert.equal(missing.code, 2);
      assert.match(missing.stderr, /^vfio-user replay: ENOENT: no such file or directory/);
      const junk = join(tmp.dir, 'junk.vfrec');
      writeFileSync(junk, 'not a recording at all');
      const bad = await runCli(['replay', junk, '--to', fresh.path]);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /^vfio-user replay: recording header: .* is not a vfio-user recording/);
      const unreachable = await runCli(['replay', file, '--to', join(tmp.dir, 'nobody.sock')]);
      assert.equal(unreachable.code, 2);
      assert.match(unreachable.stderr, /ENOENT/);
      const usage = await runCli(['replay', file]);
      assert.equal(usage.code, 2);
      assert.match(usage.stderr, /--to/);
      const timing = await runCli(['replay', file, '--to', fresh.path, '--timing', 'fast']);
      assert.equal(timing.code, 2);
    } finally {
      await fresh.close();
      await other.close();
    }
  } finally {
    tmp.close();
  }
});
