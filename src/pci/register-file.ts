/**
 * A block of little-endian registers with per-bit access rules, in one
 * `ArrayBuffer`. Every byte has three masks:
 *
 * * `wmask`: bits the driver may write (read/write);
 * * `w1cmask`: bits the driver clears by writing 1 (RW1C);
 * * `devmask`: read-only bits the *device* changes at run time (INTx status,
 *   MSI pending bits), which therefore are not part of the device's identity.
 *
 * Bits in none of them are read-only: a driver write leaves them alone, as
 * real hardware does. The config space and the MSI-X table both use this.
 */

/** Optional access rules for {@link RegisterFile.define}. */
export interface RegisterMasks {
  /** Read/write bits. Default 0. */
  wmask?: number;
  /** Write-1-to-clear bits. Default 0. */
  w1c?: number;
  /** Read-only bits the device updates at run time. Default 0. */
  dev?: number;
}

/** Register storage plus the masks that give each bit its write semantics. */
export class RegisterFile {
  /** The register contents. */
  readonly bytes: Uint8Array;
  /** Little-endian view over {@link bytes}. */
  readonly view: DataView;
  /** Read/write bits, per byte. */
  readonly wmask: Uint8Array;
  /** Write-1-to-clear bits, per byte. */
  readonly w1cmask: Uint8Array;
  /** Device-updated read-only bits, per byte. */
  readonly devmask: Uint8Array;

  /**
   * @param size - number of bytes; all contents and masks start at zero.
   */
  constructor(size: number) {
    const buffer = new ArrayBuffer(size);
    this.bytes = new Uint8Array(buffer);
    this.view = new DataView(buffer);
    this.wmask = new Uint8Array(size);
    this.w1cmask = new Uint8Array(size);
    this.devmask = new Uint8Array(size);
  }

  /** Number of bytes. */
  get size(): number {
    return this.bytes.length;
  }

  /**
   * Sets a register's initial value and its access rules (device side, no masks applied).
   * @param offset - byte offset of the register.
   * @param width - 1, 2 or 4 bytes.
   * @param value - initial value (little-endian).
   * @param masks - which bits are RW, RW1C or device-updated.
   */
  define(offset: number, width: 1 | 2 | 4, value: number, masks: RegisterMasks = {}): void {
    for (let i = 0; i < width; i++) {
      const shift = 8 * i;
      this.bytes[offset + i] = (value >>> shift) & 0xff;
      this.wmask[offset + i] = ((masks.wmask ?? 0) >>> shift) & 0xff;
      this.w1cmask[offset + i] = ((masks.w1c ?? 0) >>> shift) & 0xff;
      this.devmask[offset + i] = ((masks.dev ?? 0) >>> shift) & 0xff;
    }
  }

  /**
   * Copies raw bytes in (device side, no masks applied), e.g. a read-only payload.
   * @param offset - where the bytes go.
   * @param data - the bytes.
   */
  fill(offset: number, data: Uint8Array): void {
    this.bytes.set(data, offset);
  }

  /**
   * A copy of `length` bytes from `offset`. The caller checks bounds.
   * @returns a new array the caller may keep.
   */
  read(offset: number, length: number): Uint8Array {
    return this.bytes.slice(offset, offset + length);
  }

  /**
   * A driver write: RW bits take the written value, RW1C bits written as 1
   * are cleared, every other bit keeps its value. The caller checks bounds.
   * @param offset - where the data lands.
   * @param data - the written bytes.
   */
  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      const d = data[i] ?? 0;
      const w = this.wmask[at] ?? 0;
      const old = this.bytes[at] ?? 0;
      this.bytes[at] = ((old & ~w) | (d & w)) & ~(d & (this.w1cmask[at] ?? 0));
    }
  }

  /** Little-endian 8-bit read. */
  u8(offset: number): number {
    return this.view.getUint8(offset);
  }

  /** Little-endian 16-bit read. */
  u16(offset: number): number {
    return this.view.getUint16(offset, true);
  }

  /** Little-endian 32-bit read. */
  u32(offset: number): number {
    return this.view.getUint32(offset, true);
  }

  /** Device-side 16-bit store (no masks). */
  set16(offset: number, value: number): void {
    this.view.setUint16(offset, value, true);
  }

  /** Device-side 32-bit store (no masks). */
  set32(offset: number, value: number): void {
    this.view.setUint32(offset, value >>> 0, true);
  }

  /**
   * Replaces the contents with `saved` while keeping every fixed bit (not RW,
   * RW1C or device-updated) as it is now, so restored state cannot break the
   * register file's invariants.
   * @param saved - bytes of the same length, e.g. from a snapshot.
   */
  loadVariable(saved: Uint8Array): void {
    for (let i = 0; i < this.bytes.length; i++) {
      const variable = (this.wmask[i] ?? 0) | (this.w1cmask[i] ?? 0) | (this.devmask[i] ?? 0);
      this.bytes[i] = ((this.bytes[i] ?? 0) & ~variable) | ((saved[i] ?? 0) & variable);
    }
  }

  /**
   * The first offset where `other` differs from the current contents in a
   * fixed bit (one that is not RW, RW1C or device-updated), or -1.
   * @param other - bytes of the same length.
   */
  firstFixedMismatch(other: Uint8Array): number {
    for (let i = 0; i < this.bytes.length; i++) {
      const variable = (this.wmask[i] ?? 0) | (this.w1cmask[i] ?? 0) | (this.devmask[i] ?? 0);
      if (((this.bytes[i] ?? 0) ^ (other[i] ?? 0)) & ~variable & 0xff) return i;
    }
    return -1;
  }
}
