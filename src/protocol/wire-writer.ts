/**
 * A little-endian writer into one buffer allocated up front: callers compute the
 * encoded size first, so encoding is one allocation and no copying. Values that
 * do not fit their field throw {@link InvalidArgumentError} instead of wrapping.
 */
import { InvalidArgumentError } from '../errors.js';
import { U64_MAX } from './constants.js';

// u64 goes through an 8-byte scratch: a DataView over the output would
// materialise its small on-heap buffer (~300 ns per message).
const scratch = new Uint8Array(8);
const scratchView = new DataView(scratch.buffer);

/** Sequential little-endian writer over a fixed-size buffer. */
export class WireWriter {
  readonly #bytes: Uint8Array;
  readonly #what: string;
  #pos = 0;

  /**
   * @param size - exact number of bytes the encoding will take.
   * @param what - name of the struct being encoded, used in error messages.
   * @throws {InvalidArgumentError} EINVAL if `size` is not a non-negative integer.
   */
  constructor(size: number, what: string) {
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new InvalidArgumentError(`${what}: invalid encoded size ${size}`);
    }
    this.#bytes = new Uint8Array(size);
    this.#what = what;
  }

  /** Current position. */
  get offset(): number {
    return this.#pos;
  }

  #reserve(n: number, field: string): number {
    const at = this.#pos;
    if (n > this.#bytes.length - at) {
      throw new InvalidArgumentError(`${this.#what}: ${field} overruns the ${this.#bytes.length}-byte buffer`);
    }
    this.#pos = at + n;
    return at;
  }

  #checkInt(v: number, max: number, field: string, min = 0): void {
    if (!Number.isInteger(v) || v < min || v > max) {
      throw new InvalidArgumentError(`${this.#what}: ${field} = ${v} does not fit its field`);
    }
  }

  #put32(p: number, v: number): void {
    const b = this.#bytes;
    b[p] = v;
    b[p + 1] = v >>> 8;
    b[p + 2] = v >>> 16;
    b[p + 3] = v >>> 24;
  }

  /** Writes a u8. @throws {InvalidArgumentError} EINVAL if `v` is not in 0..255. */
  u8(v: number, field: string): this {
    this.#checkInt(v, 0xff, field);
    this.#bytes[this.#reserve(1, field)] = v;
    return this;
  }

  /** Writes a little-endian u16. @throws {InvalidArgumentError} EINVAL if out of range. */
  u16(v: number, field: string): this {
    this.#checkInt(v, 0xffff, field);
    const p = this.#reserve(2, field);
    this.#bytes[p] = v;
    this.#bytes[p + 1] = v >>> 8;
    return this;
  }

  /** Writes a little-endian u32. @throws {InvalidArgumentError} EINVAL if out of range. */
  u32(v: number, field: string): this {
    this.#checkInt(v, 0xffff_ffff, field);
    this.#put32(this.#reserve(4, field), v);
    return this;
  }

  /** Writes a little-endian s32. @throws {InvalidArgumentError} EINVAL if out of range. */
  i32(v: number, field: string): this {
    this.#checkInt(v, 0x7fff_ffff, field, -0x8000_0000);
    this.#put32(this.#reserve(4, field), v);
    return this;
  }

  /** Writes a little-endian u64. @throws {InvalidArgumentError} EINVAL if not in 0..2^64-1. */
  u64(v: bigint, field: string): this {
    if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) {
      throw new InvalidArgumentError(`${this.#what}: ${field} = ${String(v)} does not fit a u64`);
    }
    const p = this.#reserve(8, field);
    scratchView.setBigUint64(0, v, true);
    this.#bytes.set(scratch, p);
    return this;
  }

  /** Copies `data` in. @throws {InvalidArgumentError} EINVAL if it overruns the buffer. */
  bytes(data: Uint8Array, field: string): this {
    this.#bytes.set(data, this.#reserve(data.length, field));
    return this;
  }

  /** Leaves `n` zero bytes (the buffer starts zeroed). */
  zeros(n: number, field: string): this {
    this.#reserve(n, field);
    return this;
  }

  /**
   * Returns the encoded bytes.
   * @throws {InvalidArgumentError} EINVAL if fewer bytes were written than were allocated
   * (a size computation bug in the caller).
   */
  finish(): Uint8Array {
    if (this.#pos !== this.#bytes.length) {
      throw new InvalidArgumentError(`${this.#what}: wrote ${this.#pos} of ${this.#bytes.length} bytes`);
    }
    return this.#bytes;
  }
}
