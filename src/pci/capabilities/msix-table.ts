/**
 * Storage for the MSI-X table and Pending Bit Array, which live in a BAR, not
 * in config space. Each 16-byte table entry:
 *
 * | off | field | access |
 * |---|---|---|
 * | 0 | Message Address (low) | bits 31:2 RW |
 * | 4 | Message Upper Address | RW |
 * | 8 | Message Data | RW |
 * | 12 | Vector Control | bit 0 (Mask) RW, other bits RO 0 |
 *
 * At power-on and after reset every entry is zero with its Mask bit set. The
 * PBA is read-only to the driver (writes are ignored) and set by the device.
 *
 * Whose table is it? A VMM may keep its own copy of the table (QEMU and Cloud
 * Hypervisor do, as the kernel's vfio-pci hides a device's table from user
 * space): it never writes this one, and masking is its own business. Or it may
 * program this table (our client library does, as a driver would). The Mask
 * bits therefore gate delivery only once the table is {@link MsixTable.inUse}:
 * written by the client since the last reset (or restored, by migration, with
 * entries that differ from their reset value). Until then every vector counts
 * as unmasked here, so interrupts reach a VMM that emulates the table itself.
 */
import { ProtocolError } from '../../errors.js';
import { RegisterFile } from '../register-file.js';

/** Bytes per MSI-X table entry. */
export const MSIX_ENTRY_SIZE = 16;
/** Offsets inside an MSI-X table entry. */
export const MsixEntry = {
  ADDRESS_LO: 0,
  ADDRESS_HI: 4,
  DATA: 8,
  VECTOR_CONTROL: 12,
} as const;
/** One of the offsets in {@link MsixEntry}. */
export type MsixEntry = (typeof MsixEntry)[keyof typeof MsixEntry];
/** Vector Control bit 0: the vector is masked. */
export const MSIX_VECTOR_MASKED = 0x1;

/**
 * Bytes of PBA needed for `vectors` vectors (one bit each, in whole qwords).
 * @param vectors - table size.
 */
export function pbaSize(vectors: number): number {
  return Math.ceil(vectors / 64) * 8;
}

function checkAccess(what: string, offset: number, length: number, size: number): void {
  if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new ProtocolError(`MSI-X ${what} access ${offset}+${length} outside 0–${size}`);
  }
}

/** The MSI-X table and PBA of one function. */
export class MsixTable {
  /** Number of vectors. */
  readonly vectors: number;
  /** Table entries with their access masks. */
  readonly table: RegisterFile;
  /** Pending bits, vector `v` at bit `v % 8` of byte `v >> 3`. */
  readonly pba: Uint8Array;
  #inUse = false;

  /** @param vectors - table size, 1–2048 (checked by the caller). */
  constructor(vectors: number) {
    this.vectors = vectors;
    this.table = new RegisterFile(vectors * MSIX_ENTRY_SIZE);
    this.pba = new Uint8Array(pbaSize(vectors));
    this.reset();
  }

  /** Every entry zero and masked; no bit pending. */
  reset(): void {
    for (let v = 0; v < this.vectors; v++) {
      const at = v * MSIX_ENTRY_SIZE;
      this.table.define(at + MsixEntry.ADDRESS_LO, 4, 0, { wmask: 0xfffffffc });
      this.table.define(at + MsixEntry.ADDRESS_HI, 4, 0, { wmask: 0xffffffff });
      this.table.define(at + MsixEntry.DATA, 4, 0, { wmask: 0xffffffff });
      this.table.define(at + MsixEntry.VECTOR_CONTROL, 4, MSIX_VECTOR_MASKED, { wmask: MSIX_VECTOR_MASKED });
    }
    this.pba.fill(0);
    this.#inUse = false;
  }

  /**
   * Whether the client programs this table (it wrote it since the last reset,
   * or a restored table differs from the reset state): only then do the Mask
   * bits gate delivery.
   */
  get inUse(): boolean {
    return this.#inUse;
  }

  /** The vector's own Mask bit (Vector Control bit 0), as stored. */
  vectorMasked(vector: number): boolean {
    return (this.table.u32(vector * MSIX_ENTRY_SIZE + MsixEntry.VECTOR_CONTROL) & MSIX_VECTOR_MASKED) !== 0;
  }

  /** The Mask bit as it gates delivery: set, in a table the client uses. */
  maskApplies(vector: number): boolean {
    return this.#inUse && this.vectorMasked(vector);
  }

  /** The vector's PBA bit. */
  pending(vector: number): boolean {
    return (((this.pba[vector >> 3] ?? 0) >> (vector & 7)) & 1) === 1;
  }

  /** Sets or clears the vector's PBA bit. */
  setPending(vector: number, on: boolean): void {
    const byte = this.pba[vector >> 3] ?? 0;
    const bit = 1 << (vector & 7);
    this.pba[vector >> 3] = on ? byte | bit : byte & ~bit;
  }

  /**
   * @returns a copy of table bytes.
   * @throws {ProtocolError} EINVAL when the access leaves the table.
   */
  readTable(offset: number, length: number): Uint8Array {
    checkAccess('table', offset, length, this.table.size);
    return this.table.read(offset, length);
  }

  /**
   * Applies a driver write to the table (masks applied); the table is then in use.
   * @returns the vectors whose Mask bit the write cleared.
   * @throws {ProtocolError} EINVAL when the access leaves the table.
   */
  writeTable(offset: number, data: Uint8Array): number[] {
    checkAccess('table', offset, data.length, this.table.size);
    if (data.length === 0) return [];
    this.#inUse = true;
    const first = Math.floor(offset / MSIX_ENTRY_SIZE);
    const last = Math.floor((offset + data.length - 1) / MSIX_ENTRY_SIZE);
    const wasMasked: boolean[] = [];
    for (let v = first; v <= last; v++) wasMasked.push(this.vectorMasked(v));
    this.table.write(offset, data);
    const unmasked: number[] = [];
    for (let v = first; v <= last; v++) if (wasMasked[v - first] === true && !this.vectorMasked(v)) unmasked.push(v);
    return unmasked;
  }

  /**
   * @returns a copy of PBA bytes.
   * @throws {ProtocolError} EINVAL when the access leaves the PBA.
   */
  readPba(offset: number, length: number): Uint8Array {
    checkAccess('PBA', offset, length, this.pba.length);
    return this.pba.slice(offset, offset + length);
  }

  /**
   * Checks a driver write to the PBA, which is then ignored (the PBA is read-only).
   * @throws {ProtocolError} EINVAL when the access leaves the PBA.
   */
  checkPbaWrite(offset: number, length: number): void {
    checkAccess('PBA', offset, length, this.pba.length);
  }

  /** Table then PBA bytes, for a snapshot. */
  save(): Uint8Array {
    const out = new Uint8Array(this.table.size + this.pba.length);
    out.set(this.table.bytes, 0);
    out.set(this.pba, this.table.size);
    return out;
  }

  /** Loads what {@link save} produced (length checked by the caller); masks stay enforced. */
  load(bytes: Uint8Array): void {
    this.table.loadVariable(bytes.subarray(0, this.table.size));
    this.pba.set(bytes.subarray(this.table.size, this.table.size + this.pba.length));
    for (let v = this.vectors; v < this.pba.length * 8; v++) this.setPending(v, false);
    this.#inUse = !this.#atResetValue();
  }

  /** Every entry zero with its Mask bit set, as reset leaves them. */
  #atResetValue(): boolean {
    for (let v = 0; v < this.vectors; v++) {
      const at = v * MSIX_ENTRY_SIZE;
      const { ADDRESS_LO, ADDRESS_HI, DATA, VECTOR_CONTROL } = MsixEntry;
      const zero = this.table.u32(at + ADDRESS_LO) === 0 && this.table.u32(at + ADDRESS_HI) === 0 && this.table.u32(at + DATA) === 0;
      if (!zero || this.table.u32(at + VECTOR_CONTROL) !== MSIX_VECTOR_MASKED) return false;
    }
    return true;
  }
}
