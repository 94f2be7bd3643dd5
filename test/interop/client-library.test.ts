/**
 * Optional interoperability test: our client LIBRARY (VfioUserClient,
 * GuestMemory, Interrupts, MappedRegion, config helpers) against libvfio-user's
 * sample servers. Skipped unless LIBVFIO_USER_BUILD names a libvfio-user build
 * (docs/interop.md). `samples/server` at efd091b refuses to start (BAR1 0x3000);
 * LIBVFIO_USER_SERVER may name a fixed build of it (BAR1 16 KiB).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceFeature, DeviceFeatureFlags, IrqIndex, RegionIndex, RegionInfoFlags, MigrationFlags } from '../../src/protocol/constants.js';
import { decodeMigrationFeature } from '../../src/protocol/feature.js';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { Interrupts } from '../../src/client/interrupts.js';
import { MappedRegion } from '../../src/client/regions.js';
import { listCapabilities, readConfig } from '../../src/client/pci-config.js';
import { RemoteError } from '../../src/errors.js';
import { libvfioUserBuild, startSampleServer, type SampleServer } from './libvfio-user.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const build = libvfioUserBuild();

describe('our client library against libvfio-user gpio-pci-idio-16', { skip: build.skip }, () => {
  let dir: string;
  let server: SampleServer;
  let path: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-user-interop-client-'));
    path = join(dir, 'gpio.sock');
    server = await startSampleServer(join(build.dir ?? '', 'samples', 'gpio-pci-idio-16'), ['-v', path], path);
  });

  after(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('negotiates, reads identity and regions, drives BAR2, installs INTx, maps and unmaps guest memory', async () => {
    await assertNoFdLeak(async () => {
      const client = await VfioUserClient.connect(path);
      try {
        assert.deepEqual(client.version, { major: 0, minor: 2 });
        assert.equal(client.server.migration?.pgsize, 4096);
        const info = await client.deviceInfo();
        assert.deepEqual([info.numRegions, info.numIrqs], [9, 5]);
        assert.deepEqual([await readConfig(client, 0, 2), await readConfig(client, 2, 2)], [0x494f, 0x0dc8]);
        const caps = await listCapabilities(client);
        assert.equal(caps.end, 'end');
        const bar2 = await client.regionInfo(RegionIndex.BAR2);
        assert.equal(bar2.info.size, 256n);
        assert.equal(bar2.info.flags & (RegionInfoFlags.READ | RegionInfoFlags.WRITE), 3);
        assert.equal(bar2.fd, undefined);
        const region = await MappedRegion.open(client, RegionIndex.BAR2);
        // Outputs at 0, inputs at 1: input bit i is high while output pin i's toggle count is a multiple of 3.
        assert.equal((await region.read(1n, 1))[0], 0xff, 'all inputs high');
        await region.write(0n, Uint8Array.of(0x01));
        assert.equal((await region.read(1n, 1))[0], 0xfe);
        assert.equal(region.lastPath, 'message');
        region.close();
        const intx = await Interrupts.enable(client, IrqIndex.INTX);
        assert.equal(intx.count, 1);
        await intx.disable();
        const flags = DeviceFeature.MIGRATION | DeviceFeatureFlags.GET;
        const feature = await client.deviceFeature(flags, new Uint8Array(8), 16);
        assert.equal(decodeMigrationFeature(feature.data).flags, MigrationFlags.STOP_COPY | MigrationFlags.PRE_COPY);
        const guest = GuestMemory.create(1 << 20, { name: 'interop-guest' });
        const attached = await guest.attach(client, { iova: 0x10_0000n, mode: 'fd' });
        await attached.detach();
        await assert.rejects(client.dmaUnmap(0x10_0000n, 1n << 20n), (e: unknown) => e instanceof RemoteError && e.errno === 2);
        guest.dispose();
        await assert.rejects(client.regionRead(9, 0n, 4), (e: unknown) => e instanceof RemoteError && e.errno === 22);
      } finally {
        client.close();
      }
    });
  });
});

describe('our client library against libvfio-user samples/server', { skip: build.skip }, () => {
  const binary = process.env.LIBVFIO_USER_SERVER ?? join(build.dir ?? '', 'samples', 'server');
  let dir: string;
  let server: SampleServer | undefined;
  let startError: Error | undefined;
  let path: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-user-interop-client-server-'));
    path = join(dir, 'server.sock');
    server = await startSampleServer(binary, ['-v', path], path).catch((e: Error) => ((startError = e), undefined));
  });

  after(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('maps BAR1 through the sparse-mmap fd and sees the same bytes through messages', async (t) => {
    if (!server) return t.skip(`samples/server did not start (${startError?.message.split('\n')[0]}); set LIBVFIO_USER_SERVER to a build with a 16 KiB BAR1`);
    const client = await VfioUserClient.connect(path).catch((e: Error) => e);
    if (client instanceof Error) return t.skip(`samples/server went away: ${client.message}`);
    try {
      const bar1 = await MappedRegion.open(client, RegionIndex.BAR1);
      assert.ok(bar1.mapped, 'BAR1 is mmapped');
      await bar1.write(0n, Uint8Array.of(1, 2, 3, 4));
      assert.equal(bar1.lastPath, 'mmap');
      assert.deepEqual([...(await client.regionRead(RegionIndex.BAR1, 0n, 4))], [1, 2, 3, 4]);
      bar1.close();
    } finally {
      client.close();
    }
  });
});
