/**
 * Release requests through a real QEMU (`VFIO_USER_QEMU`): the server side
 * signals the device request interrupt (REQ, vfio IRQ index 4) with
 * `device.requestRelease()`; QEMU, when it registered an eventfd for REQ,
 * unplugs the device from its guest (hw/vfio/pci.c vfio_req_notifier_handler
 * → qdev_unplug): on a pcie-root-port it presses the slot's attention button,
 * the guest (this test, through qtest) powers the slot off, QEMU deletes the
 * device (DEVICE_DELETED) and closes the connection, and our server's session
 * ends as any client's orderly close does.
 *
 * QEMU 10.2's vfio-user-pci never registers REQ (test/support/qemu/req.ts says
 * why, and gives the one-line patch that adds it): with such a QEMU the eject
 * test skips, and the request is shown undeliverable — the device stays in the
 * guest until the operator's `device_del`.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createGpioDevice, GPIO_PCI_ID, type GpioDevice } from '../../src/devices/index.js';
import { IrqIndex } from '../../src/protocol/constants.js';
import type { Session } from '../../src/server/session.js';
import { barAccess, probe, startGuest, tempDir, type BarAccess, type Guest } from '../support/qemu/guest.js';
import { ejectOnButton, plugIn, unplug } from '../support/qemu/hotplug.js';
import { qemuBinary } from '../support/qemu/launcher.js';
import { setUpBridge, type Allocator, type PciFunction } from '../support/qemu/pci.js';
import { NO_REQ_REASON, vfioUserPciHasReq, withoutReq } from '../support/qemu/req.js';
import { serveInProcess, type InProcessServer } from '../support/qemu/servers.js';

const qemu = qemuBinary();
const OUTPUT = 0x10;

/** A root port with its bus window, and the card served for it. */
interface Slot {
  port: PciFunction;
  bus: number;
  window: Allocator;
  gpio: GpioDevice;
  served: InProcessServer;
}

describe('QEMU vfio-user-pci and the REQ interrupt: the server asks, QEMU unplugs, the guest ejects', { skip: qemu.skip }, () => {
  const tmp = tempDir('qemu-req');
  let guest: Guest;
  let hasReq: boolean;
  let slots: Slot[];

  before(async () => {
    guest = await startGuest(qemu.path as string, { rootPorts: 2 });
    const ports = (await guest.pci.enumerate(0)).filter((f) => f.vendorId === 0x1b36 && f.deviceId === 0x000c);
    assert.equal(ports.length, 2, 'two pcie-root-ports');
    slots = [];
    for (const [i, port] of ports.entries()) {
      const gpio = createGpioDevice();
      slots.push({ port, bus: i + 1, window: await setUpBridge(port, i + 1, guest.alloc), gpio, served: serveInProcess(tmp.dir, `gpio${i}`, gpio.device) });
    }
    hasReq = await vfioUserPciHasReq(guest);
  });

  after(async () => {
    await guest?.qemu.close();
    for (const s of slots ?? []) await s.served.close();
    tmp.remove();
  });

  /** device_add of slot `i`'s card as `id`, then the guest probes it and sets its outputs to `outputs`. */
  async function plugAndUse(i: number, id: string, outputs: number, props: Record<string, unknown> = {}): Promise<{ s: Slot; io: BarAccess }> {
    const s = slots[i] as Slot;
    await plugIn(guest, s.port, { id, socket: s.served.path, bus: `rp${i}`, props });
    const fn = await probe(guest, GPIO_PCI_ID.vendorId, GPIO_PCI_ID.deviceId, s.bus, s.window);
    const io = barAccess(guest.qemu.qtest, fn.bar(2));
    await io.write32(OUTPUT, outputs);
    assert.equal(await io.read32(OUTPUT), outputs, 'the card answers the guest');
    assert.equal(s.gpio.outputs, outputs);
    return { s, io };
  }

  it('QEMU registers its ERR eventfd at realize, and its REQ eventfd exactly when its vfio-user-pci has x-req', async () => {
    const { s } = await plugAndUse(0, 'hp0', 0x1234);
    assert.equal(s.served.server.sessionCount, 1);
    assert.equal(s.gpio.device.irqs.count(IrqIndex.REQ), 1, 'the device offers one REQ vector');
    assert.equal(s.gpio.device.irqs.hasEventFd(IrqIndex.ERR, 0), true, 'ERR registered (vfio_pci_register_err_notifier)');
    assert.equal(s.gpio.device.irqs.hasEventFd(IrqIndex.REQ, 0), hasReq, `REQ registered: ${hasReq}`);
  });

  it('REQ: QEMU presses the attention button, the guest powers the slot off, DEVICE_DELETED, QEMU closes: an orderly end', async (t) => {
    if (!hasReq) return t.skip(NO_REQ_REASON);
    const s = slots[0] as Slot;
    const session = s.served.server.session as Session;
    assert.ok(session, 'hp0 is being served');
    const from = guest.qemu.qmp.events.length;
    assert.equal(s.gpio.device.requestRelease(), true, 'the request reached QEMU’s eventfd');
    await ejectOnButton(guest, s.port, 'hp0', from);
    await s.served.server.idle();
    assert.equal(await session.closed, undefined, 'QEMU closed the connection (EOF), nobody forced it');
    assert.equal(s.served.server.session, undefined);
    assert.equal(s.gpio.outputs, 0, 'the device was reset on the lost connection');
    assert.deepEqual(await guest.pci.enumerate(s.bus), [], 'the slot is empty');
    assert.equal(s.served.server.sessionCount, 1, 'QEMU did not reconnect');
  });

  it('without a REQ eventfd the request is not delivered: the card stays in the guest and works; device_del still removes it', async () => {
    const { s, io } = await plugAndUse(1, 'hp1', 0x0f0f, withoutReq(hasReq));
    assert.equal(s.gpio.device.irqs.hasEventFd(IrqIndex.REQ, 0), false, 'no REQ eventfd');
    const from = guest.qemu.qmp.events.length;
    assert.equal(s.gpio.device.requestRelease(), false, 'requestRelease() reports it had nobody to tell');
    assert.equal(await io.read32(OUTPUT), 0x0f0f, 'still in the guest, outputs kept');
    assert.ok(s.served.server.session, 'still served');
    assert.equal(guest.qemu.qmp.events.slice(from).some((e) => e.event === 'DEVICE_DELETED'), false, 'nothing deleted');
    const session = s.served.server.session as Session;
    await unplug(guest, s.port, 'hp1');
    await s.served.server.idle();
    assert.equal(await session.closed, undefined, 'an orderly end');
    assert.equal(s.gpio.outputs, 0);
  });
});
