/**
 * Tier (c): hostile input. Truncations, count mismatches, capability chains that
 * loop or point out of range, sums that wrap 2^64, huge counts, random
 * mutations. Every failure must be a ProtocolError with the expected errno —
 * never a RangeError, never a silent success with garbage.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProtocolError } from '../../src/errors.js';
import * as p from '../../src/protocol/index.js';
import { GOLDENS } from '../support/golden.js';
import { wb } from '../support/wire-builder.js';

const EINVAL = p.Errno.EINVAL;

function payloadOf(name: string): Uint8Array {
  const g = GOLDENS.find((x) => x.name === name);
  assert.ok(g, `no golden named ${name}`);
  return g.bytes.subarray(p.HEADER_SIZE);
}

function assertProtocolError(fn: () => unknown, errno = EINVAL): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ProtocolError, `expected ProtocolError, got ${String(e)}`);
    assert.equal(e.errno, errno);
    return true;
  });
}

/** Returns normally or throws ProtocolError; anything else fails the test. */
function assertTotal(fn: () => unknown, what: string): void {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ProtocolError, `${what}: threw ${String(e)}`);
  }
}

describe('truncated payloads: every prefix shorter than the struct → EINVAL', () => {
  /** [decoder, its minimum valid length, golden to take prefixes of, shorter lengths that are valid on their own]. */
  const table: Array<[string, (b: Uint8Array) => unknown, number, string, number[]?]> = [
    ['decodeVersion', p.decodeVersion, 4, 'req VERSION with capabilities'],
    ['decodeDmaMapRequest', p.decodeDmaMapRequest, 32, 'req DMA_MAP with fd'],
    ['decodeDmaUnmapRequest', p.decodeDmaUnmapRequest, 24, 'req DMA_UNMAP'],
    ['decodeDmaUnmapRequest (bitmap)', p.decodeDmaUnmapRequest, 40, 'req DMA_UNMAP GET_DIRTY_BITMAP'],
    ['decodeDmaUnmapReply', p.decodeDmaUnmapReply, 24, 'rep DMA_UNMAP echo'],
    ['decodeDmaUnmapReply (bitmap)', p.decodeDmaUnmapReply, 24 + 16 + 64, 'rep DMA_UNMAP with bitmap', [24]],
    ['decodeDmaReadRequest', p.decodeDmaReadRequest, 16, 'req DMA_READ'],
    ['decodeDmaReadReply', (b) => p.decodeDmaReadReply(b), 32, 'rep DMA_READ'],
    ['decodeDmaReadReply (qemu)', (b) => p.decodeDmaReadReply(b, 'qemu'), 28, 'rep DMA_READ QEMU layout'],
    ['decodeDmaWriteRequest', p.decodeDmaWriteRequest, 24, 'req DMA_WRITE'],
    ['decodeDeviceInfo', p.decodeDeviceInfo, 16, 'rep DEVICE_GET_INFO'],
    ['decodeRegionInfoRequest', p.decodeRegionInfoRequest, 32, 'req DEVICE_GET_REGION_INFO'],
    ['decodeRegionInfo', p.decodeRegionInfo, 32, 'rep DEVICE_GET_REGION_INFO without caps'],
    ['decodeRegionInfo (sparse cap)', p.decodeRegionInfo, 80, 'rep DEVICE_GET_REGION_INFO sparse mmap'],
    // an unknown capability's length is "up to the next one or the end", so 88.. are valid on their own
    ['decodeRegionInfo (cap chain)', p.decodeRegionInfo, 112, 'rep DEVICE_GET_REGION_INFO cap chain sparse+type+unknown',
      Array.from({ length: 24 }, (_, i) => 88 + i)],
    ['decodeRegionIoFdsRequest', p.decodeRegionIoFdsRequest, 16, 'req DEVICE_GET_REGION_IO_FDS'],
    ['decodeRegionIoFdsReply', p.decodeRegionIoFdsReply, 16, 'rep DEVICE_GET_REGION_IO_FDS records withheld'],
    ['decodeIrqInfo', p.decodeIrqInfo, 16, 'rep DEVICE_GET_IRQ_INFO'],
    ['decodeIrqSet', p.decodeIrqSet, 20, 'req DEVICE_SET_IRQS EVENTFD|TRIGGER'],
    ['decodeIrqSet (BOOL)', p.decodeIrqSet, 23, 'req DEVICE_SET_IRQS BOOL|TRIGGER'],
    ['decodeRegionReadRequest', p.decodeRegionReadRequest, 16, 'req REGION_READ'],
    ['decodeRegionWriteRequest', p.decodeRegionWriteRequest, 24, 'req REGION_WRITE'],
    ['decodeRegionWriteMulti', p.decodeRegionWriteMulti, 56, 'req REGION_WRITE_MULTI'],
    ['decodeRegionWriteMultiReply', p.decodeRegionWriteMultiReply, 8, 'rep REGION_WRITE_MULTI'],
    ['decodeDeviceFeature', p.decodeDeviceFeature, 8, 'req DEVICE_FEATURE GET MIGRATION'],
    ['decodeMigDataReadRequest', p.decodeMigDataReadRequest, 8, 'req MIG_DATA_READ'],
    ['decodeMigDataReadReply', p.decodeMigDataReadReply, 13, 'rep MIG_DATA_READ'],
    ['decodeMigDataWriteRequest', p.decodeMigDataWriteRequest, 14, 'req MIG_DATA_WRITE'],
  ];
  for (const [name, decode, min, golden, valid = []] of table) {
    it(`${name}: prefixes 0..${min - 1}`, () => {
      const full = payloadOf(golden);
      assert.ok(full.length >= min);
      for (let n = 0; n < min; n++) {
        if (valid.includes(n)) decode(full.subarray(0, n));
        else assertProtocolError(() => decode(full.subarray(0, n)));
      }
      decode(full.subarray(0, min));
    });
  }

  it('REGION_READ/REGION_WRITE replies: 1..15 bytes (0 is libvfio-user’s count-0 reply)', () => {
    const read = payloadOf('rep REGION_READ');
    const write = payloadOf('rep REGION_WRITE');
    for (let n = 1; n < 16; n++) {
      assertProtocolError(() => p.decodeRegionReadReply(read.subarray(0, n)));
      assertProtocolError(() => p.decodeRegionWriteReply(write.subarray(0, n)));
    }
    for (let n = 16; n < read.length; n++) assertProtocolError(() => p.decodeRegionReadReply(read.subarray(0, n)));
  });

  it('DMA_WRITE reply: every length but 0, 12 and 16', () => {
    const full = new Uint8Array(20);
    for (let n = 0; n <= 20; n++) {
      if (n === 0 || n === 12 || n === 16) p.decodeDmaWriteReply(full.subarray(0, n));
      else assertProtocolError(() => p.decodeDmaWriteReply(full.subarray(0, n)));
    }
  });

  const featureData: Array<[string, (b: Uint8Array) => unknown, number]> = [
    ['decodeMigrationFeature', p.decodeMigrationFeature, 8],
    ['decodeMigDeviceState', p.decodeMigDeviceState, 8],
    ['decodeDmaLoggingControl', p.decodeDmaLoggingControl, 16],
    ['decodeDmaLoggingReport', p.decodeDmaLoggingReport, 24],
    ['decodeDmaLoggingReportReply', p.decodeDmaLoggingReportReply, 24],
    ['decodeMigDataSize', p.decodeMigDataSize, 8],
  ];
  for (const [name, decode, min] of featureData) {
    it(`${name}: prefixes 0..${min - 1}`, () => {
      const full = new Uint8Array(min);
      for (let n = 0; n < min; n++) assertProtocolError(() => decode(full.subarray(0, n)));
      decode(full);
    });
  }

  it('every prefix of every golden decodes or throws ProtocolError, never anything else', () => {
    for (const g of GOLDENS) {
      const payload = g.bytes.subarray(p.HEADER_SIZE);
      for (let n = 0; n < payload.length; n++) assertTotal(() => g.decode(payload.subarray(0, n)), `${g.name}[0..${n}]`);
    }
  });
});

const regionHead = (capOffset: number, argsz = 64, flags = 0xf) =>
  wb().u32(argsz).u32(flags).u32(1).u32(capOffset).u64(0x4000n).u64(0);
const sparse = (next: number, nr: number) => wb().u16(1).u16(1).u32(next).u32(nr).u32(0);
const typeCap = (next: number) => wb().u16(2).u16(1).u32(next).u32(3).u32(1);
const cat = (...parts: Array<{ build(): Uint8Array }>) => wb().bytes(parts.flatMap((x) => [...x.build()])).build();

describe('hostile structures', () => {
  const U64_MAX = (1n << 64n) - 1n;
  const cases: Array<[string, () => unknown]> = [
    // capability chains
    ['cap chain self-loop', () => p.decodeRegionInfo(cat(regionHead(32), typeCap(32)))],
    ['cap chain two-cap loop', () => p.decodeRegionInfo(cat(regionHead(32), typeCap(48), typeCap(32)))],
    ['cap next past the end', () => p.decodeRegionInfo(cat(regionHead(32), typeCap(4096)))],
    ['cap next with header straddling the end', () => p.decodeRegionInfo(cat(regionHead(32), typeCap(44)))],
    ['cap next inside region_info', () => p.decodeRegionInfo(cat(regionHead(32), typeCap(8)))],
    ['cap_offset inside region_info', () => p.decodeRegionInfo(cat(regionHead(16), typeCap(0)))],
    ['cap_offset past the payload', () => p.decodeRegionInfo(regionHead(32).build())],
    ['cap_offset 0xffffffff', () => p.decodeRegionInfo(cat(regionHead(0xffff_ffff), typeCap(0)))],
    ['sparse nr_areas 0xffffffff', () => p.decodeRegionInfo(cat(regionHead(32), sparse(0, 0xffff_ffff)))],
    ['sparse nr_areas one too many', () => p.decodeRegionInfo(cat(regionHead(32), sparse(0, 2), wb().u64(0).u64(0x1000n)))],
    ['overlapping caps', () => p.decodeRegionInfo(cat(regionHead(32), wb().u16(2).u16(1).u32(36).u32(0).u32(0)))],
    ['overlapping headers chain', () => p.decodeRegionInfo(cat(regionHead(32), wb().u16(9).u16(1).u32(33).u32(34).u32(0)))],
    // io fds
    ['io-fds count 3 with two 48-byte records', () => p.decodeRegionIoFdsReply(wb().u32(0).u32(0).u32(0).u32(3).zeros(96).build())],
    ['io-fds count 0xffffffff with one record', () => p.decodeRegionIoFdsReply(wb().u32(0).u32(0).u32(0).u32(0xffff_ffff).zeros(48).build())],
    ['io-fds record bytes fit neither size', () => p.decodeRegionIoFdsReply(wb().u32(0).u32(0).u32(0).u32(1).zeros(44).build())],
    ['io-fds records with count 0', () => p.decodeRegionIoFdsReply(wb().u32(0).u32(0).u32(0).u32(0).zeros(40).build())],
    // region access
    ['REGION_READ offset+count wraps 2^64', () => p.decodeRegionReadRequest(wb().u64(U64_MAX).u32(0).u32(2).build())],
    ['REGION_READ offset 2^64-1 count 0xffffffff', () => p.decodeRegionReadRequest(wb().u64(U64_MAX).u32(0).u32(0xffff_ffff).build())],
    ['REGION_WRITE offset+count wraps', () => p.decodeRegionWriteRequest(wb().u64(U64_MAX - 1n).u32(0).u32(4).zeros(4).build())],
    ['REGION_WRITE count > data', () => p.decodeRegionWriteRequest(wb().u64(0).u32(0).u32(9).zeros(8).build())],
    ['REGION_WRITE count < data', () => p.decodeRegionWriteRequest(wb().u64(0).u32(0).u32(7).zeros(8).build())],
    ['REGION_WRITE count 0xffffffff', () => p.decodeRegionWriteRequest(wb().u64(0).u32(0).u32(0xffff_ffff).zeros(8).build())],
    ['REGION_READ reply count mismatch', () => p.decodeRegionReadReply(wb().u64(0).u32(0).u32(4).zeros(3).build())],
    ['REGION_WRITE reply wraps', () => p.decodeRegionWriteReply(wb().u64(U64_MAX).u32(0).u32(8).build())],
    ['WRITE_MULTI wr_cnt 2^64-1', () => p.decodeRegionWriteMulti(wb().u64(U64_MAX).zeros(24).build())],
    ['WRITE_MULTI wr_cnt 2 with one entry', () => p.decodeRegionWriteMulti(wb().u64(2).u64(0).u32(0).u32(4).zeros(8).build())],
    ['WRITE_MULTI trailing bytes', () => p.decodeRegionWriteMulti(wb().u64(1).u64(0).u32(0).u32(4).zeros(9).build())],
    ['WRITE_MULTI entry count 9', () => p.decodeRegionWriteMulti(wb().u64(1).u64(0).u32(0).u32(9).zeros(8).build())],
    ['WRITE_MULTI entry wraps', () => p.decodeRegionWriteMulti(wb().u64(1).u64(U64_MAX).u32(0).u32(2).zeros(8).build())],
    // irqs
    ['SET_IRQS BOOL count 3 with 2 bytes', () => p.decodeIrqSet(wb().u32(22).u32(0x22).u32(0).u32(0).u32(3).zeros(2).build())],
    ['SET_IRQS BOOL count 3 with 4 bytes', () => p.decodeIrqSet(wb().u32(24).u32(0x22).u32(0).u32(0).u32(3).zeros(4).build())],
    ['SET_IRQS BOOL count 0xffffffff', () => p.decodeIrqSet(wb().u32(20).u32(0x22).u32(0).u32(0).u32(0xffff_ffff).build())],
    // dma
    ['DMA_UNMAP GET_DIRTY_BITMAP without bitmap header', () => p.decodeDmaUnmapRequest(wb().u32(40).u32(1).u64(0).u64(0).build())],
    ['DMA_UNMAP reply bitmap size > bytes', () => p.decodeDmaUnmapReply(wb().u32(0).u32(1).u64(0).u64(0).u64(4096).u64(9).zeros(8).build())],
    ['DMA_UNMAP reply bitmap size 2^64-1', () => p.decodeDmaUnmapReply(wb().u32(0).u32(1).u64(0).u64(0).u64(4096).u64(U64_MAX).zeros(8).build())],
    ['DMA_UNMAP reply partial bitmap header', () => p.decodeDmaUnmapReply(wb().u32(0).u32(1).u64(0).u64(0).zeros(6).build())],
    ['DMA_WRITE count mismatch', () => p.decodeDmaWriteRequest(wb().u64(0).u64(5).zeros(4).build())],
    ['DMA_WRITE count 2^64-1', () => p.decodeDmaWriteRequest(wb().u64(0).u64(U64_MAX).zeros(4).build())],
    ['DMA_READ reply count mismatch', () => p.decodeDmaReadReply(wb().u64(0).u64(8).zeros(4).build())],
    ['DMA_READ reply QEMU count mismatch', () => p.decodeDmaReadReply(wb().u64(0).u32(8).zeros(5).build(), 'qemu')],
    // features and migration data
    ['DMA_LOGGING_START num_ranges 0xffffffff', () => p.decodeDmaLoggingControl(wb().u64(4096).u32(0xffff_ffff).u32(0).zeros(16).build())],
    ['DMA_LOGGING_START num_ranges 3 with 2 ranges', () => p.decodeDmaLoggingControl(wb().u64(4096).u32(3).u32(0).zeros(32).build())],
    ['MIG_DATA_READ reply size > payload', () => p.decodeMigDataReadReply(wb().u32(72).u32(64).zeros(63).build())],
    ['MIG_DATA_WRITE size 0xffffffff', () => p.decodeMigDataWriteRequest(wb().u32(8).u32(0xffff_ffff).zeros(16).build())],
    ['bitmapBytes page size 0', () => p.bitmapBytes(4096n, 0n)],
    ['bitmapBytes negative length', () => p.bitmapBytes(-1n, 4096n)],
  ];
  for (const [name, fn] of cases) it(`${name} → EINVAL`, () => assertProtocolError(fn));

  it('an access ending exactly at 2^64 is not a wrap', () => {
    assert.equal(p.decodeRegionReadRequest(wb().u64(U64_MAX - 3n).u32(0).u32(4).build()).count, 4);
    assert.equal(p.decodeRegionReadRequest(wb().u64(U64_MAX).u32(0).u32(1).build()).count, 1);
  });

  it('a 1 MiB chain of 131k capabilities decodes in linear time', () => {
    const body = wb();
    for (let at = 32; at < (1 << 20) - 8; at += 1) body.u8(0);
    const bytes = cat(regionHead(32, 0, 0xf), body);
    const view = new DataView(bytes.buffer);
    for (let at = 32; at + 8 <= bytes.length; at += 8) {
      view.setUint16(at, 9, true);
      view.setUint32(at + 4, at + 8 + 8 <= bytes.length ? at + 8 : 0, true);
    }
    const t0 = performance.now();
    const info = p.decodeRegionInfo(bytes);
    assert.ok(info.caps.length > 100_000);
    assert.ok(performance.now() - t0 < 2000);
  });
});

describe('random mutations of every golden', () => {
  let seed = 0x1234_5678;
  const rand = (n: number): number => {
    seed = (Math.imul(seed, 1_103_515_245) + 12_345) >>> 0;
    return seed % n;
  };
  const nasty = [0x00, 0xff, 0x7f, 0x80, 0x01];

  for (const g of GOLDENS) {
    it(g.name, () => {
      const payload = g.bytes.slice(p.HEADER_SIZE);
      for (let round = 0; round < 200; round++) {
        const m = Uint8Array.from(payload);
        const edits = 1 + rand(4);
        for (let e = 0; e < edits && m.length > 0; e++) m[rand(m.length)] = nasty[rand(nasty.length)] ?? 0;
        assertTotal(() => g.decode(m), `${g.name} round ${round}`);
        const grown = new Uint8Array(m.length + rand(40));
        grown.set(m);
        assertTotal(() => g.decode(grown), `${g.name} grown round ${round}`);
      }
    });
  }
});
