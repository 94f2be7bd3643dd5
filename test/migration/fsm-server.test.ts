/**
 * The migration v2 state machine through the real server and client: for each
 * flag set a device can declare (P2P × PRE_COPY), every (from, to) SET walks
 * the arcs `migrationPath` gives, which must also be what an independent BFS
 * over migration.md §3's direct-arc lists finds; refused pairs leave the state
 * alone; a hook failing midway leaves the device where it got to.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import { RemoteError } from '../../src/errors.js';
import { MigrationFatalError } from '../../src/migration/types.js';
import { migrationPath } from '../../src/migration/state-machine.js';
import { MigrationState as M } from '../../src/protocol/constants.js';
import { serveTestDevice, testDeviceDefinition, type ServedDevice } from '../support/server-fixture.js';

const { ERROR, STOP: S, RUNNING: R, STOP_COPY: SC, RESUMING: RS, RUNNING_P2P: RP, PRE_COPY: PC, PRE_COPY_P2P: PCP } = M;
const NAME: Record<number, string> = { 0: 'ERROR', 1: 'STOP', 2: 'RUNNING', 3: 'STOP_COPY', 4: 'RESUMING', 5: 'RUNNING_P2P', 6: 'PRE_COPY', 7: 'PRE_COPY_P2P', 8: '8' };
const EINVAL = 22;
const EIO = 5;

type Arc = readonly [number, number];
interface Caps {
  p2p: boolean;
  preCopy: boolean;
}

// ------------------------------------------------------------------ the oracle (migration.md §3)

/** The direct arcs of §3's table, copied per flag set. */
const STOP_COPY_ARCS: Arc[] = [[R, S], [S, R], [S, SC], [SC, S], [S, RS], [RS, S]];
const P2P_ARCS: Arc[] = [[R, RP], [RP, R], [RP, S], [S, RP], [S, SC], [SC, S], [S, RS], [RS, S]];
const PRE_COPY_EXTRA: Arc[] = [[R, PC], [PC, R], [PC, SC]];
const P2P_PRE_COPY_EXTRA: Arc[] = [[R, PC], [PC, R], [PC, PCP], [PCP, PC], [RP, PCP], [PCP, RP], [PCP, SC]];

function oracleArcs(caps: Caps): Arc[] {
  if (caps.p2p && caps.preCopy) return [...P2P_ARCS, ...P2P_PRE_COPY_EXTRA];
  if (caps.p2p) return P2P_ARCS;
  if (caps.preCopy) return [...STOP_COPY_ARCS, ...PRE_COPY_EXTRA];
  return STOP_COPY_ARCS;
}

function oracleStates(caps: Caps): number[] {
  return [S, R, SC, RS, ...(caps.p2p ? [RP] : []), ...(caps.preCopy ? [PC] : []), ...(caps.p2p && caps.preCopy ? [PCP] : [])];
}

const isSaving = (s: number): boolean => s === PC || s === PCP || s === SC;

/**
 * The shortest path by breadth-first search over simple paths, where a saving
 * state may be interior only on a path that stays inside the saving group
 * (PRE_COPY → PRE_COPY_P2P → STOP_COPY), and STOP_COPY → PRE_COPY* is refused
 * (§3). Asserts the shortest allowed path is unique.
 * @returns the states entered after `from`, or `undefined` when refused.
 */
function oraclePath(caps: Caps, from: number, to: number): number[] | undefined {
  const states = oracleStates(caps);
  if (!states.includes(from) || !states.includes(to)) return undefined;
  if (from === to) return [];
  if (from === SC && (to === PC || to === PCP)) return undefined;
  const arcs = oracleArcs(caps);
  let frontier: number[][] = [[from]];
  while (frontier.length > 0) {
    const found = frontier.filter((p) => p.at(-1) === to);
    const allowed = found.filter((p) => p.every(isSaving) || p.slice(1, -1).every((s) => !isSaving(s)));
    if (allowed.length > 0) {
      assert.equal(allowed.length, 1, `${NAME[from]} → ${NAME[to]}: shortest paths ${JSON.stringify(allowed)}`);
      return allowed[0]!.slice(1);
    }
    const next: number[][] = [];
    for (const p of frontier) {
      if (p.at(-1) === to) continue;
      for (const [a, b] of arcs) if (a === p.at(-1) && !p.includes(b)) next.push([...p, b]);
    }
    frontier = next;
  }
  return undefined;
}

// ------------------------------------------------------------------ the device

interface Failure {
  arc: Arc;
  error: unknown;
}

/** A migratable device recording every `transition(from, to)` call; `fail` makes one arc throw. */
function fsmDevice(caps: Caps): { served: ServedDevice; calls: Arc[]; control: { fail: Failure | undefined } } {
  const calls: Arc[] = [];
  const control: { fail: Failure | undefined } = { fail: undefined };
  let state = new Uint8Array(256).map((_, i) => i);
  const def = testDeviceDefinition({
    migration: {
      ...caps,
      deviceType: 'fsm-probe',
      stateVersion: 1,
      save: () => state.slice(),
      load: (_kind, payload) => void (state = payload.slice()),
      transition: (from, to) => {
        calls.push([from, to]);
        const f = control.fail;
        if (f && f.arc[0] === from && f.arc[1] === to) throw f.error;
      },
    },
  });
  return { served: serveTestDevice(def), calls, control };
}

interface Harness {
  client: VfioUserClient;
  calls: Arc[];
  control: { fail: Failure | undefined };
  /** A complete stream of this device type, to leave RESUMING cleanly. */
  stream: Uint8Array;
}

async function withDevice(caps: Caps, fn: (h: Harness) => Promise<void>): Promise<void> {
  const { served, calls, control } = fsmDevice(caps);
  const client = await VfioUserClient.connect(served.path);
  try {
    await client.setMigrationState(SC);
    const parts: Uint8Array[] = [];
    for (let part = await client.migDataRead(65536); part.length > 0; part = await client.migDataRead(65536)) parts.push(part);
    await client.setMigrationState(R);
    calls.length = 0;
    await fn({ client, calls, control, stream: Buffer.concat(parts) });
  } finally {
    client.close();
    await served.close();
  }
}

/** Back to RUNNING from anywhere: SET (an unfed RESUMING fails into ERROR), DEVICE_RESET out of ERROR. */
async function home(h: Harness): Promise<void> {
  for (let i = 0; i < 3; i++) {
    const s = await h.client.migrationState();
    if (s === R) return;
    if (s === ERROR) await h.client.reset();
    else await h.client.setMigrationState(R).catch(() => undefined);
  }
  assert.equal(await h.client.migrationState(), R, 'home');
}

/** Puts the device in `from` through the client; in RESUMING the complete stream is written, so leaving works. */
async function goTo(h: Harness, from: number): Promise<void> {
  await home(h);
  if (from !== R) await h.client.setMigrationState(from);
  if (from === RS) await h.client.migDataWrite(h.stream);
  assert.equal(await h.client.migrationState(), from);
  h.calls.length = 0;
}

const pairsOf = (from: number, path: readonly number[]): Arc[] => path.map((s, i) => [i === 0 ? from : path[i - 1]!, s] as const);
const isRemote = (errno: number) => (e: unknown): boolean => e instanceof RemoteError && e.errno === errno;
const libPath = (from: number, to: number, caps: Caps): number[] | undefined => {
  try {
    return migrationPath(from, to, caps);
  } catch {
    return undefined;
  }
};

const FLAG_SETS: Caps[] = [
  { p2p: false, preCopy: false },
  { p2p: true, preCopy: false },
  { p2p: false, preCopy: true },
  { p2p: true, preCopy: true },
];
const label = (c: Caps): string => `STOP_COPY${c.p2p ? ' + P2P' : ''}${c.preCopy ? ' + PRE_COPY' : ''}`;

describe('migration FSM through the server: every (from, to) pair', () => {
  for (const caps of FLAG_SETS) {
    it(`${label(caps)}: hook calls = migrationPath = the BFS oracle; refused pairs → EINVAL, state unchanged`, () =>
      withDevice(caps, async (h) => {
        let walked = 0;
        let refused = 0;
        for (const from of oracleStates(caps)) {
          for (let to = 0; to <= 8; to++) {
            const oracle = oraclePath(caps, from, to);
            assert.deepEqual(libPath(from, to, caps), oracle, `migrationPath ${NAME[from]} → ${NAME[to]}`);
            await goTo(h, from);
            const where = `${NAME[from]} → ${NAME[to]}`;
            if (oracle === undefined) {
              await assert.rejects(h.client.setMigrationState(to), isRemote(EINVAL), where);
              assert.equal(await h.client.migrationState(), from, `${where}: unchanged`);
              assert.deepEqual(h.calls, [], `${where}: no hook ran`);
              refused++;
              continue;
            }
            await h.client.setMigrationState(to);
            assert.deepEqual(h.calls, pairsOf(from, oracle), where);
            assert.equal(await h.client.migrationState(), to, where);
            walked++;
          }
        }
        const n = oracleStates(caps).length;
        assert.equal(walked + refused, n * 9);
        assert.equal(walked, n * n - (caps.preCopy ? (caps.p2p ? 2 : 1) : 0), 'only STOP_COPY → PRE_COPY* is refused among supported pairs');
      }));
  }
});

describe('a transition hook failing midway', () => {
  /** The error thrown at the n-th failing case, and the errno the SET must fail with. */
  const kinds: Array<[string, () => unknown, number]> = [
    ['an Error with errno', () => Object.assign(new Error('device busy'), { errno: 16 }), 16],
    ['an Error with a negative errno', () => Object.assign(new Error('no access'), { errno: -13 }), 13],
    ['a plain Error', () => new Error('device bug'), EIO],
    ['a string', () => 'not even an Error', EIO],
  ];

  for (const caps of FLAG_SETS) {
    it(`${label(caps)}: on every arc of every path the SET fails with the hook's errno, the device stays in the last state reached, and a later SET works from there`, () =>
      withDevice(caps, async (h) => {
        let cases = 0;
        for (const from of oracleStates(caps)) {
          for (const to of oracleStates(caps)) {
            const path = oraclePath(caps, from, to);
            if (path === undefined) continue;
            const arcs = pairsOf(from, path);
            for (let k = 0; k < arcs.length; k++) {
              const [what, make, errno] = kinds[cases++ % kinds.length]!;
              const where = `${NAME[from]} → ${NAME[to]}, failing ${NAME[arcs[k]![0]]} → ${NAME[arcs[k]![1]]} with ${what}`;
              await goTo(h, from);
              h.control.fail = { arc: arcs[k]!, error: make() };
              await assert.rejects(h.client.setMigrationState(to), isRemote(errno), where);
              const reached = arcs[k]![0];
              assert.equal(await h.client.migrationState(), reached, `${where}: the last state reached`);
              assert.deepEqual(h.calls, arcs.slice(0, k + 1), `${where}: the arcs run`);
              h.control.fail = undefined;
              h.calls.length = 0;
              await h.client.setMigrationState(to);
              assert.deepEqual(h.calls, pairsOf(reached, oraclePath(caps, reached, to)!), `${where}: the SET again`);
              assert.equal(await h.client.migrationState(), to);
            }
          }
        }
        assert.ok(cases > 0);
      }));
  }

  for (const caps of [{ p2p: false, preCopy: false }, { p2p: true, preCopy: true }]) {
    it(`${label(caps)}: MigrationFatalError → ERROR; every SET is refused there; DEVICE_RESET → RUNNING; SETs work again`, () =>
      withDevice(caps, async (h) => {
        const path = oraclePath(caps, R, SC)!;
        const arcs = pairsOf(R, path);
        const fatal = arcs[arcs.length - 2]!; // the arc into STOP
        h.control.fail = { arc: fatal, error: new MigrationFatalError('lost the device') };
        await assert.rejects(h.client.setMigrationState(SC), isRemote(EIO), 'no errno on the error: EIO');
        assert.equal(await h.client.migrationState(), ERROR);
        assert.deepEqual(h.calls, arcs.slice(0, arcs.length - 1));
        h.control.fail = undefined;
        h.calls.length = 0;
        for (let to = 1; to <= 8; to++) {
          await assert.rejects(h.client.setMigrationState(to), isRemote(EINVAL), `ERROR → ${NAME[to]}`);
        }
        await assert.rejects(h.client.setMigrationState(ERROR), isRemote(EINVAL), 'ERROR can never be requested, not even from ERROR (kernel rule)');
        await assert.rejects(h.client.migDataRead(16), isRemote(EINVAL));
        await assert.rejects(h.client.migDataWrite(Uint8Array.of(1)), isRemote(EINVAL));
        assert.deepEqual(h.calls, [], 'no hook runs out of ERROR');
        assert.equal(await h.client.migrationState(), ERROR);
        await h.client.reset();
        assert.equal(await h.client.migrationState(), R);
        await h.client.setMigrationState(SC);
        assert.deepEqual(h.calls, arcs);
        assert.equal(await h.client.migrationState(), SC);
      }));
  }
});
