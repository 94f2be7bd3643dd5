/**
 * Power-on config bytes of five device shapes, compared with expectations
 * built byte by byte from the PCI specifications (not by the code under test).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigSpace } from '../../src/pci/index.js';
import { EXPRESS, MEM64_ROM, MSI4, MSIX8, PLAIN } from './support/devices.js';
import { diffBytes, ExpectedConfig } from './support/expected-config.js';

function identity(e: ExpectedConfig, deviceId: number, classCode: number, revision = 0): ExpectedConfig {
  return e
    .u16(0x00, 0x4e58)
    .u16(0x02, deviceId)
    .u8(0x08, revision)
    .u8(0x09, classCode & 0xff)
    .u8(0x0a, (classCode >> 8) & 0xff)
    .u8(0x0b, classCode >> 16)
    .u16(0x2c, 0x4e58)
    .u16(0x2e, 0x0010);
}

function assertGolden(actual: Uint8Array, expected: ExpectedConfig): void {
  assert.equal(actual.length, expected.bytes.length);
  assert.deepEqual(diffBytes(actual, expected.bytes), []);
}

describe('golden power-on config space', () => {
  it('plain: two BARs, no capabilities', () => {
    const e = identity(new ExpectedConfig(256), 0x0001, 0x058000, 0x01)
      .u32(0x10, 0x00000000) // BAR0: 32-bit non-prefetchable memory
      .u32(0x14, 0x00000001) // BAR1: I/O
      .u8(0x3d, 0x01); // INTA; Status 0, capability pointer 0
    assertGolden(new ConfigSpace(PLAIN).dump(), e);
  });

  it('64-bit prefetchable BAR, 32-bit BAR2, expansion ROM, PM', () => {
    const e = identity(new ExpectedConfig(256), 0x0002, 0x030000)
      .u16(0x06, 0x0010) // Status: capabilities list
      .u32(0x10, 0x0000000c) // BAR0: memory, 64-bit, prefetchable
      .u32(0x14, 0x00000000) // BAR1: upper half
      .u32(0x18, 0x00000000) // BAR2: 32-bit
      .u32(0x30, 0x00000000) // ROM: not enabled
      .u8(0x34, 0x40)
      .raw(0x40, [0x01, 0x00, 0x03, 0x00, 0x08, 0x00, 0x00, 0x00]); // PM v3, NoSoftRst
    assertGolden(new ConfigSpace(MEM64_ROM).dump(), e);
  });

  it('MSI: 4 vectors, 64-bit, per-vector masking', () => {
    const e = identity(new ExpectedConfig(256), 0x0003, 0x020000)
      .u16(0x06, 0x0010)
      .u8(0x34, 0x40)
      .u8(0x3d, 0x01)
      .raw(0x40, [0x01, 0x48, 0x03, 0x00, 0x08, 0x00, 0x00, 0x00]) // PM -> 0x48
      .raw(0x48, [0x05, 0x00]) // MSI, last
      .u16(0x4a, 0x0184); // MMC=2 (4 vectors), 64-bit, per-vector mask; address/data/mask/pending 0
    assertGolden(new ConfigSpace(MSI4).dump(), e);
  });

  it('MSI-X: 8 vectors in BAR2, table at 0, PBA at 0x800', () => {
    const e = identity(new ExpectedConfig(256), 0x0004, 0x010802)
      .u16(0x06, 0x0010)
      .u32(0x18, 0x00000000)
      .u8(0x34, 0x40)
      .u8(0x3d, 0x01)
      .raw(0x40, [0x01, 0x48, 0x03, 0x00, 0x08, 0x00, 0x00, 0x00])
      .raw(0x48, [0x11, 0x00]) // MSI-X, last
      .u16(0x4a, 0x0007) // table size 8 - 1, disabled, not function-masked
      .u32(0x4c, 0x00000002) // table offset 0, BIR 2
      .u32(0x50, 0x00000802); // PBA offset 0x800, BIR 2
    assertGolden(new ConfigSpace(MSIX8).dump(), e);
  });

  it('PCIe endpoint, vendor capability, DSN, VSEC (4 KiB)', () => {
    const e = identity(new ExpectedConfig(4096), 0x0005, 0x120000)
      .u16(0x06, 0x0010)
      .u32(0x10, 0x00000004) // 64-bit non-prefetchable
      .u8(0x34, 0x40)
      .raw(0x40, [0x01, 0x48, 0x03, 0x00, 0x08, 0x00, 0x00, 0x00]) // PM -> 0x48
      .raw(0x48, [0x10, 0x84]) // Express -> 0x84
      .u16(0x4a, 0x0002) // version 2, endpoint
      .u32(0x4c, 0x00008000) // DevCap: MPS 128, role-based error reporting
      .u16(0x50, 0x2810) // DevCtl: RO enable, no snoop, MRRS 512
      .u32(0x54, 0x00400011) // LnkCap: 2.5GT/s x1, ASPM optionality
      .u16(0x5a, 0x1011) // LnkSta: 2.5GT/s x1, slot clock
      .u32(0x74, 0x00000002) // LnkCap2: 2.5GT/s supported
      .u16(0x78, 0x0001) // LnkCtl2: target 2.5GT/s
      .raw(0x84, [0x09, 0x00, 0x06, 0xde, 0xad, 0xbe]) // vendor cap, len 6
      .u32(0x100, 0x10c10003) // DSN v1 -> 0x10c
      .u32(0x104, 0x89abcdef)
      .u32(0x108, 0x01234567)
      .u32(0x10c, 0x0001000b) // VSEC v1, last
      .u32(0x110, 0x01011234) // id 0x1234 rev 1 len 0x010
      .raw(0x114, [1, 2, 3, 4, 5, 6, 7, 8]);
    assertGolden(new ConfigSpace(EXPRESS).dump(), e);
  });

  it('each capability is where the documented order puts it', () => {
    const where = (o: ConstructorParameters<typeof ConfigSpace>[0]) =>
      new ConfigSpace(o).capabilities.map((c) => `${c.name}@${c.offset.toString(16)}+${c.size}`);
    assert.deepEqual(where(EXPRESS), ['pm@40+8', 'express@48+60', 'vendor@84+6', 'dsn@100+12', 'vsec@10c+16']);
    assert.deepEqual(
      where({ ...MSIX8, msi: { vectors: 32, bits64: false }, express: {}, vendorCapabilities: [{ payload: new Uint8Array(1) }] }),
      ['pm@40+8', 'msi@48+20', 'msix@5c+12', 'express@68+60', 'vendor@a4+4'],
    );
  });
});
