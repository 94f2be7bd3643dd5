/**
 * The client library honours SPARSE_MMAP_SAVING (docs/protocol-extensions.md §9–§10): a MappedRegion of a
 * region with a saving layout is declared (x-client-mmaps) before it is mapped; a SET into a saving state moves
 * the areas outside the layout to the message path first (the server would refuse EBUSY otherwise), and RUNNING
 * maps them again; nothing extra is sent for regions without a layout. Then the orchestrator's migrate() of a
 * device with a saving layout: the area was on the message path while the device saved, the device's memory
 * arrives whole, and an aborted migration gives the source its mappings back. No fd left open.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { declaredMmaps } from '../../src/client/mmap-saving.js';
import { MappedRegion } from '../../src/client/regions.js';
import type { TraceEvent } from '../../src/client/core.js';
import { createDevice, type VfioUserDevice } from '../../src/device/device.js';
import { RemoteError } from '../../src/errors.js';
import { migrate } from '../../src/orchestrator/migrate.js';
import { Command, DeviceFeature, DeviceFeatureFlags, MigrationState as S } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { decodeDeviceFeature, encodeMigDeviceState } from '../../src/protocol/feature.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { serve, type Served } from '../devices/driver.js';

const BAR2 = 2;
const BAR_SIZE = 0x10000;
const KEPT = 0x4000; // the saving layout: [0, 16 KiB)
const IOVA = 0x1_0000_0000n;

/** What the device saw of the client's BAR2 mapping at each transition into a saving state. */
interface Seen {
  to: number;
  kept: string;
  trapped: string;
}

interface SavingDevice {
  device: VfioUserDevice;
  transitions: Seen[];
  /** The client's region, looked at from the device's transition hook (same process). */
  watch: { region: MappedRegion | undefined };
}

/** A migratable device whose shared BAR2 keeps only its first 16 KiB mappable while saving; its state is BAR2. */
function savingDevice(options: { savingMmap?: boolean } = {}): SavingDevice {
  const transitions: Seen[] = [];
  const watch: SavingDevice['watch'] = { region: undefined };
  const device = createDevice({
    name: 'saving-bar',
    pci: { vendorId: 0x1af4, deviceId: 0x10f5, classCode: 0xff0000 },
    regions: { bar2: { size: BAR_SIZE, shared: true, ...(options.savingMmap === false ? {} : { savingMmap: [{ offset: 0, size: KEPT }] }) } },
    migration: {
      deviceType: 'saving-bar',
      stateVersion: 1,
      preCopy: true,
      save: () => device.regionMemory(BAR2).slice(),
      load: (_kind, payload) => device.regionMemory(BAR2).set(payload),
      transition(_from, to) {
        const r = watch.region;
        if (r && (to === S.PRE_COPY || to === S.STOP_COPY)) transitions.push({ to, kept: r.pathOf(0n, 4), trapped: r.pathOf(BigInt(KEPT + 0x100), 4) });
      },
    },
  });
  return { device, transitions, watch };
}

/** x-client-mmaps SETs among traced messages. */
const declarations = (events: TraceEvent[]): number =>
  events.filter((e) => e.direction === 'send' && e.header.cmd === Command.DEVICE_FEATURE && (decodeDeviceFeature(e.payload).flags & 0xffff) === 0x8005).length;

async function withClient(dev: SavingDevice, fn: (client: VfioUserClient, events: TraceEvent[]) => Promise<void>): Promise<void> {
  const served = serve(dev.device);
  const events: TraceEvent[] = [];
  const client = await VfioUserClient.connect(served.path, { trace: (e) => events.push(e) });
  try {
    await fn(client, events);
  } finally {
    client.close();
    await served.close();
  }
}

describe('MappedRegion with a saving layout', () => {
  it('declares its mapping, moves the area outside the layout to messages for saving, maps it again on RUNNING', () =>
    assertNoFdLeak(() =>
      withClient(savingDevice(), async (client, events) => {
        const region = await MappedRegion.open(client, BAR2);
        try {
          assert.deepEqual(region.savingLayout, [{ offset: 0n, size: BigInt(KEPT) }]);
          assert.deepEqual(declaredMmaps(client), [{ region: BAR2, offset: 0n, size: BigInt(BAR_SIZE) }]);
          assert.equal(region.pathOf(0n, BAR_SIZE), 'mmap');
          // Without the client's preparation the server refuses: the declared mapping conflicts.
          const raw = client.deviceFeature(DeviceFeature.MIG_DEVICE_STATE | DeviceFeatureFlags.SET, encodeMigDeviceState({ deviceState: S.STOP_COPY, dataFd: -1 }), 16);
          await assert.rejects(raw, (e: unknown) => e instanceof RemoteError && e.errno === Errno.EBUSY);
          await region.write(0x8000n, Uint8Array.of(1, 2, 3, 4));
          await client.setMigrationState(S.PRE_COPY);
          assert.equal(await client.migrationState(), S.PRE_COPY);
          assert.equal(region.pathOf(0n, KEPT), 'mmap', 'the saving layout stays mapped');
          assert.equal(region.pathOf(BigInt(KEPT), 4), 'message');
          assert.equal(region.pathOf(BigInt(KEPT) - 4n, 8), 'mixed');
          assert.deepEqual(declaredMmaps(client), [{ region: BAR2, offset: 0n, size: BigInt(KEPT) }]);
          assert.deepEqual(await region.read(0x8000n, 4), Uint8Array.of(1, 2, 3, 4), 'read through REGION_READ');
          assert.equal(region.lastPath, 'message');
          await region.write(0x8004n, Uint8Array.of(5, 6, 7, 8));
          assert.equal(region.lastPath, 'message');
          const before = events.length;
          await client.setMigrationState(S.STOP_COPY);
          assert.equal(declarations(events.slice(before)), 0, 'already in the saving layout: nothing to declare');
          await client.setMigrationState(S.STOP);
          assert.equal(region.pathOf(BigInt(KEPT), 4), 'message', 'not restored before RUNNING');
          await client.setMigrationState(S.RUNNING);
          assert.equal(region.pathOf(0n, BAR_SIZE), 'mmap', 'restored');
          assert.deepEqual(declaredMmaps(client), [{ region: BAR2, offset: 0n, size: BigInt(BAR_SIZE) }]);
          assert.deepEqual(region.view(0x8000n, 8), Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8), 'the message-path write is in the same memory');
        } finally {
          region.close();
        }
      }),
    ));

  it('a region opened while saving maps only the saving layout; a refused transition leaves the runtime mappings', () =>
    assertNoFdLeak(() =>
      withClient(savingDevice(), async (client) => {
        await client.setMigrationState(S.PRE_COPY);
        const region = await MappedRegion.open(client, BAR2);
        try {
          assert.deepEqual(region.areas.map((a) => [a.offset, a.size]), [[0n, BigInt(KEPT)]]);
          assert.deepEqual(declaredMmaps(client), [{ region: BAR2, offset: 0n, size: BigInt(KEPT) }]);
          await client.setMigrationState(S.RUNNING);
          assert.deepEqual(region.areas.map((a) => [a.offset, a.size]), [[0n, BigInt(BAR_SIZE)]]);
          // A refused transition (P2P is not offered: EINVAL) restores the runtime layout at once.
          await assert.rejects(client.setMigrationState(S.PRE_COPY_P2P), (e: unknown) => e instanceof RemoteError && e.errno === Errno.EINVAL);
          assert.equal(await client.migrationState(), S.RUNNING);
          assert.equal(region.pathOf(0n, BAR_SIZE), 'mmap');
        } finally {
          region.close();
        }
      }),
    ));

  it('setMigrationStateWithDeadline prepares too, and restores when the device walks back to RUNNING', () =>
    withClient(savingDevice(), async (client) => {
      const region = await MappedRegion.open(client, BAR2);
      try {
        const reply = await client.setMigrationStateWithDeadline(S.STOP_COPY, 0n);
        assert.equal(reply.reachedState, S.STOP_COPY);
        assert.equal(region.pathOf(BigInt(KEPT), 4), 'message');
        await client.setMigrationState(S.STOP);
        const back = await client.setMigrationStateWithDeadline(S.RUNNING, 0n);
        assert.equal(back.reachedState, S.RUNNING);
        assert.equal(region.pathOf(0n, BAR_SIZE), 'mmap');
      } finally {
        region.close();
      }
    }));

  it('sends no declaration for a region without a saving layout', () =>
    withClient(savingDevice({ savingMmap: false }), async (client, events) => {
      const region = await MappedRegion.open(client, BAR2);
      try {
        assert.equal(region.savingLayout, undefined);
        await client.setMigrationState(S.STOP_COPY);
        assert.equal(region.pathOf(0n, BAR_SIZE), 'mmap', 'the runtime layout stays while saving');
        await client.setMigrationState(S.STOP);
        await client.setMigrationState(S.RUNNING);
        assert.equal(declarations(events), 0);
      } finally {
        region.close();
      }
    }));
});

describe('migrate() of a device with a saving layout', () => {
  async function pair(fn: (src: { dev: SavingDevice; client: VfioUserClient; memory: GuestMemory; region: MappedRegion }, dst: { dev: SavingDevice; client: VfioUserClient; memory: GuestMemory }) => Promise<void>): Promise<void> {
    const served: Served[] = [];
    const clients: VfioUserClient[] = [];
    const memories: GuestMemory[] = [];
    let region: MappedRegion | undefined;
    try {
      const side = async (dev: SavingDevice): Promise<{ dev: SavingDevice; client: VfioUserClient; memory: GuestMemory }> => {
        served.push(serve(dev.device));
        const client = await VfioUserClient.connect(served.at(-1)!.path);
        clients.push(client);
        const memory = GuestMemory.create(1 << 20);
        memories.push(memory);
        await memory.attach(client, { iova: IOVA, mode: 'fd' });
        return { dev, client, memory };
      };
      const src = await side(savingDevice());
      const dst = await side(savingDevice());
      region = await MappedRegion.open(src.client, BAR2);
      src.dev.watch.region = region;
      await fn({ ...src, region }, dst);
    } finally {
      region?.close();
      for (const c of clients) c.close();
      for (const s of served) await s.close();
      for (const m of memories) m.dispose();
    }
  }

  it('migrates: the area was on the message path while the device saved, BAR2 arrives whole', () =>
    assertNoFdLeak(() =>
      pair(async (src, dst) => {
        const pattern = Uint8Array.from({ length: BAR_SIZE }, (_, i) => (i * 7 + 3) & 0xff);
        await src.region.write(0n, pattern);
        assert.equal(src.region.lastPath, 'mmap');
        const report = await migrate({ source: { client: src.client, memory: src.memory, iova: IOVA }, destination: { client: dst.client, memory: dst.memory, iova: IOVA }, downtimeBudgetMs: 5000 });
        assert.equal(report.outcome, 'migrated', report.reason);
        const seen = src.dev.transitions;
        assert.deepEqual(seen.map((s) => s.to), [S.PRE_COPY, S.STOP_COPY]);
        for (const s of seen) assert.deepEqual([s.kept, s.trapped], ['mmap', 'message'], `in ${s.to}`);
        assert.deepEqual(dst.dev.device.regionMemory(BAR2), pattern, 'BAR2 arrived byte for byte');
        assert.equal(await src.client.migrationState(), S.STOP);
        await src.client.setMigrationState(S.RUNNING);
        assert.equal(src.region.pathOf(0n, BAR_SIZE), 'mmap', 'restored back in RUNNING');
      }),
    ));

  it('an aborted migration gives the source its mappings back', () =>
    pair(async (src, dst) => {
      const report = await migrate({ source: { client: src.client, memory: src.memory, iova: IOVA }, destination: { client: dst.client, memory: dst.memory, iova: IOVA }, downtimeBudgetMs: 0, maxPrecopyIterations: 2 });
      assert.equal(report.outcome, 'aborted');
      assert.equal(report.sourceRecovery, 'running');
      assert.deepEqual(src.dev.transitions.map((s) => [s.kept, s.trapped]), [['mmap', 'message']], 'pre-copy ran on the saving layout');
      assert.equal(await src.client.migrationState(), S.RUNNING);
      assert.equal(src.region.pathOf(0n, BAR_SIZE), 'mmap');
      assert.deepEqual(declaredMmaps(src.client), [{ region: BAR2, offset: 0n, size: BigInt(BAR_SIZE) }]);
    }));
});
