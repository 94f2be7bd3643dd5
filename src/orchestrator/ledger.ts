/**
 * The receiver's record of how each migration ended, by migration id: what a
 * sender that lost the link in the commit round trip asks for (`outcome`
 * request, docs/protocol-extensions.md §7.1), and what `vfio-user
 * migrate-resolve` asks an operator's behalf. Kept for the receiver process's
 * lifetime, bounded to the most recent {@link LEDGER_SIZE} migrations.
 */
import { InvalidArgumentError } from '../errors.js';

/** Where a migration is, on either side. `connect`: before the hello was answered. */
export type ChannelPhase = 'connect' | 'precopy' | 'switchover' | 'commit' | 'done';

/** What the receiver knows of a migration id. `unknown`: never seen (or forgotten: a restarted receiver). */
export type LedgerOutcome = 'in-progress' | 'committed' | 'abandoned' | 'unknown';

/** One migration's record. */
export interface LedgerEntry {
  migrationId: string;
  outcome: LedgerOutcome;
  /** The receiver's phase when the outcome was decided (or now, in progress). */
  phase: ChannelPhase;
  reason?: string;
}

/** Migrations remembered (the oldest decided one is forgotten first). */
export const LEDGER_SIZE = 1024;

const ID = /^[A-Za-z0-9._:-]{1,64}$/;

/**
 * Checks a migration id: 1..64 of `A-Z a-z 0-9 . _ : -`.
 * @throws {InvalidArgumentError} EINVAL otherwise.
 */
export function checkMigrationId(id: unknown): string {
  if (typeof id !== 'string' || !ID.test(id)) throw new InvalidArgumentError(`'${String(id)}' is not a migration id (1..64 of A-Z a-z 0-9 . _ : -)`);
  return id;
}

/** The receiver's outcome record. */
export class MigrationLedger {
  readonly #entries = new Map<string, LedgerEntry>();

  /** Records (or updates) a migration. A decided outcome (committed/abandoned) is final. */
  record(entry: LedgerEntry): void {
    const known = this.#entries.get(entry.migrationId);
    if (known && (known.outcome === 'committed' || known.outcome === 'abandoned')) return;
    this.#entries.delete(entry.migrationId);
    this.#entries.set(entry.migrationId, { ...entry });
    while (this.#entries.size > LEDGER_SIZE) {
      const oldest = this.#entries.keys().next().value as string;
      this.#entries.delete(oldest);
    }
  }

  /** What is known of `migrationId`. */
  lookup(migrationId: string): LedgerEntry {
    const e = this.#entries.get(migrationId);
    return e ? { ...e } : { migrationId, outcome: 'unknown', phase: 'connect' };
  }
}
