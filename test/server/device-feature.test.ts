/** DEVICE_FEATURE's shared rules and the DMA logging features, through the client library against our server. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import { RemoteError } from '../../src/errors.js';
import { DeviceFeature, DeviceFeatureFlags, DmaMapFlags } from '../../src/protocol/constants.js';
import { decodeDmaLoggingControl, encodeDmaLoggingControl } from '../../src/protocol/feature.js';
import { memfdCreate, native } from '../../src/native/addon.js';
import { serveTestDevice, type ServedDevice } from '../support/server-fixture.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const { GET, SET, PROBE } = DeviceFeatureFlags;
const START = DeviceFeature.DMA_LOGGING_START;
const rejects = (errno: number, echoed?: boolean) => (e: unknown): boolean =>
  e instanceof RemoteError && e.errno === errno && (echoed === undefined || (e.payload !== undefined) === echoed);

async function withClient(fn: (client: VfioUserClient, served: ServedDevice) => Promise<void>): Promise<void> {
  const served = serveTestDevice();
  const client = await VfioUserClient.connect(served.path);
  try {
    await fn(client, served);
  } finally {
    client.close();
    await served.close();
  }
}

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
