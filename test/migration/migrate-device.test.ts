/** Migration v2 end to end through the client library: two served devices, a stream moved between them. */
import { drainParts as drain } from '../support/migration-io.js';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import { RemoteError } from '../../src/errors.js';
import { MigrationFlags, MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import type { DeviceDefinition } from '../../src/device/types.js';
import { concatChunks } from '../../src/transport/outgoing.js';
import { registerFileBar, takePageDelta, applyPageDelta } from '../support/register-file.js';
import { serveTestDevice, testDeviceDefinition, type ServedDevice } from '../support/server-fixture.js';

/** A device whose state is a 64 KiB register file; pre-copy sends pages written since the last read. */
function migratable(name = 'counter-card', deviceId = 0x10f0): { def: DeviceDefinition; regs: Uint8Array; arcs: string[] } {
  const regs = new Uint8Array(0x10000);
  const dirty = new Set<number>();
  const arcs: string[] = [];
  const def = testDeviceDefinition({
    pci: { vendorId: 0x1af4, deviceId, classCode: 0xff0000 },
    regions: {
      bar0: registerFileBar(regs, dirty),
      bar4: { size: 0x2000 },
    },
    migration: {
      preCopy: true,
      deviceType: name,
      stateVersion: 1,
      save: () => (dirty.clear(), regs.slice()),
      saveDelta: () => takePageDelta(regs, dirty),
      load: (kind, payload) => {
        if (kind === 'full') {
          if (payload.length !== regs.length) throw new Error('wrong state size');
          regs.set(payload);
          return;
        }
        applyPageDelta(regs, payload);
      },
      transition: (from, to) => void arcs.push(`${from}>${to}`),
    },
  });
  return { def, regs, arcs };
}

async function pair(fn: (src: { served: ServedDevice; client: VfioUserClient; regs: Uint8Array; arcs: string[] }, dst: { served: ServedDevice; client: VfioUserClient; regs: Uint8Array }) => Promise<void>): Promise<void> {
  const a = migratable();
  const b = migratable();
  const sa = serveTestDevice(a.def);
  const sb = serveTestDevice(b.def);
  const ca = await VfioUserClient.connect(sa.path);
  const cb = await VfioUserClient.connect(sb.path);
  try {
    await fn({ served: sa, client: ca, regs: a.regs, arcs: a.arcs }, { served: sb, client: cb, regs: b.regs });
  } finally {
    ca.close();
    cb.close();
    await Promise.all([sa.close(), sb.close()]);
  }
}

describe('migration v2 end to end', () => {
  it('advertises STOP_COPY|PRE_COPY and the migration page size; stop-copy moves state and config space, re-chunked', () =>
    pair(async (src, dst) => {
      assert.equal(await src.client.migrationFlags(), MigrationFlags.STOP_COPY | MigrationFlags.PRE_COPY);
      assert.equal(src.client.server.migration?.pgsize, 4096);
      for (let i = 0; i < src.regs.length; i += 997) src.regs[i] = i & 0xff;
      await src.client.regionWrite(RegionIndex.CONFIG, 4n, Uint8Array.of(0x06, 0x00)); // Memory + Bus Master
      await src.client.setMigrationState(S.STOP_COPY);
      assert.deepEqual(src.arcs, [`${S.RUNNING}>${S.STOP}`, `${S.STOP}>${S.STOP_COPY}`]);
      assert.equal(await src.client.migrationState(), S.STOP_COPY);
      await assert.rejects(src.client.regionRead(RegionIndex.BAR0, 0n, 4), (e: unknown) => e instanceof RemoteError && e.errno === 22, 'gated in STOP_COPY');
      const stream = concatChunks(await drain(src.client, 7000));
      await dst.client.setMigrationState(S.RESUMING);
      for (let at = 0, size = 1; at < stream.length; at += size, size = (size * 3 + 1) % 9000 || 1) {
        await dst.client.migDataWrite(stream.subarray(at, at + size));
      }
      await dst.client.setMigrationState(S.RUNNING);
      assert.deepEqual(dst.regs, src.regs);
      assert.deepEqual(await dst.client.regionRead(RegionIndex.CONFIG, 4n, 2), Uint8Array.of(0x06, 0x00));
      await src.client.setMigrationState(S.RUNNING);
    }));

  it('pre-copy: the initial state, then deltas while the device runs, then the final state', () =>
    pair(async (src, dst) => {
      await src.client.setMigrationState(S.PRE_COPY);
      const initial = await drain(src.client);
      assert.equal((await src.client.migDataRead(4096)).length, 0, 'no data right now (PRE_COPY)');
      await src.client.regionWrite(RegionIndex.BAR0, 0x3000n, Uint8Array.of(1, 2, 3));
      const delta = await drain(src.client);
      assert.ok(delta.length > 0, 'a delta for the written page');
      await src.client.regionWrite(RegionIndex.BAR0, 0x9000n, Uint8Array.of(9));
      await src.client.setMigrationState(S.STOP_COPY);
      const final = await drain(src.client);
      await dst.client.setMigrationState(S.RESUMING);
      for (const part of [...initial, ...delta, ...final]) await dst.client.migDataWrite(part);
      await dst.client.setMigrationState(S.STOP);
      assert.deepEqual(dst.regs, src.regs);
    }));

  it('refuses a foreign or corrupted stream: the device goes to ERROR, and DEVICE_RESET brings it back to RUNNING', async () => {
    const other = migratable('other-card');
    const so = serveTestDevice(other.def);
    const co = await VfioUserClient.connect(so.path);
    try {
      await pair(async (src, dst) => {
        await co.setMigrationState(S.STOP_COPY);
        const foreign = concatChunks(await drain(co));
        await dst.client.setMigrationState(S.RESUMING);
        await assert.rejects(dst.client.migDataWrite(foreign), (e: unknown) => e instanceof RemoteError && e.errno === 22, 'a stream of another device type');
        assert.equal(await dst.client.migrationState(), S.ERROR);
        await assert.rejects(dst.client.setMigrationState(S.RUNNING), (e: unknown) => e instanceof RemoteError && e.errno === 22);
        await dst.client.reset();
        assert.equal(await dst.client.migrationState(), S.RUNNING);

        await src.client.setMigrationState(S.STOP_COPY);
        const stream = concatChunks(await drain(src.client));
        const mid = stream.length >> 1;
        stream[mid] = (stream[mid] ?? 0) ^ 0x40;
        await dst.client.setMigrationState(S.RESUMING);
        await assert.rejects(dst.client.migDataWrite(stream), (e: unknown) => e instanceof RemoteError && e.errno === 22);
        assert.equal(await dst.client.migrationState(), S.ERROR);
        await dst.client.reset();

        const truncated = concatChunks(await drain(src.client)); // EOF already: nothing more
        assert.equal(truncated.length, 0);
        await dst.client.setMigrationState(S.RESUMING);
        await dst.client.migDataWrite(stream.subarray(0, 100));
        await assert.rejects(dst.client.setMigrationState(S.STOP), (e: unknown) => e instanceof RemoteError);
        assert.equal(await dst.client.migrationState(), S.ERROR, 'an incomplete stream leaves the device in ERROR');
      });
    } finally {
      co.close();
      await so.close();
    }
  });

  it('gates data commands by state and refuses illegal targets', () =>
    pair(async (src) => {
      await assert.rejects(src.client.migDataWrite(Uint8Array.of(1)), (e: unknown) => e instanceof RemoteError && e.errno === 22);
      await assert.rejects(src.client.migDataRead(16), (e: unknown) => e instanceof RemoteError && e.errno === 22);
      await assert.rejects(src.client.setMigrationState(S.RUNNING_P2P), (e: unknown) => e instanceof RemoteError && e.errno === 22);
      await assert.rejects(src.client.setMigrationState(S.ERROR), (e: unknown) => e instanceof RemoteError && e.errno === 22);
      await src.client.setMigrationState(S.STOP_COPY);
      await assert.rejects(src.client.setMigrationState(S.PRE_COPY), (e: unknown) => e instanceof RemoteError && e.errno === 22);
      assert.equal(await src.client.migrationState(), S.STOP_COPY);
      assert.ok((await src.client.migrationDataSize()) >= 0x10000n);
    }));

  it('refuses a client whose migration page size differs (EINVAL at VERSION)', async () => {
    const served = serveTestDevice(migratable().def);
    try {
      await assert.rejects(VfioUserClient.connect(served.path, { capabilities: { migration: { pgsize: 8192 } } }), (e: unknown) => e instanceof RemoteError && e.errno === 22);
    } finally {
      await served.close();
    }
  });
});
