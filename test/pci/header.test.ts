/**
 * Header register semantics: BAR sizing probes, Command and Status masks,
 * read-only registers, accesses at any alignment, the unclaimed area, bounds.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProtocolError } from '../../src/errors.js';
import { ConfigSpace, type ConfigSpaceEvent, type ConfigSpaceOptions, type VendorArea } from '../../src/pci/index.js';
import { MEM64_ROM, PLAIN } from './support/devices.js';
import { counter, le16, le32, u16le, u32le } from './support/expected-config.js';

const ALL_ONES = u32le(0xffffffff);

function probe(cs: ConfigSpace, offset: number): number {
  cs.write(offset, ALL_ONES);
  return le32(cs.read(offset, 4));
}

function isEinval(e: unknown): boolean {
  return e instanceof ProtocolError && e.errno === 22 && e.code === 'EINVAL';
}

describe('BAR sizing', () => {
  const cs = (bars: ConfigSpaceOptions['bars'], rom?: ConfigSpaceOptions['rom']) =>
    new ConfigSpace({ vendorId: 1, deviceId: 2, pm: false, bars, rom });

  it('32-bit memory BARs read back the size mask with their flags', () => {
    const c = cs([{ size: 0x1000, type: 'mem32' }, { size: 16, type: 'mem32', prefetchable: true }, { size: 1n << 31n, type: 'mem32' }]);
    assert.equal(probe(c, 0x10), 0xfffff000);
    assert.equal(probe(c, 0x14), 0xfffffff8);
    assert.equal(probe(c, 0x18), 0x80000000);
  });

  it('64-bit BARs size as a pair', () => {
    const c = cs([{ size: 0x100000, type: 'mem64', prefetchable: true }, undefined, { size: 1n << 33n, type: 'mem64' }]);
    assert.equal(probe(c, 0x10), 0xfff0000c);
    assert.equal(probe(c, 0x14), 0xffffffff);
    assert.equal(probe(c, 0x18), 0x00000004);
    assert.equal(probe(c, 0x1c), 0xfffffffe);
  });

  it('I/O BARs keep bit 0 set', () => {
    const c = cs([{ size: 256, type: 'io' }, { size: 4, type: 'io' }]);
    assert.equal(probe(c, 0x10), 0xffffff01);
    assert.equal(probe(c, 0x14), 0xfffffffd);
  });

  it('absent BARs read 0 and ignore writes', () => {
    const c = cs([undefined, { size: 16, type: 'mem32' }]);
    for (const at of [0x10, 0x18, 0x1c, 0x20, 0x24]) assert.equal(probe(c, at), 0, `0x${at.toString(16)}`);
    assert.equal(c.barAddress(0), 0n);
  });

  it('the ROM BAR: size mask, enable bit, address', () => {
    const c = cs([], { size: 0x10000 });
    assert.equal(probe(c, 0x30), 0xffff0001);
    assert.equal(c.romEnabled, true);
    c.write(0x30, u32le(0xfffffffe));
    assert.equal(le32(c.read(0x30, 4)), 0xffff0000);
    c.write(0x30, u32le(0xfe1237ff));
    assert.equal(le32(c.read(0x30, 4)), 0xfe120001);
    assert.equal(c.romAddress, 0xfe120000n);
    assert.equal(c.romSize, 0x10000n);
  });

  it('programmed addresses keep only size-aligned bits; barAddress combines 64-bit halves', () => {
    const c = new ConfigSpace(MEM64_ROM);
    c.write(0x10, u32le(0x12345678));
    c.write(0x14, u32le(0x00000008));
    assert.equal(le32(c.read(0x10, 4)), 0x1230000c);
    assert.equal(c.barAddress(0), 0x812300000n);
    assert.equal(c.barAddress(1), 0n, 'upper half of a 64-bit BAR');
    c.write(0x18, u32le(0xfebf0017));
    assert.equal(c.barAddress(2), 0xfebf0010n);
    assert.throws(() => c.barAddress(6), { name: 'InvalidArgumentError' });
  });

  it('byte and word writes into a BAR follow the same rule', () => {
    const c = new ConfigSpace(PLAIN);
    c.write(0x13, Uint8Array.of(0xfe));
    c.write(0x10, u16le(0xffff));
    assert.equal(le32(c.read(0x10, 4)), 0xfe00f000);
    c.write(0x11, Uint8Array.of(0x12, 0x34));
    assert.equal(c.barAddress(0), 0xfe341000n);
  });
});

describe('Command and Status', () => {
  it('only the defined Command bits are writable, and changes raise one event', () => {
    const c = new ConfigSpace(PLAIN);
    const events = counter<[ConfigSpaceEvent]>();
    c.onChange(events);
    c.write(0x04, u16le(0xffff));
    assert.equal(c.command, 0x0547);
    assert.equal(le16(c.read(0x04, 2)), 0x0547);
    assert.ok(c.ioEnabled && c.memoryEnabled && c.busMasterEnabled && c.intxDisabled);
    assert.deepEqual(events.calls[0], [{ type: 'command', previous: 0, current: 0x0547 }]);
    assert.deepEqual(events.calls[1], [{ type: 'interrupt-mode', previous: 'intx', current: 'none' }]);
    c.write(0x04, u16le(0x0547));
    assert.equal(events.calls.length, 2, 'no event when nothing changed');
    c.write(0x05, Uint8Array.of(0x00));
    assert.equal(c.command, 0x0047);
    assert.equal(c.intxDisabled, false);
  });

  it('Status error bits are RW1C; the rest is read-only', () => {
    const c = new ConfigSpace(MEM64_ROM);
    assert.equal(c.status, 0x0010);
    c.signalStatus(0xf900);
    assert.equal(c.status, 0xf910);
    c.write(0x06, u16le(0x0100));
    assert.equal(c.status, 0xf810);
    c.write(0x07, Uint8Array.of(0x30));
    assert.equal(c.status, 0xc810);
    c.write(0x06, u16le(0xffff));
    assert.equal(c.status, 0x0010, 'capabilities-list bit stays');
    assert.throws(() => c.signalStatus(0x0010), { name: 'InvalidArgumentError' });
  });

  it('Interrupt Status (bit 3) follows the device and ignores the driver', () => {
    const c = new ConfigSpace(PLAIN);
    c.setIntxAsserted(true);
    assert.equal(c.status, 0x0008);
    c.write(0x06, u16le(0xffff));
    assert.equal(c.status, 0x0008);
    c.setIntxAsserted(false);
    assert.equal(c.status, 0);
    assert.throws(() => new ConfigSpace(MEM64_ROM).setIntxAsserted(true), { name: 'StateError' });
  });
});

describe('read-only and read/write header registers', () => {
  it('writes to read-only registers are silently ignored', () => {
    const c = new ConfigSpace({ ...PLAIN, multiFunction: true });
    const before = c.dump();
    for (const at of [0x00, 0x02, 0x08, 0x09, 0x0a, 0x0b, 0x0e, 0x0f, 0x28, 0x2c, 0x2e, 0x34, 0x35, 0x38, 0x3d, 0x3e, 0x3f]) {
      c.write(at, Uint8Array.of(0xa5));
    }
    c.write(0x00, new Uint8Array(4).fill(0xff));
    assert.deepEqual(c.dump(), before);
    assert.equal(before[0x0e], 0x80, 'multi-function header type');
  });

  it('Cache Line Size, Latency Timer and Interrupt Line are read/write', () => {
    const c = new ConfigSpace(PLAIN);
    c.write(0x0c, Uint8Array.of(0x10, 0x40, 0xff, 0xff));
    c.write(0x3c, Uint8Array.of(0x0b, 0x04));
    assert.deepEqual([...c.read(0x0c, 4)], [0x10, 0x40, 0x00, 0x00]);
    assert.deepEqual([...c.read(0x3c, 2)], [0x0b, 0x01]);
  });

  it('unaligned and cross-register accesses', () => {
    const c = new ConfigSpace(PLAIN);
    assert.equal(le32(c.read(0x02, 4)), 0x00000001, 'device id + command');
    assert.deepEqual([...c.read(0x07, 3)], [0x00, 0x01, 0x00]);
    // one write spanning Command, Status, Revision, Class, CLS, Latency, Header Type, BIST
    c.write(0x03, new Uint8Array(13).fill(0xff));
    assert.deepEqual([...c.read(0x00, 16)], [0x58, 0x4e, 0x01, 0x00, 0x47, 0x05, 0x00, 0x00, 0x01, 0x00, 0x80, 0x05, 0xff, 0xff, 0x00, 0x00]);
    // and the whole header at once
    c.write(0x00, new Uint8Array(64).fill(0xff));
    assert.equal(le32(c.read(0x10, 4)), 0xfffff000);
    assert.equal(le32(c.read(0x14, 4)), 0xffffff01);
    assert.equal(le32(c.read(0x3c, 4)), 0x000001ff);
  });
});

describe('the unclaimed area', () => {
  it('without a vendor area, writes fail with EINVAL and change nothing; reads are zero', () => {
    const c = new ConfigSpace(PLAIN);
    assert.throws(() => c.write(0x40, Uint8Array.of(1)), isEinval);
    assert.throws(() => c.write(0x3c, new Uint8Array(8).fill(0x22)), isEinval);
    assert.equal(c.read(0x3c, 1)[0], 0, 'the header part of a rejected write is not applied');
    assert.deepEqual(c.read(0x40, 0xc0), new Uint8Array(0xc0));
  });

  it('padding after an odd-sized capability and extended space past the last capability are unclaimed', () => {
    const c = new ConfigSpace({ vendorId: 1, deviceId: 1, express: {}, vendorCapabilities: [{ payload: Uint8Array.of(7) }] });
    const vendor = c.capabilities.find((x) => x.name === 'vendor');
    assert.equal(vendor?.size, 4);
    c.write(0x40, Uint8Array.of(0)); // PM header: claimed, read-only
    assert.throws(() => c.write(0x88, Uint8Array.of(1)), isEinval);
    assert.throws(() => c.write(0x100, Uint8Array.of(1)), isEinval);
    assert.throws(() => c.write(0xfff, Uint8Array.of(1)), isEinval);
  });

  it('with a vendor area, unclaimed pieces are delegated with absolute offsets', () => {
    const store = new Uint8Array(256);
    const reads: Array<[number, number]> = [];
    const writes: Array<[number, number[]]> = [];
    const vendorArea: VendorArea = {
      read(offset, length) {
        reads.push([offset, length]);
        return store.slice(offset, offset + length);
      },
      write(offset, data) {
        writes.push([offset, [...data]]);
        store.set(data, offset);
      },
    };
    const c = new ConfigSpace({ ...PLAIN, pm: true, vendorArea });
    c.write(0x46, Uint8Array.of(0x03, 0x00, 0xaa, 0xbb)); // PMCSR data/bse (RO) then unclaimed 0x48..0x49
    assert.deepEqual(writes, [[0x48, [0xaa, 0xbb]]]);
    assert.deepEqual([...c.read(0x46, 4)], [0x00, 0x00, 0xaa, 0xbb]);
    assert.deepEqual(reads, [[0x48, 2]]);
    assert.equal(c.dump()[0x48], 0, 'dump() does not consult the vendor area');
  });

  it('a vendor area returning the wrong length fails the read with EINVAL', () => {
    const c = new ConfigSpace({ ...PLAIN, vendorArea: { read: () => new Uint8Array(1), write: () => {} } });
    assert.throws(() => c.read(0x40, 4), isEinval);
  });

  it('errors thrown by the vendor area propagate', () => {
    const boom = new ProtocolError('device says no', { errno: 5 });
    const c = new ConfigSpace({
      ...PLAIN,
      vendorArea: {
        read: () => {
          throw boom;
        },
        write: () => {
          throw boom;
        },
      },
    });
    assert.throws(() => c.read(0x80, 1), boom);
    assert.throws(() => c.write(0x80, Uint8Array.of(1)), boom);
  });
});

describe('bounds', () => {
  const c = new ConfigSpace(PLAIN);
  const cases: Array<[string, () => unknown]> = [
    ['read past the end', () => c.read(0xff, 2)],
    ['read at the end', () => c.read(0x100, 1)],
    ['write past the end', () => c.write(0xfe, new Uint8Array(4))],
    ['negative offset', () => c.read(-1, 1)],
    ['fractional offset', () => c.read(1.5, 1)],
    ['negative length', () => c.read(0, -1)],
    ['huge bigint offset', () => c.read(1n << 64n, 1)],
    ['offset + length overflows', () => c.read(Number.MAX_SAFE_INTEGER, 2)],
    ['4096-byte read of a 256-byte space', () => c.read(0, 4096)],
  ];
  for (const [name, access] of cases) it(`${name}: EINVAL`, () => assert.throws(access, isEinval));

  it('the whole space and empty accesses are fine', () => {
    assert.equal(c.read(0, 256).length, 256);
    assert.equal(c.read(256, 0).length, 0);
    assert.equal(c.read(0x10n, 4).length, 4);
    c.write(256, new Uint8Array(0));
  });
});
