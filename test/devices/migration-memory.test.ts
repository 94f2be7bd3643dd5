/**
 * Migration of the memory device: its control registers and the BAR0 bytes
 * the client wrote through its mmap, by STOP_COPY and by PRE_COPY (deltas of
 * the pages written between reads, then a small final record), fed to the
 * destination at odd chunk sizes; a command running when the device stops
 * (paused, migrated with its progress, completed by the destination — or by
 * the source when the migration is abandoned); a foreign stream refused;
 * `load` validation; and the cost of the pre-copy change scan at 1 MiB and
 * 64 MiB.
 */
import { drain, feedVarying } from '../support/migration-io.js';
import { read32, write32 } from '../support/regs.js';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { MappedRegion } from '../../src/client/regions.js';
import { enableMsi, setCommand, writeConfig } from '../../src/client/pci-config.js';
import { createGpioDevice } from '../../src/devices/gpio.js';
import { createMemoryDevice, MemoryCommand, MemoryReg, MemoryStatus, type MemoryDevice } from '../../src/devices/memory.js';
import { MEMORY_STATE_HEADER_SIZE, MemoryEncoding } from '../../src/devices/memory-migration.js';
import { fnv1a32 } from '../../src/devices/fnv1a.js';
import { ProtocolError, RemoteError } from '../../src/errors.js';
import type { MigrationDefinition } from '../../src/migration/types.js';
import { createEventFd, native } from '../../src/native/addon.js';
import { IrqIndex, IrqSetFlags, MigrationFlags, MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import { PciCommand } from '../../src/pci/registers.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { pattern, serve, type Served } from './driver.js';

/** MIG_DATA_WRITE of `stream` in pieces of varying odd sizes. */
const feed = (client: VfioUserClient, stream: Uint8Array): Promise<void> => feedVarying(client, stream, (size) => (size * 7 + 3) % 200_003);

const BAR0 = RegionIndex.BAR0;
const BAR2 = RegionIndex.BAR2;
const CONFIG = RegionIndex.CONFIG;
const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4096;

/** A served memory device, a client and the client's mmap of BAR0. */
interface Side {
  mem: MemoryDevice;
  served: Served;
  client: VfioUserClient;
  bar0: MappedRegion;
  /** BAR0 as the client sees it through its mmap. */
  view: Uint8Array;
}

async function open(size: number): Promise<Side> {
  const mem = createMemoryDevice({ size });
  const served = serve(mem.device);
  const client = await VfioUserClient.connect(served.path);
  const bar0 = await MappedRegion.open(client, BAR0);
  const view = bar0.view(0n, size);
  assert.ok(view, 'BAR0 is mmapped whole');
  return { mem, served, client, bar0, view };
}

async function withPair(size: number, fn: (src: Side, dst: Side) => Promise<void>): Promise<void> {
  await assertNoFdLeak(async () => {
    const sides: Side[] = [];
    try {
      sides.push(await open(size), await open(size));
      await fn(sides[0] as Side, sides[1] as Side);
    } finally {
      for (const s of sides) {
        s.bar0.close();
        s.client.close();
        await s.served.close();
      }
    }
  });
}

function hooks(mem: MemoryDevice): MigrationDefinition {
  const m = mem.device.definition.migration;
  assert.ok(m, 'the device is migratable');
  return m;
}

/** Polls STATUS until BUSY clears; returns the last STATUS. */
async function waitIdle(client: VfioUserClient): Promise<number> {
  for (;;) {
    const status = await read32(client, BAR2, MemoryReg.STATUS);
    if ((status & MemoryStatus.BUSY) === 0) return status;
  }
}

/** Programs and starts a FILL (it runs asynchronously). */
async function startFill(client: VfioUserClient, pat: number, offset: number, length: number): Promise<void> {
  await write32(client, BAR2, MemoryReg.FILL_PATTERN, pat);
  await write32(client, BAR2, MemoryReg.FILL_OFFSET, offset);
  await write32(client, BAR2, MemoryReg.FILL_LENGTH, length);
  await write32(client, BAR2, MemoryReg.COMMAND, MemoryCommand.FILL);
}

/** A FILL run to completion. */
async function fill(client: VfioUserClient, pat: number, offset: number, length: number): Promise<void> {
  await startFill(client, pat, offset, length);
  assert.equal((await waitIdle(client)) & (MemoryStatus.DONE | MemoryStatus.ERROR), MemoryStatus.DONE);
}

/** A CHECKSUM run to completion; @returns the CHECKSUM register. */
async function checksum(client: VfioUserClient): Promise<number> {
  await write32(client, BAR2, MemoryReg.COMMAND, MemoryCommand.CHECKSUM);
  assert.equal((await waitIdle(client)) & (MemoryStatus.DONE | MemoryStatus.ERROR), MemoryStatus.DONE);
  return read32(client, BAR2, MemoryReg.CHECKSUM);
}

/** An eventfd on MSI vector 0 (the test closes it). */
async function msiEventFd(client: VfioUserClient): Promise<number> {
  const fd = createEventFd();
  await client.setIrqs({ flags: IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, index: IrqIndex.MSI, start: 0, count: 1 }, [fd]);
  return fd;
}

/** The eventfd's count (0n if it was not signalled). */
function signals(fd: number): bigint {
  const value = native.eventfdRead(fd);
  return typeof value === 'bigint' ? value : 0n;
}

/** Puts the source in STOP (from STOP_COPY) and compares the two config spaces. */
async function assertSameConfig(src: Side, dst: Side): Promise<void> {
  await src.client.setMigrationState(S.STOP);
  const config = await src.client.regionRead(CONFIG, 0n, 256);
  assert.deepEqual(await dst.client.regionRead(CONFIG, 0n, 256), config, 'config space');
}

async function programConfig(client: VfioUserClient): Promise<void> {
  await writeConfig(client, 0x10, 4, 0xe000_000c); // BAR0 low (64-bit prefetchable)
  await writeConfig(client, 0x14, 4, 0x0000_0001); // BAR0 high
  await writeConfig(client, 0x18, 4, 0xfeb0_0000); // BAR2
  await setCommand(client, PciCommand.MEMORY);
}

/** XORs one byte (a write the device cannot see happen when `bytes` is an mmap). */
function flip(bytes: Uint8Array, at: number, mask: number): void {
  bytes[at] = (bytes[at] ?? 0) ^ mask;
}

const isEinval = (e: unknown): boolean => e instanceof RemoteError && e.errno === 22;

describe('memory device migration', () => {
  it('STOP_COPY moves the control registers and all of BAR0 as the client wrote it through its mmap', async () => {
    await withPair(256 * KiB, async (src, dst) => {
      assert.equal(await src.client.migrationFlags(), MigrationFlags.STOP_COPY | MigrationFlags.P2P | MigrationFlags.PRE_COPY);
      await programConfig(src.client);
      src.view.set(pattern(100 * KiB, 1), 3);
      src.view.set(pattern(5000, 2), 200 * KiB);
      await fill(src.client, 0x11223344, 0x1_0001, 0x3003);
      await write32(src.client, BAR2, MemoryReg.IRQ_ENABLE, 1);
      const sum = await checksum(src.client);
      assert.equal(sum, src.mem.checksum());
      await write32(src.client, BAR2, MemoryReg.FILL_OFFSET, 0x7777); // registers left different from the last command
      flip(src.view, 0, 0xff); // after the last CHECKSUM: the register keeps its result

      await src.client.setMigrationState(S.STOP_COPY);
      assert.equal(await src.client.migrationDataSize(), BigInt(MEMORY_STATE_HEADER_SIZE + 256 * KiB));
      const saved = await hooks(src.mem).save();
      assert.equal(saved.length, MEMORY_STATE_HEADER_SIZE + 256 * KiB);
      const stream = await drain(src.client, 7001);
      await dst.client.setMigrationState(S.RESUMING);
      await feed(dst.client, stream);
      await dst.client.setMigrationState(S.RUNNING);

      assert.deepEqual(await hooks(dst.mem).save(), saved, 'device state byte for byte (registers and memory)');
      assert.ok(Buffer.from(dst.view).equals(Buffer.from(src.view)), 'the destination client sees the bytes through its own mmap');
      assert.equal(await read32(dst.client, BAR2, MemoryReg.CHECKSUM), sum);
      assert.equal(await read32(dst.client, BAR2, MemoryReg.FILL_OFFSET), 0x7777);
      assert.equal(await read32(dst.client, BAR2, MemoryReg.FILL_PATTERN), 0x11223344);
      assert.equal(await read32(dst.client, BAR2, MemoryReg.STATUS), MemoryStatus.DONE | MemoryStatus.IRQ);
      assert.equal(await read32(dst.client, BAR2, MemoryReg.IRQ_ENABLE), 1);
      assert.equal(await read32(dst.client, BAR2, MemoryReg.PROGRESS), 256 * KiB);
      await assertSameConfig(src, dst);

      await fill(dst.client, 0xabababab, 0, 16);
      assert.deepEqual([...dst.view.subarray(0, 17)], [...new Array<number>(16).fill(0xab), dst.view[16]]);
      assert.equal(await checksum(dst.client), fnv1a32(dst.view));
    });
  });

  it('PRE_COPY: the whole memory first, then the pages written through the mmap between reads, then a small final record', async () => {
    await withPair(MiB, async (src, dst) => {
      await programConfig(src.client);
      src.view.set(pattern(MiB, 3));
      await fill(src.client, 0x01020304, 0x400, 0x100);
      const parts: Uint8Array[] = [];

      await src.client.setMigrationState(S.PRE_COPY);
      assert.ok((src.mem.device.migration?.precopyInfo().initialBytes ?? 0n) > BigInt(MiB), 'initial bytes: the header and the image');
      parts.push(await drain(src.client, 65_537));
      assert.ok((parts[0] as Uint8Array).length > MiB, 'the initial data holds all of BAR0');
      assert.equal(src.mem.device.migration?.precopyInfo().initialBytes, 0n);
      assert.equal((await src.client.migDataRead(4096)).length, 0, 'nothing changed: no delta');

      flip(src.view, 3 * PAGE + 5, 0xff); // through the mmap: the device cannot see these writes happen
      src.view.set(pattern(PAGE + 2, 4), 17 * PAGE - 1); // straddles pages 16, 17, 18
      flip(src.view, 255 * PAGE + 4095, 1);
      const delta = await drain(src.client, 1001);
      assert.equal(delta.length, 12 + 8 + 5 * (4 + PAGE) + 4, 'one delta record of 5 pages (record header, page list, CRC)');
      parts.push(delta);
      assert.equal(await src.client.migrationDataSize(), BigInt(MEMORY_STATE_HEADER_SIZE + 8), 'STOP_COPY now: the registers, no page');

      flip(src.view, 100 * PAGE, 0x55);
      flip(src.view, 101 * PAGE, 0x55);
      assert.equal(await src.client.migrationDataSize(), BigInt(MEMORY_STATE_HEADER_SIZE + 8 + 2 * (4 + PAGE)), 'STOP_COPY now: the registers and 2 pages');
      parts.push(await drain(src.client, 4099));
      src.view.set(pattern(300, 5), 7 * PAGE); // left for the final record
      await src.client.regionWrite(BAR0, BigInt(40 * PAGE + 10), pattern(10, 6)); // REGION_WRITE reaches the same memory
      await fill(src.client, 0x5a5a5a5a, 200 * PAGE, 2 * PAGE);
      await src.client.setMigrationState(S.STOP_COPY); // PRE_COPY → PRE_COPY_P2P → STOP_COPY
      const final = await drain(src.client, 3333);
      assert.ok(final.length < 5 * (4 + PAGE) + 1024, `the final record carries the 4 changed pages and the registers (${final.length} bytes)`);
      parts.push(final);
      const saved = await hooks(src.mem).save();

      await dst.client.setMigrationState(S.RESUMING);
      await feed(dst.client, Buffer.concat(parts));
      await dst.client.setMigrationState(S.RUNNING);
      assert.deepEqual(await hooks(dst.mem).save(), saved, 'device state byte for byte');
      assert.equal(saved[24], MemoryEncoding.IMAGE, 'save() outside a pre-copy is a whole image');
      assert.equal(await checksum(dst.client), fnv1a32(src.view));
      assert.equal(await read32(dst.client, BAR2, MemoryReg.FILL_PATTERN), 0x5a5a5a5a);
      await assertSameConfig(src, dst);
    });
  });

  it('an abandoned pre-copy (PRE_COPY → RUNNING) drops its tracking; the next migration starts over', async () => {
    await withPair(64 * KiB, async (src, dst) => {
      src.view.set(pattern(64 * KiB, 7));
      await src.client.setMigrationState(S.PRE_COPY);
      await drain(src.client, 65_536);
      flip(src.view, 0, 1);
      await src.client.setMigrationState(S.RUNNING);
      assert.equal(await src.client.migrationDataSize(), BigInt(MEMORY_STATE_HEADER_SIZE + 64 * KiB), 'whole image again');
      flip(src.view, 1, 1);
      await src.client.setMigrationState(S.STOP_COPY);
      const stream = await drain(src.client, 65_536);
      await dst.client.setMigrationState(S.RESUMING);
      await feed(dst.client, stream);
      await dst.client.setMigrationState(S.RUNNING);
      assert.ok(Buffer.from(dst.view).equals(Buffer.from(src.view)));
    });
  });

  it('refuses a foreign stream (GPIO state) with EINVAL and goes to ERROR; DEVICE_RESET brings it back to RUNNING', async () => {
    await withPair(64 * KiB, async (src, dst) => {
      const gpio = createGpioDevice();
      const served = serve(gpio.device);
      const gpioClient = await VfioUserClient.connect(served.path);
      try {
        await gpioClient.setMigrationState(S.STOP_COPY);
        const foreign = await drain(gpioClient, 4096);
        dst.view.fill(0x33);
        await dst.client.setMigrationState(S.RESUMING);
        await assert.rejects(dst.client.migDataWrite(foreign), isEinval);
        assert.equal(await dst.client.migrationState(), S.ERROR);
        await assert.rejects(dst.client.setMigrationState(S.RUNNING), isEinval);
        await dst.client.reset();
        assert.equal(await dst.client.migrationState(), S.RUNNING);
        assert.equal(dst.view[0], 0x33, 'the memory is untouched');

        src.view.set(pattern(64 * KiB, 8));
        await src.client.setMigrationState(S.STOP_COPY);
        const stream = await drain(src.client, 65_536);
        await dst.client.setMigrationState(S.RESUMING);
        await feed(dst.client, stream);
        await dst.client.setMigrationState(S.RUNNING);
        assert.ok(Buffer.from(dst.view).equals(Buffer.from(src.view)), 'and it takes a proper stream afterwards');
      } finally {
        gpioClient.close();
        await served.close();
      }
    });
  });

  it('is quiesced while stopped: BAR2 writes (COMMAND, IRQ_ENABLE, STATUS included) are ignored', async () => {
    await withPair(64 * KiB, async (src) => {
      await write32(src.client, BAR2, MemoryReg.IRQ_ENABLE, 1);
      await fill(src.client, 0x10101010, 0, 16);
      await src.client.setMigrationState(S.STOP);
      const before = await hooks(src.mem).save();
      await startFill(src.client, 0xffffffff, 0, 64 * KiB);
      await write32(src.client, BAR2, MemoryReg.COMMAND, MemoryCommand.CHECKSUM);
      await write32(src.client, BAR2, MemoryReg.IRQ_ENABLE, 0);
      await write32(src.client, BAR2, MemoryReg.STATUS, MemoryStatus.IRQ);
      assert.equal(await read32(src.client, BAR2, MemoryReg.STATUS), MemoryStatus.DONE | MemoryStatus.IRQ);
      assert.equal(src.mem.busy, false);
      assert.deepEqual(await hooks(src.mem).save(), before);
      await src.client.setMigrationState(S.RUNNING);
      await startFill(src.client, 0xffffffff, 0, 64 * KiB);
      assert.equal(await waitIdle(src.client), MemoryStatus.DONE | MemoryStatus.IRQ);
      assert.ok(src.view.every((b) => b === 0xff));
    });
  });

  it('a CHECKSUM running at STOP pauses with its progress; the destination completes it and interrupts; so does the source if the migration is abandoned', { timeout: 20_000 }, async () => {
    const size = 16 * MiB; // at most 1 MiB per event-loop turn: at least 16 turns, a request takes a few
    await withPair(size, async (src, dst) => {
      await programConfig(src.client);
      src.view.set(pattern(MiB, 21), 3 * MiB);
      src.view.set(pattern(PAGE, 22), size - PAGE);
      const want = fnv1a32(src.view);
      await enableMsi(src.client);
      await write32(src.client, BAR2, MemoryReg.IRQ_ENABLE, 1);
      const srcMsi = await msiEventFd(src.client);
      const dstMsi = await msiEventFd(dst.client);
      try {
        await write32(src.client, BAR2, MemoryReg.COMMAND, MemoryCommand.CHECKSUM);
        await src.client.setMigrationState(S.STOP);
        const paused = await read32(src.client, BAR2, MemoryReg.PROGRESS);
        assert.ok(paused > 0 && paused < size, `paused part way (${paused})`);
        assert.equal(await read32(src.client, BAR2, MemoryReg.STATUS), MemoryStatus.BUSY);
        for (let i = 0; i < 8; i++) assert.equal(await read32(src.client, BAR2, MemoryReg.PROGRESS), paused, 'no slice while stopped');

        await src.client.setMigrationState(S.STOP_COPY);
        const saved = await hooks(src.mem).save();
        const header = new DataView(saved.buffer, saved.byteOffset, MEMORY_STATE_HEADER_SIZE);
        assert.deepEqual([36, 40, 44].map((at) => header.getUint32(at, true)), [MemoryCommand.CHECKSUM, paused, fnv1a32(src.view.subarray(0, paused))], 'command, progress, partial hash');
        const stream = await drain(src.client, MiB);
        await dst.client.setMigrationState(S.RESUMING);
        await feed(dst.client, stream);
        assert.equal(await read32(dst.client, BAR2, MemoryReg.STATUS), MemoryStatus.BUSY, 'loaded as running, not resumed while RESUMING');
        assert.equal(await read32(dst.client, BAR2, MemoryReg.PROGRESS), paused);
        await dst.client.setMigrationState(S.RUNNING);
        assert.equal(await waitIdle(dst.client), MemoryStatus.DONE | MemoryStatus.IRQ);
        assert.equal(await read32(dst.client, BAR2, MemoryReg.CHECKSUM), want, 'the destination finished the hash the source started');
        assert.equal(signals(dstMsi), 1n, 'its MSI (enabled in the migrated config space)');
        await src.client.setMigrationState(S.STOP); // STOP_COPY refuses region access, STOP does not
        assert.equal(await read32(src.client, BAR2, MemoryReg.PROGRESS), paused, 'the stopped source did not go on');
        assert.equal(signals(srcMsi), 0n);

        await src.client.setMigrationState(S.RUNNING); // abandoned: the source runs again
        assert.equal(await waitIdle(src.client), MemoryStatus.DONE | MemoryStatus.IRQ);
        assert.equal(await read32(src.client, BAR2, MemoryReg.CHECKSUM), want);
        assert.equal(signals(srcMsi), 1n);
      } finally {
        native.close(srcMsi);
        native.close(dstMsi);
      }
    });
  });

  it('a FILL started during PRE_COPY pauses at STOP_COPY; the final record carries its pages and progress; the destination finishes it', { timeout: 20_000 }, async () => {
    const size = 16 * MiB;
    await withPair(size, async (src, dst) => {
      await programConfig(src.client);
      await src.client.setMigrationState(S.PRE_COPY);
      const parts = [await drain(src.client, MiB)];
      await startFill(src.client, 0xc3c3c3c3, 0, size);
      await src.client.setMigrationState(S.STOP_COPY);
      parts.push(await drain(src.client, MiB));
      await src.client.setMigrationState(S.STOP); // STOP_COPY refuses region access, STOP does not
      const paused = await read32(src.client, BAR2, MemoryReg.PROGRESS);
      assert.ok(paused > 0 && paused < size, `paused part way (${paused})`);
      assert.equal(await read32(src.client, BAR2, MemoryReg.STATUS), MemoryStatus.BUSY);
      assert.deepEqual([src.view[paused - 1], src.view[paused]], [0xc3, 0], 'the source filled up to PROGRESS');
      assert.ok((parts[1] as Uint8Array).length >= paused, 'the final record has the filled pages');

      await dst.client.setMigrationState(S.RESUMING);
      await feed(dst.client, Buffer.concat(parts));
      await dst.client.setMigrationState(S.RUNNING);
      assert.equal(await waitIdle(dst.client), MemoryStatus.DONE);
      assert.equal(await read32(dst.client, BAR2, MemoryReg.PROGRESS), size);
      assert.ok(dst.view.every((b) => b === 0xc3), 'the whole range filled: the source\'s part and the destination\'s');
      assert.equal(src.view[size - 1], 0, 'the stopped source did not go on');
    });
  });

  it('load refuses bad sizes, values and order with a clear error and changes nothing', async () => {
    const mem = createMemoryDevice({ size: 16 * KiB });
    try {
      const m = hooks(mem);
      mem.memory.set(pattern(16 * KiB, 9));
      const image = (await m.save()).slice();
      const v = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);
      const with32 = (at: number, value: number): Uint8Array => {
        const b = image.slice();
        v(b).setUint32(at, value, true);
        return b;
      };
      const withFields = (...fields: Array<[number, number]>): Uint8Array => {
        const b = image.slice();
        for (const [at, value] of fields) v(b).setUint32(at, value, true);
        return b;
      };
      const BUSY = MemoryStatus.BUSY;
      const pages = (list: Array<[number, number]>, pageSize = PAGE): Uint8Array => {
        const b = new Uint8Array(8 + list.length * (4 + PAGE));
        v(b).setUint32(0, pageSize, true);
        v(b).setUint32(4, list.length, true);
        list.forEach(([index, byte], i) => {
          v(b).setUint32(8 + i * (4 + PAGE), index, true);
          b.fill(byte, 12 + i * (4 + PAGE), 12 + i * (4 + PAGE) + PAGE);
        });
        return b;
      };
      const final = (list: Array<[number, number]>): Uint8Array => {
        const b = Buffer.concat([image.subarray(0, MEMORY_STATE_HEADER_SIZE), pages(list)]);
        v(b).setUint32(24, MemoryEncoding.PAGES, true);
        return b;
      };
      const refuses = (kind: 'full' | 'delta', payload: Uint8Array, message: RegExp): void => {
        assert.throws(() => m.load(kind, payload), (e: unknown) => e instanceof ProtocolError && e.errno === 22 && message.test(e.message), message.source);
      };
      const memoryBefore = mem.memory.slice();

      await m.transition?.(S.STOP, S.RESUMING);
      refuses('full', image.subarray(0, 47), /47 bytes, the layout has at least 48/);
      refuses('full', with32(0, 32 * KiB), /BAR0 size 32768, this device has 16384/);
      refuses('full', image.subarray(0, image.length - 1), /memory image of 16383 bytes/);
      refuses('full', with32(20, 0x10), /STATUS 0x10 has bits outside 0xf/);
      refuses('full', with32(24, 7), /unknown memory encoding 7/);
      refuses('full', with32(28, 2), /IRQ_ENABLE 0x2 has bits outside 0x1/);
      refuses('full', with32(20, BUSY), /STATUS.BUSY set with running command 0/);
      refuses('full', withFields([36, MemoryCommand.CHECKSUM]), /STATUS.BUSY clear with running command 2/);
      refuses('full', withFields([20, BUSY], [36, 3]), /running command 3 is not 0, FILL or CHECKSUM/);
      refuses('full', withFields([20, BUSY | MemoryStatus.DONE], [36, MemoryCommand.CHECKSUM]), /both BUSY and DONE/);
      refuses('full', withFields([20, BUSY], [36, MemoryCommand.FILL], [12, 0x3000], [16, 0x2000]), /running FILL of \[12288, \+8192\) outside BAR0's 16384 bytes/);
      refuses('full', withFields([20, BUSY], [36, MemoryCommand.FILL], [16, 100], [40, 101]), /PROGRESS 101 beyond the 100 bytes of the running FILL/);
      refuses('full', with32(40, 16 * KiB + 1), /PROGRESS 16385 beyond the 16384 bytes of BAR0/);
      refuses('full', with32(44, 5), /partial hash 0x5 without a running CHECKSUM/);
      refuses('full', final([[1, 0xee]]), /changed pages before the memory image/);
      refuses('delta', pages([[1, 0xee]]), /a delta before the memory image/);
      assert.deepEqual(mem.memory, memoryBefore, 'nothing was applied');
      assert.deepEqual(await m.save(), image, 'not even the registers');

      m.load('full', with32(8, 0xcafe)); // an image: the base for pages
      refuses('delta', pages([[1, 0xee]], 8192), /page size 8192/);
      refuses('delta', pages([[4, 0xee]]), /page index 4 is out of order or beyond BAR0's 4 pages/);
      refuses('delta', pages([[2, 0xee], [1, 0xee]]), /page index 1 is out of order/);
      refuses('delta', pages([[1, 0xee]]).subarray(0, 100), /1 pages need 4100 bytes, the record has 92/);
      refuses('full', final([[0, 1], [0, 2]]), /page index 0 is out of order/);
      assert.deepEqual(mem.memory, memoryBefore, 'still nothing applied');
      m.load('delta', pages([[1, 0xee], [3, 0xdd]]));
      m.load('full', final([[0, 0xcc]]));
      assert.deepEqual([mem.memory[0], mem.memory[PAGE], mem.memory[2 * PAGE], mem.memory[3 * PAGE]], [0xcc, 0xee, memoryBefore[2 * PAGE], 0xdd]);

      // A CHECKSUM part way: loaded while RESUMING it waits; once the device runs it goes on from the partial hash.
      const bar0 = image.subarray(MEMORY_STATE_HEADER_SIZE);
      m.load('full', withFields([20, BUSY], [36, MemoryCommand.CHECKSUM], [40, 2 * PAGE], [44, fnv1a32(bar0.subarray(0, 2 * PAGE))]));
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(mem.busy, true, 'no slice while RESUMING');
      await m.transition?.(S.RESUMING, S.STOP);
      await m.transition?.(S.STOP, S.RUNNING);
      await mem.idle();
      const after = new DataView((await m.save()).buffer, 0, MEMORY_STATE_HEADER_SIZE);
      assert.deepEqual([20, 32, 36, 40, 44].map((at) => after.getUint32(at, true)), [MemoryStatus.DONE, fnv1a32(bar0), 0, 16 * KiB, 0], 'STATUS, CHECKSUM, command, PROGRESS, hash');
    } finally {
      mem.device.dispose();
    }
  });

  it('pre-copy change scan: cost at 1 MiB and 64 MiB, clean and with 1% of the pages written', async (t) => {
    for (const size of [MiB, 64 * MiB]) {
      const mem = createMemoryDevice({ size });
      try {
        const m = hooks(mem);
        mem.memory.set(pattern(MiB, 10), 0);
        await m.transition?.(S.RUNNING, S.PRE_COPY);
        let t0 = performance.now();
        const initial = await m.save();
        const saveMs = performance.now() - t0;
        assert.equal(initial.length, MEMORY_STATE_HEADER_SIZE + size);
        const rounds = size > MiB ? 5 : 50;
        t0 = performance.now();
        for (let i = 0; i < rounds; i++) assert.equal(await m.saveDelta?.(), undefined);
        const cleanMs = (performance.now() - t0) / rounds;
        const pages = size / PAGE;
        let dirtyMs = 0;
        for (let i = 0; i < rounds; i++) {
          for (let p = i % 100; p < pages; p += 100) flip(mem.memory, p * PAGE + (i % PAGE), 0xff);
          t0 = performance.now();
          const delta = await m.saveDelta?.();
          dirtyMs += performance.now() - t0;
          assert.equal(delta?.length, 8 + Math.ceil((pages - (i % 100)) / 100) * (4 + PAGE));
        }
        dirtyMs /= rounds;
        t.diagnostic(`${size / MiB} MiB: initial save ${saveMs.toFixed(2)} ms; scan clean ${cleanMs.toFixed(2)} ms, 1% dirty ${dirtyMs.toFixed(2)} ms (${((size / MiB) / (cleanMs / 1000) / 1024).toFixed(1)} GiB/s of BAR0)`);
        assert.ok(cleanMs < 2000 && dirtyMs < 2000, 'sane');
        await m.transition?.(S.PRE_COPY, S.RUNNING);
      } finally {
        mem.device.dispose();
      }
    }
  });
});
