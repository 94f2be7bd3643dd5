/**
 * Hostile device descriptions: each is refused at construction with an
 * InvalidArgumentError (EINVAL) whose message names the rule.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError } from '../../src/errors.js';
import { ConfigSpace, type ConfigSpaceOptions } from '../../src/pci/index.js';

const base: ConfigSpaceOptions = { vendorId: 0x1234, deviceId: 0x5678 };
const mem = (size: number | bigint) => ({ size, type: 'mem32' as const });

const cases: Array<[string, Partial<ConfigSpaceOptions>, RegExp]> = [
  ['vendor id over 16 bits', { vendorId: 0x10000 }, /vendorId/],
  ['class code over 24 bits', { classCode: 0x1000000 }, /classCode/],
  ['interrupt pin 5', { interruptPin: 5 }, /interruptPin/],
  ['revision not an integer', { revision: 1.5 }, /revision/],
  ['seven BARs', { bars: Array.from({ length: 7 }, () => mem(16)) }, /at most 6/],
  ['BAR size not a power of two', { bars: [mem(0x3000)] }, /bars\[0\].*power of two/],
  ['BAR size zero', { bars: [mem(0)] }, /power of two/],
  ['memory BAR under 16 bytes', { bars: [mem(8)] }, /bars\[0\].*outside/],
  ['32-bit BAR over 2 GiB', { bars: [mem(1n << 32n)] }, /outside/],
  ['I/O BAR over 256 bytes', { bars: [{ size: 512, type: 'io' }] }, /outside/],
  ['I/O BAR under 4 bytes', { bars: [{ size: 2, type: 'io' }] }, /outside/],
  ['prefetchable I/O BAR', { bars: [{ size: 16, type: 'io', prefetchable: true }] }, /prefetchable/],
  ['64-bit BAR in BAR5', { bars: [undefined, undefined, undefined, undefined, undefined, { size: 16, type: 'mem64' }] }, /BAR5/],
  ['BAR in the upper half of a 64-bit BAR', { bars: [{ size: 16, type: 'mem64' }, mem(16)] }, /upper half/],
  ['unknown BAR type', { bars: [{ size: 16, type: 'vga' as 'io' }] }, /unknown BAR type/],
  ['ROM under 2 KiB', { rom: { size: 1024 } }, /rom/],
  ['ROM not a power of two', { rom: { size: 0x3000 } }, /rom/],
  ['MSI with 3 vectors', { msi: { vectors: 3 as 4 } }, /msi.vectors/],
  ['MSI-X with 0 vectors', { bars: [mem(0x1000)], msix: { vectors: 0, bar: 0, tableOffset: 0, pbaOffset: 0x800 } }, /msix.vectors/],
  ['MSI-X with 2049 vectors', { bars: [mem(1 << 16)], msix: { vectors: 2049, bar: 0, tableOffset: 0, pbaOffset: 0x8000 } }, /msix.vectors/],
  ['MSI-X in an absent BAR', { bars: [mem(0x1000)], msix: { vectors: 1, bar: 1, tableOffset: 0, pbaOffset: 0x800 } }, /msix.bar/],
  ['MSI-X in an I/O BAR', { bars: [{ size: 256, type: 'io' }], msix: { vectors: 1, bar: 0, tableOffset: 0, pbaOffset: 0x80 } }, /I\/O/],
  ['MSI-X table offset not 8-aligned', { bars: [mem(0x1000)], msix: { vectors: 1, bar: 0, tableOffset: 4, pbaOffset: 0x800 } }, /tableOffset/],
  ['MSI-X PBA offset not 8-aligned', { bars: [mem(0x1000)], msix: { vectors: 1, bar: 0, tableOffset: 0, pbaOffset: 0x804 } }, /pbaOffset/],
  ['MSI-X table past the BAR', { bars: [mem(0x100)], msix: { vectors: 16, bar: 0, tableOffset: 8, pbaOffset: 0 } }, /table ends/],
  ['MSI-X PBA past the BAR', { bars: [mem(0x100)], msix: { vectors: 1, bar: 0, tableOffset: 0, pbaOffset: 0x100 } }, /PBA ends/],
  ['MSI-X table and PBA overlap', { bars: [mem(0x1000)], msix: { vectors: 8, bar: 0, tableOffset: 0, pbaOffset: 0x78 } }, /overlap/],
  ['unknown PCIe port type', { express: { portType: 'root-port' as 'endpoint' } }, /portType/],
  ['vendor payload too long', { vendorCapabilities: [{ payload: new Uint8Array(253) }] }, /payload/],
  ['standard capabilities overflow 256 bytes', { vendorCapabilities: [{ payload: new Uint8Array(252) }] }, /standard capabilities/],
  ['DSN without PCIe', { serialNumber: 1n }, /need the express capability/],
  ['DSN over 64 bits', { express: {}, serialNumber: 1n << 64n }, /serialNumber/],
  ['VSEC without PCIe', { vsecs: [{ id: 1, rev: 0, payload: new Uint8Array(0) }] }, /express/],
  ['VSEC id over 16 bits', { express: {}, vsecs: [{ id: 0x10000, rev: 0, payload: new Uint8Array(0) }] }, /vsecs\[0\].id/],
  ['VSEC rev over 4 bits', { express: {}, vsecs: [{ id: 1, rev: 16, payload: new Uint8Array(0) }] }, /rev/],
  ['VSEC too long', { express: {}, vsecs: [{ id: 1, rev: 0, payload: new Uint8Array(0xff8) }] }, /payload/],
  [
    'extended capabilities overflow 4 KiB',
    { express: {}, vsecs: [0, 1].map((id) => ({ id, rev: 0, payload: new Uint8Array(0x800) })) },
    /extended capabilities need/,
  ],
];

describe('invalid options are refused at construction', () => {
  for (const [name, patch, message] of cases) {
    it(name, () => {
      assert.throws(
        () => new ConfigSpace({ ...base, ...patch }),
        (e: unknown) => e instanceof InvalidArgumentError && e.errno === 22 && message.test(e.message),
      );
    });
  }

  it('the limits themselves are accepted', () => {
    const cs = new ConfigSpace({
      ...base,
      bars: [mem(1n << 31n), { size: 4, type: 'io' }, { size: 1n << 63n, type: 'mem64' }, undefined, { size: 256, type: 'io' }, mem(16)],
      rom: { size: 1n << 31n },
      msi: { vectors: 32 },
      vendorCapabilities: [{ payload: new Uint8Array(0x100 - 0x60 - 3) }], // ends exactly at 0x100
    });
    assert.equal(cs.capabilities.at(-1)?.offset, 0x60);
    const msix = new ConfigSpace({ ...base, bars: [mem(0x10000)], msix: { vectors: 2048, bar: 0, tableOffset: 0, pbaOffset: 0x8000 } });
    assert.equal(msix.msix?.pba.size, 256);
  });
});
