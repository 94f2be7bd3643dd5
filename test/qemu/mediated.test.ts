/**
 * A real QEMU (`VFIO_USER_QEMU`) as the mediator's client: vfio-user-pci
 * attached to our GPIO card and memory device through `Mediator`s, driven as a
 * guest would through qtest. What QEMU's guest sees is what it sees without the
 * mediator; QEMU's register accesses cross the mediator (a plugin counts them,
 * a typed plugin emulates one register); the memory BAR's region fd passes
 * through untouched, so QEMU maps it and guest stores reach the device's memory
 * without a message crossing the mediator.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createGpioDevice, createMemoryDevice, GPIO_PCI_ID, MEMORY_PCI_ID, type GpioDevice, type MemoryDevice } from '../../src/devices/index.js';
import { Mediator, type MediatorPlugin } from '../../src/mediator/index.js';
import { definePlugin } from '../../src/mediator/typed.js';
import { Command } from '../../src/protocol/constants.js';
import { barAccess, probe, startGuest, tempDir, type Guest } from '../support/qemu/guest.js';
import { qemuBinary } from '../support/qemu/launcher.js';
import type { PciFunction } from '../support/qemu/pci.js';
import { serveInProcess, type InProcessServer } from '../support/qemu/servers.js';

const qemu = qemuBinary();
const MEMORY_SIZE = 64 * 1024;
/** GPIO INPUT register (BAR2 + 0x14): emulated by the typed plugin. */
const INPUT = 0x14n;
const EMULATED_INPUT = 0xbeef;

/** Counts the commands QEMU sends through one mediator, by command. */
function counter(): MediatorPlugin & { counts: Map<number, number> } {
  const counts = new Map<number, number>();
  return {
    name: 'count',
    counts,
    onClientCommand(msg) {
      counts.set(msg.header.cmd, (counts.get(msg.header.cmd) ?? 0) + 1);
      return undefined;
    },
  };
}

describe('QEMU vfio-user-pci through the mediator', { skip: qemu.skip }, () => {
  const tmp = tempDir('qemu-mediated');
  const servers: InProcessServer[] = [];
  const mediators: Mediator[] = [];
  const gpioCount = counter();
  const memoryCount = counter();
  let gpio: GpioDevice;
  let memory: MemoryDevice;
  let guest: Guest;
  let fns: { gpio: PciFunction; memory: PciFunction };

  before(async () => {
    gpio = createGpioDevice();
    memory = createMemoryDevice({ size: MEMORY_SIZE });
    servers.push(serveInProcess(tmp.dir, 'gpio', gpio.device), serveInProcess(tmp.dir, 'memory', memory.device));
    const emulateInput = definePlugin({
      name: 'emulate-input',
      regionRead: (a) => (a.region === 2 && a.offset === INPUT && a.count === 4 ? { reply: new Uint8Array(new Uint32Array([EMULATED_INPUT]).buffer) } : undefined),
    });
    mediators.push(
      await Mediator.listen({ upstream: servers[0]!.path, listen: join(tmp.dir, 'gpio-m.sock'), plugins: [gpioCount, emulateInput] }),
      await Mediator.listen({ upstream: servers[1]!.path, listen: join(tmp.dir, 'memory-m.sock'), plugins: [memoryCount] }),
    );
    guest = await startGuest(qemu.path as string, {
      devices: mediators.map((m, i) => ({ socket: m.path, id: `d${i}`, addr: `0x${(4 + i).toString(16)}` })),
    });
    fns = { gpio: await probe(guest, GPIO_PCI_ID.vendorId, GPIO_PCI_ID.deviceId), memory: await probe(guest, MEMORY_PCI_ID.vendorId, MEMORY_PCI_ID.deviceId) };
  });

  after(async () => {
    await guest?.qemu.close();
    for (const m of mediators) await m.close();
    for (const s of servers) await s.close();
    tmp.remove();
  });

  it('QEMU attached both devices through one mediator session each; the guest sees their ids, classes and BARs', () => {
    assert.deepEqual(mediators.map((m) => m.sessionCount), [1, 1]);
    assert.deepEqual(servers.map((s) => s.server.sessionCount), [1, 1]);
    assert.equal(fns.gpio.classCode, GPIO_PCI_ID.classCode);
    assert.equal(fns.memory.classCode, MEMORY_PCI_ID.classCode);
    const layout = (f: PciFunction): unknown[] => f.bars.map((b) => [b.index, b.kind, b.prefetchable, b.size]);
    assert.deepEqual(layout(fns.gpio), [[2, 'io', false, 0x100n]]);
    assert.deepEqual(layout(fns.memory), [
      [0, 'mem64', true, BigInt(MEMORY_SIZE)],
      [2, 'mem32', false, 0x100n],
    ]);
  });

  it('GPIO: guest register accesses cross the mediator; the plugin emulates INPUT, the rest reaches the card', async () => {
    const io = barAccess(guest.qemu.qtest, fns.gpio.bar(2));
    const writesBefore = gpioCount.counts.get(Command.REGION_WRITE) ?? 0;
    const readsBefore = gpioCount.counts.get(Command.REGION_READ) ?? 0;
    await io.write32(0x10, 0x5a5a);
    await io.flush();
    assert.equal(gpio.outputs, 0x5a5a, 'the write reached the card');
    assert.equal(await io.read32(0x10), 0x5a5a);
    gpio.setInput(0, true);
    assert.equal(await io.read32(Number(INPUT)), EMULATED_INPUT, 'INPUT answered by the plugin, not the card (whose input is 1)');
    assert.ok((gpioCount.counts.get(Command.REGION_WRITE) ?? 0) > writesBefore, 'QEMU wrote through the mediator');
    assert.ok((gpioCount.counts.get(Command.REGION_READ) ?? 0) >= readsBefore + 2, 'QEMU read through the mediator');
  });

  it('memory: QEMU maps BAR0 from the fd passed through; guest stores reach the device memory with no message crossing', async () => {
    const q = guest.qemu.qtest;
    const bar0 = fns.memory.bar(0).address;
    const before = { reads: memoryCount.counts.get(Command.REGION_READ) ?? 0, writes: memoryCount.counts.get(Command.REGION_WRITE) ?? 0 };
    const block = randomBytes(4096);
    await q.memwrite(bar0 + 0x2000n, block);
    assert.deepEqual(Buffer.from(memory.memory.subarray(0x2000, 0x3000)), block);
    const fromDevice = randomBytes(256);
    memory.memory.set(fromDevice, 0x100);
    assert.deepEqual(Buffer.from(await q.memread(bar0 + 0x100n, 256)), fromDevice);
    assert.deepEqual(
      { reads: memoryCount.counts.get(Command.REGION_READ) ?? 0, writes: memoryCount.counts.get(Command.REGION_WRITE) ?? 0 },
      before,
      'BAR0 accesses went through QEMU’s mapping of the device memfd, not through the mediator',
    );
  });
});
