/**
 * `vfio-user migrate-resolve --to tcp://HOST:PORT --id ID`: the operator's
 * answer for a migration whose source was left held (`sourceRecovery: held`,
 * the commit's reply lost and the receiver unreachable while the sender
 * asked). It asks the receiver how migration ID ended — the same `outcome`
 * request the sender makes (docs/protocol-extensions.md §7.1) — and says what
 * to do with the source. A migration still in progress there is abandoned by
 * the question, so the answer is final.
 */
import { RemoteDestination } from '../../orchestrator/remote.js';
import type { LedgerEntry } from '../../orchestrator/ledger.js';
import { loadTlsCredentials } from '../../orchestrator/channel-tls.js';
import { CliError, parseTimeout, stdio, toJson, type GlobalOptions, type Output } from '../common.js';

/** Options of `migrate-resolve`. */
export interface MigrateResolveOptions {
  to?: string;
  id?: string;
  json?: boolean;
  /** A QEMU tls-creds-x509 directory (the receiver listens with TLS). */
  tlsCreds?: string;
}

/** What the source's owner must do for each outcome. */
export function sourceAction(outcome: LedgerEntry['outcome']): string {
  switch (outcome) {
    case 'committed':
      return 'the destination runs the device: stop the source for good (never resume it)';
    case 'abandoned':
      return 'the destination did not commit and was reset: resume the source';
    default:
      return 'this receiver has no record of the migration (never seen, or the receiver restarted): the outcome is unknown; keep the source held';
  }
}

/**
 * Runs `migrate-resolve`.
 * @throws {CliError} for missing options, an unreachable receiver (ECONNREFUSED, ETIMEDOUT…)
 *   or an unknown outcome (after printing it): exit status 1, the source stays held.
 */
export async function runMigrateResolve(options: MigrateResolveOptions = {}, global: GlobalOptions = {}, out: Output = stdio): Promise<void> {
  if (options.to === undefined || options.id === undefined) throw new CliError('migrate-resolve: --to tcp://HOST:PORT and --id ID are required');
  let entry: LedgerEntry;
  try {
    const tls = options.tlsCreds === undefined ? undefined : loadTlsCredentials(options.tlsCreds, 'client');
    entry = await RemoteDestination.queryOutcome(options.to, options.id, parseTimeout(global.timeout), tls);
  } catch (error) {
    throw new CliError(`migrate-resolve: ${options.to}: ${(error as Error).message}; the outcome is unknown, keep the source held`, { cause: error });
  }
  const action = sourceAction(entry.outcome);
  if (options.json) out.line(toJson({ ...entry, action }));
  else out.line(`${entry.outcome} migration ${entry.migrationId} (receiver phase ${entry.phase}${entry.reason ? `: ${entry.reason}` : ''}): ${action}`);
  if (entry.outcome !== 'committed' && entry.outcome !== 'abandoned') throw new CliError(`migrate-resolve: migration ${entry.migrationId}: outcome ${entry.outcome}`);
}
