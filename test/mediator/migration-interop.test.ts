/**
 * Mediated migration of libvfio-user's samples/gpio-pci-idio-16 (skipped
 * unless LIBVFIO_USER_BUILD names a libvfio-user build, docs/interop.md):
 * two sample processes, each behind a mediator with the migration plugin
 * (the plugin answers migration; the sample's own migration is never asked);
 * our orchestrator migrates it with guest memory, the DMA steering going
 * through libvfio-user's message-mode DMA regions. The config space the
 * driver wrote arrives on the destination.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { silentLogger } from '../../src/log.js';
import { Mediator } from '../../src/mediator/mediator.js';
import { createMigrationPlugin, type MigrationPlugin } from '../../src/mediator/migration/index.js';
import { migrate } from '../../src/orchestrator/migrate.js';
import { MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import { libvfioUserBuild, startSampleServer, type SampleServer } from '../interop/libvfio-user.js';

const build = libvfioUserBuild();
const GUEST = 4 << 20;
const IOVA = 0x1_0000_0000n;

interface GpioSide {
  sample: SampleServer;
  mediator: Mediator;
  plugin: MigrationPlugin;
  client: VfioUserClient;
  memory: GuestMemory;
  iova: bigint;
}

async function openGpio(dir: string, name: string): Promise<GpioSide> {
  const path = join(dir, `${name}.sock`);
  const sample = await startSampleServer(join(build.dir ?? '', 'samples', 'gpio-pci-idio-16'), ['-v', path], path);
  const plugin = createMigrationPlugin({ deviceType: 'gpio-pci-idio-16', memory: [] });
  const mediator = await Mediator.listen({ upstream: path, listen: join(dir, `${name}-med.sock`), plugins: [plugin], log: silentLogger() });
  const client = await VfioUserClient.connect(mediator.path);
  const memory = GuestMemory.create(GUEST);
  await memory.attach(client, { iova: IOVA, mode: 'fd' });
  return { sample, mediator, plugin, client, memory, iova: IOVA };
}

describe('mediated migration of libvfio-user gpio-pci-idio-16', { skip: build.skip }, () => {
  it('migrates the sample behind mediators: migrated, config space written by the driver arrives, DMA steered and back', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-medmig-gpio-'));
    const sides: GpioSide[] = [];
    try {
      sides.push(await openGpio(dir, 'src'), await openGpio(dir, 'dst'));
      const [src, dst] = sides as [GpioSide, GpioSide];
      // The driver programs BAR2's address and enables I/O decoding.
      await src.client.regionWrite(RegionIndex.CONFIG, 0x18n, new Uint8Array([0x01, 0xc0, 0, 0]));
      await src.client.regionWrite(RegionIndex.CONFIG, 0x04n, new Uint8Array([0x01, 0x00]));
      src.memory.write(0x2000n, new Uint8Array([9, 8, 7, 6]));
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000 });
      assert.equal(report.outcome, 'migrated', report.reason);
      assert.equal(await dst.client.migrationState(), S.RUNNING);
      const header = (side: GpioSide): Promise<Uint8Array> => side.client.regionRead(RegionIndex.CONFIG, 0n, 0x40);
      const moved = await header(dst);
      assert.deepEqual(moved, await header(src));
      assert.equal(moved[0x04]! & 1, 1, 'COMMAND.IO arrived');
      assert.equal(moved[0x19], 0xc0, 'the BAR2 address arrived');
      assert.deepEqual(dst.memory.read(0x2000n, 4), new Uint8Array([9, 8, 7, 6]));
      const [stats] = src.plugin.stats();
      assert.ok(stats && stats.switches === 2 && !stats.steering, 'regions went to message mode and back');
    } finally {
      for (const s of sides) {
        s.client.close();
        await s.mediator.close();
        await s.sample.stop();
        s.memory.dispose();
      }
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
