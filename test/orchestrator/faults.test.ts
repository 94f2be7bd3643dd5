/**
 * Faults injected into {@link migrate} at each phase. Every case asserts that
 * the source runs afterwards with its guest memory and device state intact
 * (compared to snapshots) and that the destination was reset.
 *
 * The devices are a migratable register file (as in
 * test/migration/migrate-device.test.ts) with hooks on its migration arcs, so
 * a fault can be placed exactly: a destination whose RESUMING→STOP throws, a
 * source whose →STOP_COPY sleeps past the budget, a client closed from inside
 * an arc.
 *
 * A source whose client is lost mid-pre-copy (case 6): the orchestrator can
 * neither stop nor resume it, so the report says `failed` / `unrecovered`. The
 * server keeps the device as the lost session left it — observed here:
 * PRE_COPY (the server advertises PRE_COPY, so the source was moved there);
 * the lost session's migration state is kept (its DMA logging ends with it). A
 * new client recovers it with SET RUNNING (PRE_COPY→RUNNING is a valid arc);
 * DEVICE_RESET alone does not change the migration state (still PRE_COPY).
 * Likewise a lost destination stays RESUMING until a new session resets it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import type { DeviceDefinition } from '../../src/device/types.js';
import { migrate, type MigrationSide } from '../../src/orchestrator/migrate.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import { serveTestDevice, testDeviceDefinition, type ServedDevice } from '../support/server-fixture.js';
import { pattern } from '../devices/driver.js';

const IOVA = 0x1_0000_0000n;
const GUEST = 4 << 20;

type Hook = (from: number, to: number) => void | Promise<void>;

interface Side extends MigrationSide {
  served: ServedDevice;
  regs: Uint8Array;
  arcs: string[];
  hook: { fn: Hook | undefined };
  /** Set when the test closed `client` (the server takes one session at a time). */
  lost: boolean;
}

/** A 64 KiB register file with pre-copy; `hook.fn` runs inside every arc (throw to fail it). */
function definition(regs: Uint8Array, arcs: string[], hook: { fn: Hook | undefined }, deviceType: string): DeviceDefinition {
  return testDeviceDefinition({
    pci: { vendorId: 0x1af4, deviceId: 0x10f0, classCode: 0xff0000 },
    regions: {
      bar0: { size: 0x10000, read: (o, n) => regs.slice(o, o + n), write: (o, d) => void regs.set(d, o) },
      bar4: { size: 0x2000 },
    },
    migration: {
      preCopy: true,
      deviceType,
      stateVersion: 1,
      save: () => regs.slice(),
      load: (_kind, payload) => {
        if (payload.length !== regs.length) throw new Error('wrong state size');
        regs.set(payload);
      },
      transition: async (from, to) => {
        arcs.push(`${from}>${to}`);
        await hook.fn?.(from, to);
      },
    },
  });
}

async function open(seed: number, deviceType = 'register-file'): Promise<Side> {
  const regs = pattern(0x10000, seed);
  const arcs: string[] = [];
  const hook: { fn: Hook | undefined } = { fn: undefined };
  const served = serveTestDevice(definition(regs, arcs, hook, deviceType));
  const client = await VfioUserClient.connect(served.path);
  const memory = GuestMemory.create(GUEST);
  memory.write(0n, pattern(GUEST, seed + 1));
  await memory.attach(client, { iova: IOVA, mode: 'fd' });
  return { served, client, memory, iova: IOVA, regs, arcs, hook, lost: false };
}

interface Snap {
  memory: Buffer;
  regs: Buffer;
}

const snap = (side: Side): Snap => ({ memory: Buffer.from(side.memory.read(0n, GUEST)), regs: Buffer.from(side.regs) });

async function withPair(fn: (src: Side, dst: Side, before: Snap) => Promise<void>, dstType?: string): Promise<void> {
  const sides: Side[] = [];
  try {
    sides.push(await open(1), await open(2, dstType));
    const src = sides[0] as Side;
    await fn(src, sides[1] as Side, snap(src));
  } finally {
    for (const s of sides) {
      s.client.close();
      await s.served.close();
      s.memory.dispose();
    }
  }
}

/** Closes a side's session, as a lost connection. */
function lose(side: Side): void {
  side.lost = true;
  side.client.close();
}

/** A fresh session on a side's server (its old one closed; the server takes one at a time, so wait until it let go). */
/** Makes `client` see no `x-migration-identity` member, as with a server that does not advertise it. */
function hideIdentity(client: VfioUserClient): void {
  const { identity: _hidden, ...rest } = client.migrationExtensions;
  Object.defineProperty(client, 'migrationExtensions', { get: () => rest });
}

async function reconnect(side: Side): Promise<VfioUserClient> {
  await side.client.closed;
  for (let attempt = 0; ; attempt++) {
    try {
      return await VfioUserClient.connect(side.served.path);
    } catch (error) {
      if (attempt >= 50) throw error;
      await sleep(10);
    }
  }
}

/** The source runs, guest memory and device state as before the migration. */
async function assertSourceIntact(src: Side, before: Snap, client: VfioUserClient = src.client): Promise<void> {
  assert.equal(await client.migrationState(), S.RUNNING, 'source RUNNING');
  assert.ok(snap(src).memory.equals(before.memory), 'source guest memory intact');
  assert.ok(snap(src).regs.equals(before.regs), 'source device state intact');
}

/** The destination is RUNNING again: reset by the orchestrator, or (its session lost) by a new session. */
async function assertDestinationReset(dst: Side): Promise<void> {
  const client = dst.lost ? await reconnect(dst) : dst.client;
  try {
    if (dst.lost) {
      // The orchestrator could not reach it: the server keeps the lost session's RESUMING; the next session resets it
      // (RESUMING → RUNNING with an incomplete stream fails into ERROR; the next DEVICE_RESET clears that to RUNNING).
      assert.equal(await client.migrationState(), S.RESUMING, 'a lost destination stays RESUMING');
      await client.reset();
      await assert.rejects(client.setMigrationState(S.RUNNING));
      await client.reset();
    }
    assert.equal(await client.migrationState(), S.RUNNING, 'destination RUNNING after the reset');
  } finally {
    if (client !== dst.client) client.close();
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const arc = (from: number, to: number): string => `${from}>${to}`;

describe('migrate() under faults', () => {
  it('destination client closed during pre-copy: failed, source intact', async () => {
    await withPair(async (src, dst, before) => {
      // A 0 ms budget keeps the migration in pre-copy, where the next round's destination request fails.
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 0, onProgress: (p) => p.phase === 'precopy' && lose(dst) });
      assert.equal(report.outcome, 'failed');
      assert.ok(report.reason);
      assert.equal(report.sourceRecovery, 'running');
      assert.equal(report.downtimeMs, 0);
      await assertSourceIntact(src, before);
      await assertDestinationReset(dst);
    });
  });

  it('destination client closed at switch-over (inside the source STOP_COPY arc): failed, source back to RUNNING', async () => {
    await withPair(async (src, dst, before) => {
      src.hook.fn = (_from, to) => {
        if (to === S.STOP_COPY) lose(dst);
      };
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000 });
      src.hook.fn = undefined;
      assert.equal(report.outcome, 'failed', report.reason);
      assert.equal(report.sourceRecovery, 'running');
      // STOP_COPY → RUNNING goes through STOP on the server.
      assert.deepEqual(src.arcs.slice(-3), [arc(S.PRE_COPY, S.STOP_COPY), arc(S.STOP_COPY, S.STOP), arc(S.STOP, S.RUNNING)], src.arcs.join(' '));
      await assertSourceIntact(src, before);
      await assertDestinationReset(dst);
    });
  });

  it('destination whose RESUMING→STOP throws: failed at switch-over, source RUNNING, destination reset', async () => {
    await withPair(async (src, dst, before) => {
      // One-shot: a destination that keeps failing the arc cannot be brought back to RUNNING by anyone.
      dst.hook.fn = (from, to) => {
        if (from === S.RESUMING && to === S.STOP) {
          dst.hook.fn = undefined;
          throw new Error('injected: destination cannot stop');
        }
      };
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000 });
      dst.hook.fn = undefined;
      assert.equal(report.outcome, 'failed', report.reason);
      assert.ok(report.downtimeMs > 0, 'the source had stopped');
      assert.ok(report.arcs.some((a) => a.side === 'source' && a.to === 'STOP_COPY'));
      await assertSourceIntact(src, before);
      await assertDestinationReset(dst);
    });
  });

  it('a destination of a different device type refuses MIG_DATA_WRITE: failed in pre-copy, source intact, destination state untouched and RUNNING', async () => {
    // With x-migration-identity on both sides the compatibility check refuses this up front
    // (test/orchestrator/compat-identity.test.ts). Here the destination's client is made to see no such member, as
    // with a server that does not advertise it: the check then compares device info, regions, migration flags and
    // PCI ids only, and the destination's loader is what refuses the stream (EINVAL).
    await withPair(async (src, dst, before) => {
      hideIdentity(dst.client);
      const dstBefore = snap(dst);
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000 });
      assert.equal(report.outcome, 'failed');
      assert.match(report.reason ?? '', /MIG_DATA_WRITE failed: EINVAL/);
      assert.equal(report.downtimeMs, 0);
      await assertSourceIntact(src, before);
      await assertDestinationReset(dst);
      assert.ok(snap(dst).regs.equals(dstBefore.regs), 'destination device state untouched');
    }, 'other-device');
  });

  it('budget exceeded in switch-over (the source STOP_COPY arc sleeps past it): aborted, source RUNNING', async (t) => {
    await withPair(async (src, dst, before) => {
      // A budget with room for a loaded machine's projection (round trips of several ms), an arc four times longer.
      src.hook.fn = async (_from, to) => {
        if (to === S.STOP_COPY) await sleep(600);
      };
      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 150 });
      src.hook.fn = undefined;
      t.diagnostic(`${report.outcome}: ${report.reason}; downtime ${report.downtimeMs.toFixed(1)} ms`);
      assert.equal(report.outcome, 'aborted', report.reason);
      assert.match(report.reason ?? '', /budget|deadline/);
      assert.equal(report.sourceRecovery, 'running');
      assert.ok(report.downtimeMs >= 150, 'the downtime counts until the source runs again (the arc ends before the source can resume)');
      await assertSourceIntact(src, before);
      await assertDestinationReset(dst);
    });
  });

  it('source client closed mid-pre-copy: failed; a new client finds the device in PRE_COPY and recovers it with SET RUNNING (DEVICE_RESET alone keeps PRE_COPY)', async () => {
    for (const recover of ['set-running', 'reset'] as const) {
      await withPair(async (src, dst, before) => {
        const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000, onProgress: (p) => p.phase === 'precopy' && lose(src) });
        assert.equal(report.outcome, 'failed');
        assert.equal(report.sourceRecovery, 'unrecovered');
        await assertDestinationReset(dst);
        const client = await reconnect(src);
        try {
          assert.equal(await client.migrationState(), S.PRE_COPY, 'the lost session left the device in PRE_COPY');
          if (recover === 'reset') {
            // DEVICE_RESET resets the device, not the migration state: still PRE_COPY, SET RUNNING is still needed.
            await client.reset();
            assert.equal(await client.migrationState(), S.PRE_COPY);
          }
          await client.setMigrationState(S.RUNNING);
          assert.ok(snap(src).memory.equals(before.memory), 'source guest memory intact');
          assert.equal(await client.migrationState(), S.RUNNING);
          if (recover === 'set-running') assert.ok(snap(src).regs.equals(before.regs), 'device state kept');
        } finally {
          client.close();
        }
      });
    }
  });
});
