/**
 * Behaviour of individual codecs beyond the goldens: helper functions, encoder
 * argument checks, and the tolerances chosen where spec and libvfio-user differ.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError, ProtocolError } from '../../src/errors.js';
import * as p from '../../src/protocol/index.js';
import { pattern, wb } from '../support/wire-builder.js';

const isBadArg = (e: unknown): boolean => e instanceof InvalidArgumentError && e.errno === p.Errno.EINVAL;
const isEinval = (e: unknown): boolean => e instanceof ProtocolError && e.errno === p.Errno.EINVAL;

describe('bitmapBytes (libvfio-user get_bitmap_size)', () => {
  const cases: Array<[bigint, bigint, bigint]> = [
    [0n, 4096n, 0n],
    [1n, 4096n, 8n],
    [4096n, 4096n, 8n],
    [64n * 4096n, 4096n, 8n],
    [65n * 4096n, 4096n, 16n],
    [0x20_0000n, 4096n, 64n],
    [0x20_0001n, 4096n, 72n],
    [1n << 63n, 1n, 1n << 60n],
    [(1n << 64n) - 1n, 1n << 12n, 1n << 49n],
  ];
  for (const [length, pageSize, bytes] of cases) {
    it(`length ${length}, page ${pageSize} → ${bytes} bytes`, () => assert.equal(p.bitmapBytes(length, pageSize), bytes));
  }
});

describe('validateIrqSetFlags', () => {
  const cases: Array<[number, boolean]> = [
    [0x24, true], [0x22, true], [0x21, true], [0x09, true], [0x11, true], [0x64, true],
    [0x00, false], [0x20, false], [0x04, false], [0x26, false], [0x07, false], [0x2c, false], [0x3c, false],
  ];
  for (const [flags, ok] of cases) {
    it(`0x${flags.toString(16)} is ${ok ? 'valid' : 'invalid'}`, () => {
      const err = p.validateIrqSetFlags(flags);
      if (ok) assert.equal(err, undefined);
      else assert.ok(err && isEinval(err));
    });
  }
});

describe('DEVICE_FEATURE helpers', () => {
  it('splits flags into index and ops', () => {
    const flags = p.DeviceFeatureFlags.PROBE | p.DeviceFeatureFlags.GET | p.DeviceFeature.MIG_DEVICE_STATE;
    assert.equal(p.featureIndex(flags), 2);
    assert.equal(p.featureOps(flags), 0x50000);
    assert.equal(p.featureOps(0xfff8_0000 | 2), 0);
  });

  it('DMA_LOGGING_START with num_ranges 0 (log everything)', () => {
    const data = p.encodeDmaLoggingControl({ pageSize: 4096n, ranges: [] });
    assert.deepEqual(data, wb().u64(4096).u32(0).u32(0).build());
    assert.deepStrictEqual(p.decodeDmaLoggingControl(data), { pageSize: 4096n, ranges: [] });
  });

  it('MIG_DEVICE_STATE data_fd is signed', () => {
    assert.deepStrictEqual(p.decodeMigDeviceState(wb().u32(3).u32(0xffff_fffe).build()), { deviceState: 3, dataFd: -2 });
    assert.throws(() => p.encodeMigDeviceState({ deviceState: 1, dataFd: 2 ** 31 }), isBadArg);
  });
});

describe('region info', () => {
  it('ignores caps when the CAPS flag is clear or cap_offset is 0', () => {
    const bytes = wb().u32(80).u32(7).u32(1).u32(32).u64(0x4000n).u64(0).zeros(48).build();
    assert.deepStrictEqual(p.decodeRegionInfo(bytes).caps, []);
    const zeroOffset = wb().u32(80).u32(0xf).u32(1).u32(0).u64(0x4000n).u64(0).zeros(48).build();
    assert.deepStrictEqual(p.decodeRegionInfo(zeroOffset).caps, []);
  });

  it('tolerates a reply zero-padded to the client argsz', () => {
    const padded = wb().u32(80).u32(7).u32(1).u32(0).u64(0x4000n).u64(0).zeros(8).build();
    assert.equal(p.decodeRegionInfo(padded).argsz, 80);
  });

  it('lays caps out from 32 and writes cap_offset 32 whatever the value says', () => {
    const bytes = p.encodeRegionInfo({
      argsz: 48, flags: 0xf, index: 9, capOffset: 0, size: 0n, offset: 0n,
      caps: [{ kind: 'type', version: 1, type: 1, subtype: 2 }],
    });
    assert.deepEqual(bytes, wb().u32(48).u32(0xf).u32(9).u32(32).u64(0).u64(0).u16(2).u16(1).u32(0).u32(1).u32(2).build());
  });

  it('region info request ignores all but argsz and index', () => {
    const bytes = wb().u32(32).u32(0xffff).u32(3).u32(9).u64(1).u64(2).build();
    assert.deepStrictEqual(p.decodeRegionInfoRequest(bytes), { argsz: 32, index: 3 });
  });
});

describe('region io fds', () => {
  const sub = { offset: 0n, size: 4n, fdIndex: 0, type: 0, flags: 0, shadowMemFdIndex: 0, shadowOffset: 0n, datamatch: 1n };

  it('refuses shadow fields in 40-byte records and record counts that differ from count', () => {
    const v = { argsz: 56, flags: 0, index: 0, count: 1, subRegions: [{ ...sub, shadowOffset: 8n }] };
    assert.throws(() => p.encodeRegionIoFdsReply(v, { recordSize: 40 }), isBadArg);
    assert.equal(p.encodeRegionIoFdsReply(v).length, 64);
    assert.throws(() => p.encodeRegionIoFdsReply({ ...v, count: 2 }), isBadArg);
  });

  it('decides the record size by payload length', () => {
    for (const recordSize of [40, 48] as const) {
      const v = { argsz: 16 + 3 * recordSize, flags: 0, index: 2, count: 3, subRegions: [sub, sub, sub] };
      const bytes = p.encodeRegionIoFdsReply(v, { recordSize });
      assert.equal(bytes.length, 16 + 3 * recordSize);
      assert.deepStrictEqual(p.decodeRegionIoFdsReply(bytes), v);
    }
  });
});

describe('region access', () => {
  it('encoders check count against data', () => {
    assert.throws(() => p.encodeRegionAccessWithData({ offset: 0n, region: 0, count: 2, data: pattern(3) }), isBadArg);
    assert.throws(
      () => p.encodeRegionWriteMulti({ writes: [{ offset: 0n, region: 0, count: 9, data: pattern(9) }] }),
      isBadArg,
    );
  });

  it('REGION_READ request ignores trailing bytes; REGION_WRITE reply too', () => {
    assert.equal(p.decodeRegionReadRequest(wb().u64(0).u32(0).u32(4).zeros(4).build()).count, 4);
    assert.equal(p.decodeRegionWriteReply(wb().u64(0).u32(0).u32(4).zeros(4).build())?.count, 4);
  });

  it('WRITE_MULTI data is only the first count bytes of the entry', () => {
    const bytes = wb().u64(1).u64(8).u32(1).u32(2).bytes([1, 2, 3, 4, 5, 6, 7, 8]).build();
    assert.deepEqual(p.decodeRegionWriteMulti(bytes).writes[0]?.data, Uint8Array.of(1, 2));
  });
});

describe('DMA', () => {
  it('DMA_UNMAP reply without bitmap bytes even if flags asks for one', () => {
    const bytes = wb().u32(24).u32(1).u64(0x1000n).u64(0x1000n).build();
    assert.deepStrictEqual(p.decodeDmaUnmapReply(bytes), { argsz: 24, flags: 1, addr: 0x1000n, size: 0x1000n });
  });

  it('DMA_READ reply in QEMU layout also accepts 12 + count bytes', () => {
    const bytes = wb().u64(0x2000n).u32(3).bytes([7, 8, 9]).build();
    assert.deepStrictEqual(p.decodeDmaReadReply(bytes, 'qemu'), { addr: 0x2000n, count: 3n, data: Uint8Array.of(7, 8, 9) });
  });

  it('encoders check count against data', () => {
    assert.throws(() => p.encodeDmaAccessWithData({ addr: 0n, count: 4n, data: pattern(3) }), isBadArg);
    assert.throws(
      () => p.encodeDmaUnmapReply({ argsz: 0, flags: 1, addr: 0n, size: 0n, bitmap: { pgsize: 1n, size: 2n, data: pattern(1) } }),
      isBadArg,
    );
    assert.throws(() => p.encodeDmaMapRequest({ argsz: 32, flags: 0, offset: -1n, addr: 0n, size: 0n }), isBadArg);
    assert.throws(() => p.encodeDmaUnmapRequest({ argsz: 40, flags: 1, addr: 0n, size: 0n }), isBadArg);
    assert.throws(
      () => p.encodeDmaUnmapRequest({ argsz: 40, flags: 0, addr: 0n, size: 0n, bitmap: { pgsize: 1n, size: 1n } }),
      isBadArg,
    );
  });
});

describe('IRQs', () => {
  it('SET_IRQS without BOOL ignores trailing bytes', () => {
    const v = p.decodeIrqSet(wb().u32(20).u32(0x24).u32(1).u32(0).u32(1).zeros(4).build());
    assert.equal(Object.hasOwn(v, 'data'), false);
  });

  it('encodeIrqSet requires data exactly with DATA_BOOL', () => {
    const base = { argsz: 20, index: 0, start: 0, count: 2 };
    assert.throws(() => p.encodeIrqSet({ ...base, flags: 0x22 }), isBadArg);
    assert.throws(() => p.encodeIrqSet({ ...base, flags: 0x22, data: pattern(1) }), isBadArg);
    assert.throws(() => p.encodeIrqSet({ ...base, flags: 0x24, data: pattern(2) }), isBadArg);
  });
});

describe('migration data', () => {
  it('MIG_DATA_WRITE ignores bytes after 8 + size', () => {
    const v = p.decodeMigDataWriteRequest(wb().u32(8).u32(2).bytes([1, 2, 3]).build());
    assert.deepStrictEqual(v, { argsz: 8, size: 2, data: Uint8Array.of(1, 2) });
  });

  it('encodeMigData checks size against data', () => {
    assert.throws(() => p.encodeMigData({ argsz: 8, size: 3, data: pattern(2) }), isBadArg);
  });
});

describe('empty payloads', () => {
  it('decodeEmpty ignores whatever is there; encodeEmpty is zero bytes', () => {
    assert.equal(p.decodeEmpty(pattern(4)), undefined);
    assert.equal(p.encodeEmpty().length, 0);
  });
});
