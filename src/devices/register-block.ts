/**
 * A block of 32-bit little-endian registers behind a BAR's read/write
 * callbacks. Drivers may access it with any width and alignment: a read calls
 * each touched register's `read` once and returns the bytes asked for; a write
 * gathers the bytes per register and calls `write(value, mask)` once, where
 * `mask` has 0xff in every byte lane that was written. Registers with side
 * effects (write-1-to-clear, commands, read-to-clear) therefore see exactly the
 * lanes the driver touched. Offsets without a register read as zero and ignore
 * writes, like reserved space on real hardware.
 */
import { InvalidArgumentError } from '../errors.js';

/** One 32-bit register. */
export interface Register32 {
  /** @param mask - the byte lanes being read (0xff per lane). @returns the register value (unsigned). */
  read?(mask: number): number;
  /** @param value - the written lanes, in place; @param mask - 0xff per written lane. */
  write?(value: number, mask: number): void;
}

/** Merges the written lanes of `value` into `old` (the usual read-write register). */
export function mergeLanes(old: number, value: number, mask: number): number {
  return ((old & ~mask) | (value & mask)) >>> 0;
}

/** Registers at 4-byte-aligned offsets of a block of `size` bytes. */
export class RegisterBlock {
  /** Used in messages. */
  readonly name: string;
  readonly size: number;
  readonly #registers: ReadonlyMap<number, Register32>;

  /**
   * @param name - used in error messages.
   * @param size - size of the block in bytes.
   * @param registers - by byte offset (multiples of 4).
   * @throws {InvalidArgumentError} EINVAL for a misaligned or out-of-block offset.
   */
  constructor(name: string, size: number, registers: Readonly<Record<number, Register32>>) {
    this.name = name;
    this.size = size;
    const map = new Map<number, Register32>();
    for (const [key, reg] of Object.entries(registers)) {
      const offset = Number(key);
      if (offset % 4 !== 0 || offset < 0 || offset + 4 > size) {
        throw new InvalidArgumentError(`${name}: register offset 0x${offset.toString(16)} must be 4-aligned inside the block`);
      }
      map.set(offset, reg);
    }
    this.#registers = map;
  }

  /** Reads `length` bytes at `offset` (inside the block: the library checked). */
  read(offset: number, length: number): Uint8Array {
    // Byte stores, no DataView: one over a small on-heap array would move it off-heap (hundreds of ns).
    const out = new Uint8Array(length);
    const end = offset + length;
    for (let dword = offset & ~3; dword < end; dword += 4) {
      const lo = Math.max(offset, dword);
      const hi = Math.min(end, dword + 4);
      const value = this.#registers.get(dword)?.read?.(laneMask(lo - dword, hi - dword)) ?? 0;
      for (let b = lo; b < hi; b++) out[b - offset] = value >>> (8 * (b - dword));
    }
    return out;
  }

  /** Writes `data` at `offset` (inside the block: the library checked). */
  write(offset: number, data: Uint8Array): void {
    const end = offset + data.length;
    for (let dword = offset & ~3; dword < end; dword += 4) {
      const lo = Math.max(offset, dword);
      const hi = Math.min(end, dword + 4);
      let value = 0;
      for (let b = lo; b < hi; b++) value |= (data[b - offset] as number) << (8 * (b - dword));
      this.#registers.get(dword)?.write?.(value >>> 0, laneMask(lo - dword, hi - dword));
    }
  }
}

/** 0xff in lanes `[from, to)` of a dword. */
function laneMask(from: number, to: number): number {
  let mask = 0;
  for (let lane = from; lane < to; lane++) mask |= 0xff << (8 * lane);
  return mask >>> 0;
}
