import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError, ProtocolError } from '../../src/errors.js';
import { Errno, WireReader, WireWriter } from '../../src/protocol/index.js';
import { wb } from '../support/wire-builder.js';

const isEinval = (e: unknown): boolean => e instanceof ProtocolError && e.errno === Errno.EINVAL;
const isBadArg = (e: unknown): boolean => e instanceof InvalidArgumentError && e.errno === Errno.EINVAL;

describe('WireReader', () => {
  it('reads little-endian fields and respects byteOffset', () => {
    const bytes = wb().u8(0xee).u8(0x7f).u16(0xbeef).u32(0xdeadbeef).u64(0x0123_4567_89ab_cdefn).i32(-2).build();
    const r = new WireReader(bytes.subarray(1), 'test');
    assert.equal(r.u8('a'), 0x7f);
    assert.equal(r.u16('b'), 0xbeef);
    assert.equal(r.u32('c'), 0xdeadbeef);
    assert.equal(r.u64('d'), 0x0123_4567_89ab_cdefn);
    assert.equal(r.i32('e'), -2);
    assert.equal(r.remaining, 0);
  });

  it('bytes() and rest() are views, not copies', () => {
    const bytes = Uint8Array.of(1, 2, 3, 4);
    const r = new WireReader(bytes, 'test');
    const v = r.bytes(2, 'x');
    bytes[0] = 9;
    assert.equal(v[0], 9);
    assert.deepEqual(r.rest(), Uint8Array.of(3, 4));
    assert.equal(r.rest().length, 0);
  });

  it('every out-of-bounds read throws ProtocolError EINVAL naming the field, never RangeError', () => {
    for (const read of [
      (r: WireReader) => r.u8('f8'),
      (r: WireReader) => r.u16('f16'),
      (r: WireReader) => r.u32('f32'),
      (r: WireReader) => r.i32('fi32'),
      (r: WireReader) => r.u64('f64'),
      (r: WireReader) => r.bytes(1, 'fbytes'),
      (r: WireReader) => r.skip(1, 'fskip'),
      (r: WireReader) => r.bytes(-1, 'fneg'),
      (r: WireReader) => r.bytes(NaN, 'fnan'),
      (r: WireReader) => r.seek(1, 'fseek'),
    ]) {
      assert.throws(() => read(new WireReader(new Uint8Array(0), 'STRUCT')), (e: unknown) => {
        assert.ok(isEinval(e));
        assert.match((e as Error).message, /^STRUCT: .*f(8|16|32|i32|64|bytes|skip|neg|nan|seek)/);
        return true;
      });
    }
  });

  it('a partial field does not advance the cursor', () => {
    const r = new WireReader(Uint8Array.of(1, 2, 3), 'test');
    assert.throws(() => r.u32('x'), isEinval);
    assert.equal(r.offset, 0);
    assert.equal(r.u16('y'), 0x0201);
  });
});

describe('WireWriter', () => {
  it('writes little-endian fields into an exact-size buffer', () => {
    const out = new WireWriter(23, 'test')
      .u8(0x7f, 'a').u16(0xbeef, 'b').u32(0xdeadbeef, 'c').u64(0x0123_4567_89ab_cdefn, 'd').i32(-2, 'e').bytes(Uint8Array.of(5, 6), 'b').zeros(2, 'z')
      .finish();
    assert.deepEqual(out, wb().u8(0x7f).u16(0xbeef).u32(0xdeadbeef).u64(0x0123_4567_89ab_cdefn).i32(-2).bytes([5, 6, 0, 0]).build());
  });

  it('rejects values that do not fit instead of wrapping', () => {
    const cases: Array<(w: WireWriter) => unknown> = [
      (w) => w.u8(256, 'x'),
      (w) => w.u16(0x10000, 'x'),
      (w) => w.u32(-1, 'x'),
      (w) => w.u32(2 ** 32, 'x'),
      (w) => w.u32(1.5, 'x'),
      (w) => w.i32(2 ** 31, 'x'),
      (w) => w.u64(-1n, 'x'),
      (w) => w.u64(1n << 64n, 'x'),
    ];
    for (const c of cases) assert.throws(() => c(new WireWriter(8, 'test')), isBadArg);
  });

  it('rejects overruns and short writes', () => {
    assert.throws(() => new WireWriter(2, 'test').u32(1, 'x'), isBadArg);
    assert.throws(() => new WireWriter(4, 'test').u16(1, 'x').finish(), isBadArg);
    assert.throws(() => new WireWriter(-1, 'test'), isBadArg);
  });
});
