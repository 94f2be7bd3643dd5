/**
 * Command gating by migration state: which vfio-user commands a server
 * executes while its device is in a given migration state, as libvfio-user
 * (`lib/libvfio-user.c:should_exec_command`, `cmd_allowed_when_stopped_and_copying`,
 * `is_valid_region_access`; `lib/migration.c:handle_mig_data_read/write`, efd091b) does.
 *
 * Two layers, both pure:
 * - {@link COMMAND_GATES}: state → commands that pass the gate, checked before a
 *   command's handler runs ({@link isCommandAllowed}, {@link checkCommandAllowed});
 * - the migration-data state rules, checked by the MIG_DATA_READ / MIG_DATA_WRITE
 *   handlers ({@link checkMigDataRead}, {@link checkMigDataWrite}).
 *
 * A command that passes the gate may still be refused by its handler for other reasons.
 */
import { ProtocolError } from '../errors.js';
import { Command, MigrationState, commandName } from '../protocol/constants.js';
import { stateName } from './state-machine.js';

/** One row of {@link COMMAND_GATES}. */
export interface CommandGate {
  /** `'any'` (not gated) or the only commands that pass. */
  readonly allowed: 'any' | readonly Command[];
  /** Why, in one sentence (for logs and docs). */
  readonly rule: string;
}

/** What passes in STOP: libvfio-user's `cmd_allowed_when_stopped_and_copying`. */
const STOPPED_COMMANDS: readonly Command[] = [
  Command.REGION_READ,
  Command.REGION_WRITE,
  Command.DEVICE_FEATURE,
  Command.MIG_DATA_READ,
];

/**
 * The gating rules, one row per state.
 *
 * - STOP: only region access, DEVICE_FEATURE and MIG_DATA_READ (which its own
 *   state rule then refuses). DMA_MAP/UNMAP, the GET_INFO family, SET_IRQS,
 *   DEVICE_RESET and MIG_DATA_WRITE are refused.
 * - STOP_COPY: as STOP, but region access is refused too (libvfio-user refuses it in
 *   `is_valid_region_access`, after its bounds checks; the errno is EINVAL either way).
 * - ERROR: our choice, since libvfio-user never enters ERROR. The device is not
 *   operating, so it is gated like STOP, plus DEVICE_RESET, the only way out of ERROR
 *   (the kernel: "only VFIO_DEVICE_RESET leaves it, and it lands in RUNNING").
 * - RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P, RESUMING: not gated.
 */
export const COMMAND_GATES: Readonly<Record<MigrationState, CommandGate>> = {
  [MigrationState.ERROR]: {
    allowed: [...STOPPED_COMMANDS, Command.DEVICE_RESET],
    rule: 'in ERROR only region access, DEVICE_FEATURE, MIG_DATA_READ and DEVICE_RESET pass',
  },
  [MigrationState.STOP]: {
    allowed: STOPPED_COMMANDS,
    rule: 'in STOP only region access, DEVICE_FEATURE and MIG_DATA_READ pass',
  },
  [MigrationState.RUNNING]: { allowed: 'any', rule: 'RUNNING is not gated' },
  [MigrationState.STOP_COPY]: {
    allowed: [Command.DEVICE_FEATURE, Command.MIG_DATA_READ],
    rule: 'in STOP_COPY only DEVICE_FEATURE and MIG_DATA_READ pass',
  },
  [MigrationState.RESUMING]: { allowed: 'any', rule: 'RESUMING is not gated' },
  [MigrationState.RUNNING_P2P]: { allowed: 'any', rule: 'RUNNING_P2P is not gated' },
  [MigrationState.PRE_COPY]: { allowed: 'any', rule: 'PRE_COPY is not gated' },
  [MigrationState.PRE_COPY_P2P]: { allowed: 'any', rule: 'PRE_COPY_P2P is not gated' },
};

/**
 * Whether a server executes `cmd` while its device is in `state`.
 * @param state - the device's migration state.
 * @param cmd - a command number (raw numbers accepted; unknown ones pass the
 *   gate in ungated states and are refused in gated ones).
 * @returns `true` when the command passes {@link COMMAND_GATES}.
 */
export function isCommandAllowed(state: MigrationState, cmd: number): boolean {
  const gate = COMMAND_GATES[state];
  if (gate === undefined) return false;
  return gate.allowed === 'any' || (gate.allowed as readonly number[]).includes(cmd);
}

/**
 * Throwing form of {@link isCommandAllowed}, for dispatch before a handler runs.
 * @param state - the device's migration state.
 * @param cmd - a command number.
 * @throws {ProtocolError} EINVAL "command X not allowed in state Y (rule)".
 */
export function checkCommandAllowed(state: MigrationState, cmd: number): void {
  if (isCommandAllowed(state, cmd)) return;
  const rule = COMMAND_GATES[state]?.rule ?? 'unknown migration state';
  throw new ProtocolError(`command ${commandName(cmd)} not allowed in state ${stateName(state)} (${rule})`);
}

/**
 * States in which MIG_DATA_READ may read the saving stream: the saving group.
 * libvfio-user accepts PRE_COPY and STOP_COPY only, since it has no P2P states.
 */
export const MIG_DATA_READ_STATES: readonly MigrationState[] = [
  MigrationState.STOP_COPY,
  MigrationState.PRE_COPY,
  MigrationState.PRE_COPY_P2P,
];

/** States in which MIG_DATA_WRITE may feed the resuming stream: RESUMING only. */
export const MIG_DATA_WRITE_STATES: readonly MigrationState[] = [MigrationState.RESUMING];

/**
 * The MIG_DATA_READ (17) state rule: reading needs an open saving stream.
 * @param state - the device's migration state.
 * @throws {ProtocolError} EINVAL unless `state` is PRE_COPY, PRE_COPY_P2P or STOP_COPY.
 */
export function checkMigDataRead(state: MigrationState): void {
  if (!MIG_DATA_READ_STATES.includes(state)) {
    throw new ProtocolError(
      `command MIG_DATA_READ not allowed in state ${stateName(state)} (needs PRE_COPY, PRE_COPY_P2P or STOP_COPY)`,
    );
  }
}

/**
 * The MIG_DATA_WRITE (18) state rule: writing needs an open resuming stream.
 * @param state - the device's migration state.
 * @throws {ProtocolError} EINVAL unless `state` is RESUMING.
 */
export function checkMigDataWrite(state: MigrationState): void {
  if (!MIG_DATA_WRITE_STATES.includes(state)) {
    throw new ProtocolError(`command MIG_DATA_WRITE not allowed in state ${stateName(state)} (needs RESUMING)`);
  }
}
