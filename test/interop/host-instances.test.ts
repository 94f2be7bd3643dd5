/**
 * Optional interoperability test: libvfio-user's `samples/client` (C) against
 * an instance of a real `vfio-user host` (a child process) whose parent
 * (`server-sample-parent.ts`, loaded with `--parent`) serves the device shaped
 * like libvfio-user's `samples/server` (`server-sample-device.ts`) in the
 * instance's worker. Skipped unless LIBVFIO_USER_BUILD names a libvfio-user
 * build directory (docs/interop.md).
 *
 * The reference is the same device served by our `DeviceServer` in this
 * process (as `libvfio-user-client.test.ts` does): the client must print the
 * same lines against the host instance — PCI ids, regions and sparse areas,
 * IRQs, the INTx and DMA of the device's timer, the dirty bitmaps — and stop
 * at the same place (the sample device is not migratable). The host sees the
 * client come and go, serves a second run on the same instance, and then
 * stops it without `--force`.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { connectHost, type HostConnection } from '../../src/host/control-client.js';
import type { InstanceStatus } from '../../src/host/types.js';
import { hostDirs, spawnHost, until, type HostChild, type HostDirs } from '../host/host-support.js';
import { libvfioUserBuild, runSample, type SampleResult } from './libvfio-user.js';
import { serverSampleDevice } from './server-sample-device.js';

const build = libvfioUserBuild();
const CLIENT_TIMEOUT_MS = 30_000;
/** The compiled parent module (`lvu-sample`, type `lvu-sample-server`). */
const PARENT = fileURLToPath(new URL('./server-sample-parent.js', import.meta.url));
/** Our server's default `max_msg_fds` (the host serves its instances with the defaults); the client maps twice as many DMA regions. */
const MAX_MSG_FDS = 16;

function describeResult(r: SampleResult): string {
  return `exit ${r.code} signal ${r.signal}${r.timedOut ? ' (timed out)' : ''}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`;
}

/** The client's stdout with the times it wrote to and read from BAR0 (wall-clock seconds) blanked out. */
function timeless(stdout: string): string[] {
  return stdout
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => l.replace(/^(client: (?:wrote to|read from) BAR0:) -?\d+$/, '$1 T'));
}

/** Where the client stops: SET MIG_DEVICE_STATE refused, or its fake-guest thread tripping on the echoed request (libvfio-user-client.test.ts). */
function stoppedAtMigration(r: SampleResult): boolean {
  const err = r.stderr.split('\n').filter((l) => l.length > 0);
  return err.includes('client: failed to set state: -1: Invalid argument') || err.at(-1) === 'client: fake guest failed to write garbage to BAR1: Protocol error';
}

describe('libvfio-user samples/client against a `vfio-user host` instance (a parent serving the samples/server-shaped device)', { skip: build.skip }, () => {
  const client = join(build.dir ?? '', 'samples', 'client');
  let dirs: HostDirs;
  let host: HostChild;
  let api: HostConnection;
  let instance: InstanceStatus;
  let reference: SampleResult;

  before(async () => {
    dirs = hostDirs();
    // The reference: the same device served by DeviceServer in this process.
    const sample = serverSampleDevice();
    const path = join(dirs.root, 'reference.sock');
    const server = sample.device.serve(path);
    try {
      reference = await runSample(client, [path], CLIENT_TIMEOUT_MS);
    } finally {
      await server.close();
      sample.device.dispose();
    }
    host = spawnHost(['--run-dir', dirs.runDir, '--config-dir', dirs.configDir, '--no-builtin-parents', '--parent', PARENT]);
    await host.ready;
    api = await connectHost(join(dirs.runDir, 'control.sock'));
    instance = await api.start({ parent: 'lvu-sample', mdevType: 'lvu-sample-server' });
  });

  after(async () => {
    api?.close();
    host?.child.kill('SIGKILL');
    await host?.exited;
    dirs?.dispose();
  });

  it('the reference run (in-process DeviceServer) gets through DMA, INTx and dirty logging and stops at migration', () => {
    const why = describeResult(reference);
    assert.equal(reference.code, 1, why);
    const out = timeless(reference.stdout);
    assert.equal(out[0], 'client: devinfo: flags 0x3, num_regions 9, num_irqs 5', why);
    assert.ok(out.includes('client: INTx triggered!'), why);
    assert.equal(out.filter((l) => l.startsWith('client: get_dirty_bitmap: ')).length, 2 * MAX_MSG_FDS, why);
    assert.ok(stoppedAtMigration(reference), why);
  });

  it('against the host instance the client prints what it printed against the reference, and stops at the same place', async () => {
    const r = await runSample(client, [instance.socket], CLIENT_TIMEOUT_MS);
    const why = describeResult(r);
    assert.equal(r.timedOut, false, why);
    assert.equal(r.code, reference.code, why);
    assert.deepEqual(timeless(r.stdout), timeless(reference.stdout), why);
    assert.ok(stoppedAtMigration(r), why);
    const events = () =>
      host
        .stderr()
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { event?: string; uuid?: string; client?: { pid?: number } });
    await until(() => events().some((e) => e.event === 'client-disconnected' && e.uuid === instance.uuid), 'the host to see the client go');
    const connected = events().filter((e) => e.event === 'client-connected' && e.uuid === instance.uuid);
    assert.equal(connected.length, 1);
    assert.equal(typeof connected[0]?.client?.pid, 'number');
  });

  it('the instance serves a second run of the client, then stops without --force (no client left)', async () => {
    const r = await runSample(client, [instance.socket], CLIENT_TIMEOUT_MS);
    const why = describeResult(r);
    assert.equal(r.code, reference.code, why);
    assert.deepEqual(timeless(r.stdout), timeless(reference.stdout), why);
    const idle = await until(async () => {
      const [listed] = (await api.list({ uuid: instance.uuid })).instances;
      return listed?.state === 'active' && listed.client === undefined ? listed : undefined;
    }, 'the instance to have no client');
    assert.ok(idle);
    assert.equal(idle.restarts, 0, 'its worker never died');
    const stopped = await api.stop({ uuid: instance.uuid });
    assert.equal(stopped.uuid, instance.uuid);
    assert.equal(existsSync(instance.socket), false, 'its socket is removed');
    assert.deepEqual((await api.list()).instances, []);
  });
});
