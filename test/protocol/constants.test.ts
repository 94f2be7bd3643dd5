/**
 * Every struct size and protocol number checked against the numbers written in
 * the specification (docs/interop/vfio-user.rst) and libvfio-user's headers.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProtocolError } from '../../src/errors.js';
import * as p from '../../src/protocol/index.js';

describe('struct sizes match the specification', () => {
  const sizes: Array<[string, number, number]> = [
    ['HEADER_SIZE', p.HEADER_SIZE, 16],
    ['VERSION_SIZE', p.VERSION_SIZE, 4],
    ['DMA_MAP_SIZE', p.DMA_MAP_SIZE, 32],
    ['DMA_UNMAP_SIZE', p.DMA_UNMAP_SIZE, 24],
    ['DMA_BITMAP_SIZE', p.DMA_BITMAP_SIZE, 16],
    ['DEVICE_INFO_SIZE', p.DEVICE_INFO_SIZE, 16],
    ['REGION_INFO_SIZE', p.REGION_INFO_SIZE, 32],
    ['CAP_HEADER_SIZE', p.CAP_HEADER_SIZE, 8],
    ['SPARSE_MMAP_CAP_SIZE', p.SPARSE_MMAP_CAP_SIZE, 16],
    ['SPARSE_MMAP_AREA_SIZE', p.SPARSE_MMAP_AREA_SIZE, 16],
    ['REGION_TYPE_CAP_SIZE', p.REGION_TYPE_CAP_SIZE, 16],
    ['REGION_IO_FDS_SIZE', p.REGION_IO_FDS_SIZE, 16],
    ['SUB_REGION_IO_FD_SIZE', p.SUB_REGION_IO_FD_SIZE, 48],
    ['SUB_REGION_IO_FD_SPEC_SIZE', p.SUB_REGION_IO_FD_SPEC_SIZE, 40],
    ['IRQ_INFO_SIZE', p.IRQ_INFO_SIZE, 16],
    ['IRQ_SET_SIZE', p.IRQ_SET_SIZE, 20],
    ['REGION_ACCESS_SIZE', p.REGION_ACCESS_SIZE, 16],
    ['DMA_ACCESS_SIZE', p.DMA_ACCESS_SIZE, 16],
    ['QEMU_DMA_ACCESS_SIZE', p.QEMU_DMA_ACCESS_SIZE, 12],
    ['REGION_WRITE_MULTI_SIZE', p.REGION_WRITE_MULTI_SIZE, 8],
    ['REGION_WRITE_MULTI_ENTRY_SIZE', p.REGION_WRITE_MULTI_ENTRY_SIZE, 24],
    ['REGION_WRITE_MULTI_DATA_SIZE', p.REGION_WRITE_MULTI_DATA_SIZE, 8],
    ['DEVICE_FEATURE_SIZE', p.DEVICE_FEATURE_SIZE, 8],
    ['FEATURE_MIGRATION_SIZE', p.FEATURE_MIGRATION_SIZE, 8],
    ['FEATURE_MIG_STATE_SIZE', p.FEATURE_MIG_STATE_SIZE, 8],
    ['DMA_LOGGING_CONTROL_SIZE', p.DMA_LOGGING_CONTROL_SIZE, 16],
    ['DMA_LOGGING_RANGE_SIZE', p.DMA_LOGGING_RANGE_SIZE, 16],
    ['DMA_LOGGING_REPORT_SIZE', p.DMA_LOGGING_REPORT_SIZE, 24],
    ['FEATURE_MIG_DATA_SIZE_SIZE', p.FEATURE_MIG_DATA_SIZE_SIZE, 8],
    ['MIG_DATA_SIZE', p.MIG_DATA_SIZE, 8],
    // Our migration extensions (docs/protocol-extensions.md).
    ['PRECOPY_INFO_SIZE', p.PRECOPY_INFO_SIZE, 24],
    ['DEADLINE_STATE_SIZE', p.DEADLINE_STATE_SIZE, 32],
    ['ARC_LATENCY_HEADER_SIZE', p.ARC_LATENCY_HEADER_SIZE, 8],
    ['ARC_LATENCY_ENTRY_SIZE', p.ARC_LATENCY_ENTRY_SIZE, 48],
    ['MIG_IDENTITY_HEADER_SIZE', p.MIG_IDENTITY_HEADER_SIZE, 16],
    ['ISOLATION_GROUP_HEADER_SIZE', p.ISOLATION_GROUP_HEADER_SIZE, 8],
    ['SAVING_CAP_BODY_SIZE', p.SAVING_CAP_BODY_SIZE, 8],
    ['SAVING_AREA_SIZE', p.SAVING_AREA_SIZE, 16],
    ['CLIENT_MMAP_SIZE', p.CLIENT_MMAP_SIZE, 24],
  ];
  for (const [name, actual, spec] of sizes) {
    it(`${name} = ${spec}`, () => assert.equal(actual, spec));
  }

  it('every *_SIZE export is in the table above', () => {
    const exported = Object.keys(p).filter((k) => /^[A-Z0-9_]+_SIZE$/.test(k) && !k.includes('MAX') && !k.includes('XFER'));
    const checked = new Set(sizes.map(([name]) => name));
    assert.deepEqual(exported.filter((k) => !checked.has(k)), []);
  });

  it('each encoder produces its fixed size', () => {
    assert.equal(p.encodeDmaMapRequest({ argsz: 32, flags: 0, offset: 0n, addr: 0n, size: 0n }).length, 32);
    assert.equal(p.encodeRegionInfoRequest({ argsz: 32, index: 0 }).length, p.REGION_INFO_SIZE);
    assert.equal(p.encodeIrqSet({ argsz: 20, flags: 0x21, index: 0, start: 0, count: 0 }).length, p.IRQ_SET_SIZE);
    assert.equal(p.encodeDmaLoggingReport({ iova: 0n, length: 0n, pageSize: 0n }).length, p.DMA_LOGGING_REPORT_SIZE);
  });
});

describe('protocol numbers', () => {
  it('commands are numbered as in the spec', () => {
    assert.deepEqual(Object.entries(p.Command), [
      ['VERSION', 1], ['DMA_MAP', 2], ['DMA_UNMAP', 3], ['DEVICE_GET_INFO', 4], ['DEVICE_GET_REGION_INFO', 5],
      ['DEVICE_GET_REGION_IO_FDS', 6], ['DEVICE_GET_IRQ_INFO', 7], ['DEVICE_SET_IRQS', 8], ['REGION_READ', 9],
      ['REGION_WRITE', 10], ['DMA_READ', 11], ['DMA_WRITE', 12], ['DEVICE_RESET', 13], ['DIRTY_PAGES', 14],
      ['REGION_WRITE_MULTI', 15], ['DEVICE_FEATURE', 16], ['MIG_DATA_READ', 17], ['MIG_DATA_WRITE', 18],
    ]);
  });

  it('limits', () => {
    assert.equal(p.SERVER_MAX_MSG_SIZE, 1024 * 1024 + 16 + 16);
    assert.equal(p.DEFAULT_MAX_DATA_XFER_SIZE, 1 << 20);
    assert.equal(p.DEFAULT_MAX_MSG_FDS, 1);
    assert.equal(p.MAX_MSG_FDS_LIMIT, 1024);
    assert.equal(p.DMA_MAX_SIZE, 8n * 1024n ** 4n);
    assert.equal(p.U64_MAX, 0xffff_ffff_ffff_ffffn);
    assert.equal(p.NUM_REGIONS, 9);
    assert.equal(p.NUM_IRQS, 5);
  });

  it('flag words', () => {
    assert.deepEqual(p.HeaderFlags, { TYPE_MASK: 0xf, TYPE_COMMAND: 0, TYPE_REPLY: 1, NO_REPLY: 0x10, ERROR: 0x20 });
    assert.deepEqual(p.DeviceFeatureFlags, { MASK: 0xffff, GET: 0x10000, SET: 0x20000, PROBE: 0x40000 });
    assert.deepEqual(p.MigrationFlags, { STOP_COPY: 1n, P2P: 2n, PRE_COPY: 4n });
    assert.equal(p.MigrationState.PRE_COPY_P2P, 7);
    assert.equal(p.DeviceFeature.MIG_DATA_SIZE, 9);
    assert.equal(p.RegionIndex.CONFIG, 7);
    assert.equal(p.IrqIndex.REQ, 4);
    assert.equal(p.IrqSetFlags.ACTION_TRIGGER, 0x20);
    assert.deepEqual(p.DmaUnmapFlags, { GET_DIRTY_BITMAP: 1, ALL: 2 });
    assert.deepEqual(p.DmaMapFlags, { READ: 1, WRITE: 2, MMAP: 4, FILE_IO: 8 });
    assert.deepEqual(p.IoFdType, { IOEVENTFD: 0, IOREGIONFD: 1, IOEVENTFD_SHADOW: 2 });
  });
});

describe('toCommand / commandName', () => {
  it('accepts every live command', () => {
    for (let n = 1; n <= 18; n++) {
      if (n === 14) continue;
      assert.equal(p.toCommand(n), n);
    }
  });

  for (const n of [0, 14, 19, 0xffff, -1, 1.5, NaN]) {
    it(`rejects ${n} with EINVAL`, () => {
      assert.throws(() => p.toCommand(n), (e: unknown) => e instanceof ProtocolError && e.errno === p.Errno.EINVAL);
    });
  }

  it('names commands, including unknown ones', () => {
    assert.equal(p.commandName(2), 'DMA_MAP');
    assert.equal(p.commandName(14), 'DIRTY_PAGES');
    assert.equal(p.commandName(99), 'UNKNOWN(99)');
  });
});
