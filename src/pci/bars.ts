/**
 * Base Address Registers and the expansion ROM BAR: validation of the device
 * author's description, and the one BAR rule: **keep the size-aligned address
 * bits, OR in the flag bits**. The rule is turned into per-bit write masks
 * (address bits RW, flag and low bits read-only), so a driver writing
 * all-ones reads back the size mask with the type flags, at any access width.
 */
import { InvalidArgumentError } from '../errors.js';
import { RegisterFile } from './register-file.js';
import { BarFlags, PciHeader, RomFlags } from './registers.js';
import { BarType, type BarOptions, type RomOptions } from './types.js';

/** Number of BAR slots in a type 0 header. */
export const BAR_COUNT = 6;
const MAX_IO_BAR = 256n;
const MIN_IO_BAR = 4n;
const MIN_MEM_BAR = 16n;
const MAX_MEM32_BAR = 1n << 31n;
const MAX_MEM64_BAR = 1n << 63n;
const MIN_ROM = 2048n;
const MAX_ROM = 1n << 31n;
const ALL_ONES_64 = (1n << 64n) - 1n;
const MEM_FLAG_BITS = 0xfn;
const IO_FLAG_BITS = 0x3n;
const ROM_LOW_BITS = 0x7ffn;

/** A validated BAR as the config space lays it out. */
export interface BarLayout {
  /** Slot 0–5 (the lower slot for a 64-bit BAR). */
  readonly index: number;
  readonly type: BarType;
  readonly size: bigint;
  readonly prefetchable: boolean;
}

/**
 * The BAR rule, written once: keep the address bits of `written` that are
 * aligned to `size` and above the flag bits, then OR in `flags`.
 * @param written - the value a driver wrote (up to 64 bits).
 * @param size - BAR size, a power of two.
 * @param flagBits - the low bits that are not address bits (0xf memory, 0x3 I/O, 0x7ff ROM).
 * @param flags - the read-only flag values.
 * @returns the register value the BAR holds afterwards.
 */
export function applyBarRule(written: bigint, size: bigint, flagBits: bigint, flags: bigint): bigint {
  return (written & ~(size - 1n) & ~flagBits & ALL_ONES_64) | flags;
}

function isPowerOfTwo(n: bigint): boolean {
  return n > 0n && (n & (n - 1n)) === 0n;
}

function toSize(where: string, size: number | bigint): bigint {
  if (typeof size === 'number' && !Number.isSafeInteger(size)) {
    throw new InvalidArgumentError(`${where}: size ${size} is not an integer`);
  }
  const n = BigInt(size);
  if (!isPowerOfTwo(n)) throw new InvalidArgumentError(`${where}: size 0x${n.toString(16)} is not a power of two`);
  return n;
}

function checkRange(where: string, size: bigint, min: bigint, max: bigint): void {
  if (size < min || size > max) {
    throw new InvalidArgumentError(`${where}: size 0x${size.toString(16)} outside 0x${min.toString(16)}–0x${max.toString(16)}`);
  }
}

function validateBar(index: number, bar: BarOptions): BarLayout {
  const where = `bars[${index}]`;
  const size = toSize(where, bar.size);
  const prefetchable = bar.prefetchable ?? false;
  switch (bar.type) {
    case BarType.IO:
      if (prefetchable) throw new InvalidArgumentError(`${where}: an I/O BAR cannot be prefetchable`);
      checkRange(where, size, MIN_IO_BAR, MAX_IO_BAR);
      break;
    case BarType.MEM32:
      checkRange(where, size, MIN_MEM_BAR, MAX_MEM32_BAR);
      break;
    case BarType.MEM64:
      if (index === BAR_COUNT - 1) throw new InvalidArgumentError(`${where}: a 64-bit BAR cannot start in BAR5`);
      checkRange(where, size, MIN_MEM_BAR, MAX_MEM64_BAR);
      break;
    default:
      throw new InvalidArgumentError(`${where}: unknown BAR type ${String(bar.type)}`);
  }
  return { index, type: bar.type, size, prefetchable };
}

/**
 * Validates the six BAR slots.
 * @param bars - the device author's BARs; missing entries are absent BARs.
 * @returns six slots; a 64-bit BAR's upper slot is `undefined`.
 * @throws {InvalidArgumentError} EINVAL naming the BAR and the broken rule.
 */
export function validateBars(bars: ReadonlyArray<BarOptions | undefined> = []): Array<BarLayout | undefined> {
  if (bars.length > BAR_COUNT) throw new InvalidArgumentError(`bars: ${bars.length} BARs, at most ${BAR_COUNT}`);
  const out: Array<BarLayout | undefined> = [];
  for (let i = 0; i < BAR_COUNT; i++) {
    const bar = bars[i];
    if (bar === undefined || bar === null) {
      out.push(undefined);
      continue;
    }
    if (out[i - 1]?.type === BarType.MEM64) {
      throw new InvalidArgumentError(`bars[${i}]: slot is the upper half of 64-bit BAR ${i - 1} and must be absent`);
    }
    out.push(validateBar(i, bar));
  }
  return out;
}

/**
 * Validates the expansion ROM.
 * @returns the ROM size, or undefined when there is no ROM.
 * @throws {InvalidArgumentError} EINVAL when the size is not a power of two in 2 KiB–2 GiB.
 */
export function validateRom(rom: RomOptions | undefined): bigint | undefined {
  if (rom === undefined) return undefined;
  const size = toSize('rom', rom.size);
  checkRange('rom', size, MIN_ROM, MAX_ROM);
  return size;
}

function flagsOf(bar: BarLayout): bigint {
  if (bar.type === BarType.IO) return BigInt(BarFlags.IO);
  const type = bar.type === BarType.MEM64 ? BarFlags.MEM_TYPE_64 : BarFlags.MEM_TYPE_32;
  return BigInt(type | (bar.prefetchable ? BarFlags.PREFETCH : 0));
}

function flagBitsOf(bar: BarLayout): bigint {
  return bar.type === BarType.IO ? IO_FLAG_BITS : MEM_FLAG_BITS;
}

/**
 * Writes the BARs' flag values and write masks into the header.
 * @param regs - config space registers.
 * @param bars - validated slots from {@link validateBars}.
 * @param romSize - validated ROM size, if any.
 */
export function installBars(regs: RegisterFile, bars: ReadonlyArray<BarLayout | undefined>, romSize: bigint | undefined): void {
  for (const bar of bars) {
    if (bar === undefined) continue;
    const writable = applyBarRule(ALL_ONES_64, bar.size, flagBitsOf(bar), 0n);
    const at = PciHeader.BASE_ADDRESS_0 + 4 * bar.index;
    regs.define(at, 4, Number(flagsOf(bar)), { wmask: Number(writable & 0xffffffffn) });
    if (bar.type === BarType.MEM64) regs.define(at + 4, 4, 0, { wmask: Number(writable >> 32n) });
  }
  if (romSize !== undefined) {
    const writable = applyBarRule(0xffffffffn, romSize, ROM_LOW_BITS, 0n) | BigInt(RomFlags.ENABLE);
    regs.define(PciHeader.ROM_ADDRESS, 4, 0, { wmask: Number(writable) });
  }
}

/**
 * The address a BAR is programmed to, flag bits stripped; for a 64-bit BAR both
 * dwords combined.
 * @param regs - config space registers.
 * @param bar - the BAR's layout.
 */
export function readBarAddress(regs: RegisterFile, bar: BarLayout): bigint {
  const at = PciHeader.BASE_ADDRESS_0 + 4 * bar.index;
  let value = BigInt(regs.u32(at));
  if (bar.type === BarType.MEM64) value |= BigInt(regs.u32(at + 4)) << 32n;
  return value & ~flagBitsOf(bar);
}

/** The ROM BAR's address bits (bits 31:11; the enable bit stripped). */
export function readRomAddress(regs: RegisterFile): bigint {
  return BigInt(regs.u32(PciHeader.ROM_ADDRESS)) & ~ROM_LOW_BITS;
}
