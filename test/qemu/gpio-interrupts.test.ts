/**
 * Our GPIO card's interrupt 0 through a real QEMU (`VFIO_USER_QEMU`): INTx,
 * seen on the IOAPIC pin QEMU raises (`irq_intercept_in ioapic`), and MSI,
 * seen as the message QEMU writes to guest RAM. The device raises the
 * interrupt when an enabled input changes (the host drives the line).
 *
 * INTx under vfio without KVM: QEMU asserts the pin when the server signals
 * the INTx eventfd, and deasserts it (and sends SET_IRQS UNMASK) at the
 * guest's next BAR access — the "EOI" of vfio-pci's slow path.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createGpioDevice, GPIO_PCI_ID, type GpioDevice } from '../../src/devices/index.js';
import { barAccess, GUEST_RAM_BASE, probe, startGuest, tempDir, type BarAccess, type Guest } from '../support/qemu/guest.js';
import { qemuBinary } from '../support/qemu/launcher.js';
import { enableMsi, waitMessage } from '../support/qemu/msi.js';
import { Cfg, type PciFunction } from '../support/qemu/pci.js';
import { serveInProcess, type InProcessServer } from '../support/qemu/servers.js';

const qemu = qemuBinary();
const OUTPUT = 0x10, IRQ_ENABLE = 0x18, IRQ_STATUS = 0x1c;
const WAIT_MS = 5000;

describe('QEMU vfio-user-pci: our GPIO card interrupts the guest (INTx, then MSI)', { skip: qemu.skip }, () => {
  const tmp = tempDir('qemu-gpio-irq');
  let gpio: GpioDevice;
  let served: InProcessServer;
  let guest: Guest;
  let fn: PciFunction;
  let io: BarAccess;

  before(async () => {
    gpio = createGpioDevice();
    served = serveInProcess(tmp.dir, 'gpio', gpio.device);
    guest = await startGuest(qemu.path as string, { devices: [{ socket: served.path, id: 'gpio', addr: '0x4' }] });
    await guest.qemu.qtest.irqInterceptIn('ioapic');
    fn = await probe(guest, GPIO_PCI_ID.vendorId, GPIO_PCI_ID.deviceId);
    io = barAccess(guest.qemu.qtest, fn.bar(2));
  });

  after(async () => {
    await guest?.qemu.close();
    await served?.close();
    tmp.remove();
  });

  it('INTx: an enabled input change raises a PIRQ pin of the IOAPIC; the guest reads the status, clears it, and the pin drops', async () => {
    const q = guest.qemu.qtest;
    await io.write32(IRQ_ENABLE, 1 << 5);
    await io.flush(); // posted: let it reach the device before the line changes
    const from = q.irqEvents.length;
    gpio.setInput(5, true);
    const raised = await q.waitIrq((e) => e.level, from, WAIT_MS);
    assert.ok(raised.line >= 16 && raised.line <= 23, `q35 routes PCI INTx to IOAPIC pins 16-23, got ${raised.line}`);
    assert.equal(await io.read32(IRQ_STATUS), 1 << 5, 'the driver sees which input changed');
    await io.write32(IRQ_STATUS, 1 << 5);
    await io.flush();
    assert.equal(gpio.irqStatus, 0, 'write-1-to-clear reached the device');
    await q.waitIrq((e) => e.line === raised.line && !e.level, from, WAIT_MS);
    await io.read32(OUTPUT); // one more access: an EOI, should anything be pending
    assert.equal(q.irqLevel(raised.line), false, 'the pin is low once the status is clear');
  });

  it('INTx again after the unmask: the next change raises the same pin', async () => {
    const q = guest.qemu.qtest;
    const first = q.irqEvents.find((e) => e.level);
    assert.ok(first);
    const from = q.irqEvents.length;
    gpio.setInput(5, false);
    const raised = await q.waitIrq((e) => e.level, from, WAIT_MS);
    assert.equal(raised.line, first.line);
    assert.equal(await io.read32(IRQ_STATUS), 1 << 5);
    await io.write32(IRQ_STATUS, 0xffff);
    await q.waitIrq((e) => e.line === raised.line && !e.level, from, WAIT_MS);
  });

  it('INTx: a change on an input whose interrupt is disabled raises nothing (the next enabled one does)', async () => {
    const q = guest.qemu.qtest;
    await io.write32(IRQ_ENABLE, 1 << 7);
    await io.flush();
    const from = q.irqEvents.length;
    gpio.setInput(6, true); // not enabled
    gpio.setInput(7, true); // enabled
    await q.waitIrq((e) => e.level, from, WAIT_MS);
    assert.equal(await io.read32(IRQ_STATUS), 1 << 7, 'only the enabled input latched');
    await io.write32(IRQ_STATUS, 0xffff);
  });

  it('MSI: with the capability enabled, the change arrives as QEMU writing the message to guest RAM, and INTx stays quiet', async () => {
    const q = guest.qemu.qtest;
    const address = GUEST_RAM_BASE + 0x100n;
    await q.writel(address, 0);
    await enableMsi(fn, address, 0x4a21);
    await io.write32(IRQ_ENABLE, 1 << 9);
    await io.flush();
    const from = q.irqEvents.length;
    gpio.setInput(9, true);
    await waitMessage(q, address, 0x4a21, WAIT_MS);
    assert.equal(await io.read32(IRQ_STATUS), 1 << 9);
    await io.write32(IRQ_STATUS, 1 << 9);
    await io.flush();
    gpio.setInput(9, false);
    await waitMessage(q, address, 0x4a21, WAIT_MS);
    assert.deepEqual(q.irqEvents.slice(from).filter((e) => e.level), [], 'no INTx while MSI is on');
    assert.equal((await fn.read16(Cfg.COMMAND)) & 4, 4, 'bus mastering stayed on');
  });
});
