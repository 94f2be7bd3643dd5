/**
 * Config-space helpers: capability walks of the DMA engine (PM, MSI-X,
 * Express, DSN) and of a conventional device, hostile lists on a fake config
 * space (cycles, pointers into the header, runaway lists) that must
 * terminate, MSI-X/MSI enabling and vector masking, BAR sizing against the
 * known BARs (with the BARs and Command register restored), and Command
 * register helpers.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import {
  barSizes,
  romSize,
  disableMsix,
  enableBusMaster,
  enableMsi,
  enableMsix,
  findCapability,
  findExtendedCapability,
  listCapabilities,
  listExtendedCapabilities,
  maskMsixVector,
  msiInfo,
  msixInfo,
  readConfig,
  setCommand,
  unmaskMsixVector,
  writeConfig,
  type ConfigAccess,
} from '../../src/client/pci-config.js';
import { createDmaEngineDevice } from '../../src/devices/dma-engine.js';
import { InvalidArgumentError, RemoteError, StateError } from '../../src/errors.js';
import { CapabilityId, ExtCapabilityId, PciCommand, PciHeader, PciStatus } from '../../src/pci/registers.js';
import { RegionIndex } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import type { DeviceDefinition } from '../../src/device/types.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { serveTestDevice, testDeviceDefinition } from '../support/server-fixture.js';
import { serve } from '../devices/driver.js';

const SERIAL = 0x5a02_0000_0000_0001n;

async function withClient(path: string, fn: (client: VfioUserClient) => Promise<void>): Promise<void> {
  const client = await VfioUserClient.connect(path);
  try {
    await fn(client);
  } finally {
    client.close();
  }
}

async function withEngine(fn: (client: VfioUserClient) => Promise<void>): Promise<void> {
  await assertNoFdLeak(async () => {
    const engine = createDmaEngineDevice();
    const served = serve(engine.device);
    try {
      await withClient(served.path, fn);
    } finally {
      await served.close();
    }
  });
}

async function withDevice(definition: DeviceDefinition, fn: (client: VfioUserClient) => Promise<void>): Promise<void> {
  await assertNoFdLeak(async () => {
    const served = serveTestDevice(definition);
    try {
      await withClient(served.path, fn);
    } finally {
      await served.close();
    }
  });
}

/** A config space in memory, with a read counter (for the hostile-list tests). */
function fakeConfig(size: number, build: (v: DataView) => void): ConfigAccess & { reads: number } {
  const bytes = new Uint8Array(size);
  build(new DataView(bytes.buffer));
  const fake = {
    reads: 0,
    async regionRead(index: number, offset: bigint, count: number): Promise<Uint8Array> {
      fake.reads++;
      assert.equal(index, RegionIndex.CONFIG);
      if (offset + BigInt(count) > BigInt(size)) throw new RemoteError('REGION_READ failed', 9, Errno.EINVAL);
      return bytes.slice(Number(offset), Number(offset) + count);
    },
    async regionWrite(): Promise<void> {
      throw new Error('read-only fake');
    },
  };
  return fake;
}

/** Standard list entries `[offset, id, next]`, Status CAP_LIST set, 0x34 → `first`. */
function standardList(first: number, entries: Array<[number, number, number]>): (v: DataView) => void {
  return (v) => {
    v.setUint16(PciHeader.STATUS, PciStatus.CAP_LIST, true);
    v.setUint8(PciHeader.CAPABILITY_LIST, first);
    for (const [at, id, next] of entries) {
      v.setUint8(at, id);
      v.setUint8(at + 1, next);
    }
  };
}

/** Extended entries `[offset, id, next]` (version 1). */
function extendedList(entries: Array<[number, number, number]>): (v: DataView) => void {
  return (v) => {
    for (const [at, id, next] of entries) v.setUint32(at, (id | (1 << 16) | (next << 20)) >>> 0, true);
  };
}

describe('capability walks', () => {
  it('finds PM, MSI-X and Express, and the DSN extended capability, on the DMA engine', () =>
    withEngine(async (client) => {
      const { capabilities, end } = await listCapabilities(client);
      assert.equal(end, 'end');
      assert.deepEqual(capabilities.map((c) => c.id), [CapabilityId.PM, CapabilityId.MSIX, CapabilityId.EXPRESS]);
      for (const c of capabilities) assert.equal(await findCapability(client, c.id), c.offset);
      assert.equal(await findCapability(client, CapabilityId.MSI), undefined);
      const express = await findCapability(client, CapabilityId.EXPRESS);
      assert.ok(express !== undefined && express >= 0x40 && express < 0x100);
      const dsn = await findExtendedCapability(client, ExtCapabilityId.DSN);
      assert.equal(dsn, 0x100);
      const ext = await listExtendedCapabilities(client);
      assert.deepEqual(ext, { capabilities: [{ offset: 0x100, id: ExtCapabilityId.DSN, version: 1 }], end: 'end' });
      const low = await readConfig(client, 0x104, 4);
      const high = await readConfig(client, 0x108, 4);
      assert.equal((BigInt(high) << 32n) | BigInt(low), SERIAL);
      assert.equal(await findExtendedCapability(client, ExtCapabilityId.VENDOR), undefined);
    }));

  it('finds no extended capabilities in a conventional config space', () =>
    withDevice(testDeviceDefinition(), async (client) => {
      assert.deepEqual(await listExtendedCapabilities(client), { capabilities: [], end: 'end' });
      const ids = (await listCapabilities(client)).capabilities.map((c) => c.id);
      assert.deepEqual(ids, [CapabilityId.PM, CapabilityId.MSI, CapabilityId.MSIX]);
    }));

  const hostile: Array<{ name: string; size: number; build: (v: DataView) => void; extended?: boolean; ids: number[]; end: string }> = [
    { name: 'a two-entry cycle', size: 256, build: standardList(0x40, [[0x40, 1, 0x50], [0x50, 5, 0x40]]), ids: [1, 5], end: 'cycle' },
    { name: 'a self loop', size: 256, build: standardList(0x60, [[0x60, 9, 0x60]]), ids: [9], end: 'cycle' },
    { name: 'a pointer into the header', size: 256, build: standardList(0x40, [[0x40, 1, 0x10]]), ids: [1], end: 'bad-pointer' },
    { name: 'low pointer bits ignored (0x43 → 0x40)', size: 256, build: standardList(0x43, [[0x40, 0x11, 0]]), ids: [0x11], end: 'end' },
    { name: 'every dword chained, then a cycle', size: 256, build: standardList(0x40, Array.from({ length: 48 }, (_, i) => [0x40 + 4 * i, 9, i === 47 ? 0x40 : 0x44 + 4 * i] as [number, number, number])), ids: Array(48).fill(9), end: 'cycle' },
    { name: 'an extended cycle', size: 4096, build: extendedList([[0x100, 3, 0x140], [0x140, 0xb, 0x100]]), extended: true, ids: [3, 0xb], end: 'cycle' },
    { name: 'an extended self loop at the end', size: 4096, build: extendedList([[0x100, 3, 0xffc], [0xffc, 4, 0xffc]]), extended: true, ids: [3, 4], end: 'cycle' },
    { name: 'an extended pointer below 0x100', size: 4096, build: extendedList([[0x100, 3, 0x40]]), extended: true, ids: [3], end: 'bad-pointer' },
    { name: 'an all-ones extended header', size: 4096, build: (v) => v.setUint32(0x100, 0xffffffff, true), extended: true, ids: [], end: 'end' },
  ];
  for (const h of hostile) {
    it(`terminates on ${h.name}`, async () => {
      const fake = fakeConfig(h.size, h.build);
      const result = h.extended ? await listExtendedCapabilities(fake) : await listCapabilities(fake);
      assert.deepEqual(result.capabilities.map((c) => c.id), h.ids);
      assert.equal(result.end, h.end);
      assert.ok(fake.reads <= 2 + h.ids.length + 1, `${fake.reads} reads`);
      const missing = h.extended ? await findExtendedCapability(fake, 0x7777) : await findCapability(fake, 0x77);
      assert.equal(missing, undefined);
    });
  }

  it('ignores the list when Status has no CAP_LIST bit', async () => {
    const fake = fakeConfig(256, (v) => v.setUint8(PciHeader.CAPABILITY_LIST, 0x40));
    assert.deepEqual(await listCapabilities(fake), { capabilities: [], end: 'end' });
  });
});

describe('MSI-X and MSI', () => {
  it('enables MSI-X with or without the function mask and masks/unmasks table vectors', () =>
    withEngine(async (client) => {
      const before = await msixInfo(client);
      assert.ok(before);
      assert.deepEqual(
        { tableSize: before.tableSize, tableBar: before.tableBar, tableOffset: before.tableOffset, pbaBar: before.pbaBar, pbaOffset: before.pbaOffset, enabled: before.enabled },
        { tableSize: 2, tableBar: 4, tableOffset: 0, pbaBar: 4, pbaOffset: 0x800, enabled: false },
      );
      const masked = await enableMsix(client, { functionMask: true });
      assert.equal(masked.enabled, true);
      assert.equal(masked.functionMasked, true);
      const info = await enableMsix(client);
      assert.equal(info.functionMasked, false);
      const vectorControl = async (v: number): Promise<number> => {
        const b = await client.regionRead(RegionIndex.BAR4, BigInt(16 * v + 12), 4);
        return new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);
      };
      assert.equal(await vectorControl(1), 1, 'vectors start masked');
      await unmaskMsixVector(client, 1, info);
      assert.equal(await vectorControl(1), 0);
      await maskMsixVector(client, 1);
      assert.equal(await vectorControl(1), 1);
      await assert.rejects(unmaskMsixVector(client, 2, info), InvalidArgumentError);
      await disableMsix(client);
      assert.equal((await msixInfo(client))?.enabled, false);
      await assert.rejects(enableMsi(client), (e: unknown) => e instanceof StateError && e.errno === Errno.ENODEV);
    }));

  it('enables MSI with a power-of-two vector count the device supports', () =>
    withDevice(testDeviceDefinition(), async (client) => {
      const info = await msiInfo(client);
      assert.ok(info);
      assert.equal(info.vectorsCapable, 4);
      assert.equal(info.enabled, false);
      await assert.rejects(enableMsi(client, 3), InvalidArgumentError);
      await assert.rejects(enableMsi(client, 8), InvalidArgumentError);
      const on = await enableMsi(client, 2);
      assert.deepEqual([on.enabled, on.vectorsEnabled, on.bits64, on.perVectorMask], [true, 2, true, true]);
    }));
});

describe('BARs and Command', () => {
  it('sizes the DMA engine BARs', () =>
    withEngine(async (client) => {
      assert.deepEqual(await barSizes(client), [
        { index: 0, type: 'mem32', prefetchable: false, address: 0n, size: 0x1000n },
        { index: 4, type: 'mem32', prefetchable: false, address: 0n, size: 0x1000n },
      ]);
    }));

  it('sizes 32-bit, 64-bit prefetchable and I/O BARs, restoring the BARs and Command', () =>
    withDevice(
      testDeviceDefinition({
        regions: {
          bar0: { size: 4096, read: (_o, n) => new Uint8Array(n), write: () => {} },
          bar1: { size: 256, type: 'io', read: (_o, n) => new Uint8Array(n), write: () => {} },
          bar2: { size: 0x1_0000_0000, type: 'mem64', prefetchable: true, read: (_o, n) => new Uint8Array(n), write: () => {} },
          bar4: { size: 0x2000 },
        },
      }),
      async (client) => {
        await writeConfig(client, 0x10, 4, 0xfe000000);
        await writeConfig(client, 0x18, 4, 0x80000000);
        await writeConfig(client, 0x1c, 4, 0x12);
        await setCommand(client, PciCommand.MEMORY | PciCommand.IO);
        const header = async (): Promise<number[]> => Promise.all([0x04, 0x10, 0x14, 0x18, 0x1c, 0x20].map((o) => readConfig(client, o, o === 0x04 ? 2 : 4)));
        const before = await header();
        assert.deepEqual(await barSizes(client), [
          { index: 0, type: 'mem32', prefetchable: false, address: 0xfe000000n, size: 0x1000n },
          { index: 1, type: 'io', prefetchable: false, address: 0n, size: 0x100n },
          { index: 2, type: 'mem64', prefetchable: true, address: 0x12_0000_0000n, size: 0x1_0000_0000n },
          { index: 4, type: 'mem32', prefetchable: false, address: 0n, size: 0x2000n },
        ]);
        assert.deepEqual(await header(), before);
      },
    ));

  it('skips BARs whose address bits are all read-only (not implemented, as Linux decides): I/O, 32-bit and 64-bit', async () => {
    // A config space whose BAR registers keep their read-only type bits whatever is written (libvfio-user's gpio sample
    // declares six such I/O BARs), next to a real 4 KiB memory BAR in BAR5.
    const config = new Uint8Array(256);
    const view = new DataView(config.buffer);
    const readOnly = new Map([[0x10, 0x1], [0x14, 0x0], [0x18, 0x4], [0x1c, 0x0], [0x20, 0x0]]);
    const access: ConfigAccess = {
      regionRead: async (_index, offset, count) => config.slice(Number(offset), Number(offset) + count),
      regionWrite: async (_index, offset, data) => {
        const at = Number(offset);
        config.set(data, at);
        const fixed = readOnly.get(at);
        if (fixed !== undefined && data.length === 4) view.setUint32(at, fixed, true);
        if (at === 0x24 && data.length === 4) view.setUint32(at, view.getUint32(at, true) & 0xfffff000, true);
      },
    };
    for (const [at, value] of readOnly) view.setUint32(at, value, true);
    assert.deepEqual(await barSizes(access), [{ index: 5, type: 'mem32', prefetchable: false, address: 0n, size: 0x1000n }]);
  });

  it('sizes the expansion ROM (Enable and address kept, decode restored)', () =>
    withDevice(
      testDeviceDefinition({
        regions: { bar0: { size: 4096, read: (_o, n) => new Uint8Array(n), write: () => {} }, bar4: { size: 0x2000 }, rom: { size: 0x4000, read: (_o, n) => new Uint8Array(n) } },
      }),
      async (client) => {
        await writeConfig(client, PciHeader.ROM_ADDRESS, 4, 0xfff0_0001);
        await setCommand(client, PciCommand.MEMORY);
        assert.deepEqual(await romSize(client), { address: 0xfff0_0000, enabled: true, size: 0x4000 });
        assert.equal(await readConfig(client, PciHeader.ROM_ADDRESS, 4), 0xfff0_0001);
        assert.equal(await readConfig(client, PciHeader.COMMAND, 2), PciCommand.MEMORY);
      },
    ));

  it('romSize: undefined for a device without a ROM', () => withEngine(async (client) => assert.equal(await romSize(client), undefined)));

  it('sets and clears Command bits; enableBusMaster sets only Bus Master', () =>
    withEngine(async (client) => {
      assert.equal(await readConfig(client, PciHeader.COMMAND, 2), 0);
      assert.equal(await enableBusMaster(client), PciCommand.MASTER);
      assert.equal(await setCommand(client, PciCommand.MEMORY), PciCommand.MASTER | PciCommand.MEMORY);
      assert.equal(await setCommand(client, 0, PciCommand.MASTER), PciCommand.MEMORY);
      assert.equal(await setCommand(client, PciCommand.SPECIAL), PciCommand.MEMORY, 'hardwired bits stay 0');
      await assert.rejects(readConfig(client, 0x1000, 1), InvalidArgumentError);
      await assert.rejects(readConfig(client, 0, 3 as 4), InvalidArgumentError);
    }));
});
