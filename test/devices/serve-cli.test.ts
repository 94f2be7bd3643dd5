/**
 * `vfio-user serve` as a real process: it announces the socket, serves a
 * client, and on SIGTERM/SIGINT exits 0 having removed the socket file; bad
 * arguments fail with one line on stderr and exit 1.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Command, DeviceInfoFlags } from '../../src/protocol/constants.js';
import { decodeDeviceInfo, encodeDeviceInfo } from '../../src/protocol/device.js';
import { StepClient } from '../support/step-client.js';
import { read32, RegionIndex } from './driver.js';

const MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/** Starts `vfio-user serve ...args` and resolves with the process once it printed its first line. */
function startServe(args: string[]): Promise<{ child: ChildProcess; line: string; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [MAIN, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => void (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const newline = out.indexOf('\n');
      if (newline >= 0) resolve({ child, line: out.slice(0, newline), exited });
    });
    void exited.then((code) => reject(new Error(`serve exited with ${code} before announcing: ${stderr}`)));
  });
}

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'vfio-user-serve-'));
}

describe('vfio-user serve', () => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`serves the memory device until ${signal}, then exits 0 and removes the socket`, async () => {
      const dir = tempDir();
      const path = join(dir, 'memory.sock');
      try {
        const { child, line, exited } = await startServe(['memory', '--socket', path, '--size', '64K']);
        assert.equal(line, `serving memory on ${path}`);
        const { client } = await StepClient.open(path);
        const info = decodeDeviceInfo((await client.ok(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }))).payload);
        assert.deepEqual(info, { argsz: 16, flags: DeviceInfoFlags.PCI | DeviceInfoFlags.RESET, numRegions: 9, numIrqs: 5 });
        assert.equal(await read32(client, RegionIndex.BAR2, 0), 64 * 1024, '--size reached the device');
        child.kill(signal);
        assert.equal(await exited, 0);
        assert.equal(existsSync(path), false, 'socket file removed');
        await client.closed;
        client.close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  it('serves gpio and dma-engine too, and --allow-uid refuses other uids with EPERM', async () => {
    const dir = tempDir();
    try {
      for (const device of ['gpio', 'dma-engine']) {
        const path = join(dir, `${device}.sock`);
        const { child, line, exited } = await startServe([device, '--socket', path]);
        assert.equal(line, `serving ${device} on ${path}`);
        const { client } = await StepClient.open(path);
        await client.ok(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }));
        client.close();
        child.kill('SIGTERM');
        assert.equal(await exited, 0);
      }
      const uid = process.getuid?.() ?? 0;
      const path = join(dir, 'guarded.sock');
      const { child, exited } = await startServe(['gpio', '--socket', path, '--allow-uid', String(uid + 1), String(uid + 2)]);
      const client = await StepClient.connect(path);
      const reply = await client.request(Command.VERSION, new Uint8Array(0));
      assert.equal(reply.errorNo, 1, 'EPERM');
      client.close();
      child.kill('SIGTERM');
      assert.equal(await exited, 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('fails with one line on stderr and exit 1 for bad arguments or an unusable path', () => {
    const dir = tempDir();
    try {
      const taken = join(dir, 'not-a-socket');
      writeFileSync(taken, 'x');
      const cases = [
        ['memory', '--socket', join(dir, 'a.sock'), '--size', '3000'],
        ['memory', '--socket', join(dir, 'b.sock'), '--size', 'lots'],
        ['gpio', '--socket', join(dir, 'c.sock'), '--size', '1M'],
        ['gpio', '--socket', join(dir, 'd.sock'), '--allow-uid', 'root'],
        ['gpio', '--socket', join(dir, 'missing', 'e.sock')],
        ['gpio', '--socket', taken],
        ['toaster', '--socket', join(dir, 'f.sock')],
        ['gpio'],
      ];
      for (const args of cases) {
        const r = spawnSync(process.execPath, [MAIN, 'serve', ...args], { encoding: 'utf8', timeout: 30_000 });
        assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
        assert.equal(r.stdout, '', args.join(' '));
        assert.equal(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: one line, got ${JSON.stringify(r.stderr)}`);
      }
      assert.equal(existsSync(taken), true, 'a file that is not a socket is left alone');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
