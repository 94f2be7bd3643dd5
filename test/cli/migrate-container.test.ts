/**
 * Two devices of one VM migrated as a container by the real binaries: two
 * scratch cards (user-device.ts: they print their registers and the SHA-256
 * of the guest RAM they see at the switch-over) served by `vfio-user serve
 * ./dev.js`, `vfio-user migrate --from a=A --from b=B` — this process their
 * VMM, one guest RAM mapped for both — to `vfio-user migrate-listen --socket
 * a=C --socket b=D` over TCP, and to two sockets on this host. The scratch
 * card has no P2P states: the container is refused until
 * `--allow-without-p2p` (then warned). Each destination must get its own
 * source's registers (paired by name, not order) and the shared guest RAM.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { barFields } from '../../src/cli/progress-bar.js';
import type { Progress } from '../../src/orchestrator/types.js';
import { createProject, paddedSha256, seededRegs, serveModule, startCli, switchover, type Project } from './user-device.js';

const RAM = 256 << 10;

interface DeviceSummary {
  name: string;
  source: string;
  bytes: { precopy: string | number; stopCopy: string | number };
  arcs: Array<{ side: string; from: string; to: string }>;
}

interface Summary {
  outcome: string;
  reason?: string;
  destination: string;
  warnings: string[];
  devices: DeviceSummary[];
  guestRam: { bytes: number; sourceSha256?: string; destinationSha256?: string; equal?: boolean };
  held?: { pid: number; guestRamPath: string };
}

interface Received {
  outcome: string;
  devices?: Array<{ name: string; deviceBytes: string | number }>;
  held?: { socket: string; devices?: Array<{ name: string; socket: string }>; sha256: string };
}

const sha = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');

/** `start()` with VFIO_USER_FAULT_PAUSE=`point` in its environment only (set and restored around the synchronous spawn). */
function withFaultPause<T>(point: string, start: () => T): T {
  const before = process.env.VFIO_USER_FAULT_PAUSE;
  process.env.VFIO_USER_FAULT_PAUSE = point;
  try {
    return start();
  } finally {
    if (before === undefined) delete process.env.VFIO_USER_FAULT_PAUSE;
    else process.env.VFIO_USER_FAULT_PAUSE = before;
  }
}

describe('vfio-user migrate with several --from (a container)', { concurrency: 2 }, () => {
  let project: Project;
  before(() => (project = createProject()));
  after(() => project.remove());

  it('to migrate-listen over TCP: one channel, each device’s registers to its namesake, the shared guest RAM once; the receiver holds both until SIGTERM', async () => {
    const init = randomBytes(RAM - 300);
    project.write('init-tcp.img', init);
    const [a, b, c, d] = await Promise.all([
      serveModule(project, './dev.js', 'ta.sock', ['--seed', '7']), serveModule(project, './dev.js', 'tb.sock', ['--seed', '9']),
      serveModule(project, './dev.js', 'tc.sock'), serveModule(project, './dev.js', 'td.sock'),
    ]);
    // The receiver's devices are listed in the other order: they are paired by name.
    const listen = startCli(['migrate-listen', '--port', '0', '--socket', `b=${d.socket}`, '--socket', `a=${c.socket}`, '--once', '--json'], project.dir);
    try {
      const url = (await listen.waitFor(/listening (tcp:\/\/\S+) .*destination devices b=/, 'err'))[1] as string;
      const m = startCli(['migrate', '--from', `a=${a.socket}`, '--from', `b=${b.socket}`, '--to', url, '--allow-without-p2p', '--guest-ram-file', 'init-tcp.img', '--downtime', '10s', '--json'], project.dir);
      assert.equal(await m.exited, 0, m.err());
      const s = JSON.parse(m.out()) as Summary;
      const expected = paddedSha256(init, RAM);
      assert.equal(s.outcome, 'migrated', s.reason);
      assert.equal(s.destination, url);
      assert.deepEqual(s.devices.map((x) => [x.name, x.source]), [['a', a.socket], ['b', b.socket]]);
      for (const x of s.devices) assert.ok(BigInt(x.bytes.stopCopy) > 0n, `${x.name} sent its state`);
      assert.equal(s.warnings.length, 1, 'the devices without P2P were migrated with a warning');
      assert.deepEqual([s.guestRam.sourceSha256, s.guestRam.destinationSha256, s.guestRam.equal], [expected, expected, true]);
      assert.equal(s.held, undefined, 'the receiver holds the devices');
      // What each device saw at the switch-over, printed by the devices themselves.
      assert.deepEqual(switchover(a, 'source'), { regs: seededRegs(7), ram: expected });
      assert.deepEqual(switchover(b, 'source'), { regs: seededRegs(9), ram: expected });
      assert.deepEqual(switchover(c, 'destination'), { regs: seededRegs(7), ram: expected }, 'a → C');
      assert.deepEqual(switchover(d, 'destination'), { regs: seededRegs(9), ram: expected }, 'b → D');
      await listen.waitFor(/holding the migrated devices on/, 'err');
      const r = JSON.parse(listen.out()) as Received;
      assert.equal(r.outcome, 'committed');
      assert.deepEqual(r.held?.devices, [{ name: 'a', socket: c.socket }, { name: 'b', socket: d.socket }]);
      assert.equal(r.held?.sha256, expected);
      assert.deepEqual(r.devices?.map((x) => [x.name, String(x.deviceBytes)]), s.devices.map((x) => [x.name, String(BigInt(x.bytes.precopy) + BigInt(x.bytes.stopCopy))]));
      assert.deepEqual([...c.lines(/^reset /), ...d.lines(/^reset /)], [], 'held: no reset');
      assert.equal(await listen.kill('SIGTERM'), 0, listen.err());
      await Promise.all([c.waitFor(/^reset lost-connection$/m), d.waitFor(/^reset lost-connection$/m)]);
    } finally {
      await Promise.all([listen.kill('SIGKILL'), a.kill(), b.kill(), c.kill(), d.kill()]);
    }
  });

  it('the receiver stopped (SIGTERM) with the commit arrived, not decided: every source runs again, every destination is reset', async () => {
    const [a, b, c, d] = await Promise.all([
      serveModule(project, './dev.js', 'fa.sock', ['--seed', '4']), serveModule(project, './dev.js', 'fb.sock', ['--seed', '6']),
      serveModule(project, './dev.js', 'fc.sock'), serveModule(project, './dev.js', 'fd.sock'),
    ]);
    const listen = withFaultPause('receiver:commit', () => startCli(['migrate-listen', '--port', '0', '--socket', `a=${c.socket}`, '--socket', `b=${d.socket}`, '--once', '--json'], project.dir));
    try {
      const url = (await listen.waitFor(/listening (tcp:\/\/\S+)/, 'err'))[1] as string;
      const m = startCli(['migrate', '--from', `a=${a.socket}`, '--from', `b=${b.socket}`, '--to', url, '--allow-without-p2p', '--guest-ram', '64K', '--downtime', '10s', '--json'], project.dir);
      const id = (await listen.waitFor(/fault-pause receiver:commit pid \d+ migration (\S+)/, 'err').catch((e: Error) => {
        throw new Error(`${e.message}\nsender: ${m.err()}${m.out()}`);
      }))[1];
      assert.equal(await listen.kill('SIGTERM'), 1, listen.err());
      assert.equal(await m.exited, 1, m.err());
      const s = JSON.parse(m.out()) as Summary & { phase: string; sourceRecovery?: string; migrationId?: string };
      assert.deepEqual([s.outcome, s.phase, s.sourceRecovery, s.migrationId], ['failed', 'commit', 'running', id], s.reason);
      assert.match(s.reason ?? '', new RegExp(`the receiver abandoned migration ${id}`));
      for (const p of [a, b]) assert.match(p.lines(/^arc /).at(-1) ?? '', /^arc \d+>2$/, 'the source runs again (→ RUNNING)');
      const r = JSON.parse(listen.out()) as Received & { phase: string };
      assert.deepEqual([r.outcome, r.phase, r.devices?.map((x) => x.name)], ['abandoned', 'commit', ['a', 'b']]);
      // Both destinations ran (the commit was awaited) and were reset: DEVICE_RESET, then the session's end.
      for (const p of [c, d]) {
        assert.ok(switchover(p, 'destination'), 'the destination had been resumed');
        await p.waitFor(/^reset lost-connection$/m);
        assert.ok(p.lines(/^reset client$/).length > 0, 'DEVICE_RESET discarded the loaded state');
      }
    } finally {
      await Promise.all([listen.kill('SIGKILL'), a.kill(), b.kill(), c.kill(), d.kill()]);
    }
  });

  it('the sender stopped (SIGTERM) in pre-copy: both sources run again, the receiver abandons and resets both destinations', async () => {
    const [a, b, c, d] = await Promise.all([
      serveModule(project, './dev.js', 'sa.sock', ['--seed', '8']), serveModule(project, './dev.js', 'sb.sock', ['--seed', '10']),
      serveModule(project, './dev.js', 'sc.sock'), serveModule(project, './dev.js', 'sd.sock'),
    ]);
    const listen = startCli(['migrate-listen', '--port', '0', '--socket', `a=${c.socket}`, '--socket', `b=${d.socket}`, '--once', '--json'], project.dir);
    let m: ReturnType<typeof startCli> | undefined;
    try {
      const url = (await listen.waitFor(/listening (tcp:\/\/\S+)/, 'err'))[1] as string;
      m = withFaultPause('sender:precopy', () => startCli(['migrate', '--from', `a=${a.socket}`, '--from', `b=${b.socket}`, '--to', url, '--allow-without-p2p', '--guest-ram', '64K', '--downtime', '10s', '--json'], project.dir));
      const sender = m;
      await sender.waitFor(/fault-pause sender:precopy pid \d+/, 'err').catch((e: Error) => {
        throw new Error(`${e.message}\nreceiver: ${listen.err()}${listen.out()}`);
      });
      assert.equal(await m.kill('SIGTERM'), 1, m.err());
      const s = JSON.parse(m.out()) as Summary & { phase: string; sourceRecovery?: string; interrupted?: string };
      assert.deepEqual([s.outcome, s.phase, s.sourceRecovery, s.interrupted], ['aborted', 'precopy', 'running', 'SIGTERM'], s.reason);
      for (const p of [a, b]) assert.deepEqual(p.lines(/^arc /), [], 'the sources (no PRE_COPY) never left RUNNING');
      assert.equal(await listen.exited, 1, 'the receiver (--once) saw the migration abandoned');
      const r = JSON.parse(listen.out()) as Received & { phase: string };
      assert.deepEqual([r.outcome, r.phase, r.devices?.map((x) => x.name)], ['abandoned', 'precopy', ['a', 'b']]);
      for (const p of [c, d]) {
        assert.equal(switchover(p, 'destination'), undefined, 'no destination was resumed');
        await p.waitFor(/^reset lost-connection$/m);
      }
    } finally {
      await Promise.all([listen.kill('SIGKILL'), m?.kill('SIGKILL'), a.kill(), b.kill(), c.kill(), d.kill()]);
    }
  });

  it('to two sockets on this host: refused without --allow-without-p2p (nothing changed), migrated with it; --no-hold releases both', async () => {
    const [a, b, c, d] = await Promise.all([
      serveModule(project, './dev.js', 'la.sock', ['--seed', '3']), serveModule(project, './dev.js', 'lb.sock', ['--seed', '5']),
      serveModule(project, './dev.js', 'lc.sock'), serveModule(project, './dev.js', 'ld.sock'),
    ]);
    try {
      const args = ['migrate', '--from', a.socket, '--from', b.socket, '--to', c.socket, '--to', d.socket, '--guest-ram', '64K', '--downtime', '10s'];
      const refused = startCli(args, project.dir);
      assert.equal(await refused.exited, 1);
      assert.match(refused.err(), /lack the P2P .*--allow-without-p2p migrates anyway/);
      assert.deepEqual([a, b, c, d].flatMap((p) => p.lines(/^arc /)), [], 'no device changed state');
      const m = startCli([...args, '--allow-without-p2p', '--no-hold', '--json'], project.dir);
      assert.equal(await m.exited, 0, m.err());
      const s = JSON.parse(m.out()) as Summary;
      assert.equal(s.outcome, 'migrated', s.reason);
      assert.deepEqual(s.devices.map((x) => x.name), ['dev0', 'dev1'], 'unnamed devices are paired by order');
      const zeros = sha(new Uint8Array(64 << 10));
      assert.deepEqual(switchover(c, 'destination'), { regs: seededRegs(3), ram: zeros });
      assert.deepEqual(switchover(d, 'destination'), { regs: seededRegs(5), ram: zeros });
      assert.match(m.err(), /--no-hold: releasing the destination devices/);
      await Promise.all([c.waitFor(/^reset lost-connection$/m), d.waitFor(/^reset lost-connection$/m)]);
      for (const p of [a, b]) assert.deepEqual(p.lines(/^arc /).at(-1), 'arc 3>1', 'the source stays stopped (STOP_COPY → STOP)');
      const bad = startCli(['migrate', '--from', a.socket, '--from', b.socket, '--to', c.socket], project.dir);
      assert.equal(await bad.exited, 1);
      assert.match(bad.err(), /2 --from devices need 2 --to sockets \(or one --to tcp:\/\/HOST:PORT\), not 1/);
      const named = startCli(['migrate', '--from', 'nic=/nonexistent/x.sock', '--to', c.socket], project.dir);
      assert.equal(await named.exited, 1);
      assert.match(named.err(), /connect \/nonexistent\/x\.sock: /, 'one named --from: the name is not part of the socket path');
      const mixed = startCli(['migrate', '--from', a.socket, '--from', b.socket, '--to', 'tcp://127.0.0.1:1', '--to', c.socket], project.dir);
      assert.equal(await mixed.exited, 1);
      assert.match(mixed.err(), /one --to tcp:\/\/HOST:PORT carries every device; give it alone/);
    } finally {
      await Promise.all([a.kill(), b.kill(), c.kill(), d.kill()]);
    }
  });
});

describe('the progress bar of a container migration', () => {
  it('names the device whose data the step moves', () => {
    const p: Progress = {
      phase: 'switchover', step: 'device-data', device: 'dma', bytes: { precopyMemory: 0n, precopyDevice: 0n, stopCopyMemory: 0n, stopCopyDevice: 0n }, zeroBytes: 0n,
      bytesPerSecond: 0, dirtyPages: 0, stepBytes: 0, stepTotalBytes: 0, stoppedMs: 1, budgetMs: 300, timeLimitMs: 60_000, iteration: 1, remainingBytes: 0n,
      memoryBandwidth: 0, deviceBandwidth: 0, projectedDowntimeMs: 0, elapsedMs: 5,
    };
    assert.equal(barFields(p, 1 << 20).label, 'switchover/device-data dma');
    const { device: _device, ...one } = p;
    assert.equal(barFields(one, 1 << 20).label, 'switchover/device-data', 'one device: no name');
  });
});
