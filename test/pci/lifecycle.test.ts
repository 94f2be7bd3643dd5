/**
 * Function-level reset, snapshot/restore (round trip and refusals), and the
 * write rules of the PM and PCI Express capabilities.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProtocolError } from '../../src/errors.js';
import { ConfigSpace, SNAPSHOT_HEADER_SIZE, type ConfigSpaceEvent } from '../../src/pci/index.js';
import { EXPRESS, MSI4, MSIX8, PLAIN } from './support/devices.js';
import { le16, le32, u16le, u32le } from './support/expected-config.js';

const einval = (e: unknown) => e instanceof ProtocolError && e.errno === 22;

/** Drives a device the way a guest driver would: BARs, command, MSI-X, table, pending. */
function exercise(cs: ConfigSpace): void {
  cs.write(0x10, u32le(0xfe000000));
  cs.write(0x18, u32le(0xfe100000));
  cs.write(0x04, u16le(0x0406));
  cs.write(0x0c, Uint8Array.of(0x10));
  cs.write(0x3c, Uint8Array.of(0x0b));
  cs.signalStatus(0x2000);
  const msix = cs.msix;
  if (msix !== undefined) {
    cs.write(msix.offset + 2, u16le(0xc000));
    msix.tableWrite(16, Uint8Array.of(0, 0, 0xe0, 0xfe, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0, 0, 0));
    msix.setPending(1, true);
  }
}

describe('reset', () => {
  it('puts every register back to power-on, keeping identity', () => {
    const cs = new ConfigSpace(MSIX8);
    const powerOn = cs.dump();
    exercise(cs);
    assert.notDeepEqual(cs.dump(), powerOn);
    const events: ConfigSpaceEvent[] = [];
    cs.onChange((e) => events.push(e));
    cs.reset();
    assert.deepEqual(cs.dump(), powerOn);
    assert.equal(cs.msix?.entry(1).masked, true);
    assert.equal(cs.msix?.tableInUse, false);
    assert.equal(cs.msix?.isPending(1), false);
    assert.equal(le32(cs.msix?.tableRead(16, 4) ?? new Uint8Array(4)), 0);
    assert.deepEqual(events, [
      { type: 'command', previous: 0x0406, current: 0 },
      { type: 'interrupt-mode', previous: 'msix', current: 'intx' },
    ]);
  });

  it('clears MSI pending bits and masks', () => {
    const cs = new ConfigSpace(MSI4);
    cs.write(0x48 + 16, u32le(0xf));
    cs.msi?.setPending(0, true);
    cs.reset();
    assert.equal(cs.msi?.maskBits, 0);
    assert.equal(cs.msi?.pendingBits, 0);
  });
});

describe('snapshot and restore', () => {
  it('round trip: config bytes, MSI-X table and PBA, with events on the destination', () => {
    const src = new ConfigSpace(MSIX8);
    exercise(src);
    const snap = src.snapshot();
    assert.equal(snap.length, SNAPSHOT_HEADER_SIZE + 256 + 128 + 8);
    const dst = new ConfigSpace(MSIX8);
    const events: ConfigSpaceEvent[] = [];
    dst.onChange((e) => events.push(e));
    dst.restore(snap);
    assert.deepEqual(dst.dump(), src.dump());
    assert.deepEqual(dst.msix?.tableRead(0, 128), src.msix?.tableRead(0, 128));
    assert.deepEqual(dst.msix?.pbaRead(0, 8), src.msix?.pbaRead(0, 8));
    assert.equal(dst.barAddress(0), 0xfe000000n);
    assert.equal(dst.status & 0x2000, 0x2000);
    assert.deepEqual(dst.snapshot(), snap);
    assert.deepEqual(events, [
      { type: 'command', previous: 0, current: 0x0406 },
      { type: 'interrupt-mode', previous: 'intx', current: 'msix' },
    ]);
  });

  it('round trip of a 4 KiB PCIe space', () => {
    const src = new ConfigSpace(EXPRESS);
    src.write(0x48 + 8, u16le(0x0000)); // Device Control
    const dst = new ConfigSpace(EXPRESS);
    dst.restore(src.snapshot());
    assert.deepEqual(dst.dump(), src.dump());
  });

  const refusals: Array<[string, (snap: Uint8Array) => Uint8Array, ConstructorParameters<typeof ConfigSpace>[0]]> = [
    ['another device id', (s) => s, { ...MSIX8, deviceId: 0x9999 }],
    ['another BAR layout', (s) => s, { ...MSIX8, bars: [{ size: 0x2000, type: 'mem32' }, undefined, { size: 0x4000, type: 'mem32' }] }],
    ['another MSI-X table size', (s) => s, { ...MSIX8, msix: { vectors: 9, bar: 2, tableOffset: 0, pbaOffset: 0x800 } }],
    ['a 4 KiB space', (s) => s, { ...MSIX8, express: {} }],
    ['a truncated snapshot', (s) => s.subarray(0, s.length - 1), MSIX8],
    ['an extra byte', (s) => Uint8Array.of(...s, 0), MSIX8],
    ['a short header', (s) => s.subarray(0, 8), MSIX8],
    ['bad magic', (s) => Uint8Array.of(0, ...s.subarray(1)), MSIX8],
    ['unknown version', (s) => Uint8Array.of(...s.subarray(0, 4), 2, ...s.subarray(5)), MSIX8],
    ['a corrupted read-only byte (class code)', (s) => s.map((b, i) => (i === SNAPSHOT_HEADER_SIZE + 0x0b ? b ^ 1 : b)), MSIX8],
  ];
  for (const [name, mangle, options] of refusals) {
    it(`refuses ${name} with EINVAL and changes nothing`, () => {
      const src = new ConfigSpace(MSIX8);
      exercise(src);
      const dst = new ConfigSpace(options);
      const before = dst.snapshot();
      assert.throws(() => dst.restore(mangle(src.snapshot())), einval);
      assert.deepEqual(dst.snapshot(), before);
    });
  }

  it('refuses a hardwired bit set in a writable register', () => {
    const snap = new ConfigSpace(PLAIN).snapshot();
    snap[SNAPSHOT_HEADER_SIZE + 0x04] = 0x08; // Command bit 3 (special cycles) is hardwired 0
    assert.throws(() => new ConfigSpace(PLAIN).restore(snap), einval);
  });
});

describe('Power Management capability', () => {
  it('PowerState is writable for D0 and D3hot; D1/D2 writes are discarded', () => {
    const cs = new ConfigSpace(MSI4);
    const pmcsr = () => le16(cs.read(0x44, 2));
    cs.write(0x44, u16le(0xffff));
    assert.equal(pmcsr(), 0x000b, 'D3hot, NoSoftRst, PME bits read-only 0');
    cs.write(0x44, u16le(0x0001));
    assert.equal(pmcsr(), 0x000b, 'D1 unsupported');
    cs.write(0x44, u16le(0x0002));
    assert.equal(pmcsr(), 0x000b, 'D2 unsupported');
    cs.write(0x44, Uint8Array.of(0x00));
    assert.equal(pmcsr(), 0x0008);
    cs.write(0x42, u16le(0));
    assert.equal(le16(cs.read(0x42, 2)), 0x0003, 'PMC read-only');
  });
});

describe('PCI Express capability', () => {
  const X = 0x48;
  it('Device Control is RW within its mask, Device Status RW1C, capabilities read-only', () => {
    const cs = new ConfigSpace(EXPRESS);
    cs.write(X + 8, u16le(0xffff));
    assert.equal(le16(cs.read(X + 8, 2)), 0x78ff);
    cs.write(X + 4, u32le(0));
    assert.equal(le32(cs.read(X + 4, 4)), 0x00008000);
    cs.write(X + 0x10, u16le(0xffff));
    assert.equal(le16(cs.read(X + 0x10, 2)), 0x00cb);
    cs.write(X + 0x12, u16le(0));
    assert.equal(le16(cs.read(X + 0x12, 2)), 0x1011);
    cs.write(X + 0x0a, u16le(0xffff));
    assert.equal(le16(cs.read(X + 0x0a, 2)), 0);
  });

  it('port types and the link registers of an RC integrated endpoint', () => {
    const flags = (portType: 'endpoint' | 'legacy-endpoint' | 'rc-integrated') =>
      le16(new ConfigSpace({ vendorId: 1, deviceId: 1, pm: false, express: { portType } }).read(0x42, 2));
    assert.equal(flags('endpoint'), 0x0002);
    assert.equal(flags('legacy-endpoint'), 0x0012);
    assert.equal(flags('rc-integrated'), 0x0092);
    const rc = new ConfigSpace({ vendorId: 1, deviceId: 1, pm: false, express: { portType: 'rc-integrated' } });
    assert.deepEqual(rc.read(0x40 + 0x0c, 8), new Uint8Array(8));
    assert.equal(rc.size, 4096);
  });

  it('read-only vendor and VSEC payloads unless marked writable', () => {
    const ro = new ConfigSpace(EXPRESS);
    ro.write(0x87, Uint8Array.of(0));
    ro.write(0x114, new Uint8Array(8));
    assert.equal(ro.read(0x87, 1)[0], 0xde);
    assert.equal(ro.read(0x114, 1)[0], 1);
    const rw = new ConfigSpace({
      ...EXPRESS,
      vendorCapabilities: [{ payload: Uint8Array.of(1, 2), writable: true }],
      vsecs: [{ id: 1, rev: 0, payload: new Uint8Array(4), writable: true }],
    });
    rw.write(0x84, Uint8Array.of(0xff, 0xff, 0xff, 0x77, 0x88));
    assert.deepEqual([...rw.read(0x84, 5)], [0x09, 0x00, 0x05, 0x77, 0x88]);
    rw.write(0x10c, new Uint8Array(12).fill(0xee));
    assert.deepEqual([...rw.read(0x10c, 12)], [0x0b, 0, 0x01, 0, 0x01, 0, 0xc0, 0, 0xee, 0xee, 0xee, 0xee]);
  });
});
