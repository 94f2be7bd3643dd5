/** The extensions' codecs and discovery parsing, and the deadline walk-back rule on every kind of path (controller level). */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { ProtocolError } from '../../src/errors.js';
import { createDevice, type VfioUserDevice } from '../../src/device/device.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import {
  ArcEstimateSource,
  DeadlineOutcome,
  DeadlineReplyFlags,
  decodeArcLatencies,
  decodeDeadlineStateReply,
  decodeDeadlineStateRequest,
  decodePrecopyInfo,
  encodeArcLatencies,
  encodeDeadlineStateReply,
  encodeDeadlineStateRequest,
  encodePrecopyInfo,
  migrationExtensionsOf,
} from '../../src/protocol/migration-extensions.js';
import { MigrationFatalError, type MigrationDefinition } from '../../src/migration/types.js';
import type { MigrationController } from '../../src/migration/controller.js';
import { testDeviceDefinition } from '../support/server-fixture.js';

const MS = 1_000_000n;

describe('migration extensions: codecs', () => {
  it('pre-copy info: 24 bytes, little-endian, reserved zero and ignored', () => {
    const bytes = encodePrecopyInfo({ initialBytes: 0x0102030405060708n, dirtyBytes: 9n, flags: 1 });
    assert.deepEqual([...bytes], [8, 7, 6, 5, 4, 3, 2, 1, 9, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    bytes[23] = 0xff;
    assert.deepEqual(decodePrecopyInfo(bytes), { initialBytes: 0x0102030405060708n, dirtyBytes: 9n, flags: 1 });
    assert.throws(() => decodePrecopyInfo(bytes.subarray(0, 20)), ProtocolError);
  });

  it('deadline request and reply: 32 bytes each; unknown flags, reserved bytes and short requests refused', () => {
    const req = encodeDeadlineStateRequest({ deviceState: S.STOP, flags: 1, deadlineNs: 300n * MS });
    assert.equal(req.length, 32);
    assert.deepEqual(decodeDeadlineStateRequest(req), { deviceState: S.STOP, flags: 1, deadlineNs: 300n * MS });
    assert.throws(() => decodeDeadlineStateRequest(encodeDeadlineStateRequest({ deviceState: 1, flags: 4, deadlineNs: 0n })), /unknown flag/);
    const reserved = req.slice();
    reserved[20] = 1;
    assert.throws(() => decodeDeadlineStateRequest(reserved), /reserved/);
    assert.throws(() => decodeDeadlineStateRequest(req.subarray(0, 16)), ProtocolError);
    const reply = { reachedState: S.RUNNING, outcome: DeadlineOutcome.ROLLED_BACK, elapsedNs: 123n, estimateNs: 456n, errno: 0, flags: 3 };
    const bytes = encodeDeadlineStateReply(reply);
    assert.equal(bytes.length, 32);
    assert.deepEqual(decodeDeadlineStateReply(bytes), reply);
  });

  it('arc latency: 8-byte header and 48-byte records', () => {
    const arcs = [
      { from: S.RUNNING, to: S.STOP, count: 2, source: ArcEstimateSource.MEASURED, lastNs: 5n, meanNs: 4n, maxNs: 5n, estimateNs: 4n },
      { from: S.STOP, to: S.RESUMING, count: 0, source: ArcEstimateSource.DECLARED, lastNs: 0n, meanNs: 0n, maxNs: 0n, estimateNs: 7n },
    ];
    const bytes = encodeArcLatencies(arcs);
    assert.equal(bytes.length, 8 + 2 * 48);
    assert.deepEqual(decodeArcLatencies(bytes), arcs);
    assert.throws(() => decodeArcLatencies(bytes.subarray(0, 8 + 47)), ProtocolError);
  });

  it('discovery: malformed members count as not advertised', () => {
    assert.deepEqual(migrationExtensionsOf(undefined), {});
    assert.deepEqual(migrationExtensionsOf({ migration: { pgsize: 4096 } }), {});
    const extra = {
      'x-precopy-info': { feature: 0x8000, future: true },
      'x-deadline-state': { feature: 0x10000 },
      'x-arc-latency': { feature: '32770' },
    };
    assert.deepEqual(migrationExtensionsOf({ migration: { extra } }), { precopyInfo: 0x8000 });
    assert.deepEqual(migrationExtensionsOf({ extra: { 'x-precopy-info': { feature: 1 } } }), {}, 'only inside migration');
  });
});

interface Rig {
  device: VfioUserDevice;
  migration: MigrationController;
  arcs: string[];
}

/**
 * The budget of the deadline tests: wide enough that an arc with no delay always fits on a loaded
 * machine (a 5 ms budget was missed by a plain RUNNING → STOP under a parallel suite).
 */
const BUDGET = 250n * MS;
/** An arc delay that ends only once the deadline walk's budget has run out: late by construction. */
const LATE = 'late';

/** Resolves when the walk's deadline has passed (its arc signal aborts), then a millisecond more. */
async function untilDeadline(migration: MigrationController): Promise<void> {
  const signal = migration.arcSignal;
  assert.ok(signal, 'LATE arcs only run inside setStateWithDeadline');
  if (!signal.aborted) await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
  await sleep(1);
}

/** A device with the given capabilities whose arcs ("from>to") take `delays` ms, or end after the deadline ({@link LATE}). */
function rig(caps: Pick<MigrationDefinition, 'p2p' | 'preCopy'>, delays: Record<string, number | typeof LATE> = {}, fatal = new Set<string>()): Rig {
  const arcs: string[] = [];
  const state = new Uint8Array(64).fill(0x5a);
  const device = createDevice(
    testDeviceDefinition({
      migration: {
        ...caps,
        deviceType: 'rig',
        stateVersion: 1,
        save: () => state.slice(),
        load: (_kind, payload) => void state.set(payload),
        async transition(from, to) {
          const arc = `${from}>${to}`;
          arcs.push(arc);
          if (fatal.has(arc)) throw new MigrationFatalError(`arc ${arc} cannot be recovered`);
          const delay = delays[arc];
          if (delay === LATE) await untilDeadline(device.migration as MigrationController);
          else if (delay !== undefined) await sleep(delay);
        },
      },
    }),
  );
  return { device, migration: device.migration as MigrationController, arcs };
}

async function withRig(r: Rig, fn: (r: Rig) => Promise<void>): Promise<void> {
  try {
    await fn(r);
  } finally {
    r.device.dispose();
  }
}

const arc = (from: number, to: number): string => `${from}>${to}`;

describe('migration extensions: where a deadline miss leaves the device', () => {
  it('P2P, RUNNING → STOP: back through RUNNING_P2P to RUNNING', () =>
    withRig(rig({ p2p: true }, { [arc(S.RUNNING_P2P, S.STOP)]: LATE }), async ({ migration, arcs }) => {
      const r = await migration.setStateWithDeadline(S.STOP, BUDGET);
      assert.equal(r.outcome, DeadlineOutcome.ROLLED_BACK);
      assert.equal(r.reachedState, S.RUNNING);
      assert.deepEqual(arcs, [arc(S.RUNNING, S.RUNNING_P2P), arc(S.RUNNING_P2P, S.STOP), arc(S.STOP, S.RUNNING_P2P), arc(S.RUNNING_P2P, S.RUNNING)]);
      assert.deepEqual(r.arcs.map((a) => arc(a.from, a.to)), arcs);
    }));

  it('P2P + PRE_COPY, PRE_COPY → STOP_COPY missed after PRE_COPY_P2P: back to PRE_COPY, the same saving stream still open', () =>
    withRig(rig({ p2p: true, preCopy: true }, { [arc(S.PRE_COPY, S.PRE_COPY_P2P)]: LATE }), async ({ migration, arcs }) => {
      await migration.setState(S.PRE_COPY);
      const head = await migration.read(10);
      const pending = migration.precopyInfo();
      arcs.length = 0;
      const r = await migration.setStateWithDeadline(S.STOP_COPY, BUDGET);
      assert.equal(r.outcome, DeadlineOutcome.ROLLED_BACK);
      assert.equal(r.reachedState, S.PRE_COPY);
      assert.deepEqual(arcs, [arc(S.PRE_COPY, S.PRE_COPY_P2P), arc(S.PRE_COPY_P2P, S.PRE_COPY)]);
      assert.equal(head.length, 10);
      assert.deepEqual(migration.precopyInfo(), pending, 'pre-copy goes on where it was');
    }));

  it('PRE_COPY → STOP_COPY reached late cannot be undone (STOP_COPY → PRE_COPY is refused): reached_state is the target', () =>
    withRig(rig({ preCopy: true }, { [arc(S.PRE_COPY, S.STOP_COPY)]: LATE }), async ({ migration }) => {
      await migration.setState(S.PRE_COPY);
      const r = await migration.setStateWithDeadline(S.STOP_COPY, BUDGET);
      assert.equal(r.outcome, DeadlineOutcome.ROLLED_BACK);
      assert.equal(r.reachedState, S.STOP_COPY);
      assert.equal(r.flags & DeadlineReplyFlags.DEADLINE_IN_ARC, DeadlineReplyFlags.DEADLINE_IN_ARC);
    }));

  it('RESUMING → RUNNING missed: back to STOP, never into a new (empty) resuming stream', () =>
    withRig(rig({}, { [arc(S.STOP, S.RUNNING)]: LATE }), async ({ migration, arcs }) => {
      const source = rig({});
      await source.migration.setState(S.STOP_COPY);
      const stream = await source.migration.read(1 << 20);
      source.device.dispose();
      await migration.setState(S.RESUMING);
      await migration.write(stream);
      arcs.length = 0;
      const r = await migration.setStateWithDeadline(S.RUNNING, BUDGET);
      assert.equal(r.outcome, DeadlineOutcome.ROLLED_BACK);
      assert.equal(r.reachedState, S.STOP);
      assert.deepEqual(arcs, [arc(S.RESUMING, S.STOP), arc(S.STOP, S.RUNNING), arc(S.RUNNING, S.STOP)]);
    }));

  it('RUNNING → RESUMING reached late stays in RESUMING (RESUMING → STOP would fail on the empty stream); STOP → STOP_COPY late goes back to STOP', () =>
    withRig(rig({}, { [arc(S.STOP, S.RESUMING)]: LATE, [arc(S.STOP, S.STOP_COPY)]: LATE }), async ({ migration, arcs }) => {
      const r = await migration.setStateWithDeadline(S.RESUMING, BUDGET);
      assert.equal(r.outcome, DeadlineOutcome.ROLLED_BACK);
      assert.equal(r.reachedState, S.RESUMING, 'not ERROR');
      assert.deepEqual(arcs, [arc(S.RUNNING, S.STOP), arc(S.STOP, S.RESUMING)]);
      await migration.setState(S.STOP).catch(() => undefined); // the empty stream: ERROR, as the kernel
      migration.reset();
      await migration.setState(S.STOP);
      arcs.length = 0;
      const back = await migration.setStateWithDeadline(S.STOP_COPY, BUDGET);
      assert.equal(back.reachedState, S.STOP);
      assert.deepEqual(arcs, [arc(S.STOP, S.STOP_COPY), arc(S.STOP_COPY, S.STOP)]);
      await assert.rejects(migration.read(16), ProtocolError, 'the saving stream was closed');
    }));

  it('a fatal arc error is outcome FAILED in ERROR; the plain SET and arcLatencies keep working as before', () =>
    withRig(rig({}, {}, new Set([arc(S.STOP, S.STOP_COPY)])), async ({ migration }) => {
      const timings = await migration.setState(S.STOP);
      assert.equal(timings.length, 1);
      assert.ok(migration.arcLatencies.has(arc(S.RUNNING, S.STOP)));
      const r = await migration.setStateWithDeadline(S.STOP_COPY, 1000n * MS);
      assert.equal(r.outcome, DeadlineOutcome.FAILED);
      assert.equal(r.reachedState, S.ERROR);
      assert.ok(r.error instanceof MigrationFatalError);
      assert.equal(migration.arcSignal, undefined, 'the signal is only set during a deadline walk');
    }));
});
