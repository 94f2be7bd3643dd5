/**
 * Built-in sample parent `memory-pool`: 1 GiB of RAM carved into memory
 * devices (`src/devices/memory.ts`: BAR0 is shared RAM the client maps, BAR2
 * fills and checksums it). Two types draw on the same pool, as vGPU profiles
 * share one GPU's memory: creating a 256 MiB instance makes four fewer
 * 64 MiB ones available, and four 64 MiB ones one 256 MiB one fewer.
 *
 * | type id | BAR0 | available on an empty pool |
 * |---|---|---|
 * | `memory-pool-64M` | 64 MiB | 16 |
 * | `memory-pool-256M` | 256 MiB | 4 |
 *
 * Attributes (applied in order, before the instance is served):
 * - `fill`: a byte pattern, 1–64 bytes in hex (`a5`, `0xdeadbeef`), written
 *   over the whole of BAR0, repeated;
 * - `write`: `OFFSET:HEX` (`0x100:cafe`), those bytes written at that offset
 *   of BAR0 — after a `fill` it overwrites part of it, before one it is
 *   overwritten (order matters, as in mdevctl's definitions).
 *
 * The pool is an accounting of the host: each instance's RAM is its own memfd,
 * touched only where written.
 */
import { createMemoryDevice, type MemoryDevice } from '../../devices/memory.js';
import { InvalidArgumentError } from '../../errors.js';
import type { MdevAttribute, MdevInstanceHandle, MdevParent, MdevType } from '../types.js';

const MiB = 1 << 20;
/** Size of the pool (bytes). */
export const MEMORY_POOL_SIZE = 1 << 30;
/** Most bytes one `fill` pattern or `write` may hold. */
const MAX_PATTERN = 64;

/** Bytes from hex digits (an optional `0x`, an even count, 1–64 bytes). @throws {InvalidArgumentError} EINVAL. */
function hexBytes(text: string, what: string): Buffer {
  const digits = text.startsWith('0x') || text.startsWith('0X') ? text.slice(2) : text;
  if (!/^(?:[0-9a-fA-F]{2})+$/.test(digits) || digits.length > 2 * MAX_PATTERN) {
    throw new InvalidArgumentError(`${what} ${JSON.stringify(text)} must be 1–${MAX_PATTERN} bytes in hex (an even number of hex digits, e.g. a5 or 0xdeadbeef)`);
  }
  return Buffer.from(digits, 'hex');
}

/** BAR0 of the instance, as a Buffer over the shared pages. */
function bar0(instance: MdevInstanceHandle): Buffer {
  const { memory } = instance.state as MemoryDevice;
  return Buffer.from(memory.buffer, memory.byteOffset, memory.length);
}

const fill: MdevAttribute = {
  description: 'byte pattern (hex, 1-64 bytes) written over all of BAR0',
  apply: (instance, value) => void bar0(instance).fill(hexBytes(value, 'fill pattern')),
};

const write: MdevAttribute = {
  description: 'OFFSET:HEX, bytes written at an offset of BAR0',
  apply: (instance, value) => {
    const match = /^(0x[0-9a-fA-F]+|[0-9]+):(.*)$/.exec(value);
    if (!match) throw new InvalidArgumentError(`write ${JSON.stringify(value)} must be OFFSET:HEX (e.g. 0x100:cafe)`);
    const memory = bar0(instance);
    const offset = Number(match[1]);
    const bytes = hexBytes(match[2] ?? '', 'write data');
    if (!Number.isSafeInteger(offset) || offset + bytes.length > memory.length) {
      throw new InvalidArgumentError(`write ${JSON.stringify(value)}: ${bytes.length} bytes at ${match[1]} do not fit in BAR0 (${memory.length} bytes)`);
    }
    memory.set(bytes, offset);
  },
};

function memoryType(name: string, size: number): MdevType {
  return {
    name,
    label: `memory ${name}`,
    description: `memory device with ${size / MiB} MiB of shared RAM in BAR0, from the ${MEMORY_POOL_SIZE / MiB} MiB pool`,
    cost: { memory: size },
    attributes: { fill, write },
    create: ({ uuid }) => {
      const mem = createMemoryDevice({ size, name: `memory-pool-${name}/${uuid}` });
      return { device: mem.device, state: mem };
    },
  };
}

/** The `memory-pool` parent. */
export const parent: MdevParent = {
  name: 'memory-pool',
  resources: { memory: MEMORY_POOL_SIZE },
  types: [memoryType('64M', 64 * MiB), memoryType('256M', 256 * MiB)],
};

// A parent module's contract is its default export (types.ts), which the project's lint otherwise forbids.
// eslint-disable-next-line no-restricted-syntax
export default parent;
