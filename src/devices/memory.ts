/**
 * A memory device: BAR0 is a block of RAM (64-bit, prefetchable) backed by a
 * memfd that the client maps straight into its address space (the sparse-mmap
 * area is the whole BAR), so the driver and the device see the same bytes with
 * no message per access. BAR2 holds a few control registers that let the
 * driver have the device fill its memory and checksum it, to verify that both
 * sides really share it.
 *
 * BAR2 register map (32-bit registers, little-endian, any access width;
 * reserved offsets read 0 and ignore writes):
 *
 * | off  | name         | access | meaning |
 * |------|--------------|--------|---------|
 * | 0x00 | SIZE_LO      | RO     | BAR0 size, bits 31:0 |
 * | 0x04 | SIZE_HI      | RO     | BAR0 size, bits 63:32 |
 * | 0x08 | FILL_PATTERN | RW     | 32-bit pattern; byte `i` of the fill is byte `i % 4` of the pattern (little-endian) |
 * | 0x0c | FILL_OFFSET  | RW     | where the fill starts in BAR0 |
 * | 0x10 | FILL_LENGTH  | RW     | bytes to fill |
 * | 0x14 | COMMAND      | WO     | write 1 (FILL): fill `[FILL_OFFSET, FILL_OFFSET + FILL_LENGTH)` with the pattern, synchronously (done when the write's reply arrives); reads 0 |
 * | 0x18 | STATUS       | RO     | bit 0 DONE: the last command completed; bit 1 ERROR: it was refused (range outside BAR0, or an unknown command) |
 * | 0x1c | CHECKSUM     | RO     | FNV-1a 32 over all of BAR0, computed when read |
 *
 * Reset clears the fill registers and STATUS; the memory contents survive
 * (RAM is not cleared by a function reset).
 *
 * Migratable (v2 with PRE_COPY and P2P): the state is the fill registers and
 * all of BAR0; pre-copy sends the memory first and then the pages the client
 * changed (layout and change detection in `memory-migration.ts`). In STOP,
 * STOP_COPY, RESUMING and ERROR the device changes no state: BAR2 writes
 * (FILL included) are ignored. It cannot stop a client from writing BAR0
 * through its mmap then; a client must not (migration doc §2).
 */
import { InvalidArgumentError } from '../errors.js';
import { createDevice, type VfioUserDevice } from '../device/device.js';
import type { Logger } from '../log.js';
import { MigrationState } from '../protocol/constants.js';
import { fnv1a32 } from './fnv1a.js';
import { MemoryMigration, type FillState } from './memory-migration.js';
import { RegisterBlock, mergeLanes } from './register-block.js';

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
} as const;
/** One of {@link MemoryReg}. */
export type MemoryReg = (typeof MemoryReg)[keyof typeof MemoryReg];

/** Values of the COMMAND register. */
export const MemoryCommand = { FILL: 1 } as const;
/** Bits of the STATUS register. */
export const MemoryStatus = { DONE: 1 << 0, ERROR: 1 << 1 } as const;

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
  /** FNV-1a 32 over BAR0 (what the CHECKSUM register returns). */
  checksum(): number;
}

function checkSize(size: number): number {
  if (!Number.isSafeInteger(size) || size < MEMORY_MIN_SIZE || size > MEMORY_MAX_SIZE || (size & (size - 1)) !== 0) {
    throw new InvalidArgumentError(`memory device: size ${size} must be a power of two from ${MEMORY_MIN_SIZE} to ${MEMORY_MAX_SIZE}`);
  }
  return size;
}

/** Runs COMMAND `value` against `memory`. */
function runCommand(memory: Uint8Array, fill: FillState, value: number): void {
  if (value !== MemoryCommand.FILL || fill.offset + fill.length > memory.length) {
    fill.status = MemoryStatus.ERROR;
    return;
  }
  const pattern = new Uint8Array(4);
  new DataView(pattern.buffer).setUint32(0, fill.pattern, true);
  const target = memory.subarray(fill.offset, fill.offset + fill.length);
  if (fill.pattern === 0 || pattern.every((b) => b === pattern[0])) {
    target.fill(pattern[0] as number);
  } else {
    for (let i = 0; i < target.length; i++) target[i] = pattern[i & 3] as number;
  }
  fill.status = MemoryStatus.DONE;
}

function controlRegisters(memory: Uint8Array, fill: FillState): RegisterBlock {
  const size = memory.length;
  return new RegisterBlock('memory BAR2', MEMORY_CONTROL_SIZE, {
    [MemoryReg.SIZE_LO]: { read: () => size >>> 0 },
    [MemoryReg.SIZE_HI]: { read: () => Math.floor(size / 2 ** 32) },
    [MemoryReg.FILL_PATTERN]: { read: () => fill.pattern, write: (v, m) => void (fill.pattern = mergeLanes(fill.pattern, v, m)) },
    [MemoryReg.FILL_OFFSET]: { read: () => fill.offset, write: (v, m) => void (fill.offset = mergeLanes(fill.offset, v, m)) },
    [MemoryReg.FILL_LENGTH]: { read: () => fill.length, write: (v, m) => void (fill.length = mergeLanes(fill.length, v, m)) },
    [MemoryReg.COMMAND]: { write: (v, m) => runCommand(memory, fill, v & m) },
    [MemoryReg.STATUS]: { read: () => fill.status },
    [MemoryReg.CHECKSUM]: { read: () => fnv1a32(memory) },
  });
}

/**
 * Creates the memory device.
 * @throws {InvalidArgumentError} EINVAL for a size that is not a power of two in 4 KiB–1 GiB.
 * @throws {SystemError} when the memfd cannot be created or mapped (ENOMEM, EMFILE).
 */
export function createMemoryDevice(options: MemoryOptions = {}): MemoryDevice {
  const size = checkSize(options.size ?? MEMORY_DEFAULT_SIZE);
  const fill: FillState = { pattern: 0, offset: 0, length: 0, status: 0 };
  const control: { registers?: RegisterBlock } = {};
  const migration = new MemoryMigration(fill);
  const device = createDevice({
    name: options.name ?? 'memory',
    ...(options.logger ? { logger: options.logger } : {}),
    pci: { ...MEMORY_PCI_ID },
    regions: {
      bar0: { size, type: 'mem64', prefetchable: true, shared: true },
      bar2: {
        size: MEMORY_CONTROL_SIZE,
        read: (offset, length) => (control.registers as RegisterBlock).read(offset, length),
        write: (offset, data) => {
          if (!migration.run.stopped) (control.registers as RegisterBlock).write(offset, data); // a stopped device changes no state
        },
      },
    },
    reset: () => {
      Object.assign(fill, { pattern: 0, offset: 0, length: 0, status: 0 });
      migration.run.enter(device.migration?.state ?? MigrationState.RUNNING);
    },
    migration: migration.definition(),
  });
  const memory = device.regionMemory(0);
  migration.attach(memory);
  control.registers = controlRegisters(memory, fill);
  return { device, memory, size, checksum: () => fnv1a32(memory) };
}
