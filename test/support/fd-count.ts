/**
 * Fd-leak checks for tests that create or pass file descriptors.
 */
import assert from 'node:assert/strict';
import { readdirSync, readlinkSync } from 'node:fs';

/** The fds this process has open (the directory handle used to list them excluded). */
function openFds(): Map<number, string> {
  const fds = new Map<number, string>();
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      fds.set(Number(name), readlinkSync(`/proc/self/fd/${name}`));
    } catch {
      // The fd readdirSync itself used, closed by now.
    }
  }
  return fds;
}

/** How many fds this process has open. */
export function openFdCount(): number {
  return openFds().size;
}

/**
 * Runs `fn` and fails if it left more fds open than it found (reporting
 * what the new ones point to). Fds that `fn` closed are fine.
 */
export async function assertNoFdLeak(fn: () => unknown): Promise<void> {
  const before = openFds();
  await fn();
  const after = openFds();
  const leaked = [...after].filter(([fd, target]) => before.get(fd) !== target);
  assert.ok(
    after.size <= before.size && leaked.length === 0,
    `fd leak: ${before.size} open before, ${after.size} after; new: ` +
      leaked.map(([fd, target]) => `${fd} -> ${target}`).join(', '),
  );
}
