import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, RegionCapId, RegionIndex, RegionInfoFlags } from '../../src/protocol/constants.js';
import { decodeRegionInfo, encodeRegionInfoRequest, type RegionInfo } from '../../src/protocol/region.js';
import { mapFd, native, unmap } from '../../src/native/addon.js';
import type { StepClient, Reply } from '../support/step-client.js';
import { testDeviceDefinition } from '../support/server-fixture.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { withDevice } from '../support/pci-driver.js';
import { wb } from '../support/wire-builder.js';

const EINVAL = 22;
const { READ, WRITE, MMAP, CAPS } = RegionInfoFlags;
const RW = READ | WRITE;

async function regionInfo(client: StepClient, index: number, argsz = 32): Promise<{ reply: Reply; info: RegionInfo }> {
  const reply = await client.ok(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz, index }));
  return { reply, info: decodeRegionInfo(reply.payload) };
}

/** Asks with argsz 32, then retries with the argsz the server said it needs; returns the second answer. */
async function regionInfoWithCaps(client: StepClient, index: number): Promise<{ reply: Reply; info: RegionInfo }> {
  const first = await regionInfo(client, index);
  assert.equal(first.reply.fds.length, 0);
  return regionInfo(client, index, first.info.argsz);
}

function closeFds(r: Reply): void {
  for (const fd of r.fds) native.close(fd);
}

describe('DEVICE_GET_REGION_INFO', () => {
  it('describes every region index 0–8 of the test device (argsz 32)', (t) =>
    withDevice(t, async ({ client }) => {
      const expected: [number, bigint, number][] = [
        [RegionIndex.BAR0, 4096n, RW], // callbacks only: no MMAP
        [RegionIndex.BAR1, 0n, 0],
        [RegionIndex.BAR2, 0x10000n, RW | MMAP], // shared, but the caps do not fit in 32 bytes
        [RegionIndex.BAR3, 0n, 0], // upper half of the 64-bit BAR2
        [RegionIndex.BAR4, 0x2000n, RW],
        [RegionIndex.BAR5, 0n, 0],
        [RegionIndex.ROM, 0n, 0],
        [RegionIndex.CONFIG, 256n, RW],
        [RegionIndex.VGA, 0n, 0],
      ];
      for (const [index, size, flags] of expected) {
        const { reply, info } = await regionInfo(client, index);
        assert.equal(reply.payload.length, 32, `region ${index}: payload`);
        assert.equal(reply.fds.length, 0, `region ${index}: no fd`);
        assert.equal(info.index, index);
        assert.equal(info.size, size, `region ${index}: size`);
        assert.equal(info.flags, flags, `region ${index}: flags`);
        assert.equal(info.capOffset, 0, `region ${index}: cap_offset`);
        assert.equal(info.offset, 0n, `region ${index}: offset`);
        assert.equal(info.argsz, index === RegionIndex.BAR2 ? 32 + 16 + 16 : 32, `region ${index}: argsz`);
      }
    }));

  it('BAR2: argsz 32 gets the needed argsz without CAPS/fd; the retry gets the sparse-mmap cap and one fd', (t) =>
    withDevice(t, async ({ client }) => {
      const first = await regionInfo(client, RegionIndex.BAR2, 32);
      assert.deepEqual(first.info, { argsz: 64, flags: RW | MMAP, index: 2, capOffset: 0, size: 0x10000n, offset: 0n, caps: [] });
      assert.equal(first.reply.fds.length, 0);
      const second = await regionInfo(client, RegionIndex.BAR2, first.info.argsz);
      try {
        assert.equal(second.reply.payload.length, 64);
        assert.equal(second.reply.fds.length, 1);
        assert.equal(second.info.flags, RW | MMAP | CAPS);
        assert.equal(second.info.capOffset, 32);
        assert.equal(second.info.argsz, 64);
        assert.deepEqual(second.info.caps, [{ kind: 'sparse-mmap', version: 1, areas: [{ offset: 0n, size: 0x10000n }] }]);
        // the capability bytes, independently of the decoder
        const expectedCap = wb().u16(RegionCapId.SPARSE_MMAP).u16(1).u32(0).u32(1).u32(0).u64(0).u64(0x10000).build();
        assert.deepEqual([...second.reply.payload.subarray(32)], [...expectedCap]);
      } finally {
        closeFds(second.reply);
      }
    }));

  it('BAR2: an argsz between 32 and the needed size gets that many bytes, zero-filled, no CAPS, no fd', (t) =>
    withDevice(t, async ({ client }) => {
      const { reply, info } = await regionInfo(client, RegionIndex.BAR2, 48);
      assert.equal(reply.payload.length, 48);
      assert.equal(reply.fds.length, 0);
      assert.equal(info.flags & CAPS, 0);
      assert.equal(info.capOffset, 0);
      assert.equal(info.argsz, 64);
      assert.ok(reply.payload.subarray(32).every((b) => b === 0), 'trailing bytes are zero');
    }));

  it('BAR2: a larger argsz than needed gets exactly the needed bytes', (t) =>
    withDevice(t, async ({ client }) => {
      const { reply, info } = await regionInfo(client, RegionIndex.BAR2, 4096);
      try {
        assert.equal(reply.payload.length, 64);
        assert.equal(info.argsz, 64);
        assert.equal(reply.fds.length, 1);
      } finally {
        closeFds(reply);
      }
    }));

  it('BAR2: the fd maps the region and shares its bytes with device.regionMemory(2) and with REGION_READ/WRITE', (t) =>
    withDevice(t, async ({ served, client, driver }) => {
      const { reply, info } = await regionInfoWithCaps(client, RegionIndex.BAR2);
      const fd = reply.fds[0] as number;
      const area = info.caps[0]?.kind === 'sparse-mmap' ? info.caps[0].areas[0] : undefined;
      assert.ok(area);
      const mapped = new Uint8Array(mapFd(fd, Number(info.offset + area.offset), Number(area.size), true));
      native.close(fd);
      try {
        const memory = served.device.regionMemory(RegionIndex.BAR2);
        mapped.set([1, 2, 3, 4], 0x100);
        assert.deepEqual([...memory.subarray(0x100, 0x104)], [1, 2, 3, 4], 'client mmap writes reach the device');
        memory.set([9, 8, 7], 0xfff0);
        assert.deepEqual([...mapped.subarray(0xfff0, 0xfff3)], [9, 8, 7], 'device writes reach the client mmap');
        assert.deepEqual([...(await driver.read(RegionIndex.BAR2, 0x100, 4))], [1, 2, 3, 4], 'and REGION_READ sees them');
        await driver.write(RegionIndex.BAR2, 0x2000, Uint8Array.of(0xaa, 0xbb));
        assert.deepEqual([...mapped.subarray(0x2000, 0x2002)], [0xaa, 0xbb], 'REGION_WRITE lands in the mapping');
      } finally {
        unmap(mapped.buffer as ArrayBuffer);
      }
    }));

  it('config space is 4096 bytes with PCI Express', (t) =>
    withDevice(
      t,
      async ({ client }) => {
        const { info } = await regionInfo(client, RegionIndex.CONFIG);
        assert.equal(info.size, 4096n);
        assert.equal(info.flags, RW);
      },
      testDeviceDefinition({ capabilities: { express: {} } }),
    ));

  it('a ROM is read-only and a VGA region has the legacy size', (t) =>
    withDevice(
      t,
      async ({ client }) => {
        const rom = await regionInfo(client, RegionIndex.ROM);
        assert.equal(rom.info.size, 0x800n);
        assert.equal(rom.info.flags, READ);
        const vga = await regionInfo(client, RegionIndex.VGA);
        assert.equal(vga.info.size, 0xc0000n);
        assert.equal(vga.info.flags, RW);
      },
      testDeviceDefinition({
        regions: {
          ...testDeviceDefinition().regions,
          rom: { size: 0x800, read: (_o, n) => new Uint8Array(n) },
          vga: { size: 0, read: (_o, n) => new Uint8Array(n), write: () => {} },
        },
      }),
    ));

  it('BAR4 shared: the sparse areas leave out the pages of the MSI-X table and PBA', (t) =>
    withDevice(
      t,
      async ({ served, client, driver }) => {
        const first = await regionInfo(client, RegionIndex.BAR4);
        assert.equal(first.info.argsz, 32 + 16 + 2 * 16);
        const { reply, info } = await regionInfo(client, RegionIndex.BAR4, first.info.argsz);
        const fd = reply.fds[0] as number;
        assert.equal(reply.fds.length, 1);
        assert.equal(info.flags, RW | MMAP | CAPS);
        const areas = [
          { offset: 0n, size: 0x2000n },
          { offset: 0x4000n, size: 0x4000n },
        ];
        assert.deepEqual(info.caps, [{ kind: 'sparse-mmap', version: 1, areas }]);
        const low = new Uint8Array(mapFd(fd, 0, 0x2000, true));
        const high = new Uint8Array(mapFd(fd, 0x4000, 0x4000, true));
        native.close(fd);
        try {
          const memory = served.device.regionMemory(RegionIndex.BAR4);
          low[5] = 0x55;
          high[5] = 0x66;
          assert.equal(memory[5], 0x55);
          assert.equal(memory[0x4005], 0x66);
          // the table is still emulated: entry 0's Vector Control reads masked (1) after reset
          assert.equal(await driver.readLe(0x2000 + 12, 4, RegionIndex.BAR4), 1);
          const layout = await driver.msixLayout();
          assert.deepEqual({ bar: layout.tableBar, table: layout.tableOffset, pba: layout.pbaOffset }, { bar: 4, table: 0x2000, pba: 0x3000 });
        } finally {
          unmap(low.buffer as ArrayBuffer);
          unmap(high.buffer as ArrayBuffer);
        }
      },
      testDeviceDefinition({
        regions: { ...testDeviceDefinition().regions, bar4: { size: 0x8000, shared: true } },
        msix: { bar: 4, tableOffset: 0x2000, pbaOffset: 0x3000 },
      }),
    ));

  it('BAR4 shared but wholly taken by the MSI-X pages: no MMAP, no caps, no fd', (t) =>
    withDevice(
      t,
      async ({ client }) => {
        const { reply, info } = await regionInfo(client, RegionIndex.BAR4, 4096);
        closeFds(reply);
        assert.equal(reply.fds.length, 0);
        assert.equal(info.flags, RW);
        assert.equal(info.argsz, 32);
        assert.equal(reply.payload.length, 32);
      },
      testDeviceDefinition({ regions: { ...testDeviceDefinition().regions, bar4: { size: 0x2000, shared: true } } }),
    ));

  for (const [name, payload] of [
    ['index 9', encodeRegionInfoRequest({ argsz: 32, index: 9 })],
    ['index 0xffffffff', encodeRegionInfoRequest({ argsz: 32, index: 0xffffffff })],
    ['argsz 31', encodeRegionInfoRequest({ argsz: 31, index: 0 })],
    ['argsz 0', encodeRegionInfoRequest({ argsz: 0, index: 2 })],
    ['a 31-byte payload', wb().u32(32).u32(0).u32(0).zeros(19).build()],
    ['a 16-byte payload', wb().u32(32).u32(0).u32(0).u32(0).build()],
  ] as const) {
    it(`refuses ${name} with EINVAL and keeps serving`, (t) =>
      withDevice(t, async ({ client }) => {
        const r = await client.fails(Command.DEVICE_GET_REGION_INFO, payload, EINVAL);
        assert.equal(r.fds.length, 0);
        await regionInfo(client, RegionIndex.CONFIG);
      }));
  }

  it('leaks no fd over repeated BAR2 queries, and the server keeps its region fd', (t) =>
    assertNoFdLeak(() =>
      withDevice(t, async ({ served, client }) => {
        for (let i = 0; i < 10; i++) closeFds((await regionInfoWithCaps(client, RegionIndex.BAR2)).reply);
        const { reply } = await regionInfo(client, RegionIndex.BAR2, 64);
        assert.equal(reply.fds.length, 1, 'the server still has the fd to send');
        closeFds(reply);
        served.device.regionMemory(RegionIndex.BAR2)[0] = 1;
      }),
    ));
});
