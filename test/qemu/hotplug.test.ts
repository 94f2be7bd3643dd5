/**
 * Hot-plug through a real QEMU (`VFIO_USER_QEMU`): `device_add` of a
 * vfio-user-pci into an empty pcie-root-port of a q35 machine, the guest
 * powering the slot on and using the device, then `device_del`, the guest
 * powering the slot off (native PCIe hot-plug: the attention button QEMU
 * presses, the Power Controller the guest turns off), DEVICE_DELETED, and a
 * second `device_add` — QEMU opens a new connection per device_add, which our
 * server must serve after the first one ended.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createGpioDevice, GPIO_PCI_ID, type GpioDevice } from '../../src/devices/index.js';
import { barAccess, probe, startGuest, tempDir, type Guest } from '../support/qemu/guest.js';
import { qemuBinary } from '../support/qemu/launcher.js';
import { CapId, setUpBridge, type Allocator, type PciFunction } from '../support/qemu/pci.js';
import { serveInProcess, type InProcessServer } from '../support/qemu/servers.js';
import { plugIn, unplug } from '../support/qemu/hotplug.js';

const qemu = qemuBinary();
const OUTPUT = 0x10;

describe('QEMU vfio-user-pci hot-plug on a pcie-root-port: device_add, use, device_del, device_add again', { skip: qemu.skip }, () => {
  const tmp = tempDir('qemu-hotplug');
  let gpio: GpioDevice;
  let served: InProcessServer;
  let guest: Guest;
  let port: PciFunction;
  let window: Allocator;

  before(async () => {
    gpio = createGpioDevice();
    served = serveInProcess(tmp.dir, 'gpio', gpio.device);
    guest = await startGuest(qemu.path as string, { rootPorts: 1 });
    port = await guest.pci.find(0, 0x1b36, 0x000c); // QEMU's pcie-root-port
    window = await setUpBridge(port, 1, guest.alloc);
  });

  after(async () => {
    await guest?.qemu.close();
    await served?.close();
    tmp.remove();
  });

  it('the root port is a hot-plug capable slot, empty and powered off; our server has no client yet', async () => {
    const exp = await port.capability(CapId.PCIE);
    const slotCap = await port.read32(exp + 0x14);
    assert.equal(slotCap & (1 << 6), 1 << 6, 'Hot-Plug Capable');
    const slotStatus = await port.read16(exp + 0x1a);
    assert.equal(slotStatus & (1 << 6), 0, 'no Presence Detect');
    assert.deepEqual(await guest.pci.enumerate(1), []);
    assert.equal(served.server.sessionCount, 0);
  });

  it('device_add: QEMU connects to our server; the guest powers the slot on and finds and drives the card', async () => {
    await plugIn(guest, port, { id: 'hp0', socket: served.path });
    assert.equal(served.server.sessionCount, 1, 'one session for the device_add');
    const fn = await probe(guest, GPIO_PCI_ID.vendorId, GPIO_PCI_ID.deviceId, 1, window);
    assert.deepEqual(fn.bdf, { bus: 1, dev: 0, fn: 0 });
    const io = barAccess(guest.qemu.qtest, fn.bar(2));
    await io.write32(OUTPUT, 0x5a5a);
    await io.flush(); // posted
    assert.equal(gpio.outputs, 0x5a5a);
    assert.equal(await io.read32(OUTPUT), 0x5a5a);
  });

  it('device_del: the guest powers the slot off, QEMU deletes the device and closes the connection; the device is reset', async () => {
    await unplug(guest, port, 'hp0');
    await served.server.idle();
    assert.equal(served.server.session, undefined, 'the session ended');
    assert.equal(gpio.outputs, 0, 'reset on the lost connection');
    assert.deepEqual(await guest.pci.enumerate(1), []);
  });

  it('a second device_add is a new connection, served; the card works again', async () => {
    await plugIn(guest, port, { id: 'hp1', socket: served.path });
    assert.equal(served.server.sessionCount, 2);
    const fn = await probe(guest, GPIO_PCI_ID.vendorId, GPIO_PCI_ID.deviceId, 1, window);
    const io = barAccess(guest.qemu.qtest, fn.bar(2));
    assert.equal(await io.read32(OUTPUT), 0, 'a fresh card');
    await io.write32(OUTPUT, 0x0f0f);
    await io.flush();
    assert.equal(gpio.outputs, 0x0f0f);
    await unplug(guest, port, 'hp1');
    await served.server.idle();
    assert.equal(served.server.session, undefined);
  });
});
