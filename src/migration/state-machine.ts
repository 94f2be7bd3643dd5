/**
 * The VFIO migration v2 state machine (Linux uAPI "protocol v2", carried
 * unchanged by vfio-user), as pure data and pure functions.
 *
 * Everything here is derived from two tables copied from the kernel's
 * `vfio_mig_get_next_state()` (`drivers/vfio/vfio_main.c`):
 * {@link FSM_NEXT_HOP} (`vfio_from_fsm_table`) and {@link STATE_REQUIRED_FLAGS}
 * (`state_flags_table`). A device declares which optional states it has
 * ({@link MigrationCapabilities}); a SET of `MIG_DEVICE_STATE` is then walked
 * one direct arc at a time ({@link nextHop}, {@link migrationPath}).
 *
 * The table is checked against an independent breadth-first-search oracle in
 * `test/migration/state-machine.test.ts`.
 */
import { ProtocolError } from '../errors.js';
import { MigrationFlags, MigrationState, NUM_MIGRATION_STATES, U64_MAX } from '../protocol/constants.js';

/** The symbolic name of a migration state (`'STOP_COPY'`). */
export type MigrationStateName = keyof typeof MigrationState;

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = MigrationState;

/** Every migration state, in numeric order (ERROR 0 … PRE_COPY_P2P 7). */
export const ALL_MIGRATION_STATES: readonly MigrationState[] = [
  ERROR,
  STOP,
  RUNNING,
  STOP_COPY,
  RESUMING,
  RUNNING_P2P,
  PRE_COPY,
  PRE_COPY_P2P,
];

const STATE_NAMES = new Map<number, MigrationStateName>(
  (Object.entries(MigrationState) as Array<[MigrationStateName, MigrationState]>).map(([name, n]) => [n, name]),
);

/**
 * The name of a migration state (`3` → `'STOP_COPY'`), or `'UNKNOWN(n)'`.
 * @param s - a state number, possibly raw from the wire.
 * @returns a printable name; never throws.
 */
export function stateName(s: number): string {
  return STATE_NAMES.get(s) ?? `UNKNOWN(${s})`;
}

/**
 * Whether `n` is one of the eight defined states.
 * @param n - a raw `device_state`.
 * @returns `true` for an integer in 0…7.
 */
export function isMigrationState(n: number): n is MigrationState {
  return Number.isInteger(n) && n >= 0 && n < NUM_MIGRATION_STATES;
}

/**
 * Checked conversion of a raw `device_state` (as in a MIG_DEVICE_STATE SET).
 * @param n - the raw value.
 * @returns `n` typed as {@link MigrationState}.
 * @throws {ProtocolError} EINVAL when `n` is not 0…7 (the kernel's `new_fsm >= ARRAY_SIZE` check).
 */
export function toMigrationState(n: number): MigrationState {
  if (!isMigrationState(n)) throw new ProtocolError(`migration: unknown device state ${n}`);
  return n;
}

// ------------------------------------------------------------ capabilities

/**
 * The optional migration features a device declares. STOP_COPY is mandatory
 * for any migratable device and therefore implied; it gives STOP, RUNNING,
 * STOP_COPY and RESUMING.
 */
export interface MigrationCapabilities {
  /** `VFIO_MIGRATION_P2P`: adds RUNNING_P2P (and PRE_COPY_P2P together with `preCopy`). */
  readonly p2p: boolean;
  /** `VFIO_MIGRATION_PRE_COPY`: adds PRE_COPY (and PRE_COPY_P2P together with `p2p`). */
  readonly preCopy: boolean;
}

/**
 * The `VFIO_DEVICE_FEATURE_MIGRATION` flags word a device with these
 * capabilities reports.
 * @param caps - the declared optional features.
 * @returns `STOP_COPY` plus `P2P` and/or `PRE_COPY` bits, as a u64 bigint.
 */
export function migrationFlagsOf(caps: MigrationCapabilities): bigint {
  return (
    MigrationFlags.STOP_COPY | (caps.p2p ? MigrationFlags.P2P : 0n) | (caps.preCopy ? MigrationFlags.PRE_COPY : 0n)
  );
}

/**
 * The kernel's `state_flags_table`: the migration flags a device needs for each
 * state to exist, indexed by state. ERROR needs every bit, so it never exists
 * as a source or target of a transition.
 */
export const STATE_REQUIRED_FLAGS: Readonly<Record<MigrationState, bigint>> = {
  [ERROR]: U64_MAX,
  [STOP]: MigrationFlags.STOP_COPY,
  [RUNNING]: MigrationFlags.STOP_COPY,
  [STOP_COPY]: MigrationFlags.STOP_COPY,
  [RESUMING]: MigrationFlags.STOP_COPY,
  [RUNNING_P2P]: MigrationFlags.STOP_COPY | MigrationFlags.P2P,
  [PRE_COPY]: MigrationFlags.STOP_COPY | MigrationFlags.PRE_COPY,
  [PRE_COPY_P2P]: MigrationFlags.STOP_COPY | MigrationFlags.P2P | MigrationFlags.PRE_COPY,
};

/**
 * Whether a device with these capabilities has state `s`.
 * @param s - a migration state.
 * @param caps - the declared optional features.
 * @returns `false` for ERROR and for states whose flags the device lacks.
 */
export function isStateSupported(s: MigrationState, caps: MigrationCapabilities): boolean {
  const need = STATE_REQUIRED_FLAGS[s];
  return (need & migrationFlagsOf(caps)) === need;
}

/**
 * The states a device with these capabilities can be put in (ERROR excluded).
 * @param caps - the declared optional features.
 * @returns 4, 5, 5 or 7 states in numeric order.
 */
export function supportedStates(caps: MigrationCapabilities): MigrationState[] {
  return ALL_MIGRATION_STATES.filter((s) => isStateSupported(s, caps));
}

// ------------------------------------------------------------ next-hop table

const E = ERROR;
const S = STOP;
const R = RUNNING;
const SC = STOP_COPY;
const RS = RESUMING;
const RP = RUNNING_P2P;
const PC = PRE_COPY;
const PCP = PRE_COPY_P2P;

/**
 * The kernel's static `vfio_from_fsm_table`: `FSM_NEXT_HOP[cur][target]` is the
 * next state on the way from `cur` to `target`, assuming every optional state
 * exists. ERROR as a cell means "refused". Rows and columns are indexed by
 * state number (ERROR 0 … PRE_COPY_P2P 7). Unsupported hops are skipped by
 * {@link nextHop}.
 */
export const FSM_NEXT_HOP: readonly (readonly MigrationState[])[] = [
  //  target:  E  S    R    SC   RS   RP   PC   PCP
  /* E   */ [E, E, E, E, E, E, E, E],
  /* S   */ [E, S, RP, SC, RS, RP, RP, RP],
  /* R   */ [E, RP, R, RP, RP, RP, PC, RP],
  /* SC  */ [E, S, S, SC, S, S, E, E],
  /* RS  */ [E, S, S, S, RS, S, S, S],
  /* RP  */ [E, S, R, S, S, RP, R, PCP],
  /* PC  */ [E, R, R, PCP, R, R, PC, PCP],
  /* PCP */ [E, RP, RP, SC, RP, RP, PC, PCP],
];

function tableHop(cur: MigrationState, target: MigrationState): MigrationState {
  const hop = FSM_NEXT_HOP[cur]?.[target];
  if (hop === undefined) {
    throw new ProtocolError(`migration: no table cell for ${stateName(cur)} → ${stateName(target)}`);
  }
  return hop;
}

function missingFlagNames(s: MigrationState, caps: MigrationCapabilities): string {
  if (s === ERROR) return 'ERROR can never be requested or left by a transition';
  const have = migrationFlagsOf(caps);
  const missing = (Object.entries(MigrationFlags) as Array<[string, bigint]>)
    .filter(([, bit]) => (STATE_REQUIRED_FLAGS[s] & bit) !== 0n && (have & bit) === 0n)
    .map(([name]) => name);
  return `the device lacks migration flag(s) ${missing.join('|')}`;
}

/**
 * One step from `cur` towards `target`: the kernel's `vfio_mig_get_next_state`.
 *
 * Rules, in order:
 * 1. `cur` and `target` must be states 0…7 whose required flags the device has
 *    (so ERROR is never a valid source or target);
 * 2. same state → `cur` (no step);
 * 3. the hop is `FSM_NEXT_HOP[cur][target]`; while the hop is a state the device
 *    lacks, it is replaced by `FSM_NEXT_HOP[hop][target]` (unsupported states are
 *    skipped; the loop stops on ERROR, as the 2026 kernel fix for the
 *    STOP_COPY→PRE_COPY soft lockup does);
 * 4. a hop of ERROR means the transition is refused (STOP_COPY → PRE_COPY and
 *    STOP_COPY → PRE_COPY_P2P).
 *
 * @param cur - the device's current state.
 * @param target - the requested end state (raw values are range-checked).
 * @param caps - the device's declared optional features.
 * @returns the next state to enter, a direct arc from `cur`; `cur` itself when `cur === target`.
 * @throws {ProtocolError} EINVAL when `cur` or `target` is out of range or not
 *   supported by the device (rule 1), or when the table refuses the transition (rule 4).
 *   The message names the rule.
 */
export function nextHop(cur: number, target: number, caps: MigrationCapabilities): MigrationState {
  if (!isMigrationState(cur)) throw new ProtocolError(`migration: current state ${cur} is out of range`);
  if (!isMigrationState(target)) throw new ProtocolError(`migration: target state ${target} is out of range`);
  if (!isStateSupported(cur, caps)) {
    throw new ProtocolError(`migration: current state ${stateName(cur)} is not valid: ${missingFlagNames(cur, caps)}`);
  }
  if (!isStateSupported(target, caps)) {
    throw new ProtocolError(
      `migration: target state ${stateName(target)} is not valid: ${missingFlagNames(target, caps)}`,
    );
  }
  if (cur === target) return cur;
  let hop = tableHop(cur, target);
  while (hop !== ERROR && !isStateSupported(hop, caps)) hop = tableHop(hop, target);
  if (hop === ERROR) {
    throw new ProtocolError(`migration: transition ${stateName(cur)} → ${stateName(target)} is refused`);
  }
  return hop;
}

/**
 * The full path the kernel (and a vfio-user server) walks for a SET from `cur`
 * to `target`: repeated {@link nextHop}. Every consecutive pair is a direct arc.
 * @param cur - the device's current state.
 * @param target - the requested end state.
 * @param caps - the device's declared optional features.
 * @returns the states entered after `cur`, ending with `target`; `[]` when `cur === target`.
 * @throws {ProtocolError} EINVAL under the same rules as {@link nextHop}.
 */
export function migrationPath(cur: number, target: number, caps: MigrationCapabilities): MigrationState[] {
  const path: MigrationState[] = [];
  let at = nextHop(cur, target, caps);
  if (at === cur) return path;
  for (;;) {
    path.push(at);
    if (at === target) return path;
    if (path.length >= NUM_MIGRATION_STATES) {
      throw new ProtocolError(`migration: no progress from ${stateName(cur)} to ${stateName(target)}`);
    }
    at = nextHop(at, target, caps);
  }
}

/**
 * The direct arcs a driver with these capabilities must implement: every pair
 * `(from, to)` of supported, distinct states for which {@link nextHop} returns
 * `to` at once. Gives 6 (STOP_COPY), 8 (+P2P), 9 (+PRE_COPY) or 15 (+both) arcs.
 * @param caps - the declared optional features.
 * @returns `[from, to]` pairs, ordered by `from` then `to`.
 */
export function directArcs(caps: MigrationCapabilities): Array<[MigrationState, MigrationState]> {
  const states = supportedStates(caps);
  const arcs: Array<[MigrationState, MigrationState]> = [];
  for (const from of states) {
    for (const to of states) {
      if (from === to) continue;
      try {
        if (nextHop(from, to, caps) === to) arcs.push([from, to]);
      } catch {
        // refused pair (STOP_COPY → PRE_COPY*): not an arc
      }
    }
  }
  return arcs;
}

// ------------------------------------------------------------ data stream

/** What one direct arc does to the migration data stream (migration.md §5.1). */
export const StreamEffect = {
  /** A saving stream starts (RUNNING→PRE_COPY, RUNNING_P2P→PRE_COPY_P2P, STOP→STOP_COPY). */
  OPEN_SAVING: 'open-saving',
  /** A resuming stream starts (STOP→RESUMING). */
  OPEN_RESUMING: 'open-resuming',
  /** Moves inside the saving group keep the same stream (PRE_COPY ↔ PRE_COPY_P2P, PRE_COPY* → STOP_COPY). */
  KEEP: 'keep',
  /** The saving stream ends (PRE_COPY→RUNNING, PRE_COPY_P2P→RUNNING_P2P, STOP_COPY→STOP). */
  CLOSE_SAVING: 'close-saving',
  /** The resuming stream ends; the device checks what it absorbed (RESUMING→STOP). */
  CLOSE_RESUMING: 'close-resuming',
  /** The arc does not touch any stream. */
  NONE: 'none',
} as const;
/** One of the values in {@link StreamEffect}. */
export type StreamEffect = (typeof StreamEffect)[keyof typeof StreamEffect];

/** migration.md §5.1, one row per arc that touches a stream. Every other arc has no effect. */
export const ARC_STREAM_EFFECTS: ReadonlyArray<readonly [MigrationState, MigrationState, StreamEffect]> = [
  [RUNNING, PRE_COPY, StreamEffect.OPEN_SAVING],
  [RUNNING_P2P, PRE_COPY_P2P, StreamEffect.OPEN_SAVING],
  [STOP, STOP_COPY, StreamEffect.OPEN_SAVING],
  [STOP, RESUMING, StreamEffect.OPEN_RESUMING],
  [PRE_COPY, PRE_COPY_P2P, StreamEffect.KEEP],
  [PRE_COPY_P2P, PRE_COPY, StreamEffect.KEEP],
  [PRE_COPY, STOP_COPY, StreamEffect.KEEP],
  [PRE_COPY_P2P, STOP_COPY, StreamEffect.KEEP],
  [PRE_COPY, RUNNING, StreamEffect.CLOSE_SAVING],
  [PRE_COPY_P2P, RUNNING_P2P, StreamEffect.CLOSE_SAVING],
  [STOP_COPY, STOP, StreamEffect.CLOSE_SAVING],
  [RESUMING, STOP, StreamEffect.CLOSE_RESUMING],
];

const EFFECT_BY_ARC = new Map<number, StreamEffect>(
  ARC_STREAM_EFFECTS.map(([from, to, effect]) => [from * NUM_MIGRATION_STATES + to, effect]),
);

/**
 * What the direct arc `from → to` does to the data stream.
 * @param from - the state the arc leaves.
 * @param to - the state the arc enters.
 * @returns the effect from {@link ARC_STREAM_EFFECTS}, or `'none'` for every other
 *   pair (including pairs that are not a direct arc at all); never throws.
 */
export function arcStreamEffect(from: MigrationState, to: MigrationState): StreamEffect {
  return EFFECT_BY_ARC.get(from * NUM_MIGRATION_STATES + to) ?? StreamEffect.NONE;
}

// ------------------------------------------------------------ classification

/**
 * Whether `s` is in the saving group (PRE_COPY, PRE_COPY_P2P, STOP_COPY), whose
 * states share one saving stream and are never passed *through* on a path.
 * @param s - a state (raw numbers accepted).
 * @returns `true` for the three saving states.
 */
export function isSavingState(s: number): boolean {
  return s === PRE_COPY || s === PRE_COPY_P2P || s === STOP_COPY;
}

/**
 * Whether the device operates in `s` (may DMA, raise interrupts, change state):
 * RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P.
 * @param s - a state (raw numbers accepted).
 * @returns `true` for the four operating states.
 */
export function isRunningState(s: number): boolean {
  return s === RUNNING || s === RUNNING_P2P || s === PRE_COPY || s === PRE_COPY_P2P;
}

/**
 * Whether the device is stopped in `s` (no DMA, no interrupts): STOP,
 * STOP_COPY, RESUMING. ERROR is neither running nor stopped: its behaviour is
 * undefined until DEVICE_RESET.
 * @param s - a state (raw numbers accepted).
 * @returns `true` for the three stopped states.
 */
export function isStoppedState(s: number): boolean {
  return s === STOP || s === STOP_COPY || s === RESUMING;
}
