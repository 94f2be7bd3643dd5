/**
 * Command gating by migration state, every (state, command) pair against an
 * expectation table written here from vfio-user-protocol.md §11 (libvfio-user
 * `should_exec_command`, `cmd_allowed_when_stopped_and_copying`,
 * `is_valid_region_access`, `handle_mig_data_read/write`, efd091b) plus our
 * documented choice for ERROR.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProtocolError } from '../../src/errors.js';
import { Errno } from '../../src/protocol/errno.js';
import { Command, MigrationState } from '../../src/protocol/constants.js';
import * as m from '../../src/migration/index.js';

const isEinval = (e: unknown): boolean => e instanceof ProtocolError && e.errno === Errno.EINVAL;
const refused =
  (cmd: string) =>
  (e: unknown): boolean =>
    isEinval(e) && String(e).includes(`command ${cmd} not allowed in state `);

/** State → commands that pass the gate ('*' = every command). */
const EXPECTED: Record<keyof typeof MigrationState, string> = {
  // our choice: like STOP, plus DEVICE_RESET (the only way out of ERROR)
  ERROR: 'REGION_READ REGION_WRITE DEVICE_FEATURE MIG_DATA_READ DEVICE_RESET',
  STOP: 'REGION_READ REGION_WRITE DEVICE_FEATURE MIG_DATA_READ',
  RUNNING: '*',
  // region access is refused in STOP_COPY too (is_valid_region_access)
  STOP_COPY: 'DEVICE_FEATURE MIG_DATA_READ',
  RESUMING: '*',
  RUNNING_P2P: '*',
  PRE_COPY: '*',
  PRE_COPY_P2P: '*',
};

/** Where the migration-data commands' own state rules accept them. */
const MIG_DATA_READ_OK = new Set(['PRE_COPY', 'PRE_COPY_P2P', 'STOP_COPY']);
const MIG_DATA_WRITE_OK = new Set(['RESUMING']);

const STATES = Object.entries(MigrationState) as Array<[keyof typeof MigrationState, MigrationState]>;
const COMMANDS = Object.entries(Command) as Array<[keyof typeof Command, Command]>;

describe('isCommandAllowed / checkCommandAllowed: every (state, command) pair', () => {
  for (const [stateName, state] of STATES) {
    const allowed = EXPECTED[stateName];
    for (const [cmdName, cmd] of COMMANDS) {
      const want = allowed === '*' || allowed.split(' ').includes(cmdName);
      it(`${stateName} × ${cmdName}: ${want ? 'allowed' : 'EINVAL'}`, () => {
        assert.equal(m.isCommandAllowed(state, cmd), want);
        if (want) {
          assert.doesNotThrow(() => m.checkCommandAllowed(state, cmd));
        } else {
          assert.throws(
            () => m.checkCommandAllowed(state, cmd),
            (e: unknown) => isEinval(e) && String(e).includes(`command ${cmdName} not allowed in state ${stateName} (`),
          );
        }
      });
    }
  }
});

describe('gating of raw command numbers', () => {
  it('unknown numbers are refused in gated states and left to dispatch in ungated ones', () => {
    for (const raw of [0, 19, 0xffff]) {
      for (const [stateName, state] of STATES) {
        assert.equal(m.isCommandAllowed(state, raw), EXPECTED[stateName] === '*', `${stateName} × ${raw}`);
      }
    }
    assert.throws(() => m.checkCommandAllowed(MigrationState.STOP, 19), refused('UNKNOWN(19)'));
  });
});

describe('COMMAND_GATES table', () => {
  it('has one row per state, each with a rule', () => {
    for (const [stateName, state] of STATES) {
      const gate = m.COMMAND_GATES[state];
      assert.ok(gate.rule.includes(stateName), stateName);
      assert.equal(gate.allowed === 'any', EXPECTED[stateName] === '*');
    }
    assert.equal(Object.keys(m.COMMAND_GATES).length, 8);
  });
});

describe('migration-data state rules', () => {
  for (const [stateName, state] of STATES) {
    const readOk = MIG_DATA_READ_OK.has(stateName);
    it(`MIG_DATA_READ in ${stateName}: ${readOk ? 'ok' : 'EINVAL'}`, () => {
      if (readOk) assert.doesNotThrow(() => m.checkMigDataRead(state));
      else assert.throws(() => m.checkMigDataRead(state), refused('MIG_DATA_READ'));
    });
    const writeOk = MIG_DATA_WRITE_OK.has(stateName);
    it(`MIG_DATA_WRITE in ${stateName}: ${writeOk ? 'ok' : 'EINVAL'}`, () => {
      if (writeOk) assert.doesNotThrow(() => m.checkMigDataWrite(state));
      else assert.throws(() => m.checkMigDataWrite(state), refused('MIG_DATA_WRITE'));
    });
  }

  it('a migration-data command is executed only where both the gate and its state rule pass', () => {
    const runs = (cmd: Command, states: readonly MigrationState[]): string[] =>
      STATES.filter(([, s]) => m.isCommandAllowed(s, cmd) && states.includes(s)).map(([n]) => n);
    const reads = runs(Command.MIG_DATA_READ, m.MIG_DATA_READ_STATES);
    const writes = runs(Command.MIG_DATA_WRITE, m.MIG_DATA_WRITE_STATES);
    assert.deepEqual(reads.sort(), ['PRE_COPY', 'PRE_COPY_P2P', 'STOP_COPY']);
    assert.deepEqual(writes, ['RESUMING']);
  });
});
