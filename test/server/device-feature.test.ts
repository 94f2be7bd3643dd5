/** DEVICE_FEATURE's shared rules and the DMA logging features, through the client library against our server. */
import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import { RemoteError } from '../../src/errors.js';
import { DeviceFeature, DeviceFeatureFlags, DmaMapFlags } from '../../src/protocol/constants.js';
import { decodeDmaLoggingControl, encodeDmaLoggingControl } from '../../src/protocol/feature.js';
import { memfdCreate, native } from '../../src/native/addon.js';
import { testDeviceDefinition, withServedClient, type ServedDevice } from '../support/server-fixture.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const { GET, SET, PROBE } = DeviceFeatureFlags;
const START = DeviceFeature.DMA_LOGGING_START;
const rejects = (errno: number, echoed?: boolean) => (e: unknown): boolean =>
  e instanceof RemoteError && e.errno === errno && (echoed === undefined || (e.payload !== undefined) === echoed);

const withClient = (fn: (client: VfioUserClient, served: ServedDevice) => Promise<void>): Promise<void> => withServedClient(testDeviceDefinition(), fn);

describe('DEVICE_FEATURE rules', () => {
  it('PROBE: supported ops succeed and echo; unsupported ops and unknown features fail with the request echoed', () =>
    withClient(async (client) => {
      assert.equal(await client.probeFeature(START, SET), true);
      assert.equal(await client.probeFeature(DeviceFeature.DMA_LOGGING_STOP, SET), true);
      assert.equal(await client.probeFeature(DeviceFeature.DMA_LOGGING_REPORT, GET), true);
      assert.equal(await client.probeFeature(START, GET), false, 'START has no GET');
      assert.equal(await client.probeFeature(DeviceFeature.MIGRATION, GET), false, 'no migration on this device');
      const echo = await client.deviceFeature(START | SET | PROBE, new Uint8Array(16));
      assert.deepEqual([echo.flags, echo.data.length], [START | SET | PROBE, 16]);
      await assert.rejects(client.deviceFeature(START | GET | PROBE), rejects(22, true));
    }));

  it('one rule per check: unknown bits, GET and SET together, unsupported op, a small argsz', () =>
    withClient(async (client) => {
      await assert.rejects(client.deviceFeature(START | SET | (1 << 20)), rejects(22, true));
      await assert.rejects(client.deviceFeature(DeviceFeature.DMA_LOGGING_REPORT | GET | SET), rejects(22, true));
      await assert.rejects(client.deviceFeature(START | GET), rejects(22, false), 'a failed GET carries no payload');
      await assert.rejects(client.deviceFeature(0x1234 | GET), rejects(22));
      await assert.rejects(client.deviceFeature(START | SET, encodeDmaLoggingControl({ pageSize: 4096n, ranges: [] }), 8), rejects(22, true));
    }));
});

describe('DMA logging through DEVICE_FEATURE', () => {
  it('START validates its ranges (E2BIG, alignment, overflow, overlap, page size)', () =>
    withClient(async (client) => {
      const many = Array.from({ length: 257 }, (_, i) => ({ iova: BigInt(i) << 20n, length: 4096n }));
      await assert.rejects(client.startDirtyLogging(4096n, many), rejects(7));
      await assert.rejects(client.startDirtyLogging(4096n, [{ iova: 0x1000n, length: 0x800n }]), rejects(22));
      await assert.rejects(client.startDirtyLogging(4096n, [{ iova: 0x1800n, length: 0x1000n }]), rejects(22));
      await assert.rejects(client.startDirtyLogging(4096n, [{ iova: 0xffff_ffff_ffff_f000n, length: 0x2000n }]), rejects(75));
      await assert.rejects(client.startDirtyLogging(4096n, [{ iova: 0n, length: 0x2000n }, { iova: 0x1000n, length: 0x1000n }]), rejects(22));
      await assert.rejects(client.startDirtyLogging(3000n), rejects(22));
      await assert.rejects(client.dirtyReport(0n, 0x1000n, 4096n), rejects(2), 'unmapped: checked before logging, as libvfio-user does');
    }));

  it('logs device DMA writes, reports them at several page sizes, clears on read, stops', async () => {
    await assertNoFdLeak(() =>
      withClient(async (client, served) => {
        const fd = memfdCreate('guest', 0x40_0000);
        await client.dmaMap({ addr: 0x1000_0000n, size: 0x40_0000n, flags: DmaMapFlags.READ | DmaMapFlags.WRITE }, fd);
        native.close(fd);
        const chosen = await client.startDirtyLogging(4096n, [{ iova: 0x1000_0000n, length: 0x40_0000n }]);
        assert.equal(chosen, 4096n);
        const dma = served.device.dma;
        for (const page of [0, 7, 8, 255, 256, 1023]) dma.writeSync(0x1000_0000n + BigInt(page) * 4096n, Uint8Array.of(1));
        const bitmap = await client.dirtyReport(0x1000_0000n, 0x40_0000n, 4096n);
        assert.equal(bitmap.length, 128);
        const set = [...bitmap].flatMap((byte, j) => [0, 1, 2, 3, 4, 5, 6, 7].filter((i) => byte & (1 << i)).map((i) => j * 8 + i));
        assert.deepEqual(set, [0, 7, 8, 255, 256, 1023]);
        assert.ok((await client.dirtyReport(0x1000_0000n, 0x40_0000n, 4096n)).every((b) => b === 0), 'cleared on read');
        dma.writeSync(0x1000_0000n + 0x3000n, Uint8Array.of(1));
        const coarse = await client.dirtyReport(0x1000_0000n, 0x40_0000n, 2n << 20n);
        assert.deepEqual([...coarse.subarray(0, 1)], [1], '2 MiB pages: page 0');
        await client.stopDirtyLogging();
        await assert.rejects(client.dirtyReport(0x1000_0000n, 0x40_0000n, 4096n), rejects(22));
      }),
    );
  });

  it('START echoes the request with the page size the device tracks at', () =>
    withClient(async (client) => {
      const reply = await client.deviceFeature(START | SET, encodeDmaLoggingControl({ pageSize: 8192n, ranges: [] }));
      assert.equal(decodeDmaLoggingControl(reply.data).pageSize, 8192n);
      await assert.rejects(client.startDirtyLogging(4096n), rejects(22), 'already logging at another page size');
      assert.equal(await client.startDirtyLogging(8192n), 8192n, 'the same page size again is fine');
    }));
});

const KiB = 1024n;
const MiB = 1024n * KiB;
const GiB = 1024n * MiB;
const RW = DmaMapFlags.READ | DmaMapFlags.WRITE;

/** Indices of the set bits (bit i%8 of byte i/8). */
function setBits(bitmap: Uint8Array): number[] {
  return [...bitmap].flatMap((byte, j) => [0, 1, 2, 3, 4, 5, 6, 7].filter((i) => byte & (1 << i)).map((i) => j * 8 + i));
}

/** Maps memfd-backed guest memory at each [iova, size) through the client (the server owns its copy of the fd). */
async function mapGuest(client: VfioUserClient, regions: ReadonlyArray<readonly [bigint, bigint]>): Promise<void> {
  for (const [addr, size] of regions) {
    const fd = memfdCreate('guest', Number(size));
    try {
      await client.dmaMap({ addr, size, flags: RW }, fd);
    } finally {
      native.close(fd);
    }
  }
}

describe('DMA logging with the kernel semantics, through the client', () => {
  it('the validation table: START and REPORT, one errno per rule', () =>
    withClient(async (client) => {
      await mapGuest(client, [[0x10_0000n, MiB]]);
      await client.dmaMap({ addr: 0x80_0000n, size: MiB, flags: RW }); // message mode
      type Row = readonly [string, () => Promise<unknown>, number];
      const before: Row[] = [
        ['REPORT before START', () => client.dirtyReport(0x10_0000n, MiB, 4096n), 22],
        ['REPORT of unmapped IOVA (checked before logging)', () => client.dirtyReport(0x40_0000n, MiB, 4096n), 2],
        ['START page size 0', () => client.startDirtyLogging(0n), 22],
        ['START page size not a power of two', () => client.startDirtyLogging(0x3000n), 22],
        ['START 257 ranges', () => client.startDirtyLogging(4096n, Array.from({ length: 257 }, (_, i) => ({ iova: BigInt(i) << 20n, length: 4096n }))), 7],
        ['START range of length 0', () => client.startDirtyLogging(4096n, [{ iova: 0x10_0000n, length: 0n }]), 22],
        ['START range length not aligned', () => client.startDirtyLogging(4096n, [{ iova: 0x10_0000n, length: 0x1800n }]), 22],
        ['START range iova not aligned', () => client.startDirtyLogging(8192n, [{ iova: 0x10_1000n, length: 0x2000n }]), 22],
        ['START range past 2^64', () => client.startDirtyLogging(4096n, [{ iova: 0xffff_ffff_ffff_f000n, length: 0x2000n }]), 75],
        ['START overlapping ranges', () => client.startDirtyLogging(4096n, [{ iova: 0x10_2000n, length: 0x2000n }, { iova: 0x10_0000n, length: 0x3000n }]), 22],
      ];
      for (const [what, call, errno] of before) await assert.rejects(call(), rejects(errno), what);
      assert.equal(await client.startDirtyLogging(4096n, Array.from({ length: 256 }, (_, i) => ({ iova: 0x10_0000n + BigInt(i) * 0x1000n, length: 0x1000n }))), 4096n, '256 ranges');
      const after: Row[] = [
        ['START at another page size', () => client.startDirtyLogging(8192n), 22],
        ['REPORT page size below 4 KiB', () => client.dirtyReport(0x10_0000n, MiB, 2048n), 22],
        ['REPORT page size not a power of two', () => client.dirtyReport(0x10_0000n, MiB, 0x3000n), 22],
        ['REPORT of length 0', () => client.dirtyReport(0x10_0000n, 0n, 4096n), 22],
        ['REPORT past 2^64', () => client.dirtyReport(0xffff_ffff_ffff_f000n, 0x2000n, 4096n), 75],
        ['REPORT of a gap only', () => client.dirtyReport(0x20_0000n, 0x60_0000n, 4096n), 2],
      ];
      for (const [what, call, errno] of after) await assert.rejects(call(), rejects(errno), what);
      const accepted: Array<readonly [string, bigint, bigint, bigint]> = [
        ['a whole region (libvfio-user)', 0x10_0000n, MiB, 4096n],
        ['part of a region (libvfio-user: ENOTSUP)', 0x10_4000n, 0x4000n, 4096n],
        ['an unaligned part', 0x10_0800n, 0x1000n, 4096n],
        ['a region and the gap after it', 0x10_0000n, 0x40_0000n, 8192n],
        ['a message-mode region (libvfio-user: EINVAL)', 0x80_0000n, MiB, 4096n],
        ['less than one page', 0x10_0000n, 0x1000n, 2n * MiB],
      ];
      for (const [what, iova, length, pageSize] of accepted) {
        const bitmap = await client.dirtyReport(iova, length, pageSize);
        assert.deepEqual(setBits(bitmap), [], what);
        assert.equal(BigInt(bitmap.length), (((length + pageSize - 1n) / pageSize + 63n) / 64n) * 8n, what);
      }
    }));

  it('honours START ranges; reports parts of regions and spans of several; clears only what it reported', () =>
    withClient(async (client, served) => {
      await mapGuest(client, [[0x10_0000n, MiB], [0x20_0000n, MiB], [0x40_0000n, MiB]]);
      const dma = served.device.dma;
      await client.startDirtyLogging(4096n, [{ iova: 0x1f_0000n, length: 0x2_0000n }, { iova: 0x40_0000n, length: 0x1000n }]);
      const write = (iova: bigint, n = 1): void => dma.writeSync(iova, new Uint8Array(n));
      write(0x10_0000n); // outside every range
      write(0x1e_f000n, 0x2000); // page 0x1ef out, page 0x1f0 in
      write(0x20_f000n, 0x2000); // page 0x20f in, page 0x210 out
      write(0x40_0000n, 0x2000); // page 0x400 in, page 0x401 out
      write(0x4f_f000n); // outside
      assert.deepEqual(setBits(await client.dirtyReport(0x1f_0000n, 0x2_0000n, 4096n)), [0, 0x1f], 'the range, across two regions');
      assert.deepEqual(setBits(await client.dirtyReport(0x10_0000n, 0x40_0000n, 4096n)), [0x300], 'two regions, a gap and a third: only page 0x400 left');
      for (const page of [0x1f0n, 0x1f8n, 0x200n, 0x20fn]) write(page << 12n);
      assert.deepEqual(setBits(await client.dirtyReport(0x1f_8000n, 0x8000n, 4096n)), [0], 'a sub-range: page 0x1f8 only');
      assert.deepEqual(setBits(await client.dirtyReport(0x10_0000n, 2n * MiB, 4096n)), [0xf0, 0x100, 0x10f], 'the rest is still there');
      write(0x20_0000n);
      assert.deepEqual(setBits(await client.dirtyReport(0x1f_f800n, 0x1000n, 4096n)), [0], 'unaligned: one report page, over pages 0x1ff and 0x200');
      assert.deepEqual(setBits(await client.dirtyReport(0x20_0000n, 0x1000n, 4096n)), [0], 'kept: not wholly inside the last report');
    }));

  it('a 1 GiB region, ranges of thousands of pages, at 4 KiB, 8 KiB, 64 KiB and 2 MiB', () =>
    withClient(async (client, served) => {
      const base = 0x1_0000_0000n;
      await mapGuest(client, [[base, GiB]]);
      await client.startDirtyLogging(4096n, [{ iova: base, length: 0x1_0000n * 4096n }, { iova: base + 0x3_0000n * 4096n, length: 0x1_0000n * 4096n }]);
      const pages = [0, 255, 256, 65535, 65536, 262143]; // 65536 is outside both ranges
      const expect: Record<string, number[]> = {
        '4096': [0, 255, 256, 65535, 262143],
        '8192': [0, 127, 128, 32767, 131071],
        '65536': [0, 15, 16, 4095, 16383],
        '2097152': [0, 127, 511],
      };
      for (const pageSize of [4096n, 8192n, 65536n, 2n * MiB]) {
        for (const p of pages) served.device.dma.writeSync(base + BigInt(p) * 4096n + 4095n, Uint8Array.of(1));
        const half = await client.dirtyReport(base, GiB / 2n, pageSize);
        const rest = await client.dirtyReport(base + GiB / 2n, GiB / 2n, pageSize);
        const restBits = setBits(rest).map((b) => b + Number(GiB / 2n / pageSize));
        assert.deepEqual([...setBits(half), ...restBits], expect[String(pageSize)], `at ${pageSize}`);
        assert.deepEqual(setBits(await client.dirtyReport(base, GiB, pageSize)), [], 'cleared');
      }
    }));

  it('times a REPORT of 1 GiB at 4 KiB pages with ~1000 dirty pages', async (t: TestContext) =>
    withClient(async (client, served) => {
      const base = 0x1_0000_0000n;
      await mapGuest(client, [[base, GiB]]);
      await client.startDirtyLogging(4096n);
      const dirty = Array.from({ length: 1000 }, (_, i) => (i * 262 + (i % 7)) % 262144);
      const cases = [
        ['whole region', base, GiB],
        ['sub-range (one page in, one short)', base + 4096n, GiB - 8192n],
      ] as const;
      for (const [what, iova, length] of cases) {
        const times: number[] = [];
        for (let round = 0; round < 21; round++) {
          for (const p of dirty) served.device.dma.writeSync(base + BigInt(p) * 4096n, Uint8Array.of(1));
          const t0 = performance.now();
          const bitmap = await client.dirtyReport(iova, length, 4096n);
          times.push(performance.now() - t0);
          assert.equal(bitmap.length, Number(length / 4096n + 63n) >> 6 << 3);
          assert.equal(setBits(bitmap).length, dirty.filter((p) => BigInt(p) * 4096n >= iova - base && BigInt(p + 1) * 4096n <= iova - base + length).length);
        }
        times.sort((a, b) => a - b);
        t.diagnostic(`DMA_LOGGING_REPORT ${what}, 1 GiB at 4 KiB, 1000 dirty: median ${times[10]!.toFixed(3)} ms, min ${times[0]!.toFixed(3)} ms, max ${times[20]!.toFixed(3)} ms`);
        assert.ok(times[10]! < 1000, `median ${times[10]} ms`);
      }
    }));
});
