/**
 * migrateContainer(): three sample devices sharing one 4 MiB guest RAM
 * migrated as one VM to a local destination container (container-fixture.ts).
 * The servers log every state change, so the P2P ordering is checked where it
 * matters: no source began to stop before every source had reached its P2P
 * state, no destination began to run before every one had reached
 * RUNNING_P2P. A one-shot fault at each phase (a state change or a data read
 * failing inside a device's server) must leave every source device RUNNING
 * with its state and the guest memory as before, and the destinations reset.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Container } from '../../src/client/container.js';
import { containerSide } from '../../src/orchestrator/container-side.js';
import { Errno } from '../../src/protocol/errno.js';
import { migrate, migrateContainer, MigrationCompatibilityError } from '../../src/orchestrator/migrate.js';
import type { ContainerMigrationReport, MigrationSide } from '../../src/orchestrator/types.js';
import {
  assertIntact, clientOf, deviceStates, jobInput, jobOutput, openContainer, openPlainDevice, postJobs, prepareSource, reachedBefore, show, snapshot,
  type ContainerHost, type Fault, GUEST, S,
} from './container-fixture.js';

const BUDGET_MS = 2000;
const P2P = ['RUNNING_P2P', 'PRE_COPY_P2P'];
const STOPPING = ['STOP', 'STOP_COPY'];
const ALL = ['dma', 'gpio', 'mem'];

async function withContainers(fn: (src: ContainerHost, dst: ContainerHost) => Promise<void>, options: { viaContainer?: boolean } = {}): Promise<void> {
  const src = await openContainer('source', options);
  try {
    const dst = await openContainer('destination', options);
    try {
      await fn(src, dst);
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
}

/** Every destination device RUNNING (reset after an abandoned migration). */
async function assertDestinationsRunning(dst: ContainerHost): Promise<void> {
  for (const { name, client } of dst.side.devices) assert.equal(await client.migrationState(), S.RUNNING, `destination ${name} RUNNING`);
}

describe('migrateContainer()', () => {
  for (const viaContainer of [false, true]) {
    const how = viaContainer ? 'mapped by a client-library Container (containerSide)' : 'attached to each session';
    it(`migrates three devices sharing guest RAM (${how}) as one: memory and every device state equal, P2P before any stop on both sides`, async () => {
      await withContainers(async (src, dst) => {
        await prepareSource(src);
        let posted = false;
        const report = await migrateContainer({
          source: src.side,
          destination: dst.side,
          downtimeBudgetMs: BUDGET_MS,
          // The DMA engine writes guest RAM during pre-copy: only its DMA log tells the orchestrator which pages.
          onProgress: (p) => {
            if (!posted && p.step === 'dirty-pages') {
              posted = true;
              void postJobs(src, 4, 8);
            }
          },
        });
        assert.equal(report.outcome, 'migrated', report.reason);
        assert.ok(posted, 'jobs were posted during pre-copy');
        await src.dma.idle();
        for (let i = 0; i < 8; i++) assert.deepEqual(jobOutput(src, i), jobInput(i), `job ${i} done on the source`);
        assert.ok(Buffer.from(dst.memory.read(0n, GUEST)).equals(Buffer.from(src.memory.read(0n, GUEST))), 'guest memory equal');
        const [srcStates, dstStates] = [await deviceStates(src), await deviceStates(dst)];
        for (const name of ALL) assert.ok(dstStates.get(name)?.equals(srcStates.get(name) as Buffer), `${name} state equal`);
        for (const name of ALL) {
          assert.equal(await clientOf(src, name).migrationState(), S.STOP, `source ${name} STOP`);
          assert.equal(await clientOf(dst, name).migrationState(), S.RUNNING, `destination ${name} RUNNING`);
        }
        assert.deepEqual(reachedBefore(src.events, P2P, STOPPING), ALL, `sources: ${show(src.events)}`);
        assert.deepEqual(reachedBefore(dst.events, ['RUNNING_P2P'], ['RUNNING']), ALL, `destinations: ${show(dst.events)}`);
        assertReport(report);
      }, { viaContainer });
    });
  }

  it('a 2-device container with a device lacking P2P is refused before anything changes; withoutP2P: warn migrates it with a warning', async () => {
    await withContainers(async (src, dst) => {
      const plainSrc = await openPlainDevice(src.memory);
      const plainDst = await openPlainDevice(dst.memory);
      try {
        const source = { memory: src.memory, iova: src.side.iova, devices: [{ name: 'gpio', client: clientOf(src, 'gpio') }, { name: 'plain', client: plainSrc.client }] };
        const destination = { memory: dst.memory, iova: dst.side.iova, devices: [{ client: clientOf(dst, 'gpio') }, { client: plainDst.client }] };
        await assert.rejects(migrateContainer({ source, destination, downtimeBudgetMs: BUDGET_MS }), (e: Error) => e instanceof MigrationCompatibilityError && /plain lack the P2P/.test(e.message));
        assert.deepEqual(src.events, [], 'no state changed on the source');
        assert.equal(await plainSrc.client.migrationState(), S.RUNNING);
        const report = await migrateContainer({ source, destination, downtimeBudgetMs: BUDGET_MS, withoutP2P: 'warn' });
        assert.equal(report.outcome, 'migrated', report.reason);
        assert.equal(report.warnings.length, 1);
        assert.match(report.warnings[0] ?? '', /plain/);
        assert.equal(await plainDst.client.migrationState(), S.RUNNING);
        assert.ok(report.devices[0]?.arcs.some((a) => a.to === 'RUNNING_P2P'), 'the P2P device still went through RUNNING_P2P');
        assert.ok(!report.devices[1]?.arcs.some((a) => a.to === 'RUNNING_P2P'), 'the other did not');
      } finally {
        await plainSrc.close();
        await plainDst.close();
      }
    });
  });

  it('an abort (the signal) while the sources enter their P2P states: aborted, every source RUNNING, memory and device states intact', async () => {
    await withContainers(async (src, dst) => {
      await prepareSource(src);
      const before = await snapshot(src);
      const stop = new AbortController();
      src.faults.push({ device: 'gpio', op: 'set', when: (_s, t) => t === S.RUNNING_P2P, run: () => stop.abort(new Error('SIGTERM')) });
      const report = await migrateContainer({ source: src.side, destination: dst.side, downtimeBudgetMs: BUDGET_MS, signal: stop.signal });
      assert.equal(report.outcome, 'aborted', report.reason);
      assert.match(report.reason ?? '', /interrupted \(SIGTERM\)/);
      assert.equal(report.phase, 'switchover');
      assert.equal(report.sourceRecovery, 'running');
      await assertIntact(src, before);
      await assertDestinationsRunning(dst);
    });
  });

  it('one downtime budget for the container: a device slow to enter STOP_COPY aborts the switch-over, every source RUNNING, intact', async (t) => {
    await withContainers(async (src, dst) => {
      await prepareSource(src);
      const before = await snapshot(src);
      // A budget with room for a loaded machine's projection, one device's stop arc four times longer (as faults.test.ts).
      src.faults.push({ device: 'dma', op: 'set', when: (_s, target) => target === S.STOP_COPY, run: () => new Promise((resolve) => setTimeout(resolve, 1600)) });
      const report = await migrateContainer({ source: src.side, destination: dst.side, downtimeBudgetMs: 400 });
      t.diagnostic(`${report.outcome}: ${report.reason}; downtime ${report.downtimeMs.toFixed(1)} ms, projected ${report.projectedDowntimeMs.toFixed(1)} ms`);
      assert.equal(report.outcome, 'aborted', report.reason);
      assert.match(report.reason ?? '', /budget|deadline/);
      assert.equal(report.phase, 'switchover');
      assert.equal(report.sourceRecovery, 'running');
      await assertIntact(src, before);
      await assertDestinationsRunning(dst);
    });
  });

  it('migrate() of one device is a container of one: its report has no per-device part, its arcs no device, and no P2P phase', async () => {
    await withContainers(async (src, dst) => {
      await prepareSource(src, 0);
      const one = (h: ContainerHost): MigrationSide => ({ client: clientOf(h, 'gpio'), memory: h.memory, iova: h.side.iova });
      const report = await migrate({ source: one(src), destination: one(dst), downtimeBudgetMs: BUDGET_MS });
      assert.equal(report.outcome, 'migrated', report.reason);
      assert.deepEqual(['devices', 'p2pMs', 'warnings'].filter((k) => k in report), []);
      assert.ok(report.arcs.length > 0 && report.arcs.every((a) => !('device' in a)));
      assert.deepEqual(report.arcs.map((a) => `${a.side} ${a.to}`), ['destination RESUMING', 'source STOP_COPY', 'destination STOP', 'destination RUNNING', 'source STOP']);
    });
  });

  it('refuses sides with different device counts, duplicate names, and a Container without devices, before anything changes', async () => {
    await withContainers(async (src, dst) => {
      const two = { ...dst.side, devices: dst.side.devices.slice(0, 2) };
      await assert.rejects(migrateContainer({ source: src.side, destination: two, downtimeBudgetMs: BUDGET_MS }), /the source has 3 device\(s\), the destination 2/);
      const twice = { ...src.side, devices: [src.side.devices[0], { ...src.side.devices[1], name: src.side.devices[0]?.name }] as typeof src.side.devices };
      await assert.rejects(migrateContainer({ source: twice, destination: two, downtimeBudgetMs: BUDGET_MS }), /given twice/);
      assert.deepEqual([...src.events, ...dst.events], []);
      assert.throws(() => containerSide(new Container()), (e: Error & { errno?: number }) => e.errno === Errno.EINVAL && /no device/.test(e.message));
    });
  });
});

/** The report's per-device entries agree with the totals; the P2P phase is in every device's arcs. */
function assertReport(report: ContainerMigrationReport): void {
  assert.deepEqual(report.devices.map((d) => d.name), ['mem', 'dma', 'gpio']);
  const device = report.devices.reduce((n, d) => n + d.bytes.precopy + d.bytes.stopCopy, 0n);
  assert.equal(device, report.bytes.precopyDevice + report.bytes.stopCopyDevice, 'per-device bytes add up');
  for (const d of report.devices) {
    assert.ok(d.bytes.stopCopy > 0n, `${d.name} sent its final state`);
    assert.ok(d.arcs.some((a) => a.side === 'source' && P2P.includes(a.to)), `${d.name} source P2P arc`);
    assert.ok(d.arcs.some((a) => a.side === 'destination' && a.to === 'RUNNING_P2P'), `${d.name} destination RUNNING_P2P arc`);
    assert.deepEqual(d.states.filter((s) => s.side === 'destination').map((s) => s.state), ['RESUMING', 'STOP', 'RUNNING_P2P', 'RUNNING']);
    assert.ok(d.states.every((s, i, all) => i === 0 || s.atMs >= (all[i - 1]?.atMs ?? 0)), 'state timings in order');
    assert.ok(d.p2pMs >= 0);
  }
  assert.equal(report.devices.find((d) => d.name === 'mem')?.states.find((s) => s.side === 'source' && P2P.includes(s.state))?.state, 'PRE_COPY_P2P');
  assert.ok(report.arcs.every((a) => a.device !== undefined && ALL.includes(a.device)), 'overall arcs name their device');
  assert.ok(report.p2pMs >= 0 && report.downtimeMs >= report.p2pMs, 'the P2P phases are inside the downtime');
}

/** A fault case: what fails, where, and the phase the report must name. */
interface FaultCase {
  name: string;
  faults: Array<{ host: 'source' | 'destination'; fault: Fault }>;
  phase: 'precopy' | 'switchover';
  /** The sources stopped before the fault: their recovery goes through RUNNING_P2P first. */
  stopped?: boolean;
}

const when = (state: number, target?: number) => (s: number, t: number | undefined): boolean => s === state && (target === undefined || t === target);

const CASES: FaultCase[] = [
  { name: 'setup: the memory device refuses PRE_COPY', phase: 'precopy', faults: [{ host: 'source', fault: { device: 'mem', op: 'set', when: when(S.RUNNING, S.PRE_COPY) } }] },
  { name: 'setup: a destination device refuses RESUMING', phase: 'precopy', faults: [{ host: 'destination', fault: { device: 'dma', op: 'set', when: when(S.RUNNING, S.RESUMING) } }] },
  { name: 'pre-copy: the memory device fails a data read', phase: 'precopy', faults: [{ host: 'source', fault: { device: 'mem', op: 'read', when: when(S.PRE_COPY) } }] },
  { name: 'P2P: the GPIO card refuses RUNNING_P2P (its peers already there)', phase: 'switchover', faults: [{ host: 'source', fault: { device: 'gpio', op: 'set', when: when(S.RUNNING, S.RUNNING_P2P) } }] },
  { name: 'stop-copy: the DMA engine fails its final data read', phase: 'switchover', stopped: true, faults: [{ host: 'source', fault: { device: 'dma', op: 'read', when: when(S.STOP_COPY) } }] },
  {
    name: 'destination resume: a destination device refuses RUNNING',
    phase: 'switchover',
    stopped: true,
    faults: [{ host: 'destination', fault: { device: 'gpio', op: 'set', when: when(S.RUNNING_P2P, S.RUNNING) } }],
  },
];

describe('migrateContainer() with a fault at each phase', () => {
  for (const c of CASES) {
    it(`${c.name}: failed, every source RUNNING, memory and device states intact, destinations reset`, async () => {
      await withContainers(async (src, dst) => {
        await prepareSource(src);
        const before = await snapshot(src);
        for (const { host, fault } of c.faults) (host === 'source' ? src : dst).faults.push(fault);
        const report = await migrateContainer({ source: src.side, destination: dst.side, downtimeBudgetMs: BUDGET_MS });
        assert.equal(report.outcome, 'failed', report.reason);
        // The server answers a failed hook with EIO; the reason names the device.
        assert.match(report.reason ?? '', new RegExp(`^${c.faults[0]?.fault.device}: .*EIO`));
        assert.equal(report.phase, c.phase);
        assert.equal(report.sourceRecovery, 'running');
        assert.deepEqual(src.faults.length + dst.faults.length, 0, 'the fault fired');
        assert.ok(report.devices.every((d) => d.sourceRecovery === 'running'));
        await assertIntact(src, before);
        await assertDestinationsRunning(dst);
        if (c.stopped) {
          // The mirror order: every stopped source back to RUNNING_P2P before any runs again.
          const recovery = src.events.slice(src.events.findIndex((e) => e.event === 'fault' || (e.event === 'begin' && STOPPING.includes(e.to))));
          const lastStop = recovery.findLastIndex((e) => e.event === 'end' && e.to === 'STOP_COPY');
          assert.deepEqual(reachedBefore(recovery.slice(lastStop + 1), ['RUNNING_P2P'], ['RUNNING']), ALL, show(src.events));
        }
      });
    });
  }
});
