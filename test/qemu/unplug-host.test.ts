/**
 * Stopping a device host's instance while QEMU (`VFIO_USER_QEMU`) has it
 * hot-plugged: `vfio-user mdev stop --timeout` asks the client to release
 * the device by signalling its REQ eventfd (repeated), waits, then forces.
 *
 * With a QEMU whose vfio-user-pci registers REQ (test/support/qemu/req.ts),
 * QEMU unplugs the device: it presses the slot's attention button, the guest
 * (this test, through qtest) powers the slot off, QEMU deletes the device and
 * closes the connection, and the stop ends `released`, never forced. A guest
 * that ignores the button leaves the stop to force the session closed at the
 * timeout; QEMU survives that, and its pending unplug still completes when the
 * guest powers the slot off later.
 *
 * With QEMU 10.2 (no REQ registration) the requests cannot be delivered — the
 * host says so (`delivered: false`): the stop is released only if the operator
 * unplugs the device meanwhile (`device_del`), and forced at the timeout
 * otherwise. Those two cases run with either QEMU (`x-req=off` on one that has it).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { GPIO_PCI_ID } from '../../src/devices/index.js';
import { connectHost, type HostConnection } from '../../src/host/control-client.js';
import type { StopResult } from '../../src/host/api.js';
import { runNode } from '../cli/mdev-support.js';
import { MAIN, hostDirs, spawnHost, until, type HostChild, type HostDirs } from '../host/host-support.js';
import { barAccess, probe, startGuest, type Guest } from '../support/qemu/guest.js';
import { ejectOnButton, plugIn, powerOff, unplug, waitForButton } from '../support/qemu/hotplug.js';
import { qemuBinary } from '../support/qemu/launcher.js';
import { setUpBridge, type Allocator, type PciFunction } from '../support/qemu/pci.js';
import { NO_REQ_REASON, vfioUserPciHasReq, withoutReq } from '../support/qemu/req.js';

const qemu = qemuBinary();
const OUTPUT = 0x10;
const UUIDS = ['0a1b2c3d-0000-4000-8000-00000000e001', '0a1b2c3d-0000-4000-8000-00000000e002', '0a1b2c3d-0000-4000-8000-00000000e003', '0a1b2c3d-0000-4000-8000-00000000e004'] as const;

/** A root port and its bus window. */
interface Slot {
  port: PciFunction;
  bus: number;
  window: Allocator;
}

describe('QEMU on a device host: `mdev stop --timeout` asks QEMU to unplug the instance, then forces', { skip: qemu.skip }, () => {
  let dirs: HostDirs;
  let host: HostChild;
  let api: HostConnection;
  let guest: Guest;
  let hasReq: boolean;
  let slots: Slot[];
  const mdev = (...args: string[]) => runNode(MAIN, ['mdev', ...args], { VFIO_USER_CONTROL: join(dirs.runDir, 'control.sock') });

  /** The host's audit lines `name` about `uuid` (its JSON log on stderr). */
  const audits = (name: string, uuid: string): Record<string, unknown>[] =>
    host
      .stderr()
      .split('\n')
      .flatMap((line) => {
        try {
          return [JSON.parse(line) as Record<string, unknown>];
        } catch {
          return [];
        }
      })
      .filter((l) => l['audit'] === name && l['uuid'] === uuid);

  before(async () => {
    dirs = hostDirs();
    host = spawnHost(['--run-dir', dirs.runDir, '--config-dir', dirs.configDir]);
    await host.ready;
    api = await connectHost(join(dirs.runDir, 'control.sock'));
    guest = await startGuest(qemu.path as string, { rootPorts: 2 });
    const ports = (await guest.pci.enumerate(0)).filter((f) => f.vendorId === 0x1b36 && f.deviceId === 0x000c);
    slots = [];
    for (const [i, port] of ports.entries()) slots.push({ port, bus: i + 1, window: await setUpBridge(port, i + 1, guest.alloc) });
    hasReq = await vfioUserPciHasReq(guest);
  });

  after(async () => {
    api?.close();
    await guest?.qemu.close();
    host?.child.kill('SIGTERM');
    await host?.exited;
    dirs?.dispose();
  });

  /** Starts instance `uuid`, device_adds it into slot `i` as `id` (with `props`), and the guest drives it. */
  async function plugInstance(uuid: string, i: number, id: string, props: Record<string, unknown> = {}): Promise<{ socket: string; slot: Slot }> {
    const slot = slots[i] as Slot;
    const instance = await api.start({ uuid, parent: 'gpio-bank', mdevType: 'gpio-bank-4' });
    await plugIn(guest, slot.port, { id, socket: instance.socket, bus: `rp${i}`, props });
    const io = barAccess(guest.qemu.qtest, (await probe(guest, GPIO_PCI_ID.vendorId, GPIO_PCI_ID.deviceId, slot.bus, slot.window)).bar(2));
    await io.write32(OUTPUT, 0x5a5a);
    assert.equal(await io.read32(OUTPUT), 0x5a5a, 'the card answers the guest');
    const [listed] = (await api.list({ uuid })).instances;
    assert.equal(listed?.client?.pid, guest.qemu.pid, 'QEMU is its client');
    return { socket: instance.socket, slot };
  }

  /** `mdev stop --json --timeout <timeout> -u <uuid>`, run while `meanwhile` plays the guest or operator. */
  async function stopWhile(uuid: string, timeout: string, meanwhile: () => Promise<void>): Promise<StopResult> {
    const stopping = mdev('stop', '--json', '--timeout', timeout, '-u', uuid);
    await meanwhile();
    const cli = await stopping;
    assert.equal(cli.code, 0, cli.stderr);
    return JSON.parse(cli.stdout) as StopResult;
  }

  async function qemuAlive(): Promise<void> {
    const status = await guest.qemu.qmp.execute<{ status: string }>('query-status');
    assert.equal(status.status, 'running');
    assert.equal(guest.qemu.exit, undefined, 'QEMU is still alive');
  }

  it('REQ: QEMU presses the attention button, the guest ejects, QEMU closes; the stop ends released, not forced', async (t) => {
    if (!hasReq) return t.skip(NO_REQ_REASON);
    const uuid = UUIDS[0];
    const { socket, slot } = await plugInstance(uuid, 0, 'req0');
    const from = guest.qemu.qmp.events.length;
    const result = await stopWhile(uuid, '30s', () => ejectOnButton(guest, slot.port, 'req0', from));
    assert.equal(result.release, 'released', JSON.stringify(result));
    assert.ok(result.requests >= 1, 'asked at least once');
    assert.ok(result.waitedMs < 30_000, 'before the timeout');
    assert.equal(existsSync(socket), false, 'the instance is gone');
    assert.deepEqual((await api.list({ uuid })).instances, []);
    assert.equal(audits('released', uuid).length, 1, 'audit: released, once');
    assert.equal(audits('forced', uuid).length, 0, 'no forced audit line');
    assert.deepEqual(await guest.pci.enumerate(slot.bus), [], 'the slot is empty');
    await qemuAlive();
  });

  it('REQ ignored by the guest: forced at the timeout; QEMU survives and its pending unplug completes later', async (t) => {
    if (!hasReq) return t.skip(NO_REQ_REASON);
    const uuid = UUIDS[1];
    const { slot } = await plugInstance(uuid, 1, 'req1');
    const from = guest.qemu.qmp.events.length;
    const result = await stopWhile(uuid, '1s', () => waitForButton(slot.port, 'req1'));
    assert.equal(result.release, 'forced', JSON.stringify(result));
    assert.equal(result.delivered, true, 'the requests reached QEMU');
    assert.ok(result.waitedMs >= 1000, `waited the whole timeout (${result.waitedMs} ms)`);
    assert.equal(audits('forced', uuid).length, 1, 'audit: forced, once');
    await qemuAlive();
    assert.equal(guest.qemu.qmp.events.slice(from).some((e) => e.event === 'DEVICE_DELETED'), false, 'the device is still in QEMU');
    await powerOff(guest, slot.port, 'req1', from);
    assert.deepEqual(await guest.pci.enumerate(slot.bus), []);
    await qemuAlive();
  });

  it('no REQ eventfd: the requests are not delivered; the operator device_dels meanwhile and the stop ends released', async () => {
    const uuid = UUIDS[2];
    const { slot } = await plugInstance(uuid, 0, 'noreq0', withoutReq(hasReq));
    const result = await stopWhile(uuid, '30s', async () => {
      await until(() => audits('release-requested', uuid).length > 0 || undefined, `the host to ask for ${uuid}`);
      await unplug(guest, slot.port, 'noreq0');
    });
    assert.equal(result.release, 'released', JSON.stringify(result));
    assert.equal(result.delivered, false, 'the host knew nobody heard it');
    assert.equal(audits('forced', uuid).length, 0);
    await qemuAlive();
  });

  it('no REQ eventfd and nobody acts: forced at the timeout; QEMU survives and device_del still removes the card', async () => {
    const uuid = UUIDS[3];
    const { slot } = await plugInstance(uuid, 1, 'noreq1', withoutReq(hasReq));
    const result = await stopWhile(uuid, '1s', async () => undefined);
    assert.equal(result.release, 'forced', JSON.stringify(result));
    assert.equal(result.delivered, false);
    assert.ok(result.waitedMs >= 1000, `waited the whole timeout (${result.waitedMs} ms)`);
    assert.equal(audits('forced', uuid).length, 1, 'audit: forced, once');
    await qemuAlive();
    await unplug(guest, slot.port, 'noreq1');
    assert.deepEqual(await guest.pci.enumerate(slot.bus), []);
    await qemuAlive();
  });
});
