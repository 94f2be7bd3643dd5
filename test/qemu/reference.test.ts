/**
 * The harness checked against the reference: libvfio-user's
 * `samples/gpio-pci-idio-16` attached to a real QEMU (`VFIO_USER_QEMU`) with
 * vfio-user-pci, driven from qtest. If this fails, the harness is wrong, not
 * our server. Needs both `VFIO_USER_QEMU` and `LIBVFIO_USER_BUILD`.
 *
 * The sample: PCI 0x494f:0x0dc8, class 0, BAR2 of 256 bytes declared without
 * VFU_REGION_FLAG_MEM, which libvfio-user turns into an I/O BAR. Its output
 * registers (0x0, 0x4) count writes per pin; its input registers (0x1, 0x5)
 * read bit i set when pin i's count is a multiple of 3.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { probe, startGuest, tempDir, type Guest } from '../support/qemu/guest.js';
import { qemuBinary } from '../support/qemu/launcher.js';
import { Cfg, type PciFunction } from '../support/qemu/pci.js';
import { libvfioUserGpio, startLibvfioUserGpio, type ChildServer } from '../support/qemu/servers.js';

const qemu = qemuBinary();
const sample = libvfioUserGpio();
const skip = qemu.skip || sample.skip;

describe('QEMU vfio-user-pci with libvfio-user gpio-pci-idio-16 (harness reference)', { skip }, () => {
  const tmp = tempDir('qemu-ref');
  let server: ChildServer;
  let guest: Guest;
  let gpio: PciFunction;

  before(async () => {
    server = await startLibvfioUserGpio(sample.path as string, tmp.dir);
    guest = await startGuest(qemu.path as string, { devices: [{ socket: server.path, id: 'lvu', addr: '0x4' }] });
    gpio = await probe(guest, 0x494f, 0x0dc8);
  });

  after(async () => {
    await guest?.qemu.close();
    await server?.kill();
    tmp.remove();
  });

  it('the guest sees the sample at 00:04.0 with its ids, class 0 and a 256-byte I/O BAR2', async () => {
    assert.deepEqual(gpio.bdf, { bus: 0, dev: 4, fn: 0 });
    assert.equal(gpio.classCode, 0);
    assert.equal(gpio.headerType, 0);
    assert.deepEqual(
      gpio.bars.map((b) => [b.index, b.kind, b.size]),
      [[2, 'io', 256n]],
    );
    assert.equal(((await gpio.read32(Cfg.BAR0 + 8)) & ~3) >>> 0, Number(gpio.bar(2).address), 'BAR2 holds the assigned port');
  });

  it('QMP query-pci agrees with the guest: same slot, ids and I/O BAR', async () => {
    const buses = await guest.qemu.qmp.execute<{ devices: { slot: number; id: { vendor: number; device: number }; regions: { bar: number; type: string; address: number; size: number }[] }[] }[]>('query-pci');
    const dev = buses[0]?.devices.find((d) => d.slot === 4);
    assert.ok(dev, 'query-pci lists slot 4');
    assert.deepEqual(dev.id, { vendor: 0x494f, device: 0x0dc8, 'subsystem-vendor': 0, subsystem: 0 });
    assert.deepEqual(dev.regions.map((r) => [r.bar, r.type, r.size, r.address]), [[2, 'io', 256, Number(gpio.bar(2).address)]]);
  });

  it('register accesses reach the sample: each output write bumps its pin counter, inputs read counter % 3 == 0', async () => {
    const port = Number(gpio.bar(2).address);
    const q = guest.qemu.qtest;
    assert.equal(await q.inb(port + 1), 0xff, 'all counters at 0');
    await q.outb(port + 0, 0x0f);
    assert.equal(await q.inb(port + 1), 0xf0, 'pins 0-3 counted one write');
    await q.outb(port + 0, 0x0f);
    await q.outb(port + 0, 0x0f);
    assert.equal(await q.inb(port + 1), 0xff, 'three writes: multiples of 3 again');
    await q.outb(port + 4, 0x80);
    assert.equal(await q.inb(port + 5), 0x7f, 'pin 15 counted on the second bank');
    assert.equal(await q.inb(port + 1), 0xff, 'the first bank did not change');
  });
});
