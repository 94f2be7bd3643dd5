/**
 * MSI-X capability (id 0x11), 12 bytes:
 *
 * | off | reg | access |
 * |---|---|---|
 * | 2 | Message Control: Table Size − 1 (10:0) RO, Function Mask (14) RW, Enable (15) RW | |
 * | 4 | Table Offset (31:3) / Table BIR (2:0) | RO |
 * | 8 | PBA Offset (31:3) / PBA BIR (2:0) | RO |
 *
 * The table and PBA live in a memory BAR; the BAR layer routes accesses in
 * {@link MsixCapability.table} / {@link MsixCapability.pba} to
 * `tableRead`/`tableWrite`/`pbaRead`/`pbaWrite`. A vector is masked when the
 * Function Mask is set, or its own Mask bit is set in a table the client uses
 * (msix-table.ts: a VMM that emulates the table itself never writes it, and
 * its vectors are not held back by the reset value of bits it never sees); an
 * access that unmasks vectors raises one `msix-unmask` event per vector.
 */
import { InvalidArgumentError } from '../../errors.js';
import { BAR_COUNT, type BarLayout } from '../bars.js';
import type { RegisterFile } from '../register-file.js';
import { CapabilityId } from '../registers.js';
import { BarType, type ConfigSpaceEvent, type MsixOptions } from '../types.js';
import { installCapHeader, type Capability, type CapabilityContext, type CapabilityDefinition } from './capability.js';
import { MSIX_ENTRY_SIZE, MsixEntry, MsixTable, pbaSize } from './msix-table.js';

/** Size of the MSI-X capability. */
export const MSIX_SIZE = 12;
/** Largest MSI-X table. */
export const MSIX_MAX_VECTORS = 2048;
/** Bits of the MSI-X Message Control register. */
export const MsixControl = {
  TABLE_SIZE_MASK: 0x07ff,
  FUNCTION_MASK: 0x4000,
  ENABLE: 0x8000,
} as const;
/** One of the bits in {@link MsixControl}. */
export type MsixControl = (typeof MsixControl)[keyof typeof MsixControl];

const CONTROL = 2;
const TABLE = 4;
const PBA = 8;

/** Where a structure lives in a BAR. */
export interface BarWindow {
  /** BAR index. */
  readonly bar: number;
  /** Offset in the BAR. */
  readonly offset: number;
  /** Size in bytes. */
  readonly size: number;
}

/** One MSI-X table entry as the driver programmed it. */
export interface MsixVector {
  readonly address: bigint;
  readonly data: number;
  /** The entry's own Mask bit (Function Mask not included). */
  readonly masked: boolean;
}

/** Live MSI-X state for the IRQ and BAR layers; also the capability's write hooks. */
export class MsixCapability implements Capability {
  readonly name = 'msix';
  readonly id = CapabilityId.MSIX;
  readonly extended = false;
  readonly offset: number;
  readonly size = MSIX_SIZE;
  /** Table size. */
  readonly vectors: number;
  /** Where the table is. */
  readonly table: BarWindow;
  /** Where the Pending Bit Array is. */
  readonly pba: BarWindow;
  readonly stateSize: number;
  readonly #regs: RegisterFile;
  readonly #store: MsixTable;
  readonly #emit: (events: ConfigSpaceEvent[]) => void;

  /** @internal Installed by the capability layout. */
  constructor(ctx: CapabilityContext, offset: number, o: MsixOptions) {
    this.#regs = ctx.regs;
    this.#emit = ctx.emit;
    this.offset = offset;
    this.vectors = o.vectors;
    this.table = { bar: o.bar, offset: o.tableOffset, size: o.vectors * MSIX_ENTRY_SIZE };
    this.pba = { bar: o.bar, offset: o.pbaOffset, size: pbaSize(o.vectors) };
    this.#store = new MsixTable(o.vectors);
    this.stateSize = this.table.size + this.pba.size;
    installCapHeader(ctx.regs, offset, CapabilityId.MSIX);
    ctx.regs.define(offset + CONTROL, 2, o.vectors - 1, { wmask: MsixControl.FUNCTION_MASK | MsixControl.ENABLE });
    ctx.regs.define(offset + TABLE, 4, o.tableOffset | o.bar);
    ctx.regs.define(offset + PBA, 4, o.pbaOffset | o.bar);
  }

  get #control(): number {
    return this.#regs.u16(this.offset + CONTROL);
  }

  /** MSI-X Enable (Message Control bit 15). */
  get enabled(): boolean {
    return (this.#control & MsixControl.ENABLE) !== 0;
  }

  /** Function Mask (Message Control bit 14). */
  get functionMasked(): boolean {
    return (this.#control & MsixControl.FUNCTION_MASK) !== 0;
  }

  #check(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) {
      throw new InvalidArgumentError(`MSI-X vector ${vector} outside 0–${this.vectors - 1}`);
    }
  }

  /**
   * @param vector - 0 ≤ vector < {@link vectors}.
   * @returns the entry's address, data and own Mask bit.
   * @throws {InvalidArgumentError} EINVAL for a vector out of range.
   */
  entry(vector: number): MsixVector {
    this.#check(vector);
    const t = this.#store.table;
    const at = vector * MSIX_ENTRY_SIZE;
    const address = BigInt(t.u32(at + MsixEntry.ADDRESS_LO)) | (BigInt(t.u32(at + MsixEntry.ADDRESS_HI)) << 32n);
    return { address, data: t.u32(at + MsixEntry.DATA), masked: this.#store.vectorMasked(vector) };
  }

  /**
   * @param vector - 0 ≤ vector < {@link vectors}.
   * @returns Function Mask || the vector's own Mask bit when the table is in use.
   * @throws {InvalidArgumentError} EINVAL for a vector out of range.
   */
  isMasked(vector: number): boolean {
    this.#check(vector);
    return this.functionMasked || this.#store.maskApplies(vector);
  }

  /** Whether the client programs the device's table (see msix-table.ts); only then do its Mask bits apply. */
  get tableInUse(): boolean {
    return this.#store.inUse;
  }

  /**
   * @param vector - 0 ≤ vector < {@link vectors}.
   * @returns the vector's PBA bit.
   * @throws {InvalidArgumentError} EINVAL for a vector out of range.
   */
  isPending(vector: number): boolean {
    this.#check(vector);
    return this.#store.pending(vector);
  }

  /**
   * Device side: records that a masked vector has a message waiting (or that
   * it was delivered), visible to the driver in the PBA.
   * @param vector - 0 ≤ vector < {@link vectors}.
   * @param on - set or clear the PBA bit.
   * @throws {InvalidArgumentError} EINVAL for a vector out of range.
   */
  setPending(vector: number, on: boolean): void {
    this.#check(vector);
    this.#store.setPending(vector, on);
  }

  /**
   * Driver read of the table, at any alignment.
   * @param offset - offset inside the table (not the BAR).
   * @returns `length` bytes.
   * @throws {ProtocolError} EINVAL when the access leaves the table.
   */
  tableRead(offset: number, length: number): Uint8Array {
    return this.#store.readTable(offset, length);
  }

  /**
   * Driver write to the table, at any alignment; raises `msix-unmask` for each
   * vector that becomes unmasked (its Mask bit cleared while the function is unmasked).
   * @param offset - offset inside the table (not the BAR).
   * @throws {ProtocolError} EINVAL when the access leaves the table.
   */
  tableWrite(offset: number, data: Uint8Array): void {
    const cleared = this.#store.writeTable(offset, data);
    if (this.functionMasked || cleared.length === 0) return;
    this.#emit(cleared.map((vector) => ({ type: 'msix-unmask', vector, pending: this.#store.pending(vector) })));
  }

  /**
   * Driver read of the PBA.
   * @param offset - offset inside the PBA (not the BAR).
   * @throws {ProtocolError} EINVAL when the access leaves the PBA.
   */
  pbaRead(offset: number, length: number): Uint8Array {
    return this.#store.readPba(offset, length);
  }

  /**
   * Driver write to the PBA: bounds-checked, then ignored (the PBA is read-only).
   * @throws {ProtocolError} EINVAL when the access leaves the PBA.
   */
  pbaWrite(offset: number, data: Uint8Array): void {
    this.#store.checkPbaWrite(offset, data.length);
  }

  /** @internal Raises `msix-unmask` for unmasked vectors when the Function Mask is cleared. */
  afterWrite(before: Uint8Array, events: ConfigSpaceEvent[]): void {
    const old = (before[CONTROL] ?? 0) | ((before[CONTROL + 1] ?? 0) << 8);
    if ((old & MsixControl.FUNCTION_MASK) === 0 || this.functionMasked) return;
    for (let v = 0; v < this.vectors; v++) {
      if (!this.#store.maskApplies(v)) events.push({ type: 'msix-unmask', vector: v, pending: this.#store.pending(v) });
    }
  }

  /** @internal Table and PBA bytes for a snapshot. */
  saveState(): Uint8Array {
    return this.#store.save();
  }

  /** @internal Loads table and PBA bytes from a snapshot. */
  loadState(bytes: Uint8Array): void {
    this.#store.load(bytes);
  }

  /** @internal All vectors masked, nothing pending. */
  reset(): void {
    this.#store.reset();
  }
}

function checkOffset(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xfffffff8 || value % 8 !== 0) {
    throw new InvalidArgumentError(`msix.${name}: ${value} is not an 8-aligned 32-bit offset`);
  }
}

function validateMsix(o: MsixOptions, bars: ReadonlyArray<BarLayout | undefined>): void {
  if (!Number.isInteger(o.vectors) || o.vectors < 1 || o.vectors > MSIX_MAX_VECTORS) {
    throw new InvalidArgumentError(`msix.vectors: ${o.vectors} outside 1–${MSIX_MAX_VECTORS}`);
  }
  const bar = Number.isInteger(o.bar) && o.bar >= 0 && o.bar < BAR_COUNT ? bars[o.bar] : undefined;
  if (bar === undefined) throw new InvalidArgumentError(`msix.bar: BAR ${o.bar} is not a configured BAR`);
  if (bar.type === BarType.IO) throw new InvalidArgumentError(`msix.bar: BAR ${o.bar} is an I/O BAR`);
  checkOffset('tableOffset', o.tableOffset);
  checkOffset('pbaOffset', o.pbaOffset);
  const tableEnd = o.tableOffset + o.vectors * MSIX_ENTRY_SIZE;
  const pbaEnd = o.pbaOffset + pbaSize(o.vectors);
  if (BigInt(tableEnd) > bar.size) throw new InvalidArgumentError(`msix: table ends at 0x${tableEnd.toString(16)}, past BAR ${o.bar}`);
  if (BigInt(pbaEnd) > bar.size) throw new InvalidArgumentError(`msix: PBA ends at 0x${pbaEnd.toString(16)}, past BAR ${o.bar}`);
  if (o.tableOffset < pbaEnd && o.pbaOffset < tableEnd) throw new InvalidArgumentError('msix: table and PBA overlap');
}

/** The MSI-X row of the capability table: present when `msix` is given. */
export const msixCapability: CapabilityDefinition = {
  name: 'msix',
  extended: false,
  plan(options, bars) {
    if (options.msix === undefined) return [];
    const o = { ...options.msix };
    validateMsix(o, bars);
    return [{ size: MSIX_SIZE, install: (ctx, offset) => new MsixCapability(ctx, offset, o) }];
  },
};
