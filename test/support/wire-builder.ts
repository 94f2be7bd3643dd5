/**
 * An independent little-endian byte builder for golden messages. It shares no
 * code with `src/protocol`: every integer is split into bytes by hand here, so
 * a bug in the codec's writer cannot hide in the expected bytes.
 */

/** Appends little-endian fields to a growing byte list. */
export class WireBuilder {
  readonly #out: number[] = [];

  /** Number of bytes so far. */
  get length(): number {
    return this.#out.length;
  }

  u8(v: number): this {
    this.#out.push(v & 0xff);
    return this;
  }

  u16(v: number): this {
    this.#out.push(v & 0xff, (v >>> 8) & 0xff);
    return this;
  }

  u32(v: number): this {
    this.#out.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
    return this;
  }

  /** Two's-complement 32-bit (e.g. `data_fd = -1` → ff ff ff ff). */
  i32(v: number): this {
    return this.u32(v < 0 ? 0x1_0000_0000 + v : v);
  }

  u64(v: bigint | number): this {
    let x = BigInt(v);
    if (x < 0n) x += 1n << 64n;
    for (let i = 0; i < 8; i++) {
      this.#out.push(Number(x & 0xffn));
      x >>= 8n;
    }
    return this;
  }

  /** Raw bytes. */
  bytes(data: Iterable<number>): this {
    for (const b of data) this.#out.push(b & 0xff);
    return this;
  }

  /** `n` zero bytes. */
  zeros(n: number): this {
    for (let i = 0; i < n; i++) this.#out.push(0);
    return this;
  }

  /** UTF-8 text without terminator. */
  str(s: string): this {
    return this.bytes(new TextEncoder().encode(s));
  }

  /** UTF-8 text followed by a NUL byte. */
  cstr(s: string): this {
    return this.str(s).u8(0);
  }

  /** The bytes as a fresh Uint8Array. */
  build(): Uint8Array {
    return Uint8Array.from(this.#out);
  }
}

/** Header fields for {@link buildMessage}; `msgSize` defaults to 16 + payload length. */
export interface BuiltHeader {
  msgId: number;
  cmd: number;
  flags: number;
  errorNo?: number;
  msgSize?: number;
}

/** Builds a whole message (16-byte header + payload) by hand. */
export function buildMessage(h: BuiltHeader, payload: Uint8Array | WireBuilder = new Uint8Array(0)): Uint8Array {
  const body = payload instanceof WireBuilder ? payload.build() : payload;
  return new WireBuilder()
    .u16(h.msgId)
    .u16(h.cmd)
    .u32(h.msgSize ?? 16 + body.length)
    .u32(h.flags)
    .u32(h.errorNo ?? 0)
    .bytes(body)
    .build();
}

/** A fresh builder (shorthand). */
export function wb(): WireBuilder {
  return new WireBuilder();
}

/** Bytes 0, 1, 2, … n-1 (mod 256), a recognisable data pattern. */
export function pattern(n: number, start = 0): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (start + i) & 0xff);
}
