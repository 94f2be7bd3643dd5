/**
 * GuestMemory: local access, windows and dirty tracking; the per-client DMA
 * dispatcher (EFAULT/EACCES, spanning attachments) on a fake client; and the
 * DMA engine sample driven end to end over a real socket with guest memory in
 * fd mode, in message mode and in both at once, its completions observed
 * through Interrupts after enableMsix + unmaskMsixVector.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createDmaEngineDevice, DmaEngineControl, DmaEngineReg, DmaEngineVector, type DmaEngineDevice } from '../../src/devices/dma-engine.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, DescriptorStatus, decodeResult, encodeDescriptor, errorStatus, type Descriptor } from '../../src/devices/dma-descriptor.js';
import { fnv1a32 } from '../../src/devices/fnv1a.js';
import { VfioUserClient } from '../../src/client/client.js';
import type { ClientOptions, DmaResponder, TraceEvent } from '../../src/client/core.js';
import { GuestMemory, GUEST_PAGE_SIZE } from '../../src/client/guest-memory.js';
import { Interrupts } from '../../src/client/interrupts.js';
import { enableMsix, unmaskMsixVector } from '../../src/client/pci-config.js';
import { InvalidArgumentError, RemoteError, StateError } from '../../src/errors.js';
import { Command, DmaMapFlags, IrqIndex, RegionIndex } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { pattern, serve } from '../devices/driver.js';

const KiB = 1024;
const MiB = 1 << 20;
const GiB = 2 ** 30;
const IOVA = 0x1_0000_0000n;

describe('GuestMemory (local)', () => {
  it('reads back what it wrote and starts zeroed', () =>
    assertNoFdLeak(() => {
      const mem = GuestMemory.create(64 * KiB, { name: 'test-ram' });
      try {
        assert.equal(mem.size, 65536n);
        assert.deepEqual(mem.read(0n, 8), new Uint8Array(8));
        mem.write(0x1ffen, new Uint8Array([1, 2, 3, 4]));
        assert.deepEqual(mem.read(0x1ffen, 4), new Uint8Array([1, 2, 3, 4]));
        const view = mem.view(0x2000n, 2);
        assert.deepEqual(view, new Uint8Array([3, 4]));
      } finally {
        mem.dispose();
      }
    }));

  it('refuses bad sizes and out-of-range accesses', () =>
    assertNoFdLeak(() => {
      assert.throws(() => GuestMemory.create(0), InvalidArgumentError);
      assert.throws(() => GuestMemory.create(4097), InvalidArgumentError);
      assert.throws(() => GuestMemory.create(8192, { windowSize: 3000 }), InvalidArgumentError);
      const mem = GuestMemory.create(8192);
      try {
        assert.throws(() => mem.read(8190n, 4), (e: unknown) => e instanceof InvalidArgumentError && e.errno === Errno.EFAULT);
        assert.throws(() => mem.write(-1n, new Uint8Array(1)), InvalidArgumentError);
        assert.throws(() => mem.view(0n, 8193), InvalidArgumentError);
      } finally {
        mem.dispose();
      }
      assert.throws(() => mem.read(0n, 1), StateError);
      mem.dispose(); // idempotent
    }));

  it('crosses mapping windows in read/write; a view may not', () =>
    assertNoFdLeak(() => {
      const mem = GuestMemory.create(4 * GUEST_PAGE_SIZE, { windowSize: GUEST_PAGE_SIZE });
      try {
        const data = pattern(3 * GUEST_PAGE_SIZE, 7);
        mem.write(100n, data);
        assert.deepEqual(mem.read(100n, data.length), data);
        assert.deepEqual(mem.view(4096n, 4096), data.subarray(3996, 3996 + 4096));
        assert.throws(() => mem.view(4000n, 200), /crosses/);
      } finally {
        mem.dispose();
      }
    }));

  it('maps more than 4 GiB in 1 GiB windows', () =>
    assertNoFdLeak(() => {
      const mem = GuestMemory.create(5 * GiB);
      try {
        const at = BigInt(4 * GiB - 3);
        mem.write(at, new Uint8Array([9, 8, 7, 6, 5, 4]));
        assert.deepEqual(mem.read(at, 6), new Uint8Array([9, 8, 7, 6, 5, 4]));
        assert.deepEqual(mem.view(BigInt(4 * GiB), 3), new Uint8Array([6, 5, 4]));
        assert.throws(() => mem.view(at, 6), /crosses/);
        assert.deepEqual(mem.takeDirty(), [4 * GiB / GUEST_PAGE_SIZE - 1, 4 * GiB / GUEST_PAGE_SIZE]);
      } finally {
        mem.dispose();
      }
    }));

  it('tracks pages written through write(), marked views and markDirty, clear on read', () =>
    assertNoFdLeak(() => {
      const mem = GuestMemory.create(16 * GUEST_PAGE_SIZE);
      try {
        assert.deepEqual(mem.takeDirty(), []);
        mem.write(4095n, new Uint8Array(2)); // pages 0 and 1
        mem.view(BigInt(5 * GUEST_PAGE_SIZE), 10, { markDirty: true }).fill(1); // page 5
        mem.view(BigInt(7 * GUEST_PAGE_SIZE), 10).fill(1); // unmarked: not tracked
        mem.markDirty(BigInt(9 * GUEST_PAGE_SIZE), 2 * GUEST_PAGE_SIZE + 1); // 9, 10, 11
        mem.write(0n, new Uint8Array(0)); // nothing
        assert.deepEqual(mem.takeDirty(), [0, 1, 5, 9, 10, 11]);
        assert.deepEqual(mem.takeDirty(), []);
        mem.write(BigInt(15 * GUEST_PAGE_SIZE), new Uint8Array(1));
        assert.deepEqual(mem.takeDirtyBitmap(), new Uint8Array([0, 0x80]));
        assert.deepEqual(mem.takeDirtyBitmap(), new Uint8Array(2));
      } finally {
        mem.dispose();
      }
    }));
});

/** A client stand-in that records DMA_MAP/UNMAP and exposes the installed responder. */
function fakeClient(options: { unmapError?: Error } = {}) {
  const calls: string[] = [];
  let responder: DmaResponder | undefined;
  let close!: (reason: Error | undefined) => void;
  const closed = new Promise<Error | undefined>((resolve) => (close = resolve));
  const client = {
    closed,
    setDmaResponder: (r: DmaResponder | undefined) => void (responder = r),
    dmaMap: async (m: { addr: bigint; size: bigint; flags: number; offset?: bigint }, fd?: number) => {
      calls.push(`map 0x${m.addr.toString(16)}+0x${m.size.toString(16)} flags ${m.flags} offset ${m.offset ?? 0n} ${fd === undefined ? 'message' : 'fd'}`);
    },
    dmaUnmap: async (addr: bigint, size: bigint) => {
      calls.push(`unmap 0x${addr.toString(16)}+0x${size.toString(16)}`);
      if (options.unmapError) throw options.unmapError;
      return { argsz: 24, flags: 0, addr, size };
    },
  };
  return { client: client as unknown as VfioUserClient, calls, responder: () => responder, close: (r?: Error) => close(r) };
}

describe('GuestMemory DMA dispatcher (fake client)', () => {
  it('serves DMA by IOVA across attachments, EFAULT outside, EACCES on read-only', async () => {
    const a = GuestMemory.create(2 * GUEST_PAGE_SIZE);
    const b = GuestMemory.create(4 * GUEST_PAGE_SIZE);
    const fake = fakeClient();
    try {
      await a.attach(fake.client, { iova: 0x10000n, mode: 'message' });
      await b.attach(fake.client, { iova: 0x12000n, mode: 'message', offset: 0x1000n, size: 0x2000n, writable: false });
      assert.deepEqual(fake.calls, ['map 0x10000+0x2000 flags 3 offset 0 message', 'map 0x12000+0x2000 flags 1 offset 0 message']);
      const dma = fake.responder();
      assert.ok(dma);
      b.write(0x1000n, new Uint8Array([0xb0, 0xb1]));
      a.takeDirty();
      dma.write(0x11ffen, new Uint8Array([1, 2])); // last two bytes of a
      assert.deepEqual(a.read(0x1ffen, 2), new Uint8Array([1, 2]));
      assert.deepEqual(a.takeDirty(), [1]);
      assert.deepEqual(dma.read(0x11ffen, 4), new Uint8Array([1, 2, 0xb0, 0xb1])); // spans a and b
      const errno = (e: unknown): number | undefined => (e instanceof InvalidArgumentError ? e.errno : undefined);
      assert.throws(() => dma.read(0x13fffn, 2), (e) => errno(e) === Errno.EFAULT); // runs past b
      assert.throws(() => dma.read(0xf000n, 1), (e) => errno(e) === Errno.EFAULT);
      assert.throws(() => dma.write(0x11fffn, new Uint8Array(2)), (e) => errno(e) === Errno.EACCES); // touches read-only b
      assert.deepEqual(a.read(0x1fffn, 1), new Uint8Array([2]), 'a refused write changes nothing');
      await assert.rejects(a.attach(fake.client, { iova: 0x13000n }), (e) => errno(e) === Errno.EEXIST);
      await assert.rejects(a.attach(fake.client, { iova: 0x20001n }), InvalidArgumentError);
      await a.detach();
      assert.equal(a.attachments.length, 0);
      assert.throws(() => dma.read(0x10000n, 1), (e) => errno(e) === Errno.EFAULT);
      b.dispose(); // forgets its attachment: the responder goes away with the last one
      assert.equal(fake.responder(), undefined);
      assert.deepEqual(fake.calls.slice(2), ['unmap 0x10000+0x2000']);
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  it('forgets attachments when the connection closes; a refused DMA_UNMAP keeps them', async () => {
    const mem = GuestMemory.create(GUEST_PAGE_SIZE);
    const refusing = fakeClient({ unmapError: new RemoteError('no', 3, Errno.EBUSY) });
    const closing = fakeClient();
    try {
      const kept = await mem.attach(refusing.client, { iova: 0n });
      await assert.rejects(kept.detach(), RemoteError);
      assert.equal(kept.active, true);
      const gone = await mem.attach(closing.client, { iova: 0n, mode: 'message' });
      closing.close();
      await closing.client.closed;
      await Promise.resolve();
      assert.equal(gone.active, false);
      assert.deepEqual(mem.attachments, [kept]);
    } finally {
      mem.dispose();
    }
    assert.equal(refusing.responder(), undefined);
  });
});

// ------------------------------------------------------------- the DMA engine

interface Rig {
  engine: DmaEngineDevice;
  client: VfioUserClient;
  irq: Interrupts;
  track(mem: GuestMemory): GuestMemory;
}

/** Serves a DMA engine, connects, enables MSI-X with both vectors unmasked; cleans everything up. */
async function withEngine(fn: (rig: Rig) => Promise<void>, options: ClientOptions = {}): Promise<void> {
  await assertNoFdLeak(async () => {
    const engine = createDmaEngineDevice();
    const served = serve(engine.device);
    const memories: GuestMemory[] = [];
    let client: VfioUserClient | undefined;
    try {
      client = await VfioUserClient.connect(served.path, options);
      const irq = await Interrupts.enable(client, IrqIndex.MSIX);
      const msix = await enableMsix(client);
      await unmaskMsixVector(client, DmaEngineVector.COMPLETION, msix);
      await unmaskMsixVector(client, DmaEngineVector.ERROR, msix);
      await fn({ engine, client, irq, track: (m) => (memories.push(m), m) });
      await irq.disable();
    } finally {
      client?.close();
      await served.close();
      for (const m of memories) m.dispose();
    }
  });
}

function le32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}

async function w32(client: VfioUserClient, offset: number, value: number): Promise<void> {
  await client.regionWrite(RegionIndex.BAR0, BigInt(offset), le32(value));
}

async function r32(client: VfioUserClient, offset: number): Promise<number> {
  const b = await client.regionRead(RegionIndex.BAR0, BigInt(offset), 4);
  return new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);
}

/** Points the engine at a ring of `size` descriptors at `iova` and enables it. */
async function startRing(client: VfioUserClient, iova: bigint, size: number): Promise<void> {
  await w32(client, DmaEngineReg.RING_BASE_LO, Number(iova & 0xffff_ffffn));
  await w32(client, DmaEngineReg.RING_BASE_HI, Number(iova >> 32n));
  await w32(client, DmaEngineReg.RING_SIZE, size);
  await w32(client, DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
}

/**
 * Writes descriptors into ring slots `first`… of the ring at `ring` in `mem`,
 * rings the doorbell (TAIL = first + n) and waits for `vector`.
 */
async function runJobs(rig: Rig, mem: GuestMemory, ring: bigint, first: number, descriptors: Descriptor[], vector: number = DmaEngineVector.COMPLETION): Promise<void> {
  descriptors.forEach((d, i) => mem.write(ring + BigInt((first + i) * DESCRIPTOR_SIZE), encodeDescriptor(d)));
  const fired = rig.irq.waitFor(vector, 10_000);
  await w32(rig.client, DmaEngineReg.TAIL, first + descriptors.length);
  assert.ok((await fired) >= 1n);
  await rig.engine.idle();
}

function resultOf(mem: GuestMemory, ring: bigint, i: number): { checksum: number; status: number } {
  return decodeResult(mem.read(ring + BigInt(i * DESCRIPTOR_SIZE), DESCRIPTOR_SIZE));
}

/** Distinct values, ascending. */
function sorted(values: number[]): number[] {
  return [...new Set(values)].sort((x, y) => x - y);
}

/** Pages of `[gpa, gpa + length)`. */
function pagesOf(gpa: number, length: number): number[] {
  const out: number[] = [];
  for (let p = Math.floor(gpa / GUEST_PAGE_SIZE); p <= Math.floor((gpa + length - 1) / GUEST_PAGE_SIZE); p++) out.push(p);
  return out;
}

for (const mode of ['fd', 'message'] as const) {
  describe(`DMA engine over GuestMemory in ${mode} mode`, () => {
    it('copies and checksums jobs from a ring in guest memory, completion through MSI-X', () =>
      withEngine(async (rig) => {
        const mem = rig.track(GuestMemory.create(4 * MiB));
        await mem.attach(rig.client, { iova: IOVA, mode });
        await startRing(rig.client, IOVA, 8);
        const jobs = [
          { src: 0x10000, dst: 0x200000, length: 3 * MiB / 2 + 123 }, // more than one 1 MiB chunk
          { src: 0x1000, dst: 0x3ff000, length: 4096 },
          { src: 0x8000, dst: 0, length: 100, checksumOnly: true },
        ];
        const sources = jobs.map((j, i) => pattern(j.length, i + 1));
        jobs.forEach((j, i) => mem.write(BigInt(j.src), sources[i] as Uint8Array));
        mem.takeDirty();
        const descriptors = jobs.map((j) => ({
          src: IOVA + BigInt(j.src),
          dst: IOVA + BigInt(j.dst),
          length: j.length,
          flags: j.checksumOnly ? DescriptorFlags.CHECKSUM_ONLY : DescriptorFlags.COPY,
        }));
        await runJobs(rig, mem, 0n, 0, descriptors);
        assert.equal(await r32(rig.client, DmaEngineReg.HEAD), 3);
        assert.equal(await r32(rig.client, DmaEngineReg.COMPLETED), 3);
        jobs.forEach((j, i) => {
          const source = sources[i] as Uint8Array;
          assert.deepEqual(resultOf(mem, 0n, i), { checksum: fnv1a32(source), status: DescriptorStatus.DONE }, `job ${i}`);
          if (!j.checksumOnly) assert.ok(Buffer.from(mem.read(BigInt(j.dst), j.length)).equals(source), `job ${i} copied`);
        });
        assert.equal(rig.irq.total(DmaEngineVector.ERROR), 0n);
        const serverWrites = [...pagesOf(0x200000, (jobs[0] as { length: number }).length), ...pagesOf(0x3ff000, 4096), 0]; // copies + write-backs
        const dirty = mem.takeDirty();
        if (mode === 'message') assert.deepEqual(dirty, sorted([...serverWrites, 0]), 'message mode: DMA_WRITEs and our descriptors');
        else assert.deepEqual(dirty, [0], 'fd mode: only our descriptors; the server wrote the memfd directly');
        // A second batch in slot 3.
        mem.write(0x9000n, pattern(5000, 9));
        await runJobs(rig, mem, 0n, 3, [{ src: IOVA + 0x9000n, dst: IOVA + 0x100800n, length: 5000, flags: DescriptorFlags.COPY }]);
        assert.deepEqual(mem.read(0x100800n, 5000), pattern(5000, 9));
        assert.equal(resultOf(mem, 0n, 3).status, DescriptorStatus.DONE);
        const own = [...pagesOf(0x9000, 5000), 0];
        const expected = mode === 'message' ? [...own, ...pagesOf(0x100800, 5000)] : own;
        assert.deepEqual(mem.takeDirty(), sorted(expected));
      }));
  });
}

describe('DMA engine over several GuestMemory regions', () => {
  it('dispatches by IOVA: ring in message-mode memory, data in fd-mode memory', () =>
    withEngine(async (rig) => {
      const ringMem = rig.track(GuestMemory.create(64 * KiB, { name: 'ring' }));
      const data = rig.track(GuestMemory.create(1 * MiB, { name: 'data' }));
      const dataIova = IOVA + 0x1000_0000n;
      await ringMem.attach(rig.client, { iova: IOVA, mode: 'message' });
      await data.attach(rig.client, { iova: dataIova, mode: 'fd' });
      await startRing(rig.client, IOVA, 4);
      const a = pattern(20_000, 11);
      data.write(0n, a);
      ringMem.write(0x8000n, pattern(300, 12));
      await runJobs(rig, ringMem, 0n, 0, [
        { src: dataIova, dst: IOVA + 0x2000n, length: a.length, flags: DescriptorFlags.COPY }, // fd → message
        { src: IOVA + 0x8000n, dst: dataIova + 0x80000n, length: 300, flags: DescriptorFlags.COPY }, // message → fd
      ]);
      assert.deepEqual(ringMem.read(0x2000n, a.length), a);
      assert.deepEqual(data.read(0x80000n, 300), pattern(300, 12));
      assert.equal(resultOf(ringMem, 0n, 0).status, DescriptorStatus.DONE);
      assert.equal(resultOf(ringMem, 0n, 1).status, DescriptorStatus.DONE);
      await data.detach();
      await assert.rejects(rig.client.dmaUnmap(dataIova, 1n * BigInt(MiB)), (e: unknown) => e instanceof RemoteError && e.errno === Errno.ENOENT);
    }));

  it('answers a DMA_READ outside attached memory with EFAULT (descriptor completes with ERROR)', () => {
    const replies: TraceEvent[] = [];
    const trace = (e: TraceEvent): void => void (e.direction === 'send' && e.header.cmd === Command.DMA_READ && replies.push(e));
    return withEngine(async (rig) => {
      const mem = rig.track(GuestMemory.create(64 * KiB));
      await mem.attach(rig.client, { iova: IOVA, mode: 'message' });
      // The server believes [HOLE, +64 KiB) is message-mode guest memory; no GuestMemory backs it.
      const hole = IOVA + 0x100_0000n;
      await rig.client.dmaMap({ addr: hole, size: 0x10000n, flags: DmaMapFlags.READ | DmaMapFlags.WRITE });
      await startRing(rig.client, IOVA, 4);
      await runJobs(rig, mem, 0n, 0, [{ src: hole + 0x100n, dst: IOVA + 0x4000n, length: 64, flags: DescriptorFlags.COPY }], DmaEngineVector.ERROR);
      assert.deepEqual(resultOf(mem, 0n, 0), { checksum: 0, status: errorStatus(Errno.EFAULT) });
      assert.ok(replies.some((r) => r.header.errorNo === Errno.EFAULT), 'our dispatcher answered a DMA_READ with EFAULT');
      assert.equal(await r32(rig.client, DmaEngineReg.ERRORS), 1);
      await rig.client.dmaUnmap(hole, 0x10000n);
      // A descriptor the server itself cannot resolve (nothing mapped there) fails the same way.
      await runJobs(rig, mem, 0n, 1, [{ src: 0x10n, dst: IOVA, length: 8, flags: DescriptorFlags.COPY }], DmaEngineVector.ERROR);
      assert.equal(resultOf(mem, 0n, 1).status, errorStatus(Errno.EFAULT));
    }, { trace });
  });

  it('registers nothing when the server refuses DMA_MAP', () =>
    withEngine(async (rig) => {
      await rig.client.dmaMap({ addr: IOVA, size: 0x10000n, flags: DmaMapFlags.READ });
      const mem = rig.track(GuestMemory.create(64 * KiB));
      await assert.rejects(mem.attach(rig.client, { iova: IOVA - 0x1000n, size: 0x2000n }), RemoteError); // overlaps on the server only
      assert.equal(mem.attachments.length, 0);
      const ok = await mem.attach(rig.client, { iova: IOVA + 0x10000n, mode: 'message', writable: false });
      assert.deepEqual([ok.active, ok.mode, ok.writable, ok.size], [true, 'message', false, 0x10000n]);
      await mem.detach(rig.client);
      assert.equal(ok.active, false);
      await rig.client.dmaUnmap(IOVA, 0x10000n);
    }));

  it('forgets its attachments when the client closes', () =>
    withEngine(async (rig) => {
      const mem = rig.track(GuestMemory.create(64 * KiB));
      const attachment = await mem.attach(rig.client, { iova: IOVA, mode: 'message' });
      rig.client.close();
      await rig.client.closed;
      await Promise.resolve();
      assert.equal(attachment.active, false);
      assert.equal(mem.attachments.length, 0);
      await attachment.detach(); // nothing to do
    }));
});
