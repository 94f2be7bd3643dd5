/**
 * A little-endian, bounds-checked cursor over received bytes. Every read checks
 * that the bytes exist and throws {@link ProtocolError} (EINVAL) naming the
 * struct and field otherwise — never `RangeError`, never `undefined`.
 */
import { ProtocolError } from '../errors.js';

// u64 goes through an 8-byte scratch so no DataView over the caller's bytes is
// ever needed (creating one materialises small on-heap buffers, ~300 ns).
const scratch = new Uint8Array(8);
const scratchView = new DataView(scratch.buffer);

/** Sequential little-endian reader over one payload. */
export class WireReader {
  readonly #bytes: Uint8Array;
  readonly #what: string;
  #pos = 0;

  /**
   * @param bytes - the payload; its `byteOffset` is respected and nothing is copied.
   * @param what - name of the struct being decoded, used in error messages.
   */
  constructor(bytes: Uint8Array, what: string) {
    this.#bytes = bytes;
    this.#what = what;
  }

  /** Current position from the start of the payload. */
  get offset(): number {
    return this.#pos;
  }

  /** Total payload length. */
  get length(): number {
    return this.#bytes.length;
  }

  /** Bytes left after the current position. */
  get remaining(): number {
    return this.#bytes.length - this.#pos;
  }

  /**
   * Checks that `n` more bytes exist.
   * @throws {ProtocolError} EINVAL naming `field` when they do not.
   */
  need(n: number, field: string): void {
    if (!(n >= 0) || n > this.#bytes.length - this.#pos) {
      throw new ProtocolError(
        `${this.#what}: truncated at ${field} (offset ${this.#pos}, need ${n} bytes, have ${this.remaining})`,
      );
    }
  }

  /** Reads a u8. @throws {ProtocolError} EINVAL if out of bounds. */
  u8(field: string): number {
    this.need(1, field);
    return this.#bytes[this.#pos++]!;
  }

  /** Reads a little-endian u16. @throws {ProtocolError} EINVAL if out of bounds. */
  u16(field: string): number {
    this.need(2, field);
    const b = this.#bytes;
    const p = this.#pos;
    this.#pos = p + 2;
    return b[p]! | (b[p + 1]! << 8);
  }

  /** Reads a little-endian u32. @throws {ProtocolError} EINVAL if out of bounds. */
  u32(field: string): number {
    return this.i32(field) >>> 0;
  }

  /** Reads a little-endian s32. @throws {ProtocolError} EINVAL if out of bounds. */
  i32(field: string): number {
    this.need(4, field);
    const b = this.#bytes;
    const p = this.#pos;
    this.#pos = p + 4;
    return b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16) | (b[p + 3]! << 24);
  }

  /** Reads a little-endian u64 as a bigint. @throws {ProtocolError} EINVAL if out of bounds. */
  u64(field: string): bigint {
    this.need(8, field);
    const b = this.#bytes;
    const p = this.#pos;
    for (let i = 0; i < 8; i++) scratch[i] = b[p + i]!;
    this.#pos = p + 8;
    return scratchView.getBigUint64(0, true);
  }

  /**
   * Takes `n` bytes as a view into the payload (no copy).
   * @throws {ProtocolError} EINVAL if fewer than `n` bytes remain.
   */
  bytes(n: number, field: string): Uint8Array {
    this.need(n, field);
    const v = this.#bytes.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    return v;
  }

  /** Skips `n` bytes. @throws {ProtocolError} EINVAL if fewer than `n` remain. */
  skip(n: number, field: string): void {
    this.need(n, field);
    this.#pos += n;
  }

  /** Takes every remaining byte as a view (possibly empty). */
  rest(): Uint8Array {
    const v = this.#bytes.subarray(this.#pos);
    this.#pos = this.#bytes.length;
    return v;
  }

  /**
   * Moves to an absolute position within the payload.
   * @throws {ProtocolError} EINVAL naming `field` when `offset` is outside the payload.
   */
  seek(offset: number, field: string): void {
    if (!Number.isInteger(offset) || offset < 0 || offset > this.#bytes.length) {
      throw new ProtocolError(`${this.#what}: ${field} offset ${offset} is outside the ${this.#bytes.length}-byte payload`);
    }
    this.#pos = offset;
  }

  /** Builds a ProtocolError (EINVAL unless `errno` is given) prefixed with the struct name. */
  error(message: string, errno?: number): ProtocolError {
    return new ProtocolError(`${this.#what}: ${message}`, errno === undefined ? {} : { errno });
  }
}
