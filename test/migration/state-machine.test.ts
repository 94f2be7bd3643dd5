/**
 * The migration v2 state machine against an independent oracle: the direct arcs
 * of migration.md §3 typed in by hand, shortest legal paths recomputed by
 * breadth-first search, and the derived-paths table of migration.md §4.1 typed in
 * as text. Nothing here reads the module's tables to compute an expectation.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProtocolError } from '../../src/errors.js';
import { Errno } from '../../src/protocol/errno.js';
import { MigrationState } from '../../src/protocol/constants.js';
import type { MigrationCapabilities } from '../../src/migration/index.js';
import * as m from '../../src/migration/index.js';

// ------------------------------------------------------------ oracle inputs

/** Abbreviations used by migration.md §3–§4 (independent of the module). */
const AB = { E: 0, S: 1, R: 2, SC: 3, RS: 4, RP: 5, PC: 6, PCP: 7 } as const;
const AB_MAP = new Map<string, number>(Object.entries(AB));
const NAME: Record<string, number> = { ...MigrationState };
const abbr = (s: number): string => [...AB_MAP].find(([, v]) => v === s)?.[0] ?? `?${s}`;
const ab = (k: string): number => {
  const v = AB_MAP.get(k.trim());
  if (v === undefined) throw new Error(`bad abbreviation ${k}`);
  return v;
};

interface FlagSet {
  label: string;
  caps: MigrationCapabilities;
  flags: bigint;
  /** States that exist (migration.md §1, "Adds states"). */
  states: string;
  /** Direct arcs, migration.md §3. */
  arcs: string;
}

const ARCS_SC = 'R>S S>R S>SC SC>S S>RS RS>S';
const ARCS_P2P = 'R>RP RP>R RP>S S>RP S>SC SC>S S>RS RS>S';
const FLAG_SETS: FlagSet[] = [
  { label: 'STOP_COPY', caps: { p2p: false, preCopy: false }, flags: 1n, states: 'S R SC RS', arcs: ARCS_SC },
  { label: 'STOP_COPY+P2P', caps: { p2p: true, preCopy: false }, flags: 3n, states: 'S R SC RS RP', arcs: ARCS_P2P },
  {
    label: 'STOP_COPY+PRE_COPY',
    caps: { p2p: false, preCopy: true },
    flags: 5n,
    states: 'S R SC RS PC',
    arcs: `${ARCS_SC} R>PC PC>R PC>SC`,
  },
  {
    label: 'STOP_COPY+P2P+PRE_COPY',
    caps: { p2p: true, preCopy: true },
    flags: 7n,
    states: 'S R SC RS RP PC PCP',
    arcs: `${ARCS_P2P} R>PC PC>R PC>PCP PCP>PC RP>PCP PCP>RP PCP>SC`,
  },
];
const ARC_COUNTS = [6, 8, 9, 15];

const parseArcs = (text: string): Array<[number, number]> =>
  text.split(/\s+/).map((a) => {
    const [from = '', to = ''] = a.split('>');
    return [ab(from), ab(to)];
  });
const arcKey = ([a, b]: readonly [number, number]): string => `${abbr(a)}>${abbr(b)}`;

// ------------------------------------------------------------ BFS oracle

const SAVING = new Set<number>([AB.SC, AB.PC, AB.PCP]);
type OracleAnswer = 'EINVAL' | number[][];

/**
 * Path rules (uAPI, migration.md §4 rule 6): a saving-group state may only be the
 * first or last state of a path, unless the whole path stays in the saving group
 * (the one such path is PRE_COPY → PRE_COPY_P2P → STOP_COPY).
 */
function validPath(path: number[]): boolean {
  if (path.every((s) => SAVING.has(s))) return true;
  return path.slice(1, -1).every((s) => !SAVING.has(s));
}

/** All shortest valid paths (without `from`), or EINVAL; computed by BFS over partial paths. */
function oracle(fs: FlagSet, from: number, to: number): OracleAnswer {
  const present = new Set(fs.states.split(' ').map(ab));
  if (!present.has(from) || !present.has(to)) return 'EINVAL'; // includes anything to/from ERROR
  if (from === to) return [[]];
  if (from === AB.SC && (to === AB.PC || to === AB.PCP)) return 'EINVAL'; // reserved by the uAPI
  const adj = new Map<number, number[]>();
  for (const [a, b] of parseArcs(fs.arcs)) adj.set(a, [...(adj.get(a) ?? []), b]);
  let frontier: number[][] = [[from]];
  while (frontier.length > 0) {
    const next: number[][] = [];
    for (const p of frontier) {
      for (const v of adj.get(p[p.length - 1] ?? -1) ?? []) if (!p.includes(v)) next.push([...p, v]);
    }
    const done = next.filter((p) => p[p.length - 1] === to && validPath(p));
    if (done.length > 0) return done.map((p) => p.slice(1));
    frontier = next.filter((p) => p[p.length - 1] !== to);
  }
  return 'EINVAL';
}

const isEinval = (e: unknown): boolean => e instanceof ProtocolError && e.errno === Errno.EINVAL;
const show = (from: number, path: readonly number[]): string => [from, ...path].map(abbr).join('→');

// ------------------------------------------------------------ migration.md §4.1, typed in

const TABLE_4_1 = `
| RUNNING → STOP | direct | R → RP → S | direct | R → RP → S |
| RUNNING → STOP_COPY | R → S → SC | R → RP → S → SC | R → S → SC | R → RP → S → SC |
| RUNNING → RESUMING | R → S → RS | R → RP → S → RS | R → S → RS | R → RP → S → RS |
| RUNNING → RUNNING_P2P | – | direct | – | direct |
| RUNNING → PRE_COPY | – | – | direct | direct |
| RUNNING → PRE_COPY_P2P | – | – | – | R → RP → PCP |
| STOP → RUNNING | direct | S → RP → R | direct | S → RP → R |
| STOP → STOP_COPY | direct | direct | direct | direct |
| STOP → RESUMING | direct | direct | direct | direct |
| STOP → RUNNING_P2P | – | direct | – | direct |
| STOP → PRE_COPY | – | – | S → R → PC | S → RP → R → PC |
| STOP → PRE_COPY_P2P | – | – | – | S → RP → PCP |
| STOP_COPY → RUNNING | SC → S → R | SC → S → RP → R | SC → S → R | SC → S → RP → R |
| STOP_COPY → STOP | direct | direct | direct | direct |
| STOP_COPY → RESUMING | SC → S → RS | SC → S → RS | SC → S → RS | SC → S → RS |
| STOP_COPY → RUNNING_P2P | – | SC → S → RP | – | SC → S → RP |
| STOP_COPY → PRE_COPY | – | – | **EINVAL** | **EINVAL** |
| STOP_COPY → PRE_COPY_P2P | – | – | – | **EINVAL** |
| RESUMING → RUNNING | RS → S → R | RS → S → RP → R | RS → S → R | RS → S → RP → R |
| RESUMING → STOP | direct | direct | direct | direct |
| RESUMING → STOP_COPY | RS → S → SC | RS → S → SC | RS → S → SC | RS → S → SC |
| RESUMING → RUNNING_P2P | – | RS → S → RP | – | RS → S → RP |
| RESUMING → PRE_COPY | – | – | RS → S → R → PC | RS → S → RP → R → PC |
| RESUMING → PRE_COPY_P2P | – | – | – | RS → S → RP → PCP |
| RUNNING_P2P → RUNNING | – | direct | – | direct |
| RUNNING_P2P → STOP | – | direct | – | direct |
| RUNNING_P2P → STOP_COPY | – | RP → S → SC | – | RP → S → SC |
| RUNNING_P2P → RESUMING | – | RP → S → RS | – | RP → S → RS |
| RUNNING_P2P → PRE_COPY | – | – | – | RP → R → PC |
| RUNNING_P2P → PRE_COPY_P2P | – | – | – | direct |
| PRE_COPY → RUNNING | – | – | direct | direct |
| PRE_COPY → STOP | – | – | PC → R → S | PC → R → RP → S |
| PRE_COPY → STOP_COPY | – | – | direct | PC → PCP → SC |
| PRE_COPY → RESUMING | – | – | PC → R → S → RS | PC → R → RP → S → RS |
| PRE_COPY → RUNNING_P2P | – | – | – | PC → R → RP |
| PRE_COPY → PRE_COPY_P2P | – | – | – | direct |
| PRE_COPY_P2P → RUNNING | – | – | – | PCP → RP → R |
| PRE_COPY_P2P → STOP | – | – | – | PCP → RP → S |
| PRE_COPY_P2P → STOP_COPY | – | – | – | direct |
| PRE_COPY_P2P → RESUMING | – | – | – | PCP → RP → S → RS |
| PRE_COPY_P2P → RUNNING_P2P | – | – | – | direct |
| PRE_COPY_P2P → PRE_COPY | – | – | – | direct |
`;

type Cell = { kind: 'absent' } | { kind: 'einval' } | { kind: 'path'; path: number[] };
interface Row41 {
  from: number;
  to: number;
  cells: Cell[];
}

function parseCell(text: string, from: number, to: number): Cell {
  const t = text.trim();
  if (t === '–') return { kind: 'absent' };
  if (t === '**EINVAL**') return { kind: 'einval' };
  if (t === 'direct') return { kind: 'path', path: [to] };
  const states = t.split('→').map(ab);
  assert.equal(states[0], from, `cell ${t} starts at its row's state`);
  assert.equal(states[states.length - 1], to, `cell ${t} ends at its row's state`);
  return { kind: 'path', path: states.slice(1) };
}

const ROWS_4_1: Row41[] = TABLE_4_1.trim()
  .split('\n')
  .map((line) => {
    const [pair = '', ...cells] = line.split('|').slice(1, -1);
    const [fromName = '', toName = ''] = pair.split('→').map((s) => s.trim());
    const from = NAME[fromName];
    const to = NAME[toName];
    if (from === undefined || to === undefined) throw new Error(`bad row ${line}`);
    return { from, to, cells: cells.map((c) => parseCell(c, from, to)) };
  });

// ------------------------------------------------------------ the tests

describe('§4.1 table as typed in', () => {
  it('has one row per ordered pair of distinct non-ERROR states (42) and 4 columns', () => {
    assert.equal(ROWS_4_1.length, 42);
    assert.equal(new Set(ROWS_4_1.map((r) => `${r.from}>${r.to}`)).size, 42);
    for (const r of ROWS_4_1) assert.equal(r.cells.length, 4);
  });
});

for (const [col, fs] of FLAG_SETS.entries()) {
  describe(`migrationPath vs BFS oracle, ${fs.label}`, () => {
    for (let from = 0; from < 8; from++) {
      for (let to = 0; to < 8; to++) {
        const want = oracle(fs, from, to);
        const paths = want === 'EINVAL' ? 'EINVAL' : want.map((p) => show(from, p)).join(' | ');
        const title = `${abbr(from)} → ${abbr(to)}: ${paths}`;
        it(title, () => {
          if (want === 'EINVAL') {
            assert.throws(() => m.migrationPath(from, to, fs.caps), isEinval);
            assert.throws(() => m.nextHop(from, to, fs.caps), isEinval);
            return;
          }
          const got = m.migrationPath(from, to, fs.caps);
          assert.ok(
            want.some((p) => p.length === got.length && p.every((s, i) => s === got[i])),
            `${show(from, got)} is not among the shortest valid paths`,
          );
          assert.equal(m.nextHop(from, to, fs.caps), got[0] ?? from);
        });
      }
    }
  });

  describe(`migrationPath vs migration.md §4.1, ${fs.label}`, () => {
    for (const { from, to, cells } of ROWS_4_1) {
      const cell = cells[col];
      if (cell === undefined) throw new Error('missing column');
      it(`${abbr(from)} → ${abbr(to)}: ${cell.kind === 'path' ? show(from, cell.path) : cell.kind}`, () => {
        if (cell.kind === 'path') {
          assert.deepEqual(m.migrationPath(from, to, fs.caps), cell.path);
        } else {
          assert.throws(() => m.migrationPath(from, to, fs.caps), isEinval);
          const present = fs.states.split(' ').map(ab);
          assert.equal(cell.kind === 'absent', !present.includes(from) || !present.includes(to));
        }
      });
    }
  });

  describe(`directArcs, ${fs.label}`, () => {
    it(`has ${ARC_COUNTS[col]} arcs, exactly those of migration.md §3`, () => {
      const got = m.directArcs(fs.caps);
      assert.equal(got.length, ARC_COUNTS[col]);
      assert.deepEqual(new Set(got.map(arcKey)), new Set(parseArcs(fs.arcs).map(arcKey)));
    });
    it(`migrationFlagsOf gives ${fs.flags}n and supportedStates the §1 states`, () => {
      assert.equal(m.migrationFlagsOf(fs.caps), fs.flags);
      assert.deepEqual(m.supportedStates(fs.caps), fs.states.split(' ').map(ab).sort((a, b) => a - b));
    });
  });
}

describe('BFS oracle shape', () => {
  it('every legal pair of every flag set has exactly one shortest valid path (the table has no choice to make)', () => {
    const ambiguous: string[] = [];
    for (const fs of FLAG_SETS) {
      for (let from = 0; from < 8; from++) {
        for (let to = 0; to < 8; to++) {
          const want = oracle(fs, from, to);
          if (want !== 'EINVAL' && want.length > 1) ambiguous.push(`${fs.label}:${abbr(from)}>${abbr(to)}`);
        }
      }
    }
    assert.deepEqual(ambiguous, []);
  });
  it('without the saving-group rule BFS would differ: PRE_COPY → STOP would go through STOP_COPY', () => {
    const fs = FLAG_SETS[2];
    assert.ok(fs);
    assert.ok(!validPath([AB.PC, AB.SC, AB.S]));
    assert.deepEqual(oracle(fs, AB.PC, AB.S), [[AB.R, AB.S]]);
  });
});

describe('the only multi-hop path inside the saving group', () => {
  it('is PRE_COPY → PRE_COPY_P2P → STOP_COPY (with P2P and PRE_COPY)', () => {
    const found: string[] = [];
    for (const fs of FLAG_SETS) {
      for (const from of SAVING) {
        for (const to of SAVING) {
          let p: number[] = [];
          try {
            p = m.migrationPath(from, to, fs.caps);
          } catch {
            // refused: no path
          }
          if (p.length > 1 && p.every((s) => SAVING.has(s))) found.push(`${fs.label}:${show(from, p)}`);
        }
      }
    }
    assert.deepEqual(found, ['STOP_COPY+P2P+PRE_COPY:PC→PCP→SC']);
  });
});

describe('FSM_NEXT_HOP and STATE_REQUIRED_FLAGS match migration.md §4', () => {
  const TABLE_4 = `
| **S** | – | RP | SC | RS | RP | RP | RP |
| **R** | RP | – | RP | RP | RP | PC | RP |
| **SC** | S | S | – | S | S | ERROR | ERROR |
| **RS** | S | S | S | – | S | S | S |
| **RP** | S | R | S | S | – | R | PCP |
| **PC** | R | R | PCP | R | R | – | PCP |
| **PCP** | RP | RP | SC | RP | RP | PC | – |`;
  const COLS = ['S', 'R', 'SC', 'RS', 'RP', 'PC', 'PCP'].map(ab);
  it('every cell of the 8×8 table, ERROR row and column ERROR', () => {
    const want: number[][] = Array.from({ length: 8 }, () => new Array<number>(8).fill(AB.E));
    for (const line of TABLE_4.trim().split('\n')) {
      const [head = '', ...cells] = line.split('|').slice(1, -1).map((c) => c.trim());
      const row = ab(head.replaceAll('*', ''));
      cells.forEach((c, i) => {
        const col = COLS[i] ?? -1;
        (want[row] ?? [])[col] = c === '–' ? row : c === 'ERROR' ? 0 : ab(c);
      });
    }
    assert.deepEqual(m.FSM_NEXT_HOP, want);
  });
  it('state_flags_table: STOP_COPY for S/R/SC/RS, +P2P for RP, +PRE_COPY for PC, all for PCP and ERROR', () => {
    assert.deepEqual(
      m.ALL_MIGRATION_STATES.map((s) => m.STATE_REQUIRED_FLAGS[s]),
      [(1n << 64n) - 1n, 1n, 1n, 1n, 1n, 3n, 5n, 7n],
    );
  });
});

describe('nextHop rules and errors', () => {
  const all = { p2p: true, preCopy: true };
  const none = { p2p: false, preCopy: false };
  const msg = (f: () => unknown): string => {
    try {
      f();
    } catch (e) {
      assert.ok(isEinval(e));
      return (e as Error).message;
    }
    assert.fail('did not throw');
  };
  it('same state is no step, and migrationPath is []', () => {
    for (const s of [1, 2, 3, 4, 5, 6, 7]) {
      assert.equal(m.nextHop(s, s, all), s);
      assert.deepEqual(m.migrationPath(s, s, all), []);
    }
  });
  it('ERROR is never a source or a target, not even ERROR → ERROR', () => {
    assert.match(msg(() => m.nextHop(0, 0, all)), /current state ERROR is not valid/);
    assert.match(msg(() => m.nextHop(2, 0, all)), /target state ERROR is not valid: ERROR can never/);
    assert.match(msg(() => m.nextHop(0, 2, all)), /current state ERROR/);
  });
  it('names the flags a state lacks', () => {
    assert.match(
      msg(() => m.nextHop(2, 7, none)),
      /PRE_COPY_P2P is not valid: the device lacks migration flag\(s\) P2P\|PRE_COPY/,
    );
    assert.match(msg(() => m.nextHop(5, 2, { p2p: false, preCopy: true })), /current state RUNNING_P2P .* P2P$/);
  });
  it('STOP_COPY → PRE_COPY(_P2P) is refused, and the skip loop terminates on ERROR', () => {
    assert.match(msg(() => m.nextHop(3, 6, all)), /transition STOP_COPY → PRE_COPY is refused/);
    assert.match(msg(() => m.nextHop(3, 7, all)), /transition STOP_COPY → PRE_COPY_P2P is refused/);
    assert.match(msg(() => m.nextHop(3, 6, { p2p: false, preCopy: true })), /refused/);
  });
  it('out-of-range and non-integer states are EINVAL', () => {
    for (const [c, t] of [[8, 1], [1, 8], [-1, 1], [1, 1.5], [Number.NaN, 1]] as const) {
      assert.match(msg(() => m.nextHop(c, t, all)), /out of range/);
    }
  });
});

describe('state helpers', () => {
  it('stateName, isMigrationState, toMigrationState', () => {
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map(m.stateName), Object.keys(NAME));
    assert.equal(m.stateName(8), 'UNKNOWN(8)');
    assert.equal(m.toMigrationState(7), 7);
    assert.equal(m.isMigrationState(8), false);
    assert.throws(() => m.toMigrationState(8), isEinval);
  });
  const CLASSES = [
    // state, saving, running, stopped
    ['ERROR', false, false, false],
    ['STOP', false, false, true],
    ['RUNNING', false, true, false],
    ['STOP_COPY', true, false, true],
    ['RESUMING', false, false, true],
    ['RUNNING_P2P', false, true, false],
    ['PRE_COPY', true, true, false],
    ['PRE_COPY_P2P', true, true, false],
  ] as const;
  for (const [name, saving, running, stopped] of CLASSES) {
    it(`${name}: saving=${saving} running=${running} stopped=${stopped}`, () => {
      const s = NAME[name] ?? -1;
      assert.equal(m.isSavingState(s), saving);
      assert.equal(m.isRunningState(s), running);
      assert.equal(m.isStoppedState(s), stopped);
    });
  }
});

describe('arcStreamEffect (migration.md §5.1)', () => {
  const TABLE_5_1: Array<[string, string]> = [
    ['R>PC RP>PCP S>SC', 'open-saving'],
    ['S>RS', 'open-resuming'],
    ['PC>PCP PCP>PC PC>SC PCP>SC', 'keep'],
    ['PC>R PCP>RP SC>S', 'close-saving'],
    ['RS>S', 'close-resuming'],
  ];
  const listed = new Map<string, string>();
  for (const [arcs, effect] of TABLE_5_1) for (const a of parseArcs(arcs)) listed.set(arcKey(a), effect);
  const union = new Map<string, [number, number]>();
  for (const fs of FLAG_SETS) for (const a of parseArcs(fs.arcs)) union.set(arcKey(a), a);

  it('§5.1 lists only direct arcs; 18 distinct arcs exist across the four flag sets', () => {
    for (const k of listed.keys()) assert.ok(union.has(k), k);
    assert.equal(union.size, 18);
  });
  for (const [k, [from, to]] of union) {
    const want = listed.get(k) ?? 'none';
    it(`${k}: ${want}`, () => assert.equal(m.arcStreamEffect(from as MigrationState, to as MigrationState), want));
  }

  it('walking every path keeps the stream consistent: at most one stream, and it matches the state', () => {
    const streamOf = (s: number): string => (SAVING.has(s) ? 'saving' : s === AB.RS ? 'resuming' : 'none');
    for (const fs of FLAG_SETS) {
      for (const from of m.supportedStates(fs.caps)) {
        for (const to of m.supportedStates(fs.caps)) {
          let path: number[];
          try {
            path = m.migrationPath(from, to, fs.caps);
          } catch {
            continue;
          }
          let stream = streamOf(from);
          let at: number = from;
          for (const next of path) {
            const e = m.arcStreamEffect(at as MigrationState, next as MigrationState);
            if (e.startsWith('open-')) {
              assert.equal(stream, 'none', `${fs.label} ${show(from, path)}: second stream at ${abbr(next)}`);
              stream = e.slice(5);
            } else if (e.startsWith('close-')) {
              assert.equal(stream, e.slice(6), `${fs.label} ${show(from, path)}: close without open`);
              stream = 'none';
            }
            assert.equal(stream, streamOf(next), `${fs.label} ${show(from, path)} at ${abbr(next)}`);
            at = next;
          }
        }
      }
    }
  });
});
