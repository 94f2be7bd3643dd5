/**
 * A container migrated over TCP with its link broken at each phase — pre-copy
 * (guest memory), the P2P phase (as the sources enter RUNNING_P2P, and as the
 * destinations do), stop-copy (the second device's stream), the commit not
 * yet sent — and a destination device failing its state change: every source
 * device RUNNING with its state and the guest memory as before, and nothing
 * left behind on the receiver (outcome abandoned, sessions released, every
 * device RUNNING with no migrated state). A commit whose reply is lost is
 * resolved by asking the receiver, as for one device: all devices migrated.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConnectionClosedError } from '../../src/errors.js';
import { migrateContainer } from '../../src/orchestrator/migrate.js';
import type { RemoteContainerDestination } from '../../src/orchestrator/remote-container.js';
import type { ContainerMigrationReport, Progress } from '../../src/orchestrator/types.js';
import { assertIntact, clientOf, deviceStates, prepareSource, snapshot, S, type ContainerHost } from './container-fixture.js';
import { assertNothingLeft, connectContainer, statesOf, withRemote } from './remote-container-fixture.js';

const BUDGET_MS = 5000;
const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Where the link breaks: a hook on the channel (or a source device) armed before the migration; `phase()` is the orchestrator's latest. */
type Cut = (d: RemoteContainerDestination, src: ContainerHost, phase: () => Progress | undefined) => void;

/** Closes the channel the first time the link's `method` is called with arguments `when` accepts (before it runs). */
function cutLinkAt(method: 'writeMemory' | 'writeZeroes' | 'writeDeviceData' | 'setMigrationState' | 'complete', when: (args: unknown[], p: Progress | undefined) => boolean = () => true): Cut {
  return (d, _src, phase) => {
    const link = d.link as unknown as Record<string, (...a: unknown[]) => Promise<void>>;
    const original = (link[method] as (...a: unknown[]) => Promise<void>).bind(d.link);
    let done = false;
    link[method] = async (...args: unknown[]) => {
      if (!done && when(args, phase())) {
        done = true;
        d.close();
        await pause(20);
      }
      return original(...args);
    };
  };
}

/** Closes the channel as source device `name` is asked into RUNNING_P2P or PRE_COPY_P2P (the sources' P2P phase). */
function cutAsSourceEntersP2P(name: string): Cut {
  return (d, src) => {
    const client = clientOf(src, name);
    const original = client.setMigrationState.bind(client);
    let done = false;
    client.setMigrationState = async (state: number) => {
      if (!done && (state === S.RUNNING_P2P || state === S.PRE_COPY_P2P)) {
        done = true;
        d.close();
        await pause(20);
      }
      return original(state);
    };
  };
}

const cases: Array<{ name: string; cut: Cut; phase: string }> = [
  { name: 'pre-copy (guest memory at 2 MiB)', cut: (d, s, p) => (['writeMemory', 'writeZeroes'] as const).forEach((m) => cutLinkAt(m, ([gpa]) => gpa === 2n << 20n)(d, s, p)), phase: 'precopy' },
  { name: 'the P2P phase (a source entering RUNNING_P2P)', cut: cutAsSourceEntersP2P('gpio'), phase: 'switchover' },
  { name: 'the P2P phase (a destination entering RUNNING_P2P)', cut: cutLinkAt('setMigrationState', ([state]) => state === S.RUNNING_P2P), phase: 'switchover' },
  { name: 'stop-copy (the second device’s stream)', cut: cutLinkAt('writeDeviceData', ([, device], p) => device === 1 && p?.phase === 'switchover'), phase: 'switchover' },
  { name: 'the commit not yet sent', cut: cutLinkAt('complete'), phase: 'commit' },
];

/** The source container is intact and every device of the report says its source runs. */
async function assertSourcesBack(report: ContainerMigrationReport, src: ContainerHost, before: Awaited<ReturnType<typeof snapshot>>): Promise<void> {
  assert.equal(report.sourceRecovery, 'running', report.reason);
  for (const d of report.devices) if (d.sourceRecovery !== undefined) assert.equal(d.sourceRecovery, 'running', `${d.name} recovery`);
  await assertIntact(src, before);
}

describe('container migration over TCP: faults', () => {
  for (const c of cases) {
    it(`link lost in ${c.name}: every source device RUNNING and intact, nothing left on the receiver`, () =>
      withRemote(async (src, rx) => {
        await prepareSource(src);
        const before = await snapshot(src);
        const rxBefore = await statesOf(rx.devices);
        const destination = await connectContainer(src, rx.url);
        const outcome = rx.nextOutcome();
        let last: Progress | undefined;
        c.cut(destination, src, () => last);
        const report = await migrateContainer({ source: src.side, destination, downtimeBudgetMs: BUDGET_MS, onProgress: (p) => (last = p) });
        assert.equal(report.outcome, 'failed', report.reason);
        assert.equal(report.phase, c.phase, report.reason);
        await assertSourcesBack(report, src, before);
        await assertNothingLeft(rx, await outcome, rxBefore);
      }));
  }

  it('a destination device failing its state change (dma: RESUMING → STOP): every source RUNNING and intact, nothing left on the receiver', () =>
    withRemote(async (src, rx) => {
      await prepareSource(src);
      const before = await snapshot(src);
      const rxBefore = await statesOf(rx.devices);
      rx.faults.push({ device: 'dma', op: 'set', when: (state, target) => state === S.RESUMING && target === S.STOP });
      const destination = await connectContainer(src, rx.url);
      const outcome = rx.nextOutcome();
      const report = await migrateContainer({ source: src.side, destination, downtimeBudgetMs: BUDGET_MS });
      destination.close();
      assert.equal(report.outcome, 'failed');
      assert.match(report.reason ?? '', /^dma: migration channel peer: set: /, 'the reason names the device and the request');
      await assertSourcesBack(report, src, before);
      await assertNothingLeft(rx, await outcome, rxBefore);
    }));

  it('the commit reply lost: the receiver confirms it committed; every source stays stopped with its state, every destination runs', () =>
    withRemote(async (src, rx) => {
      await prepareSource(src);
      const before = await snapshot(src);
      const destination = await connectContainer(src, rx.url);
      const outcome = rx.nextOutcome();
      const complete = destination.link.complete.bind(destination.link);
      destination.link.complete = async () => {
        await complete();
        destination.close();
        throw new ConnectionClosedError('the reply was lost');
      };
      const report = await migrateContainer({ source: src.side, destination, downtimeBudgetMs: BUDGET_MS });
      assert.equal(report.outcome, 'migrated', report.reason);
      assert.match(report.resolution ?? '', new RegExp(`the receiver confirmed migration ${destination.migrationId} committed`));
      assert.equal((await outcome).outcome, 'committed');
      const prepared = rx.prepared[0];
      assert.ok(prepared && !prepared.released);
      for (const [i, { name, client }] of src.side.devices.entries()) {
        assert.equal(await client.migrationState(), S.STOP, `source ${String(name)} stopped for good`);
        assert.equal(await prepared.clients[i]?.migrationState(), S.RUNNING, `destination ${String(name)} runs`);
      }
      const states = await deviceStates(src);
      for (const [name, state] of before.states) assert.ok(states.get(name)?.equals(state), `source ${name} state kept`);
      const received = await statesOf(rx.devices);
      for (const [name, state] of before.states) assert.ok(received.get(name)?.equals(state), `destination ${name} state = the source's`);
      assert.ok(Buffer.from(prepared.memory.read(0n, before.memory.length)).equals(before.memory), 'destination guest memory = the source snapshot');
    }));
});
