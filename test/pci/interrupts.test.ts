/**
 * MSI and MSI-X state as the IRQ layer sees it: enable and mode events,
 * masking, pending bits, the function mask, and the MSI-X table and PBA.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProtocolError } from '../../src/errors.js';
import { ConfigSpace, type ConfigSpaceEvent } from '../../src/pci/index.js';
import { MSI4, MSIX8 } from './support/devices.js';
import { counter, le16, le32, u16le, u32le } from './support/expected-config.js';

const MSI = 0x48; // after PM
const MSIX = 0x48;

function withEvents(cs: ConfigSpace): ConfigSpaceEvent[] {
  const events: ConfigSpaceEvent[] = [];
  cs.onChange((e) => events.push(e));
  return events;
}

function msixEntry(address: bigint, data: number, masked: boolean): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, address, true);
  v.setUint32(8, data, true);
  v.setUint32(12, masked ? 1 : 0, true);
  return b;
}

describe('MSI', () => {
  it('enable with Multiple Message Enable, address and data', () => {
    const cs = new ConfigSpace(MSI4);
    const msi = cs.msi;
    assert.ok(msi);
    const events = withEvents(cs);
    assert.equal(cs.interruptMode, 'intx');
    cs.write(MSI + 4, u32le(0xfee00003)); // low 2 bits are read-only 0
    cs.write(MSI + 8, u32le(0x1));
    cs.write(MSI + 12, u16le(0x4041));
    cs.write(MSI + 2, u16le(0x0021)); // enable, MME = 2 (4 vectors)
    assert.equal(msi.enabled, true);
    assert.equal(msi.allocatedVectors, 4);
    assert.equal(msi.address, 0x1fee00000n);
    assert.equal(msi.data, 0x4041);
    assert.equal(le16(cs.read(MSI + 2, 2)), 0x01a5, 'read-only MMC / 64-bit / PVM bits kept');
    assert.deepEqual(events, [{ type: 'interrupt-mode', previous: 'intx', current: 'msi' }]);
    cs.write(MSI + 2, u16le(0x0071)); // MME 8 > capable 4
    assert.equal(msi.allocatedVectors, 4);
  });

  it('mask bits exist only for capable vectors; unmasking raises msi-unmask with the pending bit', () => {
    const cs = new ConfigSpace(MSI4);
    const msi = cs.msi;
    assert.ok(msi);
    cs.write(MSI + 16, u32le(0xffffffff));
    assert.equal(msi.maskBits, 0xf);
    assert.equal(msi.isMasked(3), true);
    msi.setPending(1, true);
    msi.setPending(2, true);
    msi.setPending(2, false);
    assert.equal(le32(cs.read(MSI + 20, 4)), 0x2);
    cs.write(MSI + 20, u32le(0)); // Pending Bits are read-only to the driver
    assert.equal(msi.pendingBits, 0x2);
    const events = withEvents(cs);
    cs.write(MSI + 16, Uint8Array.of(0x09)); // clear bits 1 and 2
    assert.deepEqual(events, [
      { type: 'msi-unmask', vector: 1, pending: true },
      { type: 'msi-unmask', vector: 2, pending: false },
    ]);
    assert.equal(msi.isMasked(1), false);
    assert.throws(() => msi.isMasked(4), { name: 'InvalidArgumentError', errno: 22 });
    assert.throws(() => msi.setPending(-1, true), { name: 'InvalidArgumentError' });
  });

  it('32 vectors use all 32 mask bits', () => {
    const cs = new ConfigSpace({ vendorId: 1, deviceId: 1, pm: false, msi: { vectors: 32, bits64: false } });
    cs.write(0x40 + 12, u32le(0xffffffff));
    assert.equal(cs.msi?.maskBits, 0xffffffff);
    cs.msi?.setPending(31, true);
    assert.equal(le32(cs.read(0x40 + 16, 4)), 0x80000000);
  });

  it('without per-vector masking nothing is masked or pending', () => {
    const cs = new ConfigSpace({ vendorId: 1, deviceId: 1, pm: false, msi: { vectors: 2, bits64: false, perVectorMask: false } });
    const msi = cs.msi;
    assert.ok(msi);
    assert.equal(msi.size, 10);
    msi.setPending(0, true);
    assert.equal(msi.isPending(0), false);
    assert.equal(msi.isMasked(1), false);
    cs.write(0x40 + 4, u32le(0xfee00000));
    cs.write(0x40 + 8, u16le(0x55));
    assert.equal(msi.address, 0xfee00000n);
    assert.equal(msi.data, 0x55);
  });
});

describe('MSI-X', () => {
  it('the table resets to all Mask bits set, which gate nothing until the client writes the table', () => {
    const cs = new ConfigSpace(MSIX8);
    const msix = cs.msix;
    assert.ok(msix);
    assert.deepEqual(msix.table, { bar: 2, offset: 0, size: 128 });
    assert.deepEqual(msix.pba, { bar: 2, offset: 0x800, size: 8 });
    assert.equal(msix.tableInUse, false);
    for (let v = 0; v < 8; v++) {
      assert.equal(msix.entry(v).masked, true);
      assert.equal(msix.isMasked(v), false, 'a VMM that emulates the table (QEMU) never writes it: its vectors are not held');
      assert.deepEqual([...msix.tableRead(v * 16, 16)], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    }
  });

  it('the first table write puts the table in use: its Mask bits then gate delivery', () => {
    const cs = new ConfigSpace(MSIX8);
    const msix = cs.msix;
    assert.ok(msix);
    msix.tableWrite(0, u32le(0xfee00000)); // address of vector 0 only
    assert.equal(msix.tableInUse, true);
    for (let v = 0; v < 8; v++) assert.equal(msix.isMasked(v), true, `vector ${v}`);
    msix.tableWrite(12, u32le(0));
    assert.equal(msix.isMasked(0), false);
    cs.reset();
    assert.equal(msix.tableInUse, false);
    assert.equal(msix.isMasked(1), false);
  });

  it('a restored table is in use exactly when it differs from its reset value', () => {
    const programmed = new ConfigSpace(MSIX8);
    programmed.msix?.tableWrite(16, msixEntry(0xfee00000n, 0x21, true));
    const target = new ConfigSpace(MSIX8);
    target.restore(programmed.snapshot());
    assert.equal(target.msix?.tableInUse, true);
    assert.equal(target.msix?.isMasked(1), true);
    const untouched = new ConfigSpace(MSIX8);
    untouched.msix?.tableWrite(16, msixEntry(0n, 0, true)); // in use, but still at the reset value
    const target2 = new ConfigSpace(MSIX8);
    target2.restore(untouched.snapshot());
    assert.equal(target2.msix?.tableInUse, false);
    assert.equal(target2.msix?.isMasked(1), false);
  });

  it('Function Mask holds vectors of a table the client never wrote; clearing it raises msix-unmask for all', () => {
    const cs = new ConfigSpace(MSIX8);
    const msix = cs.msix;
    assert.ok(msix);
    const events = withEvents(cs);
    cs.write(MSIX + 2, u16le(0xc000)); // enable + function mask, as QEMU forwards it
    assert.equal(msix.isMasked(0), true);
    cs.write(MSIX + 3, Uint8Array.of(0x80));
    assert.equal(msix.isMasked(0), false);
    assert.equal(events.filter((e) => e.type === 'msix-unmask').length, 8);
  });

  it('table writes at any alignment; unmasking a vector raises msix-unmask', () => {
    const cs = new ConfigSpace(MSIX8);
    const msix = cs.msix;
    assert.ok(msix);
    const events = withEvents(cs);
    msix.setPending(3, true);
    msix.tableWrite(3 * 16, msixEntry(0xfee00003n, 0x4023, false));
    assert.deepEqual(msix.entry(3), { address: 0xfee00000n, data: 0x4023, masked: false });
    assert.deepEqual(events, [{ type: 'msix-unmask', vector: 3, pending: true }]);
    assert.equal(msix.isMasked(3), false);
    msix.tableWrite(4 * 16 + 12, Uint8Array.of(0xff, 0xff, 0xff, 0xff)); // stays masked, reserved bits RO
    assert.equal(le32(msix.tableRead(4 * 16 + 12, 4)), 1);
    msix.tableWrite(4 * 16 + 11, Uint8Array.of(0x12, 0x00)); // crosses data and vector control
    assert.equal(events.length, 2);
    assert.deepEqual(events[1], { type: 'msix-unmask', vector: 4, pending: false });
    assert.equal(le32(msix.tableRead(4 * 16 + 8, 4)), 0x12000000);
    assert.equal(le32(msix.tableRead(3 * 16 + 14, 4)), 0x00000000, 'read crossing entries');
  });

  it('Function Mask masks every vector; clearing it raises msix-unmask for unmasked vectors', () => {
    const cs = new ConfigSpace(MSIX8);
    const msix = cs.msix;
    assert.ok(msix);
    msix.tableWrite(2 * 16 + 12, u32le(0));
    const events = withEvents(cs);
    cs.write(MSIX + 2, u16le(0xc000)); // enable + function mask
    assert.equal(msix.enabled, true);
    assert.equal(msix.functionMasked, true);
    assert.equal(msix.isMasked(2), true);
    assert.equal(le16(cs.read(MSIX + 2, 2)), 0xc007);
    msix.tableWrite(5 * 16 + 12, u32le(0)); // unmasking under the function mask: no event
    assert.deepEqual(events, [{ type: 'interrupt-mode', previous: 'intx', current: 'msix' }]);
    msix.setPending(5, true);
    cs.write(MSIX + 3, Uint8Array.of(0x80));
    assert.deepEqual(events.slice(1), [
      { type: 'msix-unmask', vector: 2, pending: false },
      { type: 'msix-unmask', vector: 5, pending: true },
    ]);
    assert.equal(msix.isMasked(5), false);
  });

  it('the PBA reflects setPending, and driver writes to it are ignored', () => {
    const cs = new ConfigSpace({ ...MSIX8, msix: { vectors: 65, bar: 2, tableOffset: 0x1000, pbaOffset: 0 } });
    const msix = cs.msix;
    assert.ok(msix);
    assert.equal(msix.pba.size, 16);
    msix.setPending(5, true);
    msix.setPending(64, true);
    assert.deepEqual([...msix.pbaRead(0, 16)], [0x20, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0]);
    msix.pbaWrite(0, new Uint8Array(16));
    assert.equal(msix.pbaRead(0, 1)[0], 0x20);
    assert.equal(msix.isPending(64), true);
    msix.setPending(5, false);
    assert.equal(msix.pbaRead(0, 1)[0], 0);
  });

  it('table and PBA accesses out of range fail with EINVAL', () => {
    const msix = new ConfigSpace(MSIX8).msix;
    assert.ok(msix);
    const einval = (e: unknown) => e instanceof ProtocolError && e.errno === 22;
    assert.throws(() => msix.tableRead(128, 1), einval);
    assert.throws(() => msix.tableWrite(120, new Uint8Array(16)), einval);
    assert.throws(() => msix.pbaRead(4, 8), einval);
    assert.throws(() => msix.pbaWrite(8, Uint8Array.of(0)), einval);
    assert.throws(() => msix.entry(8), { name: 'InvalidArgumentError' });
  });

  it('MSI-X takes precedence over MSI and INTx in interruptMode', () => {
    const cs = new ConfigSpace({ ...MSIX8, msi: { vectors: 1 } });
    const mode = counter<[ConfigSpaceEvent]>();
    cs.onChange(mode);
    const msiAt = cs.capabilities.find((c) => c.name === 'msi')?.offset ?? 0;
    const msixAt = cs.capabilities.find((c) => c.name === 'msix')?.offset ?? 0;
    cs.write(msiAt + 2, u16le(1));
    cs.write(msixAt + 3, Uint8Array.of(0x80));
    assert.equal(cs.interruptMode, 'msix');
    cs.write(msixAt + 3, Uint8Array.of(0x00));
    cs.write(msiAt + 2, u16le(0));
    cs.write(0x05, Uint8Array.of(0x04)); // INTx disable
    assert.deepEqual(
      mode.calls.map(([e]) => (e.type === 'interrupt-mode' ? e.current : e.type)),
      ['msi', 'msix', 'msi', 'intx', 'command', 'none'],
    );
  });

  it('onChange returns an unsubscribe function', () => {
    const cs = new ConfigSpace(MSIX8);
    const listener = counter<[ConfigSpaceEvent]>();
    const off = cs.onChange(listener);
    cs.write(0x04, u16le(0x4));
    off();
    cs.write(0x04, u16le(0x6));
    assert.equal(listener.calls.length, 1);
  });
});
