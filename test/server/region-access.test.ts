import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, HeaderFlags, RegionIndex } from '../../src/protocol/constants.js';
import {
  decodeRegionReadReply,
  decodeRegionWriteMultiReply,
  decodeRegionWriteReply,
  encodeRegionAccess,
  encodeRegionAccessWithData,
  encodeRegionWriteMulti,
  type RegionAccessWithData,
} from '../../src/protocol/region-access.js';
import { testDeviceDefinition } from '../support/server-fixture.js';
import { Cfg, CommandBits, withDevice } from '../support/pci-driver.js';
import { pattern, wb } from '../support/wire-builder.js';

const EINVAL = 22;
const { BAR0, BAR1, BAR2, BAR4, ROM, CONFIG } = RegionIndex;
const readReq = (region: number, offset: number | bigint, count: number): Uint8Array => encodeRegionAccess({ offset: BigInt(offset), region, count });
const writeReq = (region: number, offset: number | bigint, data: Uint8Array): Uint8Array =>
  encodeRegionAccessWithData({ offset: BigInt(offset), region, count: data.length, data });
const one = (region: number, offset: number, data: number[]): RegionAccessWithData => ({ offset: BigInt(offset), region, count: data.length, data: Uint8Array.from(data) });

describe('REGION_READ / REGION_WRITE', () => {
  it('reaches BAR0\'s callbacks; replies echo the access', (t) =>
    withDevice(t, async ({ client }) => {
      const data = pattern(64, 7);
      const w = await client.ok(Command.REGION_WRITE, writeReq(BAR0, 0x100, data));
      assert.deepEqual(decodeRegionWriteReply(w.payload), { offset: 0x100n, region: BAR0, count: 64 });
      assert.equal(w.payload.length, 16);
      const r = await client.ok(Command.REGION_READ, readReq(BAR0, 0x100, 64));
      assert.equal(r.payload.length, 16 + 64);
      assert.deepEqual(decodeRegionReadReply(r.payload), { offset: 0x100n, region: BAR0, count: 64, data });
    }));

  it('BAR2 shared memory: message writes appear in device.regionMemory(2) and device writes in message reads', (t) =>
    withDevice(t, async ({ served, driver }) => {
      const memory = served.device.regionMemory(BAR2);
      await driver.write(BAR2, 0xfff8, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8));
      assert.deepEqual([...memory.subarray(0xfff8)], [1, 2, 3, 4, 5, 6, 7, 8]);
      memory.set(pattern(4096, 3), 0x1000);
      assert.deepEqual(await driver.read(BAR2, 0x1000, 4096), pattern(4096, 3));
      const big = pattern(0x10000, 9); // the whole region in one message
      await driver.write(BAR2, 0, big);
      assert.deepEqual(memory, big);
    }));

  it('config space: vendor/device id, read-only registers ignore writes, Command is writable', (t) =>
    withDevice(t, async ({ served, driver }) => {
      assert.equal(await driver.config16(Cfg.VENDOR_ID), 0x1af4);
      assert.equal(await driver.config16(Cfg.DEVICE_ID), 0x10f0);
      assert.equal(await driver.config32(0x08), 0xff000001, 'class code ff0000, revision 1');
      await driver.setConfig32(Cfg.VENDOR_ID, 0x12345678);
      assert.equal(await driver.config32(Cfg.VENDOR_ID), 0x10f01af4);
      await driver.setCommand(CommandBits.MEMORY | CommandBits.MASTER);
      assert.equal(await driver.command(), CommandBits.MEMORY | CommandBits.MASTER);
      assert.equal(served.device.config.busMasterEnabled, true);
      const all = await driver.read(CONFIG, 0, 256);
      assert.deepEqual(all, served.device.config.dump(), 'a 256-byte read is the whole emulated space');
    }));

  it('BAR sizing through messages: all-ones reads back the size mask with the type flags', (t) =>
    withDevice(t, async ({ served, driver }) => {
      for (let bar = 0; bar < 6; bar++) await driver.setConfig32(Cfg.BAR0 + 4 * bar, 0xffffffff);
      const bars = [];
      for (let bar = 0; bar < 6; bar++) bars.push(await driver.config32(Cfg.BAR0 + 4 * bar));
      assert.deepEqual(bars.map((b) => b.toString(16)), [
        'fffff000', // BAR0: 4 KiB, mem32
        '0', // BAR1: absent
        'ffff000c', // BAR2: 64 KiB, mem64 (0x4), prefetchable (0x8)
        'ffffffff', // BAR3: upper half of BAR2
        'ffffe000', // BAR4: 8 KiB, mem32
        '0', // BAR5: absent
      ]);
      await driver.setConfig32(Cfg.BAR0 + 8, 0xfebc1234);
      await driver.setConfig32(Cfg.BAR0 + 12, 0x1);
      assert.equal(await driver.config32(Cfg.BAR0 + 8), 0xfebc000c);
      assert.equal(served.device.config.barAddress(2), 0x1febc0000n);
    }));

  it('count 0 succeeds with no data', (t) =>
    withDevice(t, async ({ client }) => {
      for (const region of [BAR0, BAR2, CONFIG]) {
        const r = await client.ok(Command.REGION_READ, readReq(region, 8, 0));
        const decoded = decodeRegionReadReply(r.payload);
        assert.equal(decoded?.data.length ?? 0, 0, 'empty (libvfio-user) or a 16-byte echo with no data');
        await client.ok(Command.REGION_WRITE, writeReq(region, 8, new Uint8Array(0)));
      }
      await client.ok(Command.REGION_READ, readReq(BAR0, 4096, 0)); // at the very end
    }));

  it('writes the MSI-X table through BAR4, ignores PBA writes, refuses accesses straddling the table', (t) =>
    withDevice(t, async ({ served, client, driver }) => {
      await driver.write(BAR4, 3 * 16, wb().u32(0xfee01000).u32(0x1).u32(0x4321).u32(0).build());
      assert.deepEqual(served.device.config.msix?.entry(3), { address: 0x1fee01000n, data: 0x4321, masked: false });
      assert.deepEqual(await driver.read(BAR4, 3 * 16, 16), wb().u32(0xfee01000).u32(0x1).u32(0x4321).u32(0).build());
      assert.equal(await driver.readLe(0, 4, BAR4), 0, 'entry 0 address');
      assert.equal(await driver.readLe(12, 4, BAR4), 1, 'entry 0 still masked');
      await driver.write(BAR4, 0x1000, Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff));
      assert.equal(await driver.msixPending(), 0n, 'the PBA is read-only');
      await client.fails(Command.REGION_READ, readReq(BAR4, 8 * 16 - 8, 16), EINVAL); // past the 8-entry table
      // the rest of a BAR that only hosts MSI-X reads as zeros and ignores writes
      await driver.write(BAR4, 0x800, Uint8Array.of(1, 2, 3, 4));
      assert.deepEqual([...(await driver.read(BAR4, 0x800, 4))], [0, 0, 0, 0]);
    }));

  it('a callback returning the wrong number of bytes fails the read with EINVAL', (t) =>
    withDevice(
      t,
      async ({ client }) => {
        await client.fails(Command.REGION_READ, readReq(BAR0, 0, 8), EINVAL);
        await client.ok(Command.REGION_READ, readReq(BAR0, 0, 4));
      },
      testDeviceDefinition({ regions: { ...testDeviceDefinition().regions, bar0: { size: 4096, read: () => new Uint8Array(4) } } }),
    ));

  it('refuses writes to a read-only region and to the ROM, reads to a write-only one', (t) =>
    withDevice(
      t,
      async ({ client }) => {
        await client.ok(Command.REGION_READ, readReq(ROM, 0, 4));
        await client.fails(Command.REGION_WRITE, writeReq(ROM, 0, new Uint8Array(4)), EINVAL);
        await client.fails(Command.REGION_READ, readReq(BAR0, 0, 4), EINVAL);
        await client.ok(Command.REGION_WRITE, writeReq(BAR0, 0, new Uint8Array(4)));
      },
      testDeviceDefinition({
        regions: {
          ...testDeviceDefinition().regions,
          bar0: { size: 4096, readable: false, write: () => {} },
          rom: { size: 2048, read: (_o, n) => new Uint8Array(n) },
        },
      }),
    ));

  it('honours NO_REPLY', (t) =>
    withDevice(t, async ({ client, driver }) => {
      client.post(Command.REGION_WRITE, writeReq(BAR0, 0, Uint8Array.of(5)), HeaderFlags.NO_REPLY);
      client.post(Command.REGION_WRITE, writeReq(9, 0, Uint8Array.of(5)), HeaderFlags.NO_REPLY);
      assert.deepEqual([...(await driver.read(BAR0, 0, 1))], [5]);
      assert.equal(client.replies.length, 2, 'VERSION and the read only');
    }));

  const bad: [string, number, Uint8Array][] = [
    ['BAR0 offset + count past the end', Command.REGION_READ, readReq(BAR0, 4095, 2)],
    ['BAR0 write past the end', Command.REGION_WRITE, writeReq(BAR0, 4094, new Uint8Array(4))],
    ['BAR2 offset at the size', Command.REGION_READ, readReq(BAR2, 0x10000, 1)],
    ['config past 256', Command.REGION_READ, readReq(CONFIG, 255, 2)],
    ['config write to an unclaimed byte', Command.REGION_WRITE, writeReq(CONFIG, 0xf0, new Uint8Array(4))],
    ['region 9', Command.REGION_READ, readReq(9, 0, 4)],
    ['region 0xffffffff', Command.REGION_WRITE, writeReq(0xffffffff, 0, new Uint8Array(1))],
    ['an unimplemented BAR (BAR1)', Command.REGION_READ, readReq(BAR1, 0, 4)],
    ['an unimplemented region with count 0', Command.REGION_READ, readReq(BAR1, 0, 0)],
    ['the absent ROM', Command.REGION_READ, readReq(ROM, 0, 4)],
    ['count above 1 MiB', Command.REGION_READ, readReq(BAR2, 0, (1 << 20) + 1)],
    ['count 0xffffffff', Command.REGION_READ, readReq(BAR2, 0, 0xffffffff)],
    ['WRITE with fewer data bytes than count', Command.REGION_WRITE, wb().u64(0).u32(BAR0).u32(4).bytes([1, 2]).build()],
    ['WRITE with more data bytes than count', Command.REGION_WRITE, wb().u64(0).u32(BAR0).u32(2).bytes([1, 2, 3, 4]).build()],
    ['offset + count wrapping past 2^64', Command.REGION_READ, wb().u64((1n << 64n) - 2n).u32(BAR0).u32(4).build()],
    ['WRITE offset + count wrapping', Command.REGION_WRITE, wb().u64((1n << 64n) - 1n).u32(BAR2).u32(2).bytes([1, 2]).build()],
    ['a 15-byte READ', Command.REGION_READ, wb().u64(0).u32(BAR0).bytes([4, 0, 0]).build()],
  ];
  for (const [name, cmd, payload] of bad) {
    it(`refuses ${name} with EINVAL and keeps serving`, (t) =>
      withDevice(t, async ({ client }) => {
        await client.fails(cmd, payload, EINVAL);
        await client.ok(Command.REGION_READ, readReq(CONFIG, 0, 4));
      }));
  }
});

describe('REGION_WRITE_MULTI', () => {
  it('applies three small writes in order and replies wr_cnt 3', (t) =>
    withDevice(t, async ({ served, client, driver }) => {
      const writes = [one(BAR0, 0x10, [1, 2, 3, 4]), one(BAR2, 0x20, [5, 6, 7, 8, 9, 10, 11, 12]), one(CONFIG, Cfg.COMMAND, [CommandBits.MEMORY, 0])];
      const r = await client.ok(Command.REGION_WRITE_MULTI, encodeRegionWriteMulti({ writes }));
      assert.deepEqual(decodeRegionWriteMultiReply(r.payload), { wrCnt: 3n });
      assert.deepEqual([...(await driver.read(BAR0, 0x10, 4))], [1, 2, 3, 4]);
      assert.deepEqual([...served.device.regionMemory(BAR2).subarray(0x20, 0x28)], [5, 6, 7, 8, 9, 10, 11, 12]);
      assert.equal(await driver.command(), CommandBits.MEMORY);
    }));

  for (const [name, bad] of [
    ['region 9', one(9, 0, [1])],
    ['an out-of-bounds offset', one(BAR0, 4095, [1, 2])],
    ['an unimplemented region', one(BAR1, 0, [1])],
  ] as const) {
    it(`refuses a batch with ${name} in the middle (EINVAL) and applies none of it`, (t) =>
      withDevice(t, async ({ served, client, driver }) => {
        const writes = [one(BAR0, 0x10, [1, 2, 3, 4]), bad, one(BAR2, 0x20, [5, 6])];
        await client.fails(Command.REGION_WRITE_MULTI, encodeRegionWriteMulti({ writes }), EINVAL);
        assert.deepEqual([...(await driver.read(BAR0, 0x10, 4))], [0, 0, 0, 0]);
        assert.deepEqual([...served.device.regionMemory(BAR2).subarray(0x20, 0x22)], [0, 0]);
      }));
  }

  it('refuses malformed batches: wr_cnt disagreeing with the payload, an entry count above 8', (t) =>
    withDevice(t, async ({ client }) => {
      const entry = wb().u64(0).u32(BAR0).u32(4).bytes([1, 2, 3, 4, 0, 0, 0, 0]);
      await client.fails(Command.REGION_WRITE_MULTI, wb().u64(2).bytes(entry.build()).build(), EINVAL);
      await client.fails(Command.REGION_WRITE_MULTI, wb().u64(1).u64(0).u32(BAR0).u32(9).zeros(8).build(), EINVAL);
      await client.fails(Command.REGION_WRITE_MULTI, wb().u64(1n << 62n).build(), EINVAL);
    }));

  it('is refused (EINVAL) by a server that does not advertise write_multiple', (t) =>
    withDevice(
      t,
      async ({ client }) => {
        await client.fails(Command.REGION_WRITE_MULTI, encodeRegionWriteMulti({ writes: [one(BAR0, 0, [1])] }), EINVAL);
      },
      undefined,
      { limits: { writeMultiple: false } },
    ));
});
