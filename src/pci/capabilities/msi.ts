/**
 * MSI capability (id 0x05). Layout depends on the options:
 *
 * | off | 64-bit + mask | 32-bit + mask | 64-bit | 32-bit | access |
 * |---|---|---|---|---|---|
 * | Message Control | 2 | 2 | 2 | 2 | Enable (bit 0) and Multiple Message Enable (6:4) RW; MMC (3:1), 64-bit (7), per-vector mask (8) RO |
 * | Address (low) | 4 | 4 | 4 | 4 | bits 31:2 RW |
 * | Address (high) | 8 | – | 8 | – | RW |
 * | Data | 12 | 8 | 12 | 8 | 16 bits RW (extended data not supported: RO 0) |
 * | Mask Bits | 16 | 12 | – | – | one RW bit per capable vector |
 * | Pending Bits | 20 | 16 | – | – | RO to the driver; set by {@link MsiCapability.setPending} |
 * | size | 24 | 20 | 14 | 10 | |
 *
 * Clearing a Mask Bit raises an `msi-unmask` event.
 */
import { InvalidArgumentError } from '../../errors.js';
import type { RegisterFile } from '../register-file.js';
import { CapabilityId } from '../registers.js';
import type { ConfigSpaceEvent, MsiOptions } from '../types.js';
import { installCapHeader, type Capability, type CapabilityDefinition } from './capability.js';

/** Bits of the MSI Message Control register. */
export const MsiControl = {
  ENABLE: 0x0001,
  /** Multiple Message Capable, bits 3:1 (log2 of vectors). */
  MMC_MASK: 0x000e,
  /** Multiple Message Enable, bits 6:4. */
  MME_MASK: 0x0070,
  ADDR64: 0x0080,
  PER_VECTOR_MASK: 0x0100,
} as const;
/** One of the bits in {@link MsiControl}. */
export type MsiControl = (typeof MsiControl)[keyof typeof MsiControl];

const VALID_VECTORS = new Set([1, 2, 4, 8, 16, 32]);
const CONTROL = 2;
const ADDRESS_LO = 4;
const ADDRESS_HI = 8;

/**
 * Size in bytes of an MSI capability with the given shape.
 * @param bits64 - 64-bit message address.
 * @param perVectorMask - Mask Bits / Pending Bits present.
 */
export function msiSize(bits64: boolean, perVectorMask: boolean): number {
  return (bits64 ? 14 : 10) + (perVectorMask ? 10 : 0);
}

/** Live MSI state for the IRQ layer; also the capability's write hooks. */
export class MsiCapability implements Capability {
  readonly name = 'msi';
  readonly id = CapabilityId.MSI;
  readonly extended = false;
  readonly offset: number;
  readonly size: number;
  /** Multiple Message Capable: vectors the function supports. */
  readonly vectors: number;
  /** The message address is 64-bit. */
  readonly bits64: boolean;
  /** Mask Bits and Pending Bits registers exist. */
  readonly perVectorMask: boolean;
  readonly #regs: RegisterFile;
  readonly #data: number;

  /** @internal Installed by the capability layout. */
  constructor(regs: RegisterFile, offset: number, vectors: number, bits64: boolean, perVectorMask: boolean) {
    this.#regs = regs;
    this.offset = offset;
    this.vectors = vectors;
    this.bits64 = bits64;
    this.perVectorMask = perVectorMask;
    this.size = msiSize(bits64, perVectorMask);
    this.#data = offset + (bits64 ? 12 : 8);
    this.#install();
  }

  #install(): void {
    const regs = this.#regs;
    const o = this.offset;
    installCapHeader(regs, o, CapabilityId.MSI);
    const control =
      (Math.log2(this.vectors) << 1) | (this.bits64 ? MsiControl.ADDR64 : 0) | (this.perVectorMask ? MsiControl.PER_VECTOR_MASK : 0);
    regs.define(o + CONTROL, 2, control, { wmask: MsiControl.ENABLE | MsiControl.MME_MASK });
    regs.define(o + ADDRESS_LO, 4, 0, { wmask: 0xfffffffc });
    if (this.bits64) regs.define(o + ADDRESS_HI, 4, 0, { wmask: 0xffffffff });
    regs.define(this.#data, 2, 0, { wmask: 0xffff });
    if (!this.perVectorMask) return;
    regs.define(this.#data + 2, 2, 0);
    regs.define(this.#maskAt, 4, 0, { wmask: this.#vectorBits });
    regs.define(this.#pendingAt, 4, 0, { dev: this.#vectorBits });
  }

  get #maskAt(): number {
    return this.#data + 4;
  }

  get #pendingAt(): number {
    return this.#data + 8;
  }

  get #vectorBits(): number {
    return this.vectors === 32 ? 0xffffffff : (1 << this.vectors) - 1;
  }

  get #control(): number {
    return this.#regs.u16(this.offset + CONTROL);
  }

  /** MSI Enable (Message Control bit 0). */
  get enabled(): boolean {
    return (this.#control & MsiControl.ENABLE) !== 0;
  }

  /** Vectors the driver allocated: 2^Multiple Message Enable, at most {@link vectors}. */
  get allocatedVectors(): number {
    return Math.min(1 << ((this.#control & MsiControl.MME_MASK) >> 4), this.vectors);
  }

  /** Message address (64-bit when {@link bits64}). */
  get address(): bigint {
    const lo = BigInt(this.#regs.u32(this.offset + ADDRESS_LO));
    return this.bits64 ? lo | (BigInt(this.#regs.u32(this.offset + ADDRESS_HI)) << 32n) : lo;
  }

  /** Message data (16 bits); vector `v` sends `data | v`. */
  get data(): number {
    return this.#regs.u16(this.#data);
  }

  /** The Mask Bits register (0 without per-vector masking). */
  get maskBits(): number {
    return this.perVectorMask ? this.#regs.u32(this.#maskAt) : 0;
  }

  /** The Pending Bits register (0 without per-vector masking). */
  get pendingBits(): number {
    return this.perVectorMask ? this.#regs.u32(this.#pendingAt) : 0;
  }

  #check(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) {
      throw new InvalidArgumentError(`MSI vector ${vector} outside 0–${this.vectors - 1}`);
    }
  }

  /**
   * @param vector - 0 ≤ vector < {@link vectors}.
   * @returns whether the vector's Mask Bit is set (always false without per-vector masking).
   * @throws {InvalidArgumentError} EINVAL for a vector out of range.
   */
  isMasked(vector: number): boolean {
    this.#check(vector);
    return ((this.maskBits >>> vector) & 1) === 1;
  }

  /**
   * @param vector - 0 ≤ vector < {@link vectors}.
   * @returns the vector's Pending Bit.
   * @throws {InvalidArgumentError} EINVAL for a vector out of range.
   */
  isPending(vector: number): boolean {
    this.#check(vector);
    return ((this.pendingBits >>> vector) & 1) === 1;
  }

  /**
   * Device side: records that a masked vector has a message waiting (or that
   * it was delivered). Ignored without per-vector masking, where nothing can
   * be held pending.
   * @param vector - 0 ≤ vector < {@link vectors}.
   * @param on - set or clear the Pending Bit.
   * @throws {InvalidArgumentError} EINVAL for a vector out of range.
   */
  setPending(vector: number, on: boolean): void {
    this.#check(vector);
    if (!this.perVectorMask) return;
    const bit = (1 << vector) >>> 0;
    const bits = this.pendingBits;
    this.#regs.set32(this.#pendingAt, on ? bits | bit : bits & ~bit);
  }

  /** @internal Raises `msi-unmask` for each Mask Bit the write cleared. */
  afterWrite(before: Uint8Array, events: ConfigSpaceEvent[]): void {
    if (!this.perVectorMask) return;
    const rel = this.#maskAt - this.offset;
    const old = new DataView(before.buffer, before.byteOffset, before.length).getUint32(rel, true);
    const cleared = old & ~this.maskBits;
    for (let v = 0; v < this.vectors; v++) {
      if ((cleared >>> v) & 1) events.push({ type: 'msi-unmask', vector: v, pending: this.isPending(v) });
    }
  }
}

function validateMsi(o: MsiOptions): { vectors: number; bits64: boolean; perVectorMask: boolean } {
  if (!VALID_VECTORS.has(o.vectors)) throw new InvalidArgumentError(`msi.vectors: ${o.vectors} is not 1, 2, 4, 8, 16 or 32`);
  return { vectors: o.vectors, bits64: o.bits64 ?? true, perVectorMask: o.perVectorMask ?? true };
}

/** The MSI row of the capability table: present when `msi` is given. */
export const msiCapability: CapabilityDefinition = {
  name: 'msi',
  extended: false,
  plan(options) {
    if (options.msi === undefined) return [];
    const m = validateMsi(options.msi);
    return [
      {
        size: msiSize(m.bits64, m.perVectorMask),
        install: (ctx, offset) => new MsiCapability(ctx.regs, offset, m.vectors, m.bits64, m.perVectorMask),
      },
    ];
  },
};
