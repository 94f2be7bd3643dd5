/**
 * The migration plugin under bad input: every malformed or out-of-place
 * request gets an error reply with the kernel's (or our server's) errno, the
 * session carries on, and a corrupted stream puts the device in ERROR, from
 * which DEVICE_RESET brings it back.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RemoteError } from '../../src/errors.js';
import { DeviceFeature, DeviceFeatureFlags, MigrationState as S } from '../../src/protocol/constants.js';
import { encodeDmaLoggingControl, encodeDmaLoggingReport, encodeMigDeviceState } from '../../src/protocol/feature.js';
import { openSide } from './migration-support.js';

const { GET, SET, PROBE } = DeviceFeatureFlags;
const errno = (n: number) => (e: unknown): boolean => e instanceof RemoteError && e.errno === n;
const EINVAL = 22;

describe('mediated migration: bad input', () => {
  it('answers malformed and out-of-place requests with errors, and keeps serving', async () => {
    const side = await openSide(1 << 20);
    try {
      const { client } = side;
      const feature = (flags: number, data: Uint8Array, argsz?: number): Promise<unknown> => client.deviceFeature(flags, data, argsz);
      // shared DEVICE_FEATURE rules
      await assert.rejects(feature(DeviceFeature.MIGRATION | GET | SET, new Uint8Array(8)), errno(EINVAL));
      await assert.rejects(feature(DeviceFeature.MIGRATION | SET, new Uint8Array(8)), errno(EINVAL));
      await assert.rejects(feature(DeviceFeature.MIGRATION | GET | (1 << 20), new Uint8Array(8)), errno(EINVAL));
      await assert.rejects(feature(DeviceFeature.MIGRATION | GET, new Uint8Array(8), 12), errno(EINVAL), 'argsz cannot hold the reply');
      await client.deviceFeature(DeviceFeature.MIG_DEVICE_STATE | GET | SET | PROBE, new Uint8Array(0));
      await assert.rejects(feature(DeviceFeature.MIG_DEVICE_STATE | SET, new Uint8Array(3)), errno(EINVAL), 'short state');
      await assert.rejects(feature(DeviceFeature.MIG_DEVICE_STATE | SET, encodeMigDeviceState({ deviceState: S.ERROR, dataFd: -1 }), 16), errno(EINVAL));
      await assert.rejects(feature(DeviceFeature.MIG_DEVICE_STATE | SET, encodeMigDeviceState({ deviceState: 99, dataFd: -1 }), 16), errno(EINVAL));
      // logging: the kernel's checks
      await assert.rejects(feature(DeviceFeature.DMA_LOGGING_REPORT | GET, encodeDmaLoggingReport({ iova: 0n, length: 4096n, pageSize: 4096n }), 64), errno(EINVAL), 'not logging');
      const control = (pageSize: bigint, ranges: Array<{ iova: bigint; length: bigint }>): Promise<unknown> => feature(DeviceFeature.DMA_LOGGING_START | SET, encodeDmaLoggingControl({ pageSize, ranges }));
      await assert.rejects(control(3000n, []), errno(EINVAL), 'page size not a power of two');
      await assert.rejects(control(4096n, [{ iova: 0n, length: 8192n }, { iova: 4096n, length: 4096n }]), errno(EINVAL), 'overlap');
      await assert.rejects(control(4096n, [{ iova: 1n, length: 4096n }]), errno(EINVAL), 'unaligned');
      await assert.rejects(control(4096n, Array.from({ length: 257 }, (_, i) => ({ iova: BigInt(i) * 8192n, length: 4096n }))), errno(7), 'E2BIG');
      await assert.rejects(control(4096n, [{ iova: (1n << 64n) - 4096n, length: 8192n }]), (e: unknown) => e instanceof RemoteError && (e.errno === 75 || e.errno === EINVAL), 'overflow');
      assert.equal(side.plugin.stats()[0]?.steering, false, 'a refused START steers nothing');
      // x-client-mmaps
      await assert.rejects(feature(0x8005 | SET, new Uint8Array(25)), errno(EINVAL));
      // migration data out of place
      await assert.rejects(client.migDataRead(64), errno(EINVAL), 'MIG_DATA_READ while RUNNING');
      await assert.rejects(client.migDataWrite(new Uint8Array(16)), errno(EINVAL), 'MIG_DATA_WRITE while RUNNING');
      // a corrupted stream: ERROR, then DEVICE_RESET back to RUNNING
      await client.setMigrationState(S.RESUMING);
      await assert.rejects(client.migDataWrite(new Uint8Array(64).fill(0xa5)), errno(EINVAL));
      assert.equal(await client.migrationState(), S.ERROR);
      await client.reset();
      assert.equal(await client.migrationState(), S.RUNNING);
      // still serving, and forwarding what is not migration
      assert.equal((await client.deviceInfo()).numRegions, 9);
    } finally {
      await side.close();
    }
  });
});
