/**
 * Our DMA engine behind a real QEMU (`VFIO_USER_QEMU`): the guest puts a
 * descriptor ring and buffers in its RAM (a shared memfd QEMU hands to our
 * server with DMA_MAP), rings the doorbell through QEMU, and sees completion
 * as the MSI-X message QEMU writes to guest RAM — vector 0 for completed
 * batches, vector 1 for failed ones. QEMU emulates the MSI-X table itself,
 * so the device's own table is never written: a server that gates vectors on
 * it never interrupts this guest.
 *
 * Register map and descriptor layout: docs/devices.md (written out here).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { createDmaEngineDevice, DMA_ENGINE_PCI_ID, type DmaEngineDevice } from '../../src/devices/index.js';
import { fnv1a } from '../support/qemu/fnv.js';
import { GUEST_RAM_BASE, probe, startGuest, tempDir, type Guest } from '../support/qemu/guest.js';
import { qemuBinary } from '../support/qemu/launcher.js';
import { enableMsix, msixTable, waitMessage } from '../support/qemu/msi.js';
import type { PciFunction } from '../support/qemu/pci.js';
import type { QtestClient } from '../support/qemu/qtest.js';
import { serveInProcess, type InProcessServer } from '../support/qemu/servers.js';

const qemu = qemuBinary();
const Reg = { ID: 0x00n, CONTROL: 0x04n, STATUS: 0x08n, RING_LO: 0x0cn, RING_HI: 0x10n, RING_SIZE: 0x14n, HEAD: 0x18n, TAIL: 0x1cn, COMPLETED: 0x20n, ERRORS: 0x24n } as const;
const COPY = 1, CHECKSUM_ONLY = 2, DONE = 1, ERROR = 2, EFAULT = 14, HALTED = 4;
const RING = GUEST_RAM_BASE + 0x1_0000n;
const RING_SIZE = 8;
const SRC = GUEST_RAM_BASE + 0x10_0000n;
const DST = GUEST_RAM_BASE + 0x20_0000n;
const MSG = [GUEST_RAM_BASE + 0x200n, GUEST_RAM_BASE + 0x300n] as const;
const DATA = [0x00d0_0e00, 0x00e1_1e00] as const;
const WAIT_MS = 5000;

/** One 32-byte descriptor as the driver writes it. */
function descriptor(src: bigint, dst: bigint, length: number, flags: number): Uint8Array {
  const b = Buffer.alloc(32);
  b.writeBigUInt64LE(src, 0);
  b.writeBigUInt64LE(dst, 8);
  b.writeUInt32LE(length, 16);
  b.writeUInt32LE(flags, 20);
  return b;
}

/** Checksum and status the device wrote back into descriptor `i`. */
async function result(q: QtestClient, i: number): Promise<{ checksum: number; status: number }> {
  const b = Buffer.from(await q.memread(RING + BigInt(32 * i) + 24n, 8));
  return { checksum: b.readUInt32LE(0), status: b.readUInt32LE(4) };
}

describe('QEMU vfio-user-pci: our DMA engine copies in guest RAM and signals completion by MSI-X', { skip: qemu.skip }, () => {
  const tmp = tempDir('qemu-dma');
  let engine: DmaEngineDevice;
  let served: InProcessServer;
  let guest: Guest;
  let fn: PciFunction;
  let bar0: bigint;
  let tail = 0;

  /** Writes descriptors at the tail and rings the doorbell. */
  async function post(q: QtestClient, ...descs: Uint8Array[]): Promise<void> {
    for (const d of descs) {
      await q.memwrite(RING + BigInt(32 * tail), d);
      tail = (tail + 1) % RING_SIZE;
    }
    await q.writel(bar0 + Reg.TAIL, tail);
  }

  before(async () => {
    engine = createDmaEngineDevice();
    served = serveInProcess(tmp.dir, 'dma', engine.device);
    guest = await startGuest(qemu.path as string, { devices: [{ socket: served.path, id: 'dma', addr: '0x4' }] });
    fn = await probe(guest, DMA_ENGINE_PCI_ID.vendorId, DMA_ENGINE_PCI_ID.deviceId);
    bar0 = fn.bar(0).address;
  });

  after(async () => {
    await guest?.qemu.close();
    await served?.close();
    tmp.remove();
  });

  it('the driver probes the engine: ID register, a 2-vector MSI-X table in BAR4, the ring programmed and enabled', async () => {
    const q = guest.qemu.qtest;
    assert.equal(await q.readl(bar0 + Reg.ID), 0x01414d44);
    const table = await msixTable(fn);
    assert.equal(table.size, 2);
    assert.equal(table.table, fn.bar(4).address);
    for (const a of MSG) await q.writel(a, 0);
    await enableMsix(q, fn, table, MSG.map((address, i) => ({ address, data: DATA[i] as number })));
    await q.writel(bar0 + Reg.RING_LO, Number(RING & 0xffff_ffffn));
    await q.writel(bar0 + Reg.RING_HI, Number(RING >> 32n));
    await q.writel(bar0 + Reg.RING_SIZE, RING_SIZE);
    await q.writel(bar0 + Reg.CONTROL, 1);
    assert.equal(await q.readl(bar0 + Reg.CONTROL), 1, 'ENABLE (the read also flushes the posted writes)');
    assert.equal(engine.engineState().ringBase, RING);
    assert.equal(engine.engineState().enabled, true);
  });

  it('a COPY and a CHECKSUM_ONLY job: the data lands in guest RAM, the results in the ring, and vector 0 reaches the guest', async () => {
    const q = guest.qemu.qtest;
    const data = randomBytes(48 * 1024);
    await q.memwrite(SRC, data);
    await q.memset(DST, data.length, 0);
    await post(q, descriptor(SRC, DST, data.length, COPY), descriptor(SRC, 0n, 4096, CHECKSUM_ONLY));
    await waitMessage(q, MSG[0], DATA[0], WAIT_MS);
    assert.deepEqual(await result(q, 0), { checksum: fnv1a(data), status: DONE });
    assert.deepEqual(await result(q, 1), { checksum: fnv1a(data.subarray(0, 4096)), status: DONE });
    assert.deepEqual(Buffer.from(await q.memread(DST, data.length)), data, 'the copy is in guest RAM');
    assert.equal(await q.readl(bar0 + Reg.HEAD), 2);
    assert.equal(await q.readl(bar0 + Reg.COMPLETED), 2);
    assert.equal(await q.readl(bar0 + Reg.ERRORS), 0);
    assert.equal(await q.readl(MSG[1]), 0, 'no error vector');
  });

  it('a descriptor whose source is outside guest RAM completes with ERROR/EFAULT, and vector 1 reaches the guest', async () => {
    const q = guest.qemu.qtest;
    await post(q, descriptor(0x7f_0000_0000n, DST, 4096, COPY));
    await waitMessage(q, MSG[1], DATA[1], WAIT_MS);
    const r = await result(q, 2);
    assert.equal(r.status & 0xffff, ERROR);
    assert.equal(r.status >>> 16, EFAULT);
    assert.equal(await q.readl(bar0 + Reg.ERRORS), 1);
    assert.equal((await q.readl(bar0 + Reg.STATUS)) & 2, 2, 'STATUS.ERROR');
    await q.writel(bar0 + Reg.STATUS, 2);
    assert.equal(await q.readl(MSG[0]), 0, 'no completion vector for a failed batch');
  });

  it('many batches in a row wrap the ring, each signalled by its own message', async () => {
    const q = guest.qemu.qtest;
    for (let batch = 0; batch < 12; batch++) {
      const chunk = randomBytes(1024 + batch * 512);
      await q.memwrite(SRC, chunk);
      const slot = tail;
      await post(q, descriptor(SRC, DST + BigInt(batch * 8192), chunk.length, COPY));
      await waitMessage(q, MSG[0], DATA[0], WAIT_MS);
      assert.deepEqual(await result(q, slot), { checksum: fnv1a(chunk), status: DONE }, `batch ${batch}`);
      assert.deepEqual(Buffer.from(await q.memread(DST + BigInt(batch * 8192), chunk.length)), chunk);
    }
    assert.equal(await q.readl(bar0 + Reg.COMPLETED), 2 + 1 + 12);
  });

  it('masking vector 0 in the MSI-X table (QEMU-emulated) holds the message; unmasking delivers it', async () => {
    const q = guest.qemu.qtest;
    const table = await msixTable(fn);
    await q.writel(table.table + 12n, 1);
    await q.memwrite(SRC, Buffer.alloc(256, 7));
    await post(q, descriptor(SRC, DST, 256, COPY));
    await engine.idle();
    await waitFor(async () => (await q.readl(bar0 + Reg.HEAD)) === tail, 'the job to finish');
    assert.equal(await q.readl(MSG[0]), 0, 'masked: nothing delivered');
    await q.writel(table.table + 12n, 0);
    await waitMessage(q, MSG[0], DATA[0], WAIT_MS);
  });
});

async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = WAIT_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

describe('QEMU vfio-user-pci: guest RAM without an fd, so the DMA engine reaches it with DMA_READ/DMA_WRITE messages', { skip: qemu.skip }, () => {
  const tmp = tempDir('qemu-dma-msg');
  let served: InProcessServer;
  let guest: Guest;

  before(async () => {
    served = serveInProcess(tmp.dir, 'dma', createDmaEngineDevice().device);
    // memory-backend-ram: QEMU's DMA_MAP carries no fd, and QEMU serves DMA_READ/DMA_WRITE (hw/vfio-user/pci.c).
    guest = await startGuest(qemu.path as string, { devices: [{ socket: served.path, addr: '0x4' }], sharedMemory: false });
  });

  after(async () => {
    await guest?.qemu.close();
    await served?.close();
    tmp.remove();
  });

  it('a COPY over several DMA chunks lands in guest RAM byte for byte, with its checksum and DONE, and vector 0 arrives', async () => {
    const q = guest.qemu.qtest;
    const fn = await probe(guest, DMA_ENGINE_PCI_ID.vendorId, DMA_ENGINE_PCI_ID.deviceId);
    const bar = fn.bar(0).address;
    await q.writel(MSG[0], 0);
    await enableMsix(q, fn, await msixTable(fn), [{ address: MSG[0], data: DATA[0] }]);
    await q.writel(bar + Reg.RING_LO, Number(RING & 0xffff_ffffn));
    await q.writel(bar + Reg.RING_SIZE, RING_SIZE);
    await q.writel(bar + Reg.CONTROL, 1);
    const data = randomBytes(3 * (1 << 20) + 4096 + 7); // more than one max_data_xfer_size chunk, odd length
    for (let at = 0; at < data.length; at += 1 << 16) await q.memwrite(SRC + BigInt(at), data.subarray(at, at + (1 << 16)));
    const dst = GUEST_RAM_BASE + (8n << 20n); // clear of the source
    await q.memwrite(RING, descriptor(SRC, dst, data.length, COPY));
    await q.writel(bar + Reg.TAIL, 1);
    await waitFor(async () => (await q.readl(bar + Reg.HEAD)) === 1 || ((await q.readl(bar + Reg.STATUS)) & HALTED) !== 0, 'the descriptor to complete');
    assert.equal(await q.readl(bar + Reg.STATUS), 0, 'neither ERROR nor HALTED (HALTED: the descriptor itself could not be read through DMA_READ)');
    assert.deepEqual(await result(q, 0), { checksum: fnv1a(data), status: DONE });
    await waitMessage(q, MSG[0], DATA[0], WAIT_MS);
    const copied = Buffer.alloc(data.length);
    for (let at = 0; at < data.length; at += 1 << 16) copied.set(await q.memread(dst + BigInt(at), Math.min(1 << 16, data.length - at)), at);
    assert.ok(copied.equals(data), 'the copy is in guest RAM');
  });
});
