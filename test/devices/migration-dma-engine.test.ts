/**
 * Migration of the DMA engine while it works: a long batch of copies runs on
 * the source, STOP_COPY lands mid-batch (the descriptor in progress completes,
 * no new one starts), the device state moves to a destination and guest
 * memory is copied by hand to the destination's guest RAM at the same IOVA;
 * the destination finishes the batch. Every descriptor completes exactly once
 * (COMPLETED, dirty logging on the destination, the source's untouched
 * buffers), with the right checksums and bytes, and the completion interrupt
 * fires once, on the destination. Also: RUNNING_P2P, stopped register writes,
 * owed interrupts, and `load` validation.
 */
import { drain, feedVarying } from '../support/migration-io.js';
import { read32 as readReg32, write32 as writeReg32 } from '../support/regs.js';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { Interrupts } from '../../src/client/interrupts.js';
import { enableMsix, setCommand, unmaskMsixVector } from '../../src/client/pci-config.js';
import {
  createDmaEngineDevice,
  DMA_ENGINE_DEVICE_TYPE,
  DMA_ENGINE_PCI_ID,
  DMA_ENGINE_STATE_SIZE,
  DMA_ENGINE_STATE_VERSION,
  DmaEngineControl,
  DmaEngineReg,
  DmaEngineStatus,
  type DmaEngineDevice,
} from '../../src/devices/dma-engine.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, DescriptorStatus, decodeResult, encodeDescriptor } from '../../src/devices/dma-descriptor.js';
import { fnv1a32 } from '../../src/devices/fnv1a.js';
import { ProtocolError, RemoteError } from '../../src/errors.js';
import type { MigrationDefinition } from '../../src/migration/types.js';
import { encodeStream } from '../../src/migration/stream.js';
import { IrqIndex, MigrationFlags, MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import { PciCommand } from '../../src/pci/registers.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { pattern, serve, type Served } from './driver.js';

/** MIG_DATA_WRITE of `stream` in pieces of varying odd sizes. */
const feed = (client: VfioUserClient, stream: Uint8Array): Promise<void> => feedVarying(client, stream, (size) => (size * 5 + 2) % 997);

const read32 = (client: VfioUserClient, offset: number): Promise<number> => readReg32(client, BAR0, offset);
const write32 = (client: VfioUserClient, offset: number, value: number): Promise<void> => writeReg32(client, BAR0, offset, value);

const BAR0 = RegionIndex.BAR0;
const CONFIG = RegionIndex.CONFIG;
const IOVA = 0x1_0000_0000n;
const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4096;
const COPY = DescriptorFlags.COPY;

/** A served engine with a client, guest RAM attached at {@link IOVA} and MSI-X eventfds. */
interface Side {
  engine: DmaEngineDevice;
  served: Served;
  client: VfioUserClient;
  guest: GuestMemory;
  irq: Interrupts;
}

async function open(guestSize: number): Promise<Side> {
  const engine = createDmaEngineDevice();
  const served = serve(engine.device);
  const client = await VfioUserClient.connect(served.path);
  const guest = GuestMemory.create(guestSize);
  await guest.attach(client, { iova: IOVA });
  const irq = await Interrupts.enable(client, IrqIndex.MSIX);
  return { engine, served, client, guest, irq };
}

async function withSides(count: number, guestSize: number, fn: (sides: Side[]) => Promise<void>): Promise<void> {
  await assertNoFdLeak(async () => {
    const sides: Side[] = [];
    try {
      for (let i = 0; i < count; i++) sides.push(await open(guestSize));
      await fn(sides);
    } finally {
      for (const s of sides) {
        s.client.close();
        await s.served.close();
        s.guest.dispose();
      }
    }
  });
}

/** What a driver does: bus master, MSI-X on with both vectors unmasked, the ring programmed and enabled. */
async function program(side: Side, ringSize: number): Promise<void> {
  await setCommand(side.client, PciCommand.MEMORY | PciCommand.MASTER);
  const msix = await enableMsix(side.client);
  for (const v of [0, 1]) await unmaskMsixVector(side.client, v, msix);
  await write32(side.client, DmaEngineReg.RING_BASE_LO, Number(IOVA & 0xffff_ffffn));
  await write32(side.client, DmaEngineReg.RING_BASE_HI, Number(IOVA >> 32n));
  await write32(side.client, DmaEngineReg.RING_SIZE, ringSize);
  await write32(side.client, DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
}

function hooks(engine: DmaEngineDevice): MigrationDefinition {
  const m = engine.device.definition.migration;
  assert.ok(m, 'the engine is migratable');
  return m;
}

const result = (guest: GuestMemory, index: number): { checksum: number; status: number } =>
  decodeResult(guest.read(BigInt(index * DESCRIPTOR_SIZE), DESCRIPTOR_SIZE));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const isEinval = (e: unknown): boolean => e instanceof RemoteError && e.errno === 22;

/** Pages set in a dirty bitmap (page p = bit p % 8 of byte p >> 3). */
function dirtyPages(bitmap: Uint8Array): number[] {
  const pages: number[] = [];
  bitmap.forEach((byte, i) => {
    for (let bit = 0; bit < 8; bit++) if ((byte >> bit) & 1) pages.push(i * 8 + bit);
  });
  return pages;
}

describe('DMA engine migration', () => {
  it('migrated while a batch runs: every descriptor completes exactly once, the destination finishes the batch', async (t) => {
    const JOBS = 24;
    const LEN = MiB + 256 * KiB; // two 1 MiB-chunk steps per descriptor, with a yield between them
    const SRC = 1 * MiB; // job i reads [SRC + i·LEN, +LEN) …
    const DST = 32 * MiB; // … and writes [DST + i·LEN, +LEN)
    const GUEST = 64 * MiB;
    await withSides(2, GUEST, async ([src, dst]) => {
      assert.ok(src && dst);
      assert.equal(await src.client.migrationFlags(), MigrationFlags.STOP_COPY | MigrationFlags.P2P);
      await program(src, 64);
      const data = Array.from({ length: JOBS }, (_, i) => pattern(LEN, 100 + i));
      data.forEach((bytes, i) => {
        src.guest.write(BigInt(SRC + i * LEN), bytes);
        src.guest.write(BigInt(i * DESCRIPTOR_SIZE), encodeDescriptor({ src: IOVA + BigInt(SRC + i * LEN), dst: IOVA + BigInt(DST + i * LEN), length: LEN, flags: COPY }));
      });
      assert.equal(await dst.client.startDirtyLogging(BigInt(PAGE)), BigInt(PAGE), 'the destination logs the pages its device writes');

      await write32(src.client, DmaEngineReg.TAIL, JOBS);
      // Wait until descriptor 3 is half done (its first chunk copied), so that the arc meets a descriptor in progress.
      const firstChunkOf3 = src.guest.view(BigInt(DST + 3 * LEN), 64);
      while (src.engine.engineState().completed < 3 || firstChunkOf3.every((b) => b === 0)) await new Promise((resolve) => setImmediate(resolve));
      assert.equal(result(src.guest, 3).status, DescriptorStatus.PENDING, 'descriptor 3 is in progress');
      await src.client.setMigrationState(S.STOP_COPY); // RUNNING → RUNNING_P2P (quiesce) → STOP → STOP_COPY
      const stopped = src.engine.engineState();
      assert.ok(stopped.completed >= 3 && stopped.completed < JOBS, `stopped mid-batch (${stopped.completed} of ${JOBS} done)`);
      assert.equal(stopped.busy, false, 'no job runs once the arc has committed');
      assert.deepEqual([stopped.head, stopped.tail, stopped.enabled], [stopped.completed, JOBS, true]);
      const k = stopped.completed;
      t.diagnostic(`STOP_COPY after ${k} of ${JOBS} descriptors; arcs ${JSON.stringify([...(src.engine.device.migration?.arcLatencies ?? [])].map(([arc, ms]) => `${arc} ${ms.toFixed(2)} ms`))}`);
      for (let i = 0; i < JOBS; i++) {
        assert.equal(result(src.guest, i).status, i < k ? DescriptorStatus.DONE : DescriptorStatus.PENDING, `descriptor ${i} on the source`);
      }
      assert.ok(src.guest.read(BigInt(DST + k * LEN), LEN).every((b) => b === 0), 'the descriptor after the last completed one was not started');
      assert.deepEqual(src.guest.read(BigInt(DST + (k - 1) * LEN), LEN), data[k - 1], 'the descriptor in progress completed whole');
      const saved = await hooks(src.engine).save();
      assert.equal(saved.length, DMA_ENGINE_STATE_SIZE);
      const stream = await drain(src.client, 4097);

      await dst.client.setMigrationState(S.RESUMING);
      await feed(dst.client, stream);
      await dst.client.setMigrationState(S.STOP);
      assert.deepEqual(await hooks(dst.engine).save(), saved, 'device state byte for byte');
      assert.equal(dst.engine.engineState().busy, false, 'loading starts nothing');
      // The orchestrator's part: guest memory, copied while both sides are stopped, to the same IOVA.
      dst.guest.write(0n, src.guest.read(0n, GUEST));
      await src.client.setMigrationState(S.STOP); // region access again, for the config comparison
      assert.deepEqual(await dst.client.regionRead(CONFIG, 0n, 4096), await src.client.regionRead(CONFIG, 0n, 4096), 'config space (4 KiB: PCIe)');

      const completion = dst.irq.waitFor(0);
      await dst.client.setMigrationState(S.RUNNING);
      assert.ok((await completion) >= 1n, 'the completion vector fires on the destination (MSI-X state came with config space)');
      await dst.engine.idle();
      assert.deepEqual(dst.engine.engineState(), {
        enabled: true, ringBase: IOVA, ringSize: 64, head: JOBS, tail: JOBS, status: 0, completed: JOBS, errors: 0, busy: false,
      });
      for (let i = 0; i < JOBS; i++) {
        assert.deepEqual(result(dst.guest, i), { checksum: fnv1a32(data[i] as Uint8Array), status: DescriptorStatus.DONE }, `descriptor ${i}`);
        assert.ok(Buffer.from(dst.guest.view(BigInt(DST + i * LEN), LEN)).equals(data[i] as Uint8Array), `destination bytes of job ${i}`);
      }
      const written = dirtyPages(await dst.client.dirtyReport(IOVA, BigInt(GUEST), BigInt(PAGE)));
      const expected = [0, ...Array.from({ length: ((JOBS - k) * LEN) / PAGE }, (_, p) => (DST + k * LEN) / PAGE + p)];
      assert.deepEqual(written, expected, 'the destination wrote the ring and the buffers of jobs k… only: no job ran twice');
      assert.equal(dst.irq.total(1), 0n, 'no error vector');

      await sleep(20);
      assert.equal(src.irq.total(0), 0n, 'the source never signalled the (unfinished) batch');
      assert.deepEqual(src.engine.engineState(), { ...stopped }, 'the stopped source did nothing more');
      assert.ok(src.guest.read(BigInt(DST + k * LEN), LEN).every((b) => b === 0));
    });
  });

  it('RUNNING_P2P takes doorbells but starts no DMA; RUNNING resumes; STOP ignores register writes', async () => {
    await withSides(1, 4 * MiB, async ([side]) => {
      assert.ok(side);
      await program(side, 8);
      for (let i = 0; i < 4; i++) {
        side.guest.write(BigInt(MiB + i * PAGE), pattern(PAGE, i + 1));
        side.guest.write(BigInt(i * DESCRIPTOR_SIZE), encodeDescriptor({ src: IOVA + BigInt(MiB + i * PAGE), dst: IOVA + BigInt(2 * MiB + i * PAGE), length: PAGE, flags: COPY }));
      }
      await side.client.setMigrationState(S.RUNNING_P2P);
      await write32(side.client, DmaEngineReg.TAIL, 4);
      await sleep(20);
      assert.deepEqual([side.engine.engineState().head, side.engine.engineState().tail, side.engine.engineState().busy], [0, 4, false], 'the doorbell is taken, no DMA starts');
      const halted = side.irq.waitFor(1);
      await write32(side.client, DmaEngineReg.TAIL, 9);
      assert.equal(await halted, 1n, 'a bad TAIL halts and interrupts in RUNNING_P2P (interrupts are allowed)');
      await write32(side.client, DmaEngineReg.STATUS, DmaEngineStatus.HALTED);

      await side.client.setMigrationState(S.STOP);
      const before = await hooks(side.engine).save();
      await write32(side.client, DmaEngineReg.TAIL, 2);
      await write32(side.client, DmaEngineReg.CONTROL, DmaEngineControl.RESET);
      assert.deepEqual(await hooks(side.engine).save(), before, 'register writes change nothing while stopped');
      assert.equal(await read32(side.client, DmaEngineReg.TAIL), 4, 'registers still read');

      const done = side.irq.waitFor(0);
      await side.client.setMigrationState(S.RUNNING);
      assert.equal(await done, 1n, 'RUNNING resumes processing since HEAD ≠ TAIL');
      await side.engine.idle();
      assert.equal(side.engine.engineState().completed, 4);
      for (let i = 0; i < 4; i++) assert.deepEqual(side.guest.read(BigInt(2 * MiB + i * PAGE), PAGE), pattern(PAGE, i + 1));
    });
  });

  it('load validates the layout, changes nothing on bad data; interrupts owed in the state fire once the destination runs', async () => {
    await withSides(1, MiB, async ([side]) => {
      assert.ok(side);
      const m = hooks(side.engine);
      const good = new Uint8Array(DMA_ENGINE_STATE_SIZE);
      const v = new DataView(good.buffer);
      v.setUint32(0x00, DmaEngineControl.ENABLE, true);
      v.setUint32(0x04, DmaEngineStatus.ERROR, true);
      v.setBigUint64(0x08, IOVA, true);
      v.setUint32(0x10, 16, true);
      v.setUint32(0x14, 5, true);
      v.setUint32(0x18, 5, true);
      v.setUint32(0x1c, 21, true);
      v.setUint32(0x20, 1, true);
      v.setUint32(0x2c, 0b01, true); // the completion vector is owed
      const patched = (at: number, value: number): Uint8Array => {
        const b = good.slice();
        new DataView(b.buffer).setUint32(at, value, true);
        return b;
      };
      const before = await m.save();
      const refuses = (payload: Uint8Array, message: RegExp, kind: 'full' | 'delta' = 'full'): void => {
        assert.throws(() => m.load(kind, payload), (e: unknown) => e instanceof ProtocolError && e.errno === 22 && message.test(e.message), message.source);
      };
      refuses(good.subarray(0, 47), /47 bytes, the layout has 48/);
      refuses(patched(0x00, 3), /CONTROL 0x3 has bits outside 0x1/);
      refuses(patched(0x04, DmaEngineStatus.BUSY), /STATUS 0x1 has bits outside 0x6/);
      refuses(patched(0x14, 16), /HEAD 16 \/ TAIL 5 outside a 16-entry ring/);
      refuses(patched(0x10, 0), /HEAD 5 \/ TAIL 5 outside a 0-entry ring/);
      refuses(patched(0x2c, 4), /owed interrupts 0x4/);
      refuses(good, /a 'delta' record/, 'delta');
      assert.deepEqual(await m.save(), before, 'nothing was applied');

      const identity = { deviceType: DMA_ENGINE_DEVICE_TYPE, pciVendor: DMA_ENGINE_PCI_ID.vendorId, pciDevice: DMA_ENGINE_PCI_ID.deviceId, stateVersion: DMA_ENGINE_STATE_VERSION };
      await side.client.setMigrationState(S.RESUMING);
      await assert.rejects(side.client.migDataWrite(encodeStream(identity, [{ kind: 'full', payload: patched(0x18, 99) }])), isEinval);
      assert.equal(await side.client.migrationState(), S.ERROR);
      await side.client.reset();
      assert.equal(await side.client.migrationState(), S.RUNNING);

      const msix = await enableMsix(side.client);
      await unmaskMsixVector(side.client, 0, msix);
      await side.client.setMigrationState(S.RESUMING);
      await side.client.migDataWrite(encodeStream(identity, [{ kind: 'full', payload: good }]));
      await side.client.setMigrationState(S.STOP);
      await sleep(10);
      assert.equal(side.irq.total(0), 0n, 'stopped: the owed interrupt waits');
      const fired = side.irq.waitFor(0);
      await side.client.setMigrationState(S.RUNNING);
      assert.equal(await fired, 1n);
      assert.deepEqual(side.engine.engineState(), {
        enabled: true, ringBase: IOVA, ringSize: 16, head: 5, tail: 5, status: DmaEngineStatus.ERROR, completed: 21, errors: 1, busy: false,
      });
    });
  });
});
