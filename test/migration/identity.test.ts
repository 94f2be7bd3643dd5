/** The `x-migration-identity` extension (0x8003): codec, GET/PROBE on a served device, advertised only for migratable devices. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import { InvalidArgumentError, ProtocolError, RemoteError } from '../../src/errors.js';
import { DeviceFeatureFlags, MigrationState as S } from '../../src/protocol/constants.js';
import {
  ExtensionCapability,
  ExtensionFeature,
  MAX_ACCEPTED_VERSIONS,
  MAX_MIG_IDENTITY_SIZE,
  MigIdentityFlags,
  decodeMigrationIdentity,
  encodeMigrationIdentity,
  migrationExtensionsOf,
  type MigrationIdentity,
} from '../../src/protocol/migration-extensions.js';
import type { MigrationDefinition } from '../../src/migration/types.js';
import { serveTestDevice, testDeviceDefinition } from '../support/server-fixture.js';

const { GET, SET, PROBE } = DeviceFeatureFlags;

const sample: MigrationIdentity = { deviceType: 'dma-engine', pciVendor: 0x1af4, pciDevice: 0x10f0, stateVersion: 3, acceptedVersions: [1, 2], flags: 0 };

describe('migration identity: codec', () => {
  it('round-trips and has the documented layout', () => {
    const bytes = encodeMigrationIdentity(sample);
    assert.equal(bytes.length, 16 + 2 * 4 + 1 + 'dma-engine'.length);
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    assert.equal(v.getUint16(0, true), 0x1af4);
    assert.equal(v.getUint16(2, true), 0x10f0);
    assert.equal(v.getUint32(4, true), 3);
    assert.equal(v.getUint32(8, true), 2, 'num_accepted');
    assert.equal(v.getUint32(12, true), 0, 'flags');
    assert.equal(v.getUint32(16, true), 1);
    assert.equal(v.getUint32(20, true), 2);
    assert.equal(bytes[24], 10, 'type_len');
    assert.equal(Buffer.from(bytes.subarray(25)).toString(), 'dma-engine');
    assert.deepEqual(decodeMigrationIdentity(bytes), sample);
  });

  it('round-trips the extremes: no accepted versions, 64 of them, a 255-byte UTF-8 type, TRUNCATED', () => {
    const none = { ...sample, acceptedVersions: [] };
    assert.deepEqual(decodeMigrationIdentity(encodeMigrationIdentity(none)), none);
    const max: MigrationIdentity = {
      deviceType: 'é'.repeat(127) + 'x', // 255 bytes
      pciVendor: 0xffff,
      pciDevice: 0,
      stateVersion: 0xffff_ffff,
      acceptedVersions: Array.from({ length: MAX_ACCEPTED_VERSIONS }, (_, i) => i),
      flags: MigIdentityFlags.ACCEPTED_TRUNCATED,
    };
    const bytes = encodeMigrationIdentity(max);
    assert.equal(bytes.length, MAX_MIG_IDENTITY_SIZE);
    assert.deepEqual(decodeMigrationIdentity(bytes), max);
  });

  it('refuses to encode out-of-bounds identities', () => {
    assert.throws(() => encodeMigrationIdentity({ ...sample, deviceType: '' }), InvalidArgumentError);
    assert.throws(() => encodeMigrationIdentity({ ...sample, deviceType: 'x'.repeat(256) }), InvalidArgumentError);
    assert.throws(() => encodeMigrationIdentity({ ...sample, acceptedVersions: Array.from({ length: 65 }, (_, i) => i) }), InvalidArgumentError);
    assert.throws(() => encodeMigrationIdentity({ ...sample, pciVendor: 0x10000 }), InvalidArgumentError);
    assert.throws(() => encodeMigrationIdentity({ ...sample, stateVersion: -1 }), InvalidArgumentError);
  });

  it('rejects every truncation with ProtocolError, and hostile counts and types', () => {
    const bytes = encodeMigrationIdentity(sample);
    for (let n = 0; n < bytes.length; n++) assert.throws(() => decodeMigrationIdentity(bytes.subarray(0, n)), ProtocolError, `truncated to ${n}`);
    const huge = bytes.slice();
    new DataView(huge.buffer).setUint32(8, 0xffff_ffff, true);
    assert.throws(() => decodeMigrationIdentity(huge), (e: unknown) => e instanceof ProtocolError && /num_accepted/.test(e.message));
    const over = bytes.slice();
    new DataView(over.buffer).setUint32(8, MAX_ACCEPTED_VERSIONS + 1, true);
    assert.throws(() => decodeMigrationIdentity(over), ProtocolError);
    const longType = bytes.slice();
    longType[24] = 255; // type_len beyond the data
    assert.throws(() => decodeMigrationIdentity(longType), ProtocolError);
    const empty = bytes.slice(0, 25);
    empty[24] = 0;
    assert.throws(() => decodeMigrationIdentity(empty), (e: unknown) => e instanceof ProtocolError && /empty/.test(e.message));
    const bad = bytes.slice();
    bad[25] = 0xff; // not UTF-8
    assert.throws(() => decodeMigrationIdentity(bad), (e: unknown) => e instanceof ProtocolError && /UTF-8/.test(e.message));
    const trailing = new Uint8Array(bytes.length + 8);
    trailing.set(bytes);
    assert.deepEqual(decodeMigrationIdentity(trailing), sample, 'bytes after device_type are ignored');
  });

  it('discovery reads the member; a malformed one counts as not advertised', () => {
    assert.deepEqual(migrationExtensionsOf({ migration: { extra: { 'x-migration-identity': { feature: 0x8003 } } } }), { identity: 0x8003 });
    assert.deepEqual(migrationExtensionsOf({ migration: { extra: { 'x-migration-identity': { feature: -1 } } } }), {});
    assert.deepEqual(migrationExtensionsOf({ migration: { extra: { 'x-migration-identity': 0x8003 } } }), {});
  });
});

function migratable(migration: Partial<MigrationDefinition> = {}): ReturnType<typeof testDeviceDefinition> {
  return testDeviceDefinition({
    migration: { deviceType: 'id-card', stateVersion: 5, save: () => new Uint8Array(4), load: () => undefined, ...migration },
  });
}

async function withClient(def: ReturnType<typeof testDeviceDefinition>, fn: (client: VfioUserClient) => Promise<void>): Promise<void> {
  const served = serveTestDevice(def);
  const client = await VfioUserClient.connect(served.path);
  try {
    await fn(client);
  } finally {
    client.close();
    await served.close();
  }
}

describe('migration identity: the served feature', () => {
  it('is advertised as x-migration-identity and answers GET with the stream identity and accepted versions', () =>
    withClient(migratable({ acceptStateVersions: [3, 1, 5, 3] }), async (client) => {
      assert.deepEqual(client.serverAdvertised?.migration?.extra?.[ExtensionCapability.MIG_IDENTITY], { feature: ExtensionFeature.MIG_IDENTITY });
      assert.equal(client.migrationExtensions.identity, 0x8003);
      const id = await client.migrationIdentity();
      assert.deepEqual(id, { deviceType: 'id-card', pciVendor: 0x1af4, pciDevice: 0x10f0, stateVersion: 5, acceptedVersions: [1, 3], flags: 0 }, 'own version dropped, deduplicated, ascending');
    }));

  it('answers in every state (here STOP) and changes nothing', () =>
    withClient(migratable(), async (client) => {
      await client.setMigrationState(S.STOP);
      assert.deepEqual((await client.migrationIdentity()).acceptedVersions, []);
      assert.equal(await client.migrationState(), S.STOP);
    }));

  it('lists the newest 64 of more accepted versions and sets ACCEPTED_TRUNCATED', () =>
    withClient(migratable({ stateVersion: 1000, acceptStateVersions: Array.from({ length: 100 }, (_, i) => i) }), async (client) => {
      const id = await client.migrationIdentity();
      assert.equal(id.flags, MigIdentityFlags.ACCEPTED_TRUNCATED);
      assert.deepEqual(id.acceptedVersions, Array.from({ length: 64 }, (_, i) => 36 + i));
    }));

  it('PROBE: GET only; SET is EINVAL; a short argsz is EINVAL', () =>
    withClient(migratable(), async (client) => {
      assert.equal(await client.probeFeature(0x8003, GET), true);
      assert.equal(await client.probeFeature(0x8003, SET), false);
      assert.equal(await client.probeFeature(0x8003, GET | SET), false);
      await assert.rejects(client.deviceFeature(0x8003 | SET, new Uint8Array(16), 8 + 16), (e: unknown) => e instanceof RemoteError && e.errno === 22);
      await assert.rejects(client.deviceFeature(0x8003 | GET, new Uint8Array(0), 8 + 16), (e: unknown) => e instanceof RemoteError && e.errno === 22);
      const reply = await client.deviceFeature(0x8003 | PROBE | GET, new Uint8Array(0), 8);
      assert.equal(reply.data.length, 0);
    }));

  it('a device without migration neither advertises nor answers it; the client refuses locally (ENOTSUP)', () =>
    withClient(testDeviceDefinition(), async (client) => {
      assert.equal(client.serverAdvertised?.migration, undefined);
      assert.equal(client.migrationExtensions.identity, undefined);
      assert.equal(await client.probeFeature(0x8003, GET), false);
      await assert.rejects(client.deviceFeature(0x8003 | GET, new Uint8Array(0), 8 + MAX_MIG_IDENTITY_SIZE), (e: unknown) => e instanceof RemoteError && e.errno === 22);
      await assert.rejects(client.migrationIdentity(), (e: unknown) => e instanceof ProtocolError && e.errno === 95);
    }));
});
