/**
 * Deterministic fault points for the migration commands' fault tests:
 * `VFIO_USER_FAULT_PAUSE=<point>` makes `migrate` / `migrate-listen` stop at
 * that point, print `fault-pause <point> pid <pid> [migration <id>]` on stderr and wait until
 * the process gets a signal (then go on, so the signal's handling is what is
 * tested), instead of killing at a random time. Points: `sender:warm-up`
 * (before the migration starts), `sender:precopy` (after the first full copy
 * of guest memory), `sender:commit` (the destination runs, the commit not yet
 * sent), `receiver:commit` (the commit request arrived, not yet decided),
 * `receiver:committed` (committed, not yet answered). Unset: no effect.
 */

/** The fault points. */
export const FAULT_POINTS = ['sender:warm-up', 'sender:precopy', 'sender:commit', 'receiver:commit', 'receiver:committed'] as const;
export type FaultPoint = (typeof FAULT_POINTS)[number];

/** Whether `VFIO_USER_FAULT_PAUSE` names `point`. */
export function faultArmed(point: FaultPoint): boolean {
  return process.env.VFIO_USER_FAULT_PAUSE === point;
}

/**
 * Pauses at `point` when armed, until `released` settles (the command's signal
 * handling resolves it); resolves at once otherwise.
 */
export async function faultPause(point: FaultPoint, released: Promise<unknown>, migrationId?: string): Promise<void> {
  if (!faultArmed(point)) return;
  process.stderr.write(`fault-pause ${point} pid ${process.pid}${migrationId ? ` migration ${migrationId}` : ''}\n`);
  await released.catch(() => undefined);
}
