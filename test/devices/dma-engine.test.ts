/**
 * The DMA engine sample through a real socket: a descriptor ring in memfd
 * guest memory, copies and checksums (chunked, wrapping), MSI-X completion and
 * error vectors, ring faults, dirty-page logging, message-mode guest memory,
 * and a client that disconnects in the middle of a job.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createDmaEngineDevice, DMA_ENGINE_ID, DmaEngineControl, DmaEngineReg, DmaEngineStatus, type DmaEngineDevice } from '../../src/devices/dma-engine.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, DescriptorStatus, decodeResult, encodeDescriptor, errorStatus, type Descriptor } from '../../src/devices/dma-descriptor.js';
import { fnv1a32 } from '../../src/devices/fnv1a.js';
import { Command, DmaMapFlags, HeaderFlags } from '../../src/protocol/constants.js';
import { decodeDmaReadRequest, decodeDmaWriteRequest, encodeDmaAccess, encodeDmaAccessWithData, encodeDmaMapRequest } from '../../src/protocol/dma.js';
import { encodeRegionAccessWithData } from '../../src/protocol/region-access.js';
import { Errno } from '../../src/protocol/errno.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { StepClient } from '../support/step-client.js';
import {
  closeAll,
  enableMsix,
  eventCount,
  findCapability,
  findExtendedCapability,
  installEventFds,
  IrqIndex,
  mapGuestMemory,
  pattern,
  read32,
  readLe,
  RegionIndex,
  serve,
  waitEventFd,
  write32,
  type GuestMemory,
  type Served,
} from './driver.js';

const BAR0 = RegionIndex.BAR0;
const BAR4 = RegionIndex.BAR4;
const CONFIG = RegionIndex.CONFIG;
const GUEST_IOVA = 0x1_0000_0000n;
const MiB = 1 << 20;

/** A connected, MSI-X-enabled client with guest RAM and a ring at the start of it. */
interface Bench {
  engine: DmaEngineDevice;
  served: Served;
  client: StepClient;
  guest: GuestMemory;
  /** MSI-X eventfds: [completion, error]. */
  irq: number[];
}

async function connect(engine: DmaEngineDevice, served: Served, guestSize: number, ringSize: number): Promise<Omit<Bench, 'engine' | 'served'>> {
  const { client } = await StepClient.open(served.path);
  const guest = await mapGuestMemory(client, GUEST_IOVA, guestSize);
  const irq = await installEventFds(client, IrqIndex.MSIX, 2);
  await enableMsix(client, 2, BAR4);
  await write32(client, BAR0, DmaEngineReg.RING_BASE_LO, Number(GUEST_IOVA & 0xffff_ffffn));
  await write32(client, BAR0, DmaEngineReg.RING_BASE_HI, Number(GUEST_IOVA >> 32n));
  await write32(client, BAR0, DmaEngineReg.RING_SIZE, ringSize);
  await write32(client, BAR0, DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
  return { client, guest, irq };
}

function disconnect(b: Omit<Bench, 'engine' | 'served'>): void {
  closeAll(b.irq);
  b.client.close();
  b.guest.release();
}

async function withBench(fn: (b: Bench) => Promise<void>, guestSize = 4 * MiB, ringSize = 8): Promise<void> {
  await assertNoFdLeak(async () => {
    const engine = createDmaEngineDevice();
    const served = serve(engine.device);
    const conn = await connect(engine, served, guestSize, ringSize);
    try {
      await fn({ engine, served, ...conn });
    } finally {
      disconnect(conn);
      await served.close();
    }
  });
}

const iova = (offset: number): bigint => GUEST_IOVA + BigInt(offset);

/** Writes descriptor `index` of the ring (at guest offset 0). */
function post(guest: GuestMemory, index: number, d: Descriptor): void {
  guest.bytes.set(encodeDescriptor(d), index * DESCRIPTOR_SIZE);
}

function result(guest: GuestMemory, index: number): { checksum: number; status: number } {
  return decodeResult(guest.bytes.subarray(index * DESCRIPTOR_SIZE, (index + 1) * DESCRIPTOR_SIZE));
}

const COPY = DescriptorFlags.COPY;
const CHECKSUM_ONLY = DescriptorFlags.CHECKSUM_ONLY;

describe('DMA engine sample device', () => {
  it('looks like a modern device: PCIe endpoint, DSN, MSI-X with 2 vectors in BAR4, ID register', async () => {
    await withBench(async ({ client }) => {
      const express = await findCapability(client, 0x10);
      assert.ok(express !== undefined, 'PCI Express capability');
      assert.equal(((await readLe(client, CONFIG, express + 2, 2)) >> 4) & 0xf, 0, 'device/port type: endpoint');
      const dsn = await findExtendedCapability(client, 0x0003);
      assert.ok(dsn !== undefined, 'Device Serial Number capability');
      const serial = (BigInt(await read32(client, CONFIG, dsn + 8)) << 32n) | BigInt(await read32(client, CONFIG, dsn + 4));
      assert.equal(serial, 0x5a02_0000_0000_0001n);
      const msix = await findCapability(client, 0x11);
      assert.ok(msix !== undefined);
      assert.equal((await readLe(client, CONFIG, msix + 2, 2)) & 0x7ff, 1, 'table size N-1');
      assert.equal(await read32(client, CONFIG, msix + 4), 4, 'table in BAR4 at 0');
      assert.equal(await read32(client, CONFIG, msix + 8), 0x800 | 4, 'PBA in BAR4 at 0x800');
      assert.equal(await read32(client, BAR0, DmaEngineReg.ID), DMA_ENGINE_ID);
    });
  });

  it('copies and checksums a ring of descriptors (chunked, wrapping) and raises the completion vector', async () => {
    await withBench(async ({ engine, client, guest, irq }) => {
      const a = pattern(100, 1);
      const b = pattern(MiB + MiB / 2 + 3, 2); // more than one 1 MiB chunk
      const c = pattern(4096, 3);
      guest.bytes.set(a, 0x1000);
      guest.bytes.set(b, 0x100000);
      guest.bytes.set(c, 0x2000);
      post(guest, 0, { src: iova(0x1000), dst: iova(0x3001), length: a.length, flags: COPY });
      post(guest, 1, { src: iova(0x100000), dst: iova(0x400000), length: b.length, flags: COPY });
      post(guest, 2, { src: iova(0x2000), dst: iova(0x5000), length: c.length, flags: CHECKSUM_ONLY });
      post(guest, 3, { src: iova(0x1000), dst: iova(0x6000), length: 0, flags: COPY });
      await write32(client, BAR0, DmaEngineReg.TAIL, 4);
      assert.equal(await waitEventFd(irq[0]!), 1n, 'completion interrupt');
      await engine.idle();
      assert.deepEqual(guest.bytes.subarray(0x3001, 0x3001 + a.length), a);
      assert.deepEqual(guest.bytes.subarray(0x400000, 0x400000 + b.length), b);
      assert.ok(guest.bytes.subarray(0x5000, 0x6000).every((x) => x === 0), 'CHECKSUM_ONLY writes no destination');
      assert.deepEqual([0, 1, 2, 3].map((i) => result(guest, i)), [
        { checksum: fnv1a32(a), status: DescriptorStatus.DONE },
        { checksum: fnv1a32(b), status: DescriptorStatus.DONE },
        { checksum: fnv1a32(c), status: DescriptorStatus.DONE },
        { checksum: fnv1a32(new Uint8Array(0)), status: DescriptorStatus.DONE },
      ]);
      assert.equal(await read32(client, BAR0, DmaEngineReg.HEAD), 4);
      assert.equal(await read32(client, BAR0, DmaEngineReg.COMPLETED), 4);
      assert.equal(await read32(client, BAR0, DmaEngineReg.STATUS), 0);
      assert.equal(eventCount(irq[1]!), 0n, 'no error interrupt');

      // A second batch of 6 wraps around the 8-entry ring: indexes 4..7, 0, 1.
      const sources = [4, 5, 6, 7, 0, 1].map((slot, i) => {
        const bytes = pattern(512, 10 + i);
        guest.bytes.set(bytes, 0x8000 + i * 0x400);
        post(guest, slot, { src: iova(0x8000 + i * 0x400), dst: iova(0x10000 + i * 0x400), length: 512, flags: COPY });
        return bytes;
      });
      await write32(client, BAR0, DmaEngineReg.TAIL, 2);
      assert.equal(await waitEventFd(irq[0]!), 1n);
      await engine.idle();
      sources.forEach((bytes, i) => assert.deepEqual(guest.bytes.subarray(0x10000 + i * 0x400, 0x10000 + i * 0x400 + 512), bytes));
      assert.deepEqual(engine.engineState(), {
        enabled: true, ringBase: GUEST_IOVA, ringSize: 8, head: 2, tail: 2, status: 0, completed: 10, errors: 0, busy: false,
      });
    }, 8 * MiB);
  });

  it('completes an unmapped-IOVA or bad-flags descriptor with an error status and raises the error vector', async () => {
    await withBench(async ({ engine, client, guest, irq }) => {
      post(guest, 0, { src: 0xdead_0000_0000n, dst: iova(0x3000), length: 64, flags: COPY });
      await write32(client, BAR0, DmaEngineReg.TAIL, 1);
      assert.equal(await waitEventFd(irq[1]!), 1n, 'error interrupt');
      await engine.idle();
      assert.equal(eventCount(irq[0]!), 0n, 'no completion interrupt for a batch with no success');
      assert.equal(result(guest, 0).status, errorStatus(Errno.EFAULT));
      assert.equal(result(guest, 0).status, DescriptorStatus.ERROR | (Errno.EFAULT << 16));
      assert.equal(await read32(client, BAR0, DmaEngineReg.ERRORS), 1);
      assert.equal(await read32(client, BAR0, DmaEngineReg.STATUS), DmaEngineStatus.ERROR);
      await write32(client, BAR0, DmaEngineReg.STATUS, DmaEngineStatus.ERROR);
      assert.equal(await read32(client, BAR0, DmaEngineReg.STATUS), 0, 'ERROR is write-1-to-clear');

      // A mixed batch: bad flags, a destination past the end of guest RAM, then a good copy.
      guest.bytes.set(pattern(64, 5), 0x1000);
      post(guest, 1, { src: iova(0x1000), dst: iova(0x3000), length: 64, flags: COPY | CHECKSUM_ONLY });
      post(guest, 2, { src: iova(0x1000), dst: iova(4 * MiB - 32), length: 64, flags: COPY });
      post(guest, 3, { src: iova(0x1000), dst: iova(0x3000), length: 64, flags: COPY });
      await write32(client, BAR0, DmaEngineReg.TAIL, 4);
      assert.equal(await waitEventFd(irq[0]!), 1n);
      assert.equal(await waitEventFd(irq[1]!), 1n);
      assert.deepEqual([1, 2, 3].map((i) => result(guest, i).status), [errorStatus(Errno.EINVAL), errorStatus(Errno.EFAULT), DescriptorStatus.DONE]);
      assert.equal(engine.engineState().errors, 3);
      assert.equal(engine.engineState().completed, 4);
    });
  });

  it('halts on a ring it cannot read or a TAIL past the ring, and resumes once fixed and HALTED is cleared', async () => {
    await withBench(async ({ engine, client, guest, irq }) => {
      await write32(client, BAR0, DmaEngineReg.TAIL, 8);
      assert.equal(await waitEventFd(irq[1]!), 1n);
      assert.equal(await read32(client, BAR0, DmaEngineReg.STATUS), DmaEngineStatus.HALTED);
      assert.equal(engine.engineState().tail, 0, 'the bad TAIL was not taken');
      await write32(client, BAR0, DmaEngineReg.STATUS, DmaEngineStatus.HALTED);

      await write32(client, BAR0, DmaEngineReg.CONTROL, 0);
      await write32(client, BAR0, DmaEngineReg.RING_BASE_HI, 0x7777); // nothing mapped there
      await write32(client, BAR0, DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
      await write32(client, BAR0, DmaEngineReg.RING_BASE_HI, 1); // refused while enabled
      assert.equal(engine.engineState().ringBase >> 32n, 0x7777n);
      post(guest, 0, { src: iova(0x1000), dst: iova(0x2000), length: 16, flags: COPY });
      await write32(client, BAR0, DmaEngineReg.TAIL, 1);
      assert.equal(await waitEventFd(irq[1]!), 1n, 'ring fault interrupt');
      await engine.idle();
      assert.equal(await read32(client, BAR0, DmaEngineReg.STATUS), DmaEngineStatus.HALTED);
      assert.equal(await read32(client, BAR0, DmaEngineReg.HEAD), 0, 'HEAD stays on the descriptor');

      await write32(client, BAR0, DmaEngineReg.CONTROL, 0);
      await write32(client, BAR0, DmaEngineReg.RING_BASE_HI, 1);
      await write32(client, BAR0, DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
      assert.equal(result(guest, 0).status, DescriptorStatus.PENDING);
      await write32(client, BAR0, DmaEngineReg.STATUS, DmaEngineStatus.HALTED); // resumes
      assert.equal(await waitEventFd(irq[0]!), 1n);
      assert.equal(result(guest, 0).status, DescriptorStatus.DONE);

      await write32(client, BAR0, DmaEngineReg.CONTROL, DmaEngineControl.RESET);
      assert.deepEqual(engine.engineState(), {
        enabled: false, ringBase: 0n, ringSize: 0, head: 0, tail: 0, status: 0, completed: 0, errors: 0, busy: false,
      });
    });
  });

  it('marks the pages it writes dirty while the client logs', async () => {
    await withBench(async ({ engine, client, guest, irq }) => {
      const dma = engine.device.dma;
      dma.startLogging(4096n);
      guest.bytes.set(pattern(0x2000, 9), 0x10000);
      post(guest, 0, { src: iova(0x10000), dst: iova(0x20800), length: 0x2000, flags: COPY });
      await write32(client, BAR0, DmaEngineReg.TAIL, 1);
      assert.equal(await waitEventFd(irq[0]!), 1n);
      const bitmap = dma.report(GUEST_IOVA, BigInt(guest.bytes.length), 4096n);
      const dirty = [...Array(bitmap.length * 8).keys()].filter((page) => ((bitmap[page >> 3] ?? 0) >> (page & 7)) & 1);
      assert.deepEqual(dirty, [0, 0x20, 0x21, 0x22], 'the ring page (write-back) and the three destination pages');
    });
  });

  it('works on message-mode guest memory (DMA_READ/DMA_WRITE to the client)', async () => {
    await withBench(async ({ engine, client, irq }) => {
      const remote = new Uint8Array(0x4000);
      const base = 0x2_0000_0000n;
      client.onServerCommand = (m) => {
        if (m.header.cmd === Command.DMA_READ) {
          const { addr, count } = decodeDmaReadRequest(m.payload);
          const at = Number(addr - base);
          return encodeDmaAccessWithData({ addr, count, data: remote.slice(at, at + Number(count)) });
        }
        const { addr, count, data } = decodeDmaWriteRequest(m.payload);
        remote.set(data, Number(addr - base));
        return encodeDmaAccess({ addr, count });
      };
      const flags = DmaMapFlags.READ | DmaMapFlags.WRITE;
      await client.ok(Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags, offset: 0n, addr: base, size: 0x4000n }));
      await write32(client, BAR0, DmaEngineReg.CONTROL, 0);
      await write32(client, BAR0, DmaEngineReg.RING_BASE_LO, 0);
      await write32(client, BAR0, DmaEngineReg.RING_BASE_HI, 2);
      await write32(client, BAR0, DmaEngineReg.RING_SIZE, 4);
      await write32(client, BAR0, DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
      const src = pattern(3000, 4);
      remote.set(src, 0x1000);
      remote.set(encodeDescriptor({ src: base + 0x1000n, dst: base + 0x2000n, length: src.length, flags: COPY }), 0);
      await write32(client, BAR0, DmaEngineReg.TAIL, 1);
      assert.equal(await waitEventFd(irq[0]!), 1n);
      await engine.idle();
      assert.deepEqual(remote.subarray(0x2000, 0x2000 + src.length), src);
      assert.deepEqual(decodeResult(remote.subarray(0, 32)), { checksum: fnv1a32(src), status: DescriptorStatus.DONE });
      assert.ok(client.serverCommands.every((m) => (m.header.flags & HeaderFlags.TYPE_MASK) === HeaderFlags.TYPE_COMMAND));
    });
  });

  it('stops quietly when the client disconnects mid-job, resets, and serves the next client', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      await assertNoFdLeak(async () => {
        const engine = createDmaEngineDevice();
        const served = serve(engine.device);
        try {
          const first = await connect(engine, served, 64 * MiB, 64);
          for (let i = 0; i < 24; i++) post(first.guest, i, { src: iova(MiB + i * MiB), dst: iova(32 * MiB + i * MiB), length: MiB, flags: COPY });
          await write32(first.client, BAR0, DmaEngineReg.TAIL, 24);
          const during = engine.engineState();
          assert.ok(during.busy && during.head < 24, `the job is running (head ${during.head})`);
          disconnect(first);
          await served.server.idle();
          assert.deepEqual(engine.engineState(), {
            enabled: false, ringBase: 0n, ringSize: 0, head: 0, tail: 0, status: 0, completed: 0, errors: 0, busy: false,
          });

          const second = await connect(engine, served, MiB, 4);
          try {
            const bytes = pattern(777, 8);
            second.guest.bytes.set(bytes, 0x1000);
            post(second.guest, 0, { src: iova(0x1000), dst: iova(0x2000), length: bytes.length, flags: COPY });
            await write32(second.client, BAR0, DmaEngineReg.TAIL, 1);
            assert.equal(await waitEventFd(second.irq[0]!), 1n);
            assert.deepEqual(second.guest.bytes.subarray(0x2000, 0x2000 + bytes.length), bytes);
            assert.equal(result(second.guest, 0).status, DescriptorStatus.DONE);
          } finally {
            disconnect(second);
          }
        } finally {
          await served.close();
        }
      });
      await new Promise((resolve) => setImmediate(resolve));
      assert.deepEqual(unhandled, []);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('DEVICE_RESET in the middle of a job stops it and clears the engine', async () => {
    await withBench(async ({ engine, client, guest }) => {
      for (let i = 0; i < 16; i++) post(guest, i, { src: iova(MiB), dst: iova(2 * MiB), length: MiB, flags: COPY });
      await write32(client, BAR0, DmaEngineReg.TAIL, 16);
      assert.ok(engine.engineState().busy);
      await client.ok(Command.DEVICE_RESET);
      assert.equal(engine.engineState().busy, false, 'the reset waited for the job to stop');
      assert.equal(result(guest, 15).status, DescriptorStatus.PENDING, 'the last descriptor was never processed');
      assert.equal(engine.engineState().enabled, false);
    }, 4 * MiB, 32);
  });

  it('CONTROL.RESET mid-job: ring registers can be programmed at once, pipelined, while the old job winds down', async () => {
    await withBench(async ({ engine, client, guest, irq }) => {
      for (let i = 0; i < 16; i++) post(guest, i, { src: iova(MiB), dst: iova(2 * MiB), length: MiB, flags: COPY });
      await write32(client, BAR0, DmaEngineReg.TAIL, 16);
      assert.ok(engine.engineState().busy);
      const writes: [number, number][] = [
        [DmaEngineReg.CONTROL, DmaEngineControl.RESET],
        [DmaEngineReg.RING_BASE_LO, 0x10_0000],
        [DmaEngineReg.RING_BASE_HI, 1],
        [DmaEngineReg.RING_SIZE, 4],
        [DmaEngineReg.CONTROL, DmaEngineControl.ENABLE],
      ];
      const ids = writes.map(([offset, value]) => {
        const data = new Uint8Array(4);
        new DataView(data.buffer).setUint32(0, value, true);
        return client.post(Command.REGION_WRITE, encodeRegionAccessWithData({ offset: BigInt(offset), region: BAR0, count: 4, data }));
      });
      for (const id of ids) assert.equal((await client.replyTo(id)).errorNo, 0);
      const state = engine.engineState();
      assert.deepEqual([state.ringBase, state.ringSize, state.head, state.tail, state.enabled], [iova(MiB), 4, 0, 0, true]);
      await engine.idle();
      assert.equal(result(guest, 15).status, DescriptorStatus.PENDING, 'the old job stopped');
      guest.bytes.set(encodeDescriptor({ src: iova(0x1000), dst: iova(0x2000), length: 8, flags: COPY }), MiB); // slot 0 of the new ring
      await write32(client, BAR0, DmaEngineReg.TAIL, 1);
      assert.equal(await waitEventFd(irq[0]!), 1n);
      assert.equal(decodeResult(guest.bytes.subarray(MiB, MiB + 32)).status, DescriptorStatus.DONE);
    }, 4 * MiB, 32);
  });
});
