/**
 * The memory sample device through a real socket: the client maps BAR0 from
 * the sparse-mmap fd of GET_REGION_INFO (after the argsz retry) and shares its
 * bytes with the device; BAR2 reports the size and runs FILL and CHECKSUM
 * commands asynchronously — BUSY while they run, register reads answered
 * meanwhile, refusals, reset and disconnect cancelling them, and the
 * completion interrupt on MSI or INTx.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createMemoryDevice, MemoryCommand, MemoryReg, MemoryStatus, MEMORY_SLICE_BYTES, type MemoryDevice } from '../../src/devices/memory.js';
import { fnv1a32 } from '../../src/devices/fnv1a.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { mapFd, native, unmap } from '../../src/native/addon.js';
import { Command, RegionInfoFlags } from '../../src/protocol/constants.js';
import { decodeIrqInfo, encodeIrqInfo } from '../../src/protocol/irq.js';
import { decodeRegionInfo, encodeRegionInfoRequest, type RegionInfo } from '../../src/protocol/region.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { StepClient } from '../support/step-client.js';
import { closeAll, enableMsi, eventCount, findCapability, installEventFds, IrqIndex, pattern, read32, readLe, regionRead, regionWrite, RegionIndex, serve, write32 } from './driver.js';

const BAR0 = RegionIndex.BAR0;
const BAR2 = RegionIndex.BAR2;
const CONFIG = RegionIndex.CONFIG;
const MiB = 1 << 20;
const { DONE, ERROR, BUSY, IRQ } = MemoryStatus;
const PCI_STATUS_INTERRUPT = 1 << 3;

async function withMemory(size: number | undefined, fn: (mem: MemoryDevice, client: StepClient) => Promise<void>): Promise<void> {
  await assertNoFdLeak(async () => {
    const mem = createMemoryDevice(size === undefined ? {} : { size });
    const served = serve(mem.device);
    const { client } = await StepClient.open(served.path);
    try {
      await fn(mem, client);
    } finally {
      client.close();
      await served.close();
    }
  });
}

/** GET_REGION_INFO the way a client does it: 32 bytes first, then again with the argsz the server asked for. */
async function regionInfoWithRetry(client: StepClient, index: number): Promise<{ first: RegionInfo; info: RegionInfo; fds: number[] }> {
  const short = await client.ok(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 32, index }));
  const first = decodeRegionInfo(short.payload);
  assert.deepEqual(short.fds, [], 'no fd with a reply that has no room for the capability');
  const full = await client.ok(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: first.argsz, index }));
  return { first, info: decodeRegionInfo(full.payload), fds: full.fds };
}

/** Polls STATUS, as a driver without interrupts does, until BUSY clears; returns the last STATUS. */
async function waitIdle(client: StepClient): Promise<number> {
  for (;;) {
    const status = await read32(client, BAR2, MemoryReg.STATUS);
    if ((status & BUSY) === 0) return status;
  }
}

async function setFill(client: StepClient, pat: number, offset: number, length: number): Promise<void> {
  await write32(client, BAR2, MemoryReg.FILL_PATTERN, pat);
  await write32(client, BAR2, MemoryReg.FILL_OFFSET, offset);
  await write32(client, BAR2, MemoryReg.FILL_LENGTH, length);
}

/** Runs `command` to completion by polling; returns the final STATUS. */
async function run(client: StepClient, command: number): Promise<number> {
  await write32(client, BAR2, MemoryReg.COMMAND, command);
  return waitIdle(client);
}

describe('memory sample device', () => {
  it('BAR0 is a 64-bit prefetchable BAR the client mmaps through the sparse-mmap fd; both sides share the bytes', async () => {
    await withMemory(undefined, async (mem, client) => {
      const bar0 = await readLe(client, CONFIG, 0x10, 4);
      assert.equal(bar0 & 0xf, 0b1100, 'memory, 64-bit, prefetchable');
      const { first, info, fds } = await regionInfoWithRetry(client, BAR0);
      assert.ok(first.argsz > 32, 'the server asks for room for the sparse-mmap capability');
      assert.equal(info.size, 1n << 20n);
      assert.equal(info.flags & (RegionInfoFlags.READ | RegionInfoFlags.WRITE | RegionInfoFlags.MMAP | RegionInfoFlags.CAPS), 0xf);
      assert.deepEqual(info.caps, [{ kind: 'sparse-mmap', version: 1, areas: [{ offset: 0n, size: 1n << 20n }] }]);
      assert.equal(fds.length, 1);
      const mapping = mapFd(fds[0]!, Number(info.offset), mem.size, true);
      native.close(fds[0]!);
      try {
        const theirs = new Uint8Array(mapping);
        const bytes = pattern(4096, 7);
        theirs.set(bytes, 0x8000);
        assert.deepEqual(mem.memory.subarray(0x8000, 0x9000), bytes, 'the device sees the client\'s writes');
        mem.memory.set([0xde, 0xad, 0xbe, 0xef], mem.size - 4);
        assert.deepEqual([...theirs.subarray(mem.size - 4)], [0xde, 0xad, 0xbe, 0xef], 'the client sees the device\'s writes');
        assert.equal(await run(client, MemoryCommand.CHECKSUM), DONE);
        assert.equal(await read32(client, BAR2, MemoryReg.CHECKSUM), fnv1a32(theirs));
        assert.deepEqual(await regionRead(client, BAR0, 0x8000, 16), bytes.subarray(0, 16), 'REGION_READ reaches the same memory');
        await regionWrite(client, BAR0, 0x10, Uint8Array.of(1, 2, 3));
        assert.deepEqual([...theirs.subarray(0x10, 0x13)], [1, 2, 3], 'and so does REGION_WRITE');
      } finally {
        unmap(mapping);
      }
    });
  });

  it('declares INTx (pin A) and one MSI vector, no MSI-X', async () => {
    await withMemory(4096, async (_mem, client) => {
      assert.equal(await readLe(client, CONFIG, 0x3d, 1), 1, 'Interrupt Pin INTA#');
      assert.ok((await findCapability(client, 0x05)) !== undefined, 'MSI capability');
      assert.equal(await findCapability(client, 0x11), undefined, 'no MSI-X capability');
      for (const [index, count] of [[IrqIndex.INTX, 1], [IrqIndex.MSI, 1], [IrqIndex.MSIX, 0]] as const) {
        const irq = decodeIrqInfo((await client.ok(Command.DEVICE_GET_IRQ_INFO, encodeIrqInfo({ argsz: 16, flags: 0, index, count: 0 }))).payload);
        assert.equal(irq.count, count, `IRQ index ${index}`);
      }
    });
  });

  it('FILL and CHECKSUM complete asynchronously with the right bytes and value; reading CHECKSUM does no work', async () => {
    await withMemory(64 * 1024, async (mem, client) => {
      assert.equal(await read32(client, BAR2, MemoryReg.SIZE_LO), 0x10000);
      assert.equal(await read32(client, BAR2, MemoryReg.SIZE_HI), 0);
      assert.deepEqual([await read32(client, BAR2, MemoryReg.STATUS), await read32(client, BAR2, MemoryReg.CHECKSUM)], [0, 0]);
      await setFill(client, 0x44332211, 0x101, 6);
      assert.equal(await run(client, MemoryCommand.FILL), DONE);
      assert.deepEqual([...mem.memory.subarray(0x100, 0x108)], [0, 0x11, 0x22, 0x33, 0x44, 0x11, 0x22, 0]);
      assert.equal(await read32(client, BAR2, MemoryReg.PROGRESS), 6);
      await setFill(client, 0xabababab, 0, 0x10000);
      assert.equal(await run(client, MemoryCommand.FILL), DONE);
      assert.ok(mem.memory.every((b) => b === 0xab));
      assert.equal(await run(client, MemoryCommand.CHECKSUM), DONE);
      const expected = fnv1a32(new Uint8Array(0x10000).fill(0xab));
      assert.equal(await read32(client, BAR2, MemoryReg.CHECKSUM), expected);
      assert.equal(await read32(client, BAR2, MemoryReg.PROGRESS), 0x10000);
      mem.memory[0x1234] = 0; // the register holds the last command's result, it does not hash on read
      assert.equal(await read32(client, BAR2, MemoryReg.CHECKSUM), expected);
      assert.equal(await run(client, MemoryCommand.CHECKSUM), DONE);
      assert.equal(await read32(client, BAR2, MemoryReg.CHECKSUM), mem.checksum());
      assert.notEqual(mem.checksum(), expected);
    });
  });

  it('refuses a FILL outside BAR0 and an unknown command at once with ERROR; reset clears the control block, not the memory', async () => {
    await withMemory(64 * 1024, async (mem, client) => {
      await setFill(client, 0x5a5a5a5a, 0x8000, 0x8001);
      await write32(client, BAR2, MemoryReg.COMMAND, MemoryCommand.FILL);
      assert.equal(await read32(client, BAR2, MemoryReg.STATUS), ERROR, 'range outside BAR0: not started');
      assert.equal(mem.memory[0x8000], 0);
      assert.equal(await run(client, MemoryCommand.CHECKSUM), DONE, 'the next command clears ERROR');
      await write32(client, BAR2, MemoryReg.COMMAND, 7);
      assert.equal(await read32(client, BAR2, MemoryReg.STATUS), ERROR, 'unknown command');
      assert.equal(await read32(client, BAR2, MemoryReg.COMMAND), 0, 'COMMAND reads 0');
      await write32(client, BAR2, MemoryReg.IRQ_ENABLE, 0xffffffff);
      assert.equal(await read32(client, BAR2, MemoryReg.IRQ_ENABLE), 1, 'IRQ_ENABLE has one bit');
      await setFill(client, 0x01010101, 0, 16);
      assert.equal(await run(client, MemoryCommand.FILL), DONE | IRQ);
      await client.ok(Command.DEVICE_RESET);
      const regs = [MemoryReg.FILL_PATTERN, MemoryReg.FILL_OFFSET, MemoryReg.FILL_LENGTH, MemoryReg.STATUS, MemoryReg.CHECKSUM, MemoryReg.IRQ_ENABLE, MemoryReg.PROGRESS];
      for (const reg of regs) assert.equal(await read32(client, BAR2, reg), 0, `reset clears register 0x${reg.toString(16)}`);
      assert.equal(mem.memory[0], 1, 'but not the memory');
    });
  });

  it('while a 64 MiB CHECKSUM runs, register reads are answered (BUSY, growing PROGRESS) before it completes and interrupts', { timeout: 20_000 }, async (t) => {
    const size = 64 * MiB;
    await withMemory(size, async (mem, client) => {
      mem.memory.set(pattern(4096, 11), 0);
      mem.memory.set(pattern(4096, 12), size - 4096);
      const [msi] = await installEventFds(client, IrqIndex.MSI, 1);
      try {
        await enableMsi(client);
        await write32(client, BAR2, MemoryReg.IRQ_ENABLE, 1);
        const delay = monitorEventLoopDelay({ resolution: 1 });
        delay.enable();
        await write32(client, BAR2, MemoryReg.COMMAND, MemoryCommand.CHECKSUM);
        assert.equal(await read32(client, BAR2, MemoryReg.STATUS), BUSY, 'the reply comes while the command runs');
        assert.equal(eventCount(msi!), 0n, 'and before its completion interrupt');
        // At most 1 MiB per event-loop turn: the command takes at least 64 turns; each read takes a few.
        const seen: number[] = [];
        while ((await read32(client, BAR2, MemoryReg.STATUS)) & BUSY) seen.push(await read32(client, BAR2, MemoryReg.PROGRESS));
        delay.disable();
        // The last PROGRESS read may come just after the completion (the STATUS read before it saw BUSY).
        assert.ok(seen.length >= 2 && seen.every((p, i) => p <= size && p >= (seen[i - 1] ?? 0)), `PROGRESS grows: ${seen.slice(0, 8).join(', ')}…`);
        assert.ok((seen[0] ?? size) < size && (seen[1] ?? 0) > (seen[0] ?? 0), 'the work went on between the replies');
        assert.equal(eventCount(msi!), 1n, 'one MSI on completion');
        assert.equal(await read32(client, BAR2, MemoryReg.STATUS), DONE | IRQ);
        assert.equal(await read32(client, BAR2, MemoryReg.PROGRESS), size);
        assert.equal(await read32(client, BAR2, MemoryReg.CHECKSUM), mem.checksum());
        t.diagnostic(`${seen.length} PROGRESS reads answered during the command (≥ ${size / MEMORY_SLICE_BYTES} slices); longest event-loop stall ${(delay.max / 1e6).toFixed(1)} ms (includes the host's scheduling noise)`);
      } finally {
        closeAll([msi!]);
      }
    });
  });

  it('a command written while BUSY is refused with ERROR and leaves the running one undisturbed; FILL registers ignore writes while BUSY', { timeout: 20_000 }, async () => {
    await withMemory(32 * MiB, async (mem, client) => {
      mem.memory.set(pattern(8192, 13), 0);
      const before = mem.memory.slice(0, 8192);
      await setFill(client, 0xeeeeeeee, 0, 4096);
      await write32(client, BAR2, MemoryReg.COMMAND, MemoryCommand.CHECKSUM); // ≥ 32 turns; the accesses below take a few each
      await write32(client, BAR2, MemoryReg.COMMAND, MemoryCommand.FILL);
      assert.equal(await read32(client, BAR2, MemoryReg.STATUS), BUSY | ERROR, 'refused, still running');
      await write32(client, BAR2, MemoryReg.FILL_LENGTH, 8192);
      await write32(client, BAR2, MemoryReg.FILL_PATTERN, 0x12345678);
      assert.deepEqual([await read32(client, BAR2, MemoryReg.FILL_LENGTH), await read32(client, BAR2, MemoryReg.FILL_PATTERN)], [4096, 0xeeeeeeee]);
      assert.equal(await read32(client, BAR2, MemoryReg.STATUS), BUSY | ERROR, 'those writes came while it ran');
      assert.equal(await waitIdle(client), DONE | ERROR, 'the running command completed; the refusal is still reported');
      assert.equal(await read32(client, BAR2, MemoryReg.CHECKSUM), mem.checksum(), 'its result is right');
      assert.deepEqual(mem.memory.subarray(0, 8192), before, 'the refused FILL did nothing');
      assert.equal(await run(client, MemoryCommand.FILL), DONE, 'a command accepted afterwards clears ERROR');
      assert.ok(mem.memory.subarray(0, 4096).every((b) => b === 0xee) && mem.memory[4096] === before[4096]);
    });
  });

  it('DEVICE_RESET cancels a running FILL between slices; a disconnect cancels a CHECKSUM; the next client finds an idle device', { timeout: 20_000 }, async () => {
    const size = 16 * MiB;
    await assertNoFdLeak(async () => {
      const mem = createMemoryDevice({ size });
      const served = serve(mem.device);
      try {
        const first = (await StepClient.open(served.path)).client;
        await setFill(first, 0xa5a5a5a5, 0, size);
        await write32(first, BAR2, MemoryReg.COMMAND, MemoryCommand.FILL); // ≥ 16 turns
        const progress = await read32(first, BAR2, MemoryReg.PROGRESS);
        assert.ok(progress > 0 && progress < size, `started, not finished (${progress})`);
        assert.equal(mem.busy, true);
        await first.ok(Command.DEVICE_RESET);
        assert.equal(mem.busy, false);
        await mem.idle();
        assert.deepEqual([await read32(first, BAR2, MemoryReg.STATUS), await read32(first, BAR2, MemoryReg.PROGRESS)], [0, 0]);
        for (let i = 0; i < 8; i++) await read32(first, BAR2, MemoryReg.STATUS); // turns in which a slice would run
        assert.equal(mem.memory[0], 0xa5, 'the part filled before the reset stays');
        assert.equal(mem.memory[size - 1], 0, 'no slice ran after the reset');

        await write32(first, BAR2, MemoryReg.COMMAND, MemoryCommand.CHECKSUM);
        assert.equal(mem.busy, true);
        const idle = mem.idle();
        first.close();
        await served.server.idle();
        await idle;
        assert.equal(mem.busy, false, 'cancelled by the disconnect');
        const second = (await StepClient.open(served.path)).client;
        assert.deepEqual([await read32(second, BAR2, MemoryReg.STATUS), await read32(second, BAR2, MemoryReg.CHECKSUM)], [0, 0]);
        second.close();
      } finally {
        await served.close();
      }
    });
  });

  it('completion interrupts: MSI when enabled, else INTx held until IRQ is written 1 to clear; none without IRQ_ENABLE', async () => {
    await withMemory(64 * 1024, async (_mem, client) => {
      const [intx] = await installEventFds(client, IrqIndex.INTX, 1);
      const [msi] = await installEventFds(client, IrqIndex.MSI, 1);
      try {
        await setFill(client, 0x11111111, 0, 4096);
        assert.equal(await run(client, MemoryCommand.FILL), DONE, 'polling driver: no IRQ bit');
        assert.deepEqual([eventCount(intx!), eventCount(msi!)], [0n, 0n], 'and no interrupt');

        await write32(client, BAR2, MemoryReg.IRQ_ENABLE, 1);
        assert.equal(await run(client, MemoryCommand.CHECKSUM), DONE | IRQ);
        assert.equal(eventCount(intx!), 1n, 'INTx while MSI is off');
        assert.ok((await readLe(client, CONFIG, 0x06, 2)) & PCI_STATUS_INTERRUPT, 'PCI Status: interrupt asserted');
        await write32(client, BAR2, MemoryReg.STATUS, DONE | ERROR | BUSY); // read-only bits
        assert.equal(await read32(client, BAR2, MemoryReg.STATUS), DONE | IRQ);
        await write32(client, BAR2, MemoryReg.STATUS, IRQ);
        assert.equal(await read32(client, BAR2, MemoryReg.STATUS), DONE);
        assert.equal((await readLe(client, CONFIG, 0x06, 2)) & PCI_STATUS_INTERRUPT, 0, 'PCI Status: deasserted');

        await enableMsi(client);
        assert.equal(await run(client, MemoryCommand.FILL), DONE | IRQ);
        assert.deepEqual([eventCount(msi!), eventCount(intx!)], [1n, 0n], 'MSI once enabled');
        await write32(client, BAR2, MemoryReg.STATUS, IRQ);
        await write32(client, BAR2, MemoryReg.COMMAND, 9);
        assert.equal(await read32(client, BAR2, MemoryReg.STATUS), ERROR | IRQ, 'a refusal outright ends the command too');
        assert.equal(eventCount(msi!), 1n);
      } finally {
        closeAll([intx!, msi!]);
      }
    });
  });

  it('accepts power-of-two sizes from 4 KiB to 1 GiB only', () => {
    for (const size of [3000, 4095, 12288, 2 ** 31, 0, -4096, 1.5]) {
      assert.throws(() => createMemoryDevice({ size }), InvalidArgumentError, `size ${size}`);
    }
    const small = createMemoryDevice({ size: 4096 });
    assert.equal(small.memory.length, 4096);
    small.device.dispose();
  });
});
