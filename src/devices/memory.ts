/**
 * A memory device: BAR0 is a block of RAM (64-bit, prefetchable) backed by a
 * memfd that the client maps straight into its address space (the sparse-mmap
 * area is the whole BAR), so the driver and the device see the same bytes with
 * no message per access. BAR2 is a control block through which the driver has
 * the device fill its memory and checksum it, to verify that both sides really
 * share it. INTx and one MSI vector signal the end of a command.
 *
 * BAR2 register map (32-bit registers, little-endian, any access width;
 * reserved offsets read 0 and ignore writes):
 *
 * | off  | name         | access | meaning |
 * |------|--------------|--------|---------|
 * | 0x00 | SIZE_LO      | RO     | BAR0 size, bits 31:0 |
 * | 0x04 | SIZE_HI      | RO     | BAR0 size, bits 63:32 |
 * | 0x08 | FILL_PATTERN | RW     | 32-bit pattern; byte `i` of the fill is byte `i % 4` of the pattern (little-endian); writes ignored while BUSY |
 * | 0x0c | FILL_OFFSET  | RW     | where the fill starts in BAR0; writes ignored while BUSY |
 * | 0x10 | FILL_LENGTH  | RW     | bytes to fill; writes ignored while BUSY |
 * | 0x14 | COMMAND      | WO     | 1 FILL: fill `[FILL_OFFSET, FILL_OFFSET + FILL_LENGTH)` with the pattern; 2 CHECKSUM: FNV-1a 32 over all of BAR0. The write starts the command and returns at once; reads 0 |
 * | 0x18 | STATUS       | R/W1C  | bit 0 DONE (RO): the last command completed; bit 1 ERROR (RO): a command was refused (range outside BAR0, unknown value, or written while BUSY); bit 2 BUSY (RO): a command runs; bit 3 IRQ (W1C): a command ended with IRQ_ENABLE set — write 1 to clear it and deassert INTx |
 * | 0x1c | CHECKSUM     | RO     | result of the last CHECKSUM command that completed (0 after reset); reading it does no work |
 * | 0x20 | IRQ_ENABLE   | RW     | bit 0: interrupt when a command ends (default 0: a driver polls STATUS) |
 * | 0x24 | PROGRESS     | RO     | bytes the running (or last) command has done |
 *
 * Commands run asynchronously, in slices of at most 1 MiB and about 2 ms of
 * work per event-loop turn, so the server keeps answering meanwhile
 * (`memory-engine.ts`). Writing COMMAND
 * clears DONE and ERROR and sets BUSY; when the command ends BUSY clears, DONE
 * (or ERROR) is set and, if IRQ_ENABLE bit 0 is set, IRQ is set and interrupt
 * 0 is raised (MSI if the driver enabled it, else INTx, a level held until
 * IRQ is cleared). A command refused outright (range, unknown value) ends at
 * once with ERROR, and interrupts like any other. A command written while
 * BUSY is refused without disturbing the running one: ERROR is set, and stays
 * next to DONE when the running command completes.
 *
 * Reset (DEVICE_RESET or disconnect) cancels a running command between two
 * slices and clears the control block; the memory contents survive (RAM is
 * not cleared by a function reset), a cancelled FILL leaving part of its range
 * filled.
 *
 * Migratable (v2 with PRE_COPY and P2P): the state is the control block, a
 * command in progress, and all of BAR0; pre-copy sends the memory first and
 * then the pages the client changed (layout and change detection in
 * `memory-migration.ts`). In STOP, STOP_COPY, RESUMING and ERROR the device
 * changes no state: BAR2 writes are ignored and a running command pauses
 * between two slices, to be migrated with its progress and completed where
 * the device runs next. It cannot stop a client from writing BAR0 through its
 * mmap then; a client must not (migration doc §2).
 */
import { InvalidArgumentError } from '../errors.js';
import { createDevice, type VfioUserDevice } from '../device/device.js';
import type { Logger } from '../log.js';
import { MigrationState } from '../protocol/constants.js';
import { fnv1a32 } from './fnv1a.js';
import { MemoryEngine, MemoryIrqEnable } from './memory-engine.js';
import { MemoryMigration } from './memory-migration.js';
import { RegisterBlock, mergeLanes } from './register-block.js';

export { MemoryCommand, MemoryStatus, MemoryIrqEnable, MEMORY_SLICE_BYTES, MEMORY_SLICE_BUDGET_MS } from './memory-engine.js';

/** BAR2 register offsets of the memory device. */
export const MemoryReg = {
  SIZE_LO: 0x00,
  SIZE_HI: 0x04,
  FILL_PATTERN: 0x08,
  FILL_OFFSET: 0x0c,
  FILL_LENGTH: 0x10,
  COMMAND: 0x14,
  STATUS: 0x18,
  CHECKSUM: 0x1c,
  IRQ_ENABLE: 0x20,
  PROGRESS: 0x24,
} as const;
/** One of {@link MemoryReg}. */
export type MemoryReg = (typeof MemoryReg)[keyof typeof MemoryReg];

/** PCI identity: QEMU's de-facto sample vendor id, class "memory controller: RAM". */
export const MEMORY_PCI_ID = { vendorId: 0x1234, deviceId: 0x5a01, classCode: 0x050000 } as const;
/** Default BAR0 size (1 MiB). */
export const MEMORY_DEFAULT_SIZE = 1 << 20;
/** Smallest and largest BAR0 sizes accepted. */
export const MEMORY_MIN_SIZE = 4096;
export const MEMORY_MAX_SIZE = 1 << 30;
/** Size of the BAR2 control block. */
export const MEMORY_CONTROL_SIZE = 0x100;

/** Options of {@link createMemoryDevice}. */
export interface MemoryOptions {
  /** BAR0 size in bytes: a power of two, 4 KiB–1 GiB (default 1 MiB). */
  size?: number;
  /** Device name for logs (default `memory`). */
  name?: string;
  logger?: Logger;
}

/** The memory device and the host program's view of its RAM. */
export interface MemoryDevice {
  readonly device: VfioUserDevice;
  /** BAR0, mapped in this process (the same pages the client maps). */
  readonly memory: Uint8Array;
  /** BAR0 size in bytes. */
  readonly size: number;
  /** FNV-1a 32 over BAR0 now, computed synchronously here (what a CHECKSUM command started now would report). */
  checksum(): number;
  /** Whether a command runs (STATUS.BUSY). */
  readonly busy: boolean;
  /** Resolves once no command runs: it completed, or a reset cancelled it (a command paused by a stopped migration state waits). */
  idle(): Promise<void>;
}

function checkSize(size: number): number {
  if (!Number.isSafeInteger(size) || size < MEMORY_MIN_SIZE || size > MEMORY_MAX_SIZE || (size & (size - 1)) !== 0) {
    throw new InvalidArgumentError(`memory device: size ${size} must be a power of two from ${MEMORY_MIN_SIZE} to ${MEMORY_MAX_SIZE}`);
  }
  return size;
}

function controlRegisters(engine: MemoryEngine, size: number): RegisterBlock {
  const c = engine.control;
  return new RegisterBlock('memory BAR2', MEMORY_CONTROL_SIZE, {
    [MemoryReg.SIZE_LO]: { read: () => size >>> 0 },
    [MemoryReg.SIZE_HI]: { read: () => Math.floor(size / 2 ** 32) },
    [MemoryReg.FILL_PATTERN]: { read: () => c.pattern, write: (v, m) => engine.setFill('pattern', mergeLanes(c.pattern, v, m)) },
    [MemoryReg.FILL_OFFSET]: { read: () => c.offset, write: (v, m) => engine.setFill('offset', mergeLanes(c.offset, v, m)) },
    [MemoryReg.FILL_LENGTH]: { read: () => c.length, write: (v, m) => engine.setFill('length', mergeLanes(c.length, v, m)) },
    [MemoryReg.COMMAND]: { write: (v, m) => engine.command(v & m) },
    [MemoryReg.STATUS]: { read: () => engine.status(), write: (v, m) => engine.clearStatus(v & m) },
    [MemoryReg.CHECKSUM]: { read: () => c.checksum },
    [MemoryReg.IRQ_ENABLE]: { read: () => c.irqEnable, write: (v, m) => void (c.irqEnable = mergeLanes(c.irqEnable, v, m) & MemoryIrqEnable.COMPLETION) },
    [MemoryReg.PROGRESS]: { read: () => c.progress },
  });
}

/**
 * Creates the memory device.
 * @throws {InvalidArgumentError} EINVAL for a size that is not a power of two in 4 KiB–1 GiB.
 * @throws {SystemError} when the memfd cannot be created or mapped (ENOMEM, EMFILE).
 */
export function createMemoryDevice(options: MemoryOptions = {}): MemoryDevice {
  const size = checkSize(options.size ?? MEMORY_DEFAULT_SIZE);
  const engine = new MemoryEngine(size);
  const registers = controlRegisters(engine, size);
  const migration = new MemoryMigration(engine);
  const device = createDevice({
    name: options.name ?? 'memory',
    ...(options.logger ? { logger: options.logger } : {}),
    pci: { ...MEMORY_PCI_ID },
    regions: {
      bar0: { size, type: 'mem64', prefetchable: true, shared: true },
      bar2: {
        size: MEMORY_CONTROL_SIZE,
        read: (offset, length) => registers.read(offset, length),
        write: (offset, data) => {
          if (!engine.run.stopped) registers.write(offset, data); // a stopped device changes no state
        },
      },
    },
    irqs: { intx: true, msi: 1 },
    reset: () => {
      engine.reset();
      engine.enter(device.migration?.state ?? MigrationState.RUNNING);
    },
    migration: migration.definition(),
  });
  const memory = device.regionMemory(0);
  engine.attach(device, memory);
  migration.attach(memory);
  return {
    device,
    memory,
    size,
    checksum: () => fnv1a32(memory),
    get busy() {
      return engine.busy;
    },
    idle: () => engine.idle(),
  };
}
