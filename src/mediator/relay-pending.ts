/**
 * Commands the mediator sent to one side and whose replies it waits for,
 * keyed by the msg_id it assigned on that side. An entry is either a
 * *forwarded* command (the reply goes back to whoever sent it, under their
 * own id) or one of the mediator's *own* (a plugin's upstreamRequest /
 * clientRequest: the reply settles a promise). An entry that timed out stays
 * (marked expired) until its late reply arrives, so its id is never reused
 * for a request that reply could be mistaken for.
 */
import type { MediatedMessage } from './types.js';
import { IdAllocator } from './ids.js';

/** Which of a side's sockets a message travelled on. */
export type Channel = 'main' | 'twin';

/** One command waiting for its reply. */
export interface PendingEntry {
  readonly kind: 'forwarded' | 'own';
  /** For a forwarded command: the sender's own msg_id (the reply goes back under it). */
  readonly origId: number;
  /** For a forwarded command: the channel it came on (its reply goes back there). */
  readonly channel: Channel;
  /**
   * The command as forwarded or sent: header with the sender's id; the payload only when a plugin has a
   * reply hook for that direction (else empty: nothing large is retained); no fds (closed once sent).
   */
  readonly request: MediatedMessage;
  /** `performance.now()` after which it times out (Infinity: never). */
  readonly deadline: number;
  expired: boolean;
  resolve?: (reply: MediatedMessage) => void;
  reject?: (error: Error) => void;
}

/** The commands in flight towards one side. */
export class PendingTable {
  readonly map = new Map<number, PendingEntry>();
  readonly #ids = new IdAllocator();
  /** Forwarded commands in flight (not expired): what the pending-requests bound counts. */
  active = 0;
  /** Entries that timed out and still reserve their id. */
  expiredCount = 0;

  /** A fresh id not in flight, for a command that expects no reply (not registered). */
  freeId(): number {
    return this.#ids.next(this.map);
  }

  /** Registers `entry` under a fresh id and returns the id. */
  add(entry: PendingEntry): number {
    const id = this.#ids.next(this.map);
    this.map.set(id, entry);
    if (entry.kind === 'forwarded') this.active++;
    return id;
  }

  /** Removes and returns the entry for `id` (a reply arrived), if any. */
  take(id: number): PendingEntry | undefined {
    const e = this.map.get(id);
    if (e === undefined) return undefined;
    this.map.delete(id);
    if (e.expired) this.expiredCount--;
    else if (e.kind === 'forwarded') this.active--;
    return e;
  }

  /** Marks `e` timed out: it no longer counts as active but keeps its id. */
  expire(e: PendingEntry): void {
    if (e.expired) return;
    e.expired = true;
    this.expiredCount++;
    if (e.kind === 'forwarded') this.active--;
  }

  /** Removes every entry (the session ended) and returns them. */
  drain(): PendingEntry[] {
    const all = [...this.map.values()];
    this.map.clear();
    this.active = 0;
    this.expiredCount = 0;
    return all;
  }
}
