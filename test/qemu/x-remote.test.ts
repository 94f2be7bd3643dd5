/**
 * Our CLI against QEMU's own vfio-user server: `-machine x-remote,vfio-user=on`
 * exporting an emulated e1000e through `-object x-vfio-user-server`. That
 * server serves a BAR only once it has an address and decoding is on, so
 * `--assign-bars never` fails and the default (`auto`) sets the BARs up as a
 * VMM would. Optional: needs `VFIO_USER_QEMU` naming a QEMU configured with
 * `--enable-vfio-user-server` (the test skips, saying so, when the binary has
 * no x-remote machine).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { qemuBinary } from '../support/qemu/launcher.js';
import { MAIN, runCli } from '../cli/support.js';

/** e1000e BAR0 registers: STATUS (read-only, bit 1 = full duplex...), RDBAL (read/write, bits 3:0 reserved). */
const STATUS = 0x8;
const RDBAL = 0x2800;

function remoteSupport(): { path: string | undefined; skip: string | false } {
  const qemu = qemuBinary();
  if (qemu.skip || qemu.path === undefined) return qemu;
  const machines = execFileSync(qemu.path, ['-machine', 'help'], { encoding: 'utf8' });
  if (!/^x-remote\b/m.test(machines)) return { path: undefined, skip: `${qemu.path} has no x-remote machine (QEMU configured without --enable-vfio-user-server)` };
  return qemu;
}

const qemu = remoteSupport();

describe("QEMU's x-remote vfio-user server (e1000e)", { skip: qemu.skip }, () => {
  let dir: string;
  let socket: string;
  let child: ChildProcess;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-user-x-remote-'));
    socket = join(dir, 'e1000e.sock');
    child = spawn(qemu.path as string, [
      '-machine', 'x-remote,vfio-user=on,auto-shutdown=off',
      '-nodefaults', '-display', 'none', '-monitor', 'none',
      '-device', 'e1000e,id=nic0',
      '-object', `x-vfio-user-server,id=vfu0,type=unix,path=${socket},device=nic0`,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => void (stderr += d.toString()));
    for (let i = 0; i < 200 && !existsSync(socket); i++) {
      if (child.exitCode !== null) throw new Error(`QEMU exited ${child.exitCode}: ${stderr}`);
      await delay(50);
    }
    assert.ok(existsSync(socket), `QEMU did not create ${socket}: ${stderr}`);
  });
  after(() => {
    child?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses BAR0 until it is assigned (--assign-bars never), serves it once the CLI set it up (auto)', async () => {
    const never = await runCli(['read', socket, 'bar0', String(STATUS), '--assign-bars', 'never']);
    assert.equal(never.code, 1);
    assert.match(never.stderr, /EINVAL/);
    const auto = await runCli(['read', socket, 'bar0', String(STATUS)]);
    assert.equal(auto.code, 0, auto.stderr);
    assert.match(auto.stderr, /^note: assigned BARs and enabled decoding as a VMM does: /m);
    assert.match(auto.stdout, /^0x[0-9a-f]{8}\n$/);
  });

  it('a shell writes and reads back an e1000e register in one session', async () => {
    const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
      const shell = spawn(process.execPath, [MAIN, 'shell', socket], { stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      shell.stdout.on('data', (d: Buffer) => void (stdout += d.toString()));
      shell.stderr.on('data', (d: Buffer) => void (stderr += d.toString()));
      shell.stdin.end(`write bar0 ${RDBAL} 0x12345670\nread bar0 ${RDBAL}\n`);
      shell.once('error', reject);
      shell.once('close', (code) => resolve({ code, stdout, stderr }));
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.split('\n')[1], '0x12345670');
  });
});
