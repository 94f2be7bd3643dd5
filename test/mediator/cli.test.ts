/**
 * `vfio-user mediate` end to end: the ready line (text and --json), a client
 * served through it, a plugin module with arguments after `--`, --fault and
 * --record wired to their modules, a clean stop on SIGTERM (socket removed,
 * exit 0), and one-line failures (exit 1) for what the user can get wrong.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VfioUserClient } from '../../src/client/client.js';
import { Errno } from '../../src/protocol/errno.js';
import { startCliServer, type ChildServer } from '../support/qemu/servers.js';
import { startMediatorChild } from './support.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

function runCli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const isErrno = (errno: number) => (e: unknown): boolean => (e as { errno?: number }).errno === errno;

describe('vfio-user mediate', { timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-mediate-cli-'));
  let device: ChildServer;

  before(async () => {
    device = await startCliServer(dir, 'gpio');
  });

  after(async () => {
    await device.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  it('prints its ready line, serves clients, stops on SIGTERM with exit 0 and removes its socket', async () => {
    const listen = join(dir, 'plain.sock');
    const m = await startMediatorChild(device.path, listen);
    try {
      assert.match(m.output(), new RegExp(`^mediating ${device.path} on ${listen}\\n`));
      for (let i = 0; i < 2; i++) {
        const client = await VfioUserClient.connect(listen);
        assert.ok((await client.deviceInfo()).numRegions > 0);
        await client.close();
      }
    } finally {
      assert.deepEqual(await m.stop(), { code: 0, signal: null });
    }
    assert.equal(existsSync(listen), false, 'socket removed');
  });

  it('--json: the ready line is one JSON object', async () => {
    const listen = join(dir, 'json.sock');
    const m = await startMediatorChild(device.path, listen, ['--json']);
    try {
      const ready = JSON.parse(m.output().split('\n')[0] ?? '') as Record<string, unknown>;
      assert.deepEqual({ ...ready, pid: 0 }, { ready: true, pid: 0, upstream: device.path, listen, plugins: [], record: null, faultSeed: null });
    } finally {
      await m.stop();
    }
  });

  it('--plugin MODULE -- ARGS: createPlugin(args) interposes', async () => {
    const module = join(dir, 'refuse-reset.mjs');
    writeFileSync(
      module,
      `export function createPlugin(args) {
  const errno = Number(args[0]);
  return { name: 'refuse-reset', onClientCommand: (msg) => (msg.header.cmd === 13 ? { error: errno } : undefined) };
}
`,
    );
    const listen = join(dir, 'plugin.sock');
    const m = await startMediatorChild(device.path, listen, ['--plugin', module, '--', String(Errno.EPERM)]);
    try {
      assert.match(m.output(), /plugins: refuse-reset/);
      const client = await VfioUserClient.connect(listen);
      try {
        await assert.rejects(client.reset(), isErrno(Errno.EPERM));
        assert.ok((await client.deviceInfo()).numRegions > 0);
      } finally {
        await client.close();
      }
    } finally {
      await m.stop();
    }
  });

  it('--fault and --record: the fault reaches the client, the session is recorded, the seed is printed', async () => {
    const listen = join(dir, 'fault.sock');
    const record = join(dir, 'session.vfur');
    const m = await startMediatorChild(device.path, listen, ['--fault', 'DEVICE_RESET:error=EIO', '--fault-seed', '7', '--record', record]);
    try {
      assert.match(m.output(), /fault seed 7/);
      assert.match(m.output(), /recording to /);
      const client = await VfioUserClient.connect(listen);
      try {
        await assert.rejects(client.reset(), isErrno(Errno.EIO));
      } finally {
        await client.close();
      }
    } finally {
      await m.stop();
    }
    assert.ok(statSync(record).size > 64, 'the recording has records');
  });

  it('--record-upstream records more (the upstream side too); --record-memory is a size', async () => {
    const sizes: number[] = [];
    for (const extra of [[], ['--record-upstream', '--record-memory', '64K']]) {
      const listen = join(dir, `rec${sizes.length}.sock`);
      const record = join(dir, `rec${sizes.length}.vfur`);
      const m = await startMediatorChild(device.path, listen, ['--record', record, ...extra]);
      try {
        const client = await VfioUserClient.connect(listen);
        await client.deviceInfo();
        await client.close();
      } finally {
        await m.stop();
      }
      sizes.push(statSync(record).size);
    }
    assert.ok(sizes[1]! > sizes[0]!, `with the upstream side: ${sizes[1]} > ${sizes[0]} bytes`);
    const r = runCli(['mediate', '--upstream', 'u.sock', '--listen', 'l.sock', '--record', join(dir, 'x.vfur'), '--record-memory', 'lots']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--record-memory/);
  });

  for (const [what, args, pattern] of [
    ['no --upstream', ['mediate', '--listen', '/tmp/x.sock'], /upstream/],
    ['a bad fault spec', ['mediate', '--upstream', 'u.sock', '--listen', 'l.sock', '--fault', 'NOPE:explode'], /fault/],
    ['a plugin module that does not exist', ['mediate', '--upstream', 'u.sock', '--listen', 'l.sock', '--plugin', './no-such-plugin.js'], /cannot load mediator plugin \.\/no-such-plugin\.js: no such file/],
    ['a bad --fault-seed', ['mediate', '--upstream', 'u.sock', '--listen', 'l.sock', '--fault', 'DEVICE_RESET:drop', '--fault-seed', 'x'], /--fault-seed/],
  ] as const) {
    it(`fails with one line and exit 1 for ${what}`, () => {
      const r = runCli([...args]);
      assert.equal(r.status, 1, r.stderr);
      assert.equal(r.stdout, '');
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /^vfio-user: /);
      assert.match(r.stderr, pattern);
    });
  }

  it('fails with EADDRINUSE when the listen path is served', () => {
    const r = runCli(['mediate', '--upstream', 'u.sock', '--listen', device.path]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /EADDRINUSE/);
  });
});
