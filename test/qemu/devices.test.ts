/**
 * Our three sample devices, served in this process, attached to one real QEMU
 * (`VFIO_USER_QEMU`) as vfio-user-pci and driven as a guest would through
 * qtest: enumeration (the ids and class QEMU's guest sees), BAR sizing and
 * placement, register reads and writes through QEMU, and the memory device's
 * BAR0 mapped by QEMU (guest stores land in the device's memfd and back).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { createDmaEngineDevice, createGpioDevice, createMemoryDevice, DMA_ENGINE_PCI_ID, GPIO_PCI_ID, MEMORY_PCI_ID } from '../../src/devices/index.js';
import type { GpioDevice, MemoryDevice } from '../../src/devices/index.js';
import { barAccess, probe, startGuest, tempDir, type Guest } from '../support/qemu/guest.js';
import { qemuBinary } from '../support/qemu/launcher.js';
import { CapId, Cfg, type PciFunction } from '../support/qemu/pci.js';
import { serveInProcess, type InProcessServer } from '../support/qemu/servers.js';
import { fnv1a } from '../support/qemu/fnv.js';
import type { QtestClient } from '../support/qemu/qtest.js';

const qemu = qemuBinary();
const MEMORY_SIZE = 64 * 1024;

describe('QEMU vfio-user-pci with our sample devices: enumeration, BARs, registers, mapped memory', { skip: qemu.skip }, () => {
  const tmp = tempDir('qemu-devices');
  const servers: InProcessServer[] = [];
  let gpio: GpioDevice;
  let memory: MemoryDevice;
  let guest: Guest;
  let fns: { gpio: PciFunction; memory: PciFunction; dma: PciFunction };

  before(async () => {
    gpio = createGpioDevice();
    memory = createMemoryDevice({ size: MEMORY_SIZE });
    const dma = createDmaEngineDevice();
    servers.push(serveInProcess(tmp.dir, 'gpio', gpio.device), serveInProcess(tmp.dir, 'memory', memory.device), serveInProcess(tmp.dir, 'dma', dma.device));
    guest = await startGuest(qemu.path as string, {
      devices: servers.map((s, i) => ({ socket: s.path, id: `d${i}`, addr: `0x${(4 + i).toString(16)}` })),
    });
    fns = {
      gpio: await probe(guest, GPIO_PCI_ID.vendorId, GPIO_PCI_ID.deviceId),
      memory: await probe(guest, MEMORY_PCI_ID.vendorId, MEMORY_PCI_ID.deviceId),
      dma: await probe(guest, DMA_ENGINE_PCI_ID.vendorId, DMA_ENGINE_PCI_ID.deviceId),
    };
  });

  after(async () => {
    await guest?.qemu.close();
    for (const s of servers) await s.close();
    tmp.remove();
  });

  it('each device was served one session, and the guest finds it in the slot QEMU was given', () => {
    assert.deepEqual(servers.map((s) => s.server.sessionCount), [1, 1, 1]);
    assert.deepEqual([fns.gpio.bdf.dev, fns.memory.bdf.dev, fns.dma.bdf.dev], [4, 5, 6]);
  });

  it('the guest sees the class codes the devices declare, through QEMU', () => {
    assert.equal(fns.gpio.classCode, GPIO_PCI_ID.classCode);
    assert.equal(fns.memory.classCode, MEMORY_PCI_ID.classCode);
    assert.equal(fns.dma.classCode, DMA_ENGINE_PCI_ID.classCode);
  });

  it('BAR sizing through QEMU gives each device its declared BARs', () => {
    const layout = (f: PciFunction): unknown[] => f.bars.map((b) => [b.index, b.kind, b.prefetchable, b.size]);
    assert.deepEqual(layout(fns.gpio), [[2, 'io', false, 0x100n]], 'an I/O BAR, as on the card and in the libvfio-user sample');
    assert.deepEqual(layout(fns.memory), [
      [0, 'mem64', true, BigInt(MEMORY_SIZE)],
      [2, 'mem32', false, 0x100n],
    ]);
    assert.deepEqual(layout(fns.dma), [
      [0, 'mem32', false, 0x1000n],
      [4, 'mem32', false, 0x1000n],
    ]);
  });

  it('capability lists as the guest walks them: GPIO has MSI, the DMA engine MSI-X and PCI Express', async () => {
    const ids = async (f: PciFunction): Promise<number[]> => (await f.capabilities()).map((c) => c.id);
    assert.ok((await ids(fns.gpio)).includes(CapId.MSI));
    const dma = await ids(fns.dma);
    assert.ok(dma.includes(CapId.MSIX) && dma.includes(CapId.PCIE), `DMA engine capabilities: ${dma.join(',')}`);
    assert.equal(await fns.gpio.read8(Cfg.INT_PIN), 1, 'GPIO uses INTA#');
  });

  it('GPIO: a guest store to OUTPUT reaches the device; inputs driven by the host read back through QEMU', async () => {
    const io = barAccess(guest.qemu.qtest, fns.gpio.bar(2));
    await io.write32(0x10, 0x0001_a5c3);
    await io.flush(); // the write was posted
    assert.equal(gpio.outputs, 0xa5c3, 'the device got the write (bits 31:16 ignored)');
    assert.equal(await io.read32(0x10), 0xa5c3);
    assert.equal(await io.read8(0x04), 0xa5, 'OUT8_15 byte register over the same state');
    gpio.setInput(3, true);
    gpio.setInput(12, true);
    assert.equal(await io.read32(0x14), (1 << 3) | (1 << 12));
    assert.equal(await io.read8(0x01), 1 << 3);
    await io.write32(0x18, 0xffff);
    await io.flush();
    assert.equal(gpio.irqEnable, 0xffff);
    assert.equal(await io.read8(0x02), 0, 'reading IRQ_CTL disables the interrupts, as on the card');
    assert.equal(gpio.irqEnable, 0);
  });

  it('memory device: the control block reports the BAR0 size; FILL_PATTERN is read/write', async () => {
    const q = guest.qemu.qtest;
    const bar2 = fns.memory.bar(2).address;
    assert.equal(await q.readl(bar2 + 0x00n), MEMORY_SIZE);
    assert.equal(await q.readl(bar2 + 0x04n), 0);
    await q.writel(bar2 + 0x08n, 0x1234_5678);
    assert.equal(await q.readl(bar2 + 0x08n), 0x1234_5678);
  });

  it('memory device: QEMU maps BAR0 (mmaps[0] in the memory tree)', async () => {
    const mtree = await guest.qemu.qmp.execute<string>('human-monitor-command', { 'command-line': 'info mtree -f' });
    const base = fns.memory.bar(0).address.toString(16).padStart(16, '0');
    const line = mtree.split('\n').find((l) => l.includes(`${base}-`) && l.includes('mmaps'));
    assert.ok(line, `no mmap'd region at 0x${base}:\n${mtree.split('\n').filter((l) => l.includes('BAR')).join('\n')}`);
  });

  it('memory device: guest stores to BAR0 appear in the device memory, device stores in guest loads', async () => {
    const q = guest.qemu.qtest;
    const bar0 = fns.memory.bar(0).address;
    await q.writel(bar0 + 0x1000n, 0xdead_beef);
    assert.equal(Buffer.from(memory.memory).readUInt32LE(0x1000), 0xdead_beef);
    const block = randomBytes(4096);
    await q.memwrite(bar0 + 0x3000n, block);
    assert.deepEqual(Buffer.from(memory.memory.subarray(0x3000, 0x4000)), block);
    const fromDevice = randomBytes(512);
    memory.memory.set(fromDevice, MEMORY_SIZE - 512);
    assert.deepEqual(Buffer.from(await q.memread(bar0 + BigInt(MEMORY_SIZE - 512), 512)), fromDevice);
    assert.equal(await q.readq(bar0 + BigInt(MEMORY_SIZE - 512)), fromDevice.readBigUInt64LE(0));
  });

  it('memory device: a FILL through the control block shows in the guest view of BAR0; CHECKSUM covers it', async () => {
    const q = guest.qemu.qtest;
    const bar0 = fns.memory.bar(0).address;
    const bar2 = fns.memory.bar(2).address;
    await q.writel(bar2 + 0x08n, 0xa1b2_c3d4);
    await q.writel(bar2 + 0x0cn, 0x2000);
    await q.writel(bar2 + 0x10n, 0x100);
    await q.writel(bar2 + 0x14n, 1);
    await commandDone(q, bar2);
    const filled = await q.memread(bar0 + 0x2000n, 0x100);
    assert.deepEqual(Buffer.from(filled), Buffer.alloc(0x100, Buffer.from([0xd4, 0xc3, 0xb2, 0xa1])));
    const everything = await q.memread(bar0, MEMORY_SIZE);
    assert.equal(await readChecksum(q, bar2), fnv1a(everything));
  });
});

/** Runs the CHECKSUM command (COMMAND = 2) and reads its result. */
async function readChecksum(q: QtestClient, bar2: bigint): Promise<number> {
  await q.writel(bar2 + 0x14n, 2);
  await commandDone(q, bar2);
  return q.readl(bar2 + 0x1cn);
}

/** Polls STATUS until the command ended (BUSY clear) and asserts it ended DONE without ERROR; clears STATUS. */
async function commandDone(q: QtestClient, bar2: bigint, timeoutMs = 5000): Promise<void> {
  const DONE = 1, ERROR = 2, BUSY = 4;
  const deadline = Date.now() + timeoutMs;
  let status = await q.readl(bar2 + 0x18n);
  while (status & BUSY || !(status & (DONE | ERROR))) {
    if (Date.now() > deadline) throw new Error(`memory device: command still running after ${timeoutMs} ms (STATUS 0x${status.toString(16)})`);
    await new Promise((r) => setTimeout(r, 1));
    status = await q.readl(bar2 + 0x18n);
  }
  assert.equal(status & (DONE | ERROR), DONE, `STATUS 0x${status.toString(16)}`);
  await q.writel(bar2 + 0x18n, status);
}
