/**
 * Issue 12 point 2 with the real binaries: a user's device module served by
 * `vfio-user serve ./dev.js` in child processes, migrated with its guest RAM
 * by a VMM — the CLI (`migrate --from A.sock --to B.sock`, `--to tcp://…`)
 * and the session API the shell uses (`migrateSession`, the test process
 * being the VMM) — to a second served device and to `migrate-listen`. The
 * destination's registers and guest RAM at switch-over are checked against
 * the source's as the devices themselves print them (user-device.ts), against
 * what the test wrote, and through the holder's guest RAM file
 * (`/proc/PID/fd/N`); the holder must keep the device (no reset) until it is
 * signalled. Failures: a device without migration, an incompatible
 * destination, a receiver that is not there or dies mid-migration.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import { migrateSession, openVmmSession } from '../../src/cli/vmm-session.js';
import { createProject, paddedSha256, seededRegs, serveModule, startCli, switchover, type Project } from './user-device.js';

const RAM = 1 << 20;

interface Summary {
  outcome: string;
  reason?: string;
  sourceRecovery?: string;
  guestRam: { bytes: number; sourceSha256?: string; destinationSha256?: string; equal?: boolean };
  held?: { pid: number; guestRamPath: string };
}

interface Received {
  outcome: string;
  held?: { guestRamPath: string; sha256: string };
}

const sha = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');

async function stateOf(socket: string): Promise<number> {
  const client = await VfioUserClient.connect(socket, { connectTimeoutMs: 5000 });
  try {
    return await client.migrationState();
  } finally {
    client.close();
  }
}

describe('migrating a user device served by `vfio-user serve ./dev.js`', { concurrency: 3 }, () => {
  let project: Project;
  before(() => (project = createProject()));
  after(() => project.remove());

  it('migrate --from A.sock --to B.sock: state and guest RAM (from --guest-ram-file) arrive; the CLI holds B until SIGINT', async () => {
    const init = randomBytes(RAM - 1000);
    project.write('init-local.img', init);
    const a = await serveModule(project, './dev.js', 'la.sock', ['--seed', '7']);
    const b = await serveModule(project, './dev.js', 'lb.sock');
    const m = startCli(['migrate', '--from', a.socket, '--to', b.socket, '--guest-ram-file', 'init-local.img', '--downtime', '10s', '--json'], project.dir);
    try {
      await m.waitFor(/holding the migrated device on .* \((\/proc\/\d+\/fd\/\d+)\)/, 'err');
      const s = JSON.parse(m.out()) as Summary;
      assert.equal(s.outcome, 'migrated', s.reason);
      const expected = paddedSha256(init, RAM);
      assert.equal(s.guestRam.bytes, RAM, 'guest RAM = the file rounded up to a page');
      assert.equal(s.guestRam.sourceSha256, expected);
      assert.equal(s.guestRam.destinationSha256, expected);
      assert.equal(s.guestRam.equal, true);
      // What the devices saw at the switch-over, printed by the devices themselves.
      assert.deepEqual(switchover(a, 'source'), { regs: seededRegs(7), ram: expected });
      assert.deepEqual(switchover(b, 'destination'), { regs: seededRegs(7), ram: expected }, 'B was served with seed 0: its registers came from A');
      // The holder's guest RAM, read through the file it names.
      assert.equal(sha(readFileSync(s.held?.guestRamPath ?? '-')), expected);
      assert.deepEqual(b.lines(/^reset /), [], 'B keeps its state while held');
      assert.equal(await m.kill('SIGINT'), 0, m.err());
      await b.waitFor(/^reset lost-connection$/m);
      assert.equal(await stateOf(a.socket), S.STOP, 'the source device stays stopped: its guest runs on B');
    } finally {
      await Promise.all([m.kill('SIGKILL'), a.kill(), b.kill()]);
    }
  });

  it('the session API (the shell’s migrate) to tcp://: registers written and device DMA during pre-copy arrive; migrate-listen holds the device after the sender left', async () => {
    const a = await serveModule(project, './dev.js', 'ra.sock', ['--seed', '3']);
    const b = await serveModule(project, './dev.js', 'rb.sock');
    const listen = startCli(['migrate-listen', '--port', '0', '--socket', b.socket, '--once', '--json'], project.dir);
    const source = await openVmmSession(a.socket, { guestRamBytes: RAM });
    try {
      const url = (await listen.waitFor(/listening (tcp:\/\/\S+)/, 'err'))[1] as string;
      const written = randomBytes(56);
      await source.client.regionWrite(0, 0n, written);
      source.memory.write(0n, randomBytes(RAM)); // the guest's own writes
      const doorbell = (n: number): Promise<void> => source.client.regionWrite(0, 0x100n, Uint8Array.of(n, 0, 0, 0));
      for (let n = 1; n <= 8; n++) await doorbell(n);
      let vcpus = true;
      const guest = (async () => {
        // Device DMA all through pre-copy, until the vCPUs pause (a doorbell that meets the stopped device is refused: they paused).
        for (let n = 9; vcpus; n++) await doorbell(n).catch(() => (vcpus = false));
      })();
      const result = await migrateSession(source, url, {
        downtimeBudgetMs: 10_000,
        onProgress: (p) => {
          if (p.phase !== 'precopy') vcpus = false;
        },
      });
      vcpus = false;
      await guest;
      assert.equal(result.report.outcome, 'migrated', result.report.reason);
      assert.equal(result.destination, undefined, 'the receiver holds the destination');
      const atSource = switchover(a, 'source');
      assert.ok(atSource, a.out());
      assert.equal(atSource.regs.slice(0, 112), written.toString('hex'), 'the registers the VMM wrote');
      const counted = (Buffer.from(atSource.regs, 'hex').readUInt32LE(60) - Buffer.from(seededRegs(3), 'hex').readUInt32LE(60)) >>> 0;
      assert.ok(counted >= 8, `the doorbells were counted: ${counted}`);
      assert.equal(atSource.ram, sha(source.memory.read(0n, RAM)), 'the stopped source RAM is the switch-over snapshot');
      assert.equal(result.sourceRamDigest, atSource.ram);
      const received = await b.waitFor(/^switchover-destination /m).then(() => switchover(b, 'destination'));
      assert.deepEqual(received, atSource, 'destination registers and guest RAM equal the source’s at switch-over');
      assert.equal(result.destinationRamDigest, atSource.ram);
      source.close(); // the sender is done: the receiver keeps the device
      await listen.waitFor(/holding the migrated device on/, 'err');
      const held = JSON.parse(listen.out()) as Received;
      assert.equal(held.outcome, 'committed');
      assert.equal(held.held?.sha256, atSource.ram);
      assert.equal(sha(readFileSync(held.held?.guestRamPath ?? '-')), atSource.ram);
      assert.deepEqual(b.lines(/^reset /), [], 'no reset of the migrated device when the sender left');
      assert.equal(await listen.kill('SIGTERM'), 0, listen.err());
      await b.waitFor(/^reset lost-connection$/m);
    } finally {
      source.close();
      await Promise.all([listen.kill('SIGKILL'), a.kill(), b.kill()]);
    }
  });

  it('migrate --from A.sock --to tcp://: the sender compares both guest RAMs; migrate-listen --shell drives the held device, then releases it', async () => {
    const a = await serveModule(project, './dev.js', 'ta.sock', ['--seed', '11']);
    const b = await serveModule(project, './dev.js', 'tb.sock');
    const listen = startCli(['migrate-listen', '--port', '0', '--socket', b.socket, '--shell'], project.dir, 'read bar0 0 --count 16\n');
    try {
      const url = (await listen.waitFor(/listening (tcp:\/\/\S+)/, 'err'))[1] as string;
      const m = startCli(['migrate', '--from', a.socket, '--to', url, '--guest-ram', '256K', '--downtime', '10s', '--json'], project.dir);
      assert.equal(await m.exited, 0, m.err());
      const s = JSON.parse(m.out()) as Summary;
      const zeros = sha(new Uint8Array(256 << 10));
      assert.equal(s.outcome, 'migrated');
      assert.deepEqual([s.guestRam.sourceSha256, s.guestRam.destinationSha256, s.guestRam.equal], [zeros, zeros, true]);
      assert.equal(s.held, undefined, 'the receiver holds it, not the sender');
      // The shell read the destination's registers through the held session: the source's, not B's own (seed 0).
      assert.equal(await listen.exited, 0, listen.err());
      const words = [...listen.out().matchAll(/\b0x[0-9a-f]{4}:((?: [0-9a-f]{8})+)/g)].flatMap((x) => (x[1] as string).trim().split(' '));
      const regs = Buffer.from(seededRegs(11), 'hex');
      assert.deepEqual(words, Array.from({ length: 16 }, (_, i) => regs.readUInt32LE(i * 4).toString(16).padStart(8, '0')));
      assert.deepEqual(switchover(b, 'destination'), { regs: seededRegs(11), ram: zeros });
      await b.waitFor(/^reset lost-connection$/m); // released at the end of the shell
    } finally {
      await Promise.all([listen.kill('SIGKILL'), a.kill(), b.kill()]);
    }
  });

  it('--no-hold releases the destination at once; a holder whose held device goes away exits 1 saying so', async () => {
    const srv = (n: string): ReturnType<typeof serveModule> => serveModule(project, './dev.js', `${n}.sock`, ['--seed', '2']);
    const [a, b, c, d, e] = await Promise.all([srv('na'), srv('nb'), srv('nc'), srv('nd'), srv('ne')]);
    const procs = [a, b, c, d, e] as const;
    try {
      const once = startCli(['migrate', '--from', a.socket, '--to', b.socket, '--no-hold', '--guest-ram', '64K', '--downtime', '10s'], project.dir);
      assert.equal(await once.exited, 0, once.err());
      assert.match(once.err(), /--no-hold: releasing the destination device on .*nb\.sock \(it resets\)/);
      await b.waitFor(/^reset lost-connection$/m);
      const local = startCli(['migrate', '--from', c.socket, '--to', d.socket, '--guest-ram', '64K', '--downtime', '10s'], project.dir);
      await local.waitFor(/holding the migrated device/, 'err');
      await d.kill('SIGKILL');
      assert.equal(await local.exited, 1);
      assert.match(local.err(), /^vfio-user: migrate: the held device's session on .*nd\.sock ended \(its server closed it\)$/m);
      const receiver = startCli(['migrate-listen', '--port', '0', '--socket', b.socket], project.dir);
      const url = (await receiver.waitFor(/listening (tcp:\/\/\S+)/, 'err'))[1] as string;
      const sent = startCli(['migrate', '--from', e.socket, '--to', url, '--guest-ram', '64K', '--downtime', '10s'], project.dir);
      assert.equal(await sent.exited, 0, sent.err());
      await receiver.waitFor(/holding the migrated device/, 'err');
      await b.kill('SIGKILL');
      assert.equal(await receiver.exited, 1);
      assert.match(receiver.err(), /the held device's session on .*nb\.sock ended \(its server closed it\): nothing is held any more/);
      assert.match(receiver.err(), /^vfio-user: migrate-listen: the held device went away$/m);
    } finally {
      await Promise.all(procs.map((p) => p.kill()));
    }
  });

  it('migrate-listen --serve ./dev.js serves the destination itself (args after --), receives and holds; the child goes with it', async () => {
    const a = await serveModule(project, './dev.js', 'sa.sock', ['--seed', '4']);
    const listen = startCli(['migrate-listen', '--port', '0', '--serve', './dev.js', '--once', '--json', '--', '--seed', '0'], project.dir);
    try {
      const url = (await listen.waitFor(/listening (tcp:\/\/\S+) .*destination device \.\/dev\.js, pid (\d+)/, 'err'))[1] as string;
      const pid = Number(/destination device \.\/dev\.js, pid (\d+)/.exec(listen.err())?.[1]);
      const m = startCli(['migrate', '--from', a.socket, '--to', url, '--guest-ram', '128K', '--downtime', '10s', '--json'], project.dir);
      assert.equal(await m.exited, 0, m.err());
      assert.equal((JSON.parse(m.out()) as Summary).guestRam.equal, true);
      await listen.waitFor(/holding the migrated device/, 'err');
      assert.equal((JSON.parse(listen.out()) as Received).outcome, 'committed');
      assert.equal(await listen.kill('SIGTERM'), 0, listen.err());
      assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, 'the served child exited with the receiver');
      const both = startCli(['migrate-listen', '--serve', './dev.js', '--socket', a.socket], project.dir);
      assert.equal(await both.exited, 1);
      assert.match(both.err(), /^vfio-user: migrate-listen: --serve and --socket exclude each other/m);
    } finally {
      await Promise.all([listen.kill('SIGKILL'), a.kill()]);
    }
  });

  it('refusals before anything changes: a device without migration, an incompatible destination, no receiver — one line, exit 1, the source still running', async () => {
    const plainA = await serveModule(project, './nomig.js', 'pa.sock');
    const plainB = await serveModule(project, './nomig.js', 'pb.sock');
    const a = await serveModule(project, './dev.js', 'fa.sock', ['--seed', '5']);
    const other = await serveModule(project, './other.js', 'fo.sock');
    const gpio = await serveModule(project, 'gpio', 'fg.sock');
    try {
      const cases: Array<[string[], RegExp]> = [
        [[plainA.socket, plainB.socket], /migration refused: the source device does not support migration .*: its definition must declare `migration`/],
        [[a.socket, other.socket], /migration refused: device types differ \(source 'scratch' state v1, destination 'other-card' state v1\)/],
        [[a.socket, gpio.socket], /migration refused: /],
        [[a.socket, 'tcp://127.0.0.1:1'], /migrate: tcp:\/\/127\.0\.0\.1:1: .*ECONNREFUSED/],
        [[a.socket, a.socket], /the target .* is the source's own socket/],
      ];
      for (const [[from, to], re] of cases) {
        const m = startCli(['migrate', '--from', from as string, '--to', to as string, '--guest-ram', '64K'], project.dir);
        assert.equal(await m.exited, 1, `${from} → ${to}: ${m.err()}`);
        const lines = m.err().trim().split('\n');
        assert.equal(lines.length, 1, m.err());
        assert.match(lines[0] ?? '', re);
      }
      assert.equal(await stateOf(a.socket), S.RUNNING, 'the source was never stopped');
      assert.deepEqual(a.lines(/^arc /), [], 'no migration arc ran on the source');
    } finally {
      await Promise.all([plainA, plainB, a, other, gpio].map((p) => p.kill()));
    }
  });

  it('the receiver dies mid-migration: the sender fails cleanly and the source runs again', async () => {
    const a = await serveModule(project, './dev.js', 'ka.sock', ['--seed', '9']);
    const b = await serveModule(project, './dev.js', 'kb.sock');
    const listen = startCli(['migrate-listen', '--port', '0', '--socket', b.socket], project.dir);
    try {
      const url = (await listen.waitFor(/listening (tcp:\/\/\S+)/, 'err'))[1] as string;
      // 8 MiB of random guest RAM at 1 MiB/s: pre-copy lasts seconds; the receiver is killed once the destination is RESUMING.
      project.write('random-8m.img', randomBytes(8 << 20));
      const m = startCli(['migrate', '--from', a.socket, '--to', url, '--guest-ram-file', 'random-8m.img', '--bandwidth', '1M', '--json'], project.dir);
      await b.waitFor(/^arc 1>4$/m);
      await listen.kill('SIGKILL');
      assert.equal(await m.exited, 1);
      const s = JSON.parse(m.out()) as Summary;
      assert.equal(s.outcome, 'failed');
      assert.equal(s.sourceRecovery, 'running');
      assert.equal(await stateOf(a.socket), S.RUNNING);
      assert.equal(switchover(a, 'source'), undefined, 'the source never stopped for a switch-over');
    } finally {
      await Promise.all([listen.kill('SIGKILL'), a.kill(), b.kill()]);
    }
  });
});
