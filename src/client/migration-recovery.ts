/**
 * Recovery of a device that a lost client left mid-migration. The server keeps
 * the migration state across a disconnect (as libvfio-user; since its #844 the
 * state also survives DEVICE_RESET, which only leaves ERROR), so a new client
 * may find the device in any state. {@link recoverMigration} brings it back to
 * RUNNING by the route docs/migration-faults.md documents.
 */
import { ProtocolError, RemoteError } from '../errors.js';
import { MigrationState } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { stateName } from '../migration/state-machine.js';
import type { VfioUserClient } from './client.js';

/** A request {@link recoverMigration} sent: DEVICE_RESET or MIG_DEVICE_STATE SET RUNNING. */
export type RecoveryStep = 'DEVICE_RESET' | 'SET RUNNING';

/** What {@link recoverMigration} found and did. */
export interface RecoveryResult {
  /** The MigrationState the device was in when recovery started. */
  from: number;
  /** The MigrationState it is in now: always RUNNING. */
  to: number;
  /**
   * Every request sent, in order, a failed one included (from RESUMING the
   * `SET RUNNING` fails into ERROR, which the second `DEVICE_RESET` clears).
   * Empty when the device was already RUNNING.
   */
  steps: RecoveryStep[];
}

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = MigrationState;

/** The states a SET RUNNING leaves with the device's state kept (a source resumes where it was). */
const SOURCE_STATES: ReadonlySet<number> = new Set([PRE_COPY, PRE_COPY_P2P, RUNNING_P2P, STOP, STOP_COPY]);

/**
 * Brings the device a (new) client finds in any migration state back to
 * RUNNING, by the documented route (docs/migration-faults.md):
 *
 * - RUNNING: nothing.
 * - PRE_COPY, PRE_COPY_P2P, RUNNING_P2P, STOP, STOP_COPY: `SET RUNNING`. The
 *   saving stream is dropped; the device's state is kept, so a source that
 *   was stopped resumes where it was.
 * - RESUMING: a partial stream can never complete, and only a reset abandons
 *   a resuming stream: `DEVICE_RESET` (enough on a server where reset leaves
 *   RESUMING), then, if still not RUNNING, `SET RUNNING`, which fails on the
 *   incomplete stream into ERROR, then `DEVICE_RESET` again. The device is
 *   reset: it holds what its reset gives, not part of the stream.
 * - ERROR: `DEVICE_RESET`.
 *
 * Never discards a source's state on its own: if the SET RUNNING of a source
 * state fails, the error is thrown and the device stays where the server left
 * it (an intermediate state, or ERROR; calling again then resets it).
 *
 * @returns the state found, RUNNING, and the requests sent.
 * @throws {RemoteError} EINVAL when the device has no migration (the
 *   MIG_DEVICE_STATE GET is refused), or the server's errno when a step fails
 *   and the device cannot be recovered (e.g. a transition hook that fails the
 *   arc to RUNNING; EINVAL from a DEVICE_RESET the server refuses).
 * @throws {ProtocolError} EPROTO when the server reports a state outside the
 *   eight defined ones, or the device is still not RUNNING after the route.
 * @throws {ConnectionClosedError} ENOTCONN when the connection is lost.
 */
export async function recoverMigration(client: VfioUserClient): Promise<RecoveryResult> {
  const from = await client.migrationState();
  const steps: RecoveryStep[] = [];
  const reset = async (): Promise<void> => {
    steps.push('DEVICE_RESET');
    await client.reset();
  };
  const setRunning = async (): Promise<void> => {
    steps.push('SET RUNNING');
    await client.setMigrationState(RUNNING);
  };

  if (from === RUNNING) return { from, to: RUNNING, steps };
  if (SOURCE_STATES.has(from)) {
    await setRunning();
  } else if (from === ERROR) {
    await reset();
  } else if (from === RESUMING) {
    await reset();
    if ((await client.migrationState()) !== RUNNING) {
      try {
        await setRunning();
      } catch (error) {
        // RESUMING → STOP checks the stream, finds it incomplete: the device is in ERROR, which a reset leaves.
        if (!(error instanceof RemoteError) || (await client.migrationState()) !== ERROR) throw error;
        await reset();
      }
    }
  } else {
    throw new ProtocolError(`recoverMigration: the device reports migration state ${from}, not a defined state`, { errno: Errno.EPROTO });
  }

  const to = await client.migrationState();
  if (to !== RUNNING) {
    throw new ProtocolError(`recoverMigration: the device went from ${stateName(from)} to ${stateName(to)}, not RUNNING, after ${steps.join(', ')}`, {
      errno: Errno.EPROTO,
    });
  }
  return { from, to, steps };
}
