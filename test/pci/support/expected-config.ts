/**
 * Independent builder of expected config-space bytes for golden tests: plain
 * little-endian stores into a zeroed buffer, no code from src/pci.
 */
export class ExpectedConfig {
  readonly bytes: Uint8Array;
  readonly #view: DataView;

  constructor(size: 256 | 4096) {
    this.bytes = new Uint8Array(size);
    this.#view = new DataView(this.bytes.buffer);
  }

  u8(offset: number, value: number): this {
    this.#view.setUint8(offset, value);
    return this;
  }

  u16(offset: number, value: number): this {
    this.#view.setUint16(offset, value, true);
    return this;
  }

  u32(offset: number, value: number): this {
    this.#view.setUint32(offset, value >>> 0, true);
    return this;
  }

  raw(offset: number, bytes: readonly number[]): this {
    this.bytes.set(bytes, offset);
    return this;
  }
}

/** `offset: expected actual` for each differing byte, to make golden failures readable. */
export function diffBytes(actual: Uint8Array, expected: Uint8Array): string[] {
  const out: string[] = [];
  const n = Math.max(actual.length, expected.length);
  for (let i = 0; i < n; i++) {
    if (actual[i] !== expected[i]) {
      out.push(`0x${i.toString(16)}: expected ${expected[i]?.toString(16)} got ${actual[i]?.toString(16)}`);
    }
  }
  return out;
}

/** Little-endian u32 from bytes. */
export function le32(b: Uint8Array, at = 0): number {
  return new DataView(b.buffer, b.byteOffset, b.length).getUint32(at, true);
}

/** Little-endian u16 from bytes. */
export function le16(b: Uint8Array, at = 0): number {
  return new DataView(b.buffer, b.byteOffset, b.length).getUint16(at, true);
}

/** Bytes of a little-endian u32. */
export function u32le(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}

/** Bytes of a little-endian u16. */
export function u16le(v: number): Uint8Array {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, v, true);
  return b;
}

/** Counts calls; `expect(n)` asserts the count (a small mustCall). */
export function counter<A extends unknown[]>(fn: (...args: A) => void = () => {}): ((...args: A) => void) & { calls: A[] } {
  const calls: A[] = [];
  const wrapped = (...args: A): void => {
    calls.push(args);
    fn(...args);
  };
  return Object.assign(wrapped, { calls });
}
