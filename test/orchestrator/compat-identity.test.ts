/**
 * The orchestrator's compatibility check with `x-migration-identity`: two
 * devices that look alike to the guest (same PCI ids, regions, migration
 * flags) but differ in device type or state version are refused before
 * anything changes — the source stays RUNNING and no MIG_DEVICE_STATE SET is
 * sent to either side.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { checkCompatibility } from '../../src/orchestrator/compat.js';
import { localDestination } from '../../src/orchestrator/destination.js';
import { migrate, MigrationCompatibilityError, type MigrationSide } from '../../src/orchestrator/migrate.js';
import { Command, DeviceFeature, DeviceFeatureFlags, MigrationState as S } from '../../src/protocol/constants.js';
import type { MigrationDefinition } from '../../src/migration/types.js';
import { serveTestDevice, testDeviceDefinition, type ServedDevice } from '../support/server-fixture.js';

const IOVA = 0x1_0000_0000n;
const GUEST = 1 << 20;

interface Side extends MigrationSide {
  served: ServedDevice;
  /** Arcs the device's transition hook saw ("from>to"). */
  arcs: string[];
  /** MIG_DEVICE_STATE SETs the client sent. */
  stateSets: number;
}

async function open(migration: Pick<MigrationDefinition, 'deviceType' | 'stateVersion'> & Partial<MigrationDefinition>): Promise<Side> {
  const arcs: string[] = [];
  const served = serveTestDevice(
    testDeviceDefinition({
      migration: { save: () => new Uint8Array(16), load: () => undefined, transition: (from, to) => void arcs.push(`${from}>${to}`), ...migration },
    }),
  );
  const side = { served, arcs, stateSets: 0 } as Side;
  side.client = await VfioUserClient.connect(served.path, {
    trace: (e) => {
      if (e.direction !== 'send' || e.header.cmd !== Command.DEVICE_FEATURE || e.payload.length < 8) return;
      const flags = new DataView(e.payload.buffer, e.payload.byteOffset, e.payload.length).getUint32(4, true);
      if ((flags & DeviceFeatureFlags.MASK) === DeviceFeature.MIG_DEVICE_STATE && (flags & DeviceFeatureFlags.SET) !== 0) side.stateSets++;
    },
  });
  side.memory = GuestMemory.create(GUEST);
  await side.memory.attach(side.client, { iova: IOVA, mode: 'fd' });
  side.iova = IOVA;
  return side;
}

async function withPair(
  src: Parameters<typeof open>[0],
  dst: Parameters<typeof open>[0],
  fn: (s: Side, d: Side) => Promise<void>,
): Promise<void> {
  const sides: Side[] = [];
  try {
    sides.push(await open(src), await open(dst));
    await fn(sides[0] as Side, sides[1] as Side);
  } finally {
    for (const s of sides) {
      s.client.close();
      await s.served.close();
      s.memory.dispose();
    }
  }
}

/** Makes `client` see no `x-migration-identity` member, as with a server that does not advertise it. */
function hideIdentity(client: VfioUserClient): void {
  const { identity: _hidden, ...rest } = client.migrationExtensions;
  Object.defineProperty(client, 'migrationExtensions', { get: () => rest });
}

async function assertUntouched(s: Side, d: Side): Promise<void> {
  assert.equal(await s.client.migrationState(), S.RUNNING, 'the source stays RUNNING');
  assert.equal(await d.client.migrationState(), S.RUNNING);
  assert.deepEqual([s.arcs, d.arcs], [[], []], 'no arc ran on either device');
  assert.deepEqual([s.stateSets, d.stateSets], [0, 0], 'no MIG_DEVICE_STATE SET was sent');
}

describe('orchestrator compatibility: x-migration-identity', () => {
  it('refuses two devices of different device types before anything changes', () =>
    withPair({ deviceType: 'card-a', stateVersion: 1 }, { deviceType: 'card-b', stateVersion: 1 }, async (s, d) => {
      assert.ok(s.client.migrationExtensions.identity !== undefined && d.client.migrationExtensions.identity !== undefined);
      await assert.rejects(migrate({ source: s, destination: d, downtimeBudgetMs: 1000 }), (e: unknown) => {
        assert.ok(e instanceof MigrationCompatibilityError);
        assert.match(e.message, /device types differ/);
        assert.match(e.message, /source 'card-a' state v1/);
        assert.match(e.message, /destination 'card-b' state v1/);
        return true;
      });
      await assertUntouched(s, d);
    }));

  it('refuses a source state version the destination neither has nor accepts, naming both', () =>
    withPair({ deviceType: 'card', stateVersion: 3 }, { deviceType: 'card', stateVersion: 2, acceptStateVersions: [1] }, async (s, d) => {
      await assert.rejects(migrate({ source: s, destination: d, downtimeBudgetMs: 1000 }), (e: unknown) => {
        assert.ok(e instanceof MigrationCompatibilityError);
        assert.match(e.message, /cannot load the source's state version/);
        assert.match(e.message, /source 'card' state v3/);
        assert.match(e.message, /destination 'card' state v2, also loads v1/);
        return true;
      });
      await assertUntouched(s, d);
    }));

  it('passes a source version the destination accepts, and equal versions', async () => {
    await withPair({ deviceType: 'card', stateVersion: 1 }, { deviceType: 'card', stateVersion: 2, acceptStateVersions: [1] }, async (s, d) => {
      const profile = await checkCompatibility(s, localDestination(d));
      assert.equal(typeof profile.migrationFlags, 'bigint');
      await assertUntouched(s, d);
    });
    await withPair({ deviceType: 'card', stateVersion: 7 }, { deviceType: 'card', stateVersion: 7 }, async (s, d) => {
      await checkCompatibility(s, localDestination(d));
      await assertUntouched(s, d);
    });
  });

  it('a destination that only accepts older versions than the source is refused even though its list is non-empty', () =>
    withPair({ deviceType: 'card', stateVersion: 2 }, { deviceType: 'card', stateVersion: 1 }, async (s, d) => {
      await assert.rejects(checkCompatibility(s, localDestination(d)), MigrationCompatibilityError);
      await assertUntouched(s, d);
    }));

  it('when either side does not advertise it, only the other checks are made (different types pass here; the stream reader refuses later)', () =>
    withPair({ deviceType: 'card-a', stateVersion: 1 }, { deviceType: 'card-b', stateVersion: 9 }, async (s, d) => {
      hideIdentity(d.client);
      await checkCompatibility(s, localDestination(d));
      await assertUntouched(s, d);
    }));
});
