/** The vendor migration extensions end to end: discovery, pre-copy info, deadline-carrying SETs, arc latency. */
import { drainParts as drain } from '../support/migration-io.js';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { VfioUserClient } from '../../src/client/client.js';
import { ProtocolError, RemoteError } from '../../src/errors.js';
import { DeviceFeatureFlags, MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import {
  ArcEstimateSource,
  DeadlineOutcome,
  DeadlineReplyFlags,
  ExtensionCapability,
  ExtensionFeature,
  encodeDeadlineStateRequest,
} from '../../src/protocol/migration-extensions.js';
import type { DeviceDefinition } from '../../src/device/types.js';
import type { MigrationDefinition } from '../../src/migration/types.js';
import { registerFileBar, takePageDelta, applyPageDelta } from '../support/register-file.js';
import { serveTestDevice, testDeviceDefinition, withServedClient, type ServedDevice } from '../support/server-fixture.js';

const { GET, SET } = DeviceFeatureFlags;
const MS = 1_000_000n;

/** How the test device's arcs behave: a delay (ms) or a failure per "from>to" arc. */
interface ArcBehaviour {
  delayMs?: Map<string, number>;
  /** Give up a delayed arc when the deadline's abort signal fires (the hook throws). */
  cooperative?: boolean;
  fail?: Set<string>;
}

interface TestDevice {
  def: DeviceDefinition;
  regs: Uint8Array;
  arcs: string[];
  behaviour: ArcBehaviour;
  /** Set once served: the hook reads the controller's abort signal through it. */
  served?: ServedDevice;
}

/** A 64 KiB register file in BAR0 with pre-copy deltas of written pages, and scriptable arcs. */
function testDevice(migration: Partial<MigrationDefinition> = {}): TestDevice {
  const regs = new Uint8Array(0x10000);
  const dirty = new Set<number>();
  const arcs: string[] = [];
  const behaviour: ArcBehaviour = {};
  const t: TestDevice = { regs, arcs, behaviour, def: undefined as never };
  t.def = testDeviceDefinition({
    pci: { vendorId: 0x1af4, deviceId: 0x10f1, classCode: 0xff0000 },
    regions: {
      bar0: registerFileBar(regs, dirty),
      bar4: { size: 0x2000 },
    },
    migration: {
      preCopy: true,
      deviceType: 'deadline-card',
      stateVersion: 1,
      save: () => (dirty.clear(), regs.slice()),
      saveDelta: () => takePageDelta(regs, dirty),
      load: (kind, payload) => {
        if (kind === 'full') return void regs.set(payload);
        applyPageDelta(regs, payload);
      },
      async transition(from, to) {
        const arc = `${from}>${to}`;
        arcs.push(arc);
        if (behaviour.fail?.has(arc)) throw new Error(`arc ${arc} failed`);
        const ms = behaviour.delayMs?.get(arc);
        if (ms === undefined) return;
        const signal = behaviour.cooperative ? t.served?.device.migration?.arcSignal : undefined;
        await sleep(ms, undefined, signal ? { signal } : {});
      },
      ...migration,
    },
  });
  return t;
}

const withDevice = (t: TestDevice, fn: (client: VfioUserClient, served: ServedDevice) => Promise<void>): Promise<void> =>
  withServedClient(t.def, (client, served) => {
    t.served = served;
    return fn(client, served);
  });

const isErrno = (errno: number) => (e: unknown) => e instanceof RemoteError && e.errno === errno;

describe('migration extensions: discovery', () => {
  it('a migratable device advertises the four features under capabilities.migration and answers PROBE for them', () =>
    withDevice(testDevice(), async (client) => {
      const extra = client.serverAdvertised?.migration?.extra;
      assert.deepEqual(extra, {
        [ExtensionCapability.PRECOPY_INFO]: { feature: ExtensionFeature.PRECOPY_INFO },
        [ExtensionCapability.MIG_STATE_DEADLINE]: { feature: ExtensionFeature.MIG_STATE_DEADLINE },
        [ExtensionCapability.MIG_ARC_LATENCY]: { feature: ExtensionFeature.MIG_ARC_LATENCY },
        [ExtensionCapability.MIG_IDENTITY]: { feature: ExtensionFeature.MIG_IDENTITY },
        'x-client-mmaps': { feature: 0x8005 }, // SPARSE_MMAP_SAVING's declarations (§10), also asked for by our client
      });
      assert.equal(client.serverAdvertised?.migration?.pgsize, 4096, 'the standard member is unchanged');
      assert.deepEqual(client.migrationExtensions, { precopyInfo: 0x8000, deadlineState: 0x8001, arcLatency: 0x8002, identity: 0x8003 });
      const probes = await Promise.all(
        [0x8000, 0x8001, 0x8002, 0x8003].flatMap((f) => [GET, SET, GET | SET].map((ops) => client.probeFeature(f, ops))),
      );
      assert.deepEqual(probes, [
        true, false, false, // pre-copy info: GET only
        false, true, false, // deadline state: SET only
        true, false, false, // arc latency: GET only
        true, false, false, // migration identity: GET only
      ]);
      assert.equal(await client.probeFeature(0x8004, GET), false, 'nothing else in the vendor range');
    }));

  it('a device without migration advertises nothing, answers no PROBE, and the client refuses to use them (ENOTSUP)', async () => {
    const served = serveTestDevice(testDeviceDefinition());
    const client = await VfioUserClient.connect(served.path);
    try {
      assert.equal(client.serverAdvertised?.migration, undefined);
      assert.deepEqual(client.migrationExtensions, {});
      for (const f of [0x8000, 0x8001, 0x8002, 0x8003]) assert.equal(await client.probeFeature(f, f === 0x8001 ? SET : GET), false);
      const enotsup = (e: unknown): boolean => e instanceof ProtocolError && e.errno === 95;
      await assert.rejects(client.precopyInfo(), enotsup);
      await assert.rejects(client.setMigrationStateWithDeadline(S.STOP, 10n * MS), enotsup);
      await assert.rejects(client.arcLatencies(), enotsup);
      await assert.rejects(client.migrationIdentity(), enotsup);
    } finally {
      client.close();
      await served.close();
    }
  });
});

describe('migration extensions: pre-copy info', () => {
  it('counts down as the client reads and up as the device dirties its state; the stream stays loadable', async () => {
    const src = testDevice();
    const dst = testDevice();
    for (let i = 0; i < src.regs.length; i += 331) src.regs[i] = i & 0xff;
    await withDevice(dst, async (dstClient) =>
      withDevice(src, async (client) => {
        await client.setMigrationState(S.PRE_COPY);
        const first = await client.precopyInfo();
        assert.ok(first.initialBytes > 0x10000n, `initial data covers the 64 KiB state (${first.initialBytes})`);
        assert.equal(first.dirtyBytes, 0n);
        assert.equal(first.flags, 0, 'no REINIT');
        const parts = [await client.migDataRead(1000)];
        assert.equal((await client.precopyInfo()).initialBytes, first.initialBytes - 1000n);
        parts.push(...(await drain(client, 8192)));
        assert.deepEqual(await client.precopyInfo(), { initialBytes: 0n, dirtyBytes: 0n, flags: 0 });

        await client.regionWrite(RegionIndex.BAR0, 0x2000n, Uint8Array.of(7, 7, 7));
        const dirtied = await client.precopyInfo();
        assert.equal(dirtied.initialBytes, 0n);
        assert.ok(dirtied.dirtyBytes >= 4100n, `one page of delta (${dirtied.dirtyBytes})`);
        await client.regionWrite(RegionIndex.BAR0, 0x5000n, Uint8Array.of(5));
        const more = await client.precopyInfo();
        assert.ok(more.dirtyBytes >= dirtied.dirtyBytes + 4100n, `a second page (${more.dirtyBytes})`);
        parts.push(await client.migDataRead(100));
        assert.equal((await client.precopyInfo()).dirtyBytes, more.dirtyBytes - 100n);
        parts.push(...(await drain(client)));
        assert.deepEqual(await client.precopyInfo(), { initialBytes: 0n, dirtyBytes: 0n, flags: 0 });

        await client.setMigrationState(S.STOP_COPY);
        parts.push(...(await drain(client)));
        await dstClient.setMigrationState(S.RESUMING);
        for (const p of parts) await dstClient.migDataWrite(p);
        await dstClient.setMigrationState(S.STOP);
        assert.deepEqual(dst.regs, src.regs);
      }),
    );
  });

  it('is EINVAL outside PRE_COPY, as the kernel', () =>
    withDevice(testDevice(), async (client) => {
      await assert.rejects(client.precopyInfo(), isErrno(22), 'RUNNING');
      await client.setMigrationState(S.PRE_COPY);
      await client.precopyInfo();
      await client.setMigrationState(S.STOP_COPY);
      await assert.rejects(client.precopyInfo(), isErrno(22), 'STOP_COPY');
      await client.setMigrationState(S.STOP);
      await assert.rejects(client.precopyInfo(), isErrno(22), 'STOP');
    }));

  it('a GET with argsz below the reply is EINVAL', () =>
    withDevice(testDevice(), async (client) => {
      await client.setMigrationState(S.PRE_COPY);
      await assert.rejects(client.deviceFeature(ExtensionFeature.PRECOPY_INFO | GET, new Uint8Array(24), 8 + 16), isErrno(22));
    }));
});

describe('migration extensions: deadline-carrying state change', () => {
  it('meets the deadline: outcome DONE, the target reached, elapsed within the budget', () =>
    withDevice(testDevice(), async (client) => {
      const r = await client.setMigrationStateWithDeadline(S.STOP_COPY, 2000n * MS);
      assert.equal(r.outcome, DeadlineOutcome.DONE);
      assert.equal(r.reachedState, S.STOP_COPY);
      assert.equal(r.errno, 0);
      assert.ok(r.elapsedNs > 0n && r.elapsedNs <= 2000n * MS, `elapsed ${r.elapsedNs}`);
      assert.equal(r.flags & DeadlineReplyFlags.ESTIMATE_PARTIAL, DeadlineReplyFlags.ESTIMATE_PARTIAL, 'no arc had run yet and none is declared');
      assert.equal(await client.migrationState(), S.STOP_COPY);
      assert.ok((await drain(client)).length > 0, 'the stream is there');
    }));

  it('a STOP arc slower than the budget: rolled back to RUNNING, elapsed beyond the budget, the device really RUNNING', async () => {
    const t = testDevice();
    t.behaviour.delayMs = new Map([[`${S.RUNNING}>${S.STOP}`, 150]]);
    await withDevice(t, async (client) => {
      const r = await client.setMigrationStateWithDeadline(S.STOP, 40n * MS);
      assert.equal(r.outcome, DeadlineOutcome.ROLLED_BACK);
      assert.equal(r.reachedState, S.RUNNING);
      assert.ok(r.elapsedNs > 40n * MS, `elapsed ${r.elapsedNs}`);
      assert.ok(r.elapsedNs >= 140n * MS, 'the arc in progress was awaited, not abandoned');
      assert.equal(r.flags & DeadlineReplyFlags.DEADLINE_IN_ARC, DeadlineReplyFlags.DEADLINE_IN_ARC);
      assert.equal(r.flags & DeadlineReplyFlags.ARC_ABANDONED, 0);
      assert.deepEqual(t.arcs, [`${S.RUNNING}>${S.STOP}`, `${S.STOP}>${S.RUNNING}`], 'the arc, then the walk back');
      assert.equal(await client.migrationState(), S.RUNNING);
      await client.regionWrite(RegionIndex.BAR0, 0n, Uint8Array.of(1)); // RUNNING: region access is not gated
    });
  });

  it('a hook that watches the abort signal gives up at the deadline: the arc is not committed', async () => {
    const t = testDevice();
    t.behaviour.delayMs = new Map([[`${S.RUNNING}>${S.STOP}`, 2000]]);
    t.behaviour.cooperative = true;
    await withDevice(t, async (client) => {
      const r = await client.setMigrationStateWithDeadline(S.STOP_COPY, 30n * MS);
      assert.equal(r.outcome, DeadlineOutcome.ROLLED_BACK);
      assert.equal(r.reachedState, S.RUNNING);
      assert.ok(r.elapsedNs >= 30n * MS && r.elapsedNs < 1000n * MS, `elapsed ${r.elapsedNs}: the timer cut the wait`);
      assert.equal(r.flags & DeadlineReplyFlags.ARC_ABANDONED, DeadlineReplyFlags.ARC_ABANDONED);
      assert.deepEqual(t.arcs, [`${S.RUNNING}>${S.STOP}`], 'no walk back needed: the abandoned arc never committed');
      assert.equal(await client.migrationState(), S.RUNNING);
    });
  });

  it('the abort signal never fires before the deadline (libuv timers may fire early: the server re-arms), 25 tries', async () => {
    const t = testDevice();
    t.behaviour.delayMs = new Map([[`${S.RUNNING}>${S.STOP}`, 2000]]);
    t.behaviour.cooperative = true;
    await withDevice(t, async (client) => {
      for (let i = 0; i < 25; i++) {
        const budget = BigInt(2 + (i % 5)) * MS;
        const arcsBefore = t.arcs.length;
        const r = await client.setMigrationStateWithDeadline(S.STOP, budget);
        assert.ok(r.elapsedNs >= budget, `try ${i}: gave up after ${r.elapsedNs} ns, before the ${budget} ns budget`);
        assert.equal(r.outcome, DeadlineOutcome.ROLLED_BACK);
        // On a loaded machine the budget may run out before the arc starts: then no arc ran at all.
        const started = t.arcs.length > arcsBefore;
        assert.equal(r.flags & DeadlineReplyFlags.ARC_ABANDONED, started ? DeadlineReplyFlags.ARC_ABANDONED : 0, `try ${i}: arc started ${started}`);
      }
    });
  });

  it('from PRE_COPY the walk back stops at RUNNING: it never opens a new saving stream', async () => {
    const t = testDevice();
    // The budget leaves the undelayed PRE_COPY → RUNNING room on a loaded machine; RUNNING → STOP is far beyond it.
    t.behaviour.delayMs = new Map([[`${S.RUNNING}>${S.STOP}`, 600]]);
    await withDevice(t, async (client) => {
      await client.setMigrationState(S.PRE_COPY);
      t.arcs.length = 0;
      const r = await client.setMigrationStateWithDeadline(S.STOP, 250n * MS);
      assert.equal(r.outcome, DeadlineOutcome.ROLLED_BACK);
      assert.equal(r.reachedState, S.RUNNING);
      assert.deepEqual(t.arcs, [`${S.PRE_COPY}>${S.RUNNING}`, `${S.RUNNING}>${S.STOP}`, `${S.STOP}>${S.RUNNING}`]);
      await assert.rejects(client.migDataRead(16), isErrno(22), 'no saving stream');
    });
  });

  it('arc latency reports measured arcs and declared estimates; PREDICT declines a path that cannot fit', async () => {
    const t = testDevice({ estimateArcNs: (from, to) => (from === S.STOP && to === S.RESUMING ? 5_000_000 : undefined) });
    t.behaviour.delayMs = new Map([[`${S.RUNNING}>${S.STOP}`, 60]]);
    await withDevice(t, async (client) => {
      const before = await client.arcLatencies();
      assert.equal(before.length, 9, 'STOP_COPY + PRE_COPY: 9 direct arcs');
      assert.ok(before.every((a) => a.count === 0));
      const resuming = before.find((a) => a.from === S.STOP && a.to === S.RESUMING);
      assert.deepEqual(resuming && [resuming.source, resuming.estimateNs], [ArcEstimateSource.DECLARED, 5_000_000n]);
      assert.equal(before.find((a) => a.from === S.RUNNING && a.to === S.STOP)?.source, ArcEstimateSource.NONE);

      await client.setMigrationState(S.STOP);
      await client.setMigrationState(S.RUNNING);
      await client.setMigrationState(S.STOP);
      await client.setMigrationState(S.RUNNING);
      const after = await client.arcLatencies();
      const stop = after.find((a) => a.from === S.RUNNING && a.to === S.STOP);
      assert.ok(stop);
      assert.equal(stop.count, 2);
      assert.equal(stop.source, ArcEstimateSource.MEASURED);
      assert.ok(stop.lastNs >= 55n * MS && stop.meanNs >= 55n * MS && stop.maxNs >= stop.meanNs, `measured ${stop.meanNs}`);
      assert.equal(stop.estimateNs, stop.meanNs);
      assert.equal(after.find((a) => a.from === S.STOP && a.to === S.RUNNING)?.count, 2);

      t.arcs.length = 0;
      const declined = await client.setMigrationStateWithDeadline(S.STOP, 20n * MS, { predict: true });
      assert.equal(declined.outcome, DeadlineOutcome.DECLINED);
      assert.equal(declined.reachedState, S.RUNNING);
      assert.equal(declined.estimateNs, stop.meanNs);
      assert.deepEqual(t.arcs, [], 'nothing was run');
      const fits = await client.setMigrationStateWithDeadline(S.STOP, 2000n * MS, { predict: true });
      assert.equal(fits.outcome, DeadlineOutcome.DONE);
      assert.equal(fits.flags & DeadlineReplyFlags.ESTIMATE_PARTIAL, 0, 'the only arc was measured');
    });
  });

  it('a budget of 0 means no deadline; a failing arc is outcome FAILED with its errno; a refused target is EINVAL', async () => {
    const t = testDevice();
    t.behaviour.delayMs = new Map([[`${S.RUNNING}>${S.STOP}`, 30]]);
    t.behaviour.fail = new Set([`${S.STOP}>${S.STOP_COPY}`]);
    await withDevice(t, async (client) => {
      const slow = await client.setMigrationStateWithDeadline(S.STOP, 0n);
      assert.equal(slow.outcome, DeadlineOutcome.DONE);
      await client.setMigrationState(S.RUNNING);
      const failed = await client.setMigrationStateWithDeadline(S.STOP_COPY, 5000n * MS);
      assert.equal(failed.outcome, DeadlineOutcome.FAILED);
      assert.equal(failed.errno, 5, 'a plain Error from the hook is EIO');
      assert.equal(failed.reachedState, S.STOP, 'left where the failing arc started, as a plain SET would');
      assert.equal(await client.migrationState(), S.STOP);

      await assert.rejects(client.setMigrationStateWithDeadline(S.ERROR, MS), isErrno(22));
      await assert.rejects(client.setMigrationStateWithDeadline(S.RUNNING_P2P, MS), isErrno(22));
      const badFlags = encodeDeadlineStateRequest({ deviceState: S.RUNNING, flags: 2, deadlineNs: MS });
      await assert.rejects(client.deviceFeature(ExtensionFeature.MIG_STATE_DEADLINE | SET, badFlags, 40), isErrno(22));
      const reserved = encodeDeadlineStateRequest({ deviceState: S.RUNNING, flags: 0, deadlineNs: MS });
      reserved[31] = 1;
      await assert.rejects(client.deviceFeature(ExtensionFeature.MIG_STATE_DEADLINE | SET, reserved, 40), isErrno(22));
      await assert.rejects(client.deviceFeature(ExtensionFeature.MIG_STATE_DEADLINE | SET, reserved.subarray(0, 16), 24), isErrno(22), '16-byte request');
    });
  });
});
