/**
 * Fd accounting across a QEMU's life. A killed QEMU's sockets and pipes close
 * asynchronously in this process (libuv closes handles on a later loop turn),
 * so the count is awaited, not sampled once; what stays open past the deadline
 * is a leak and is named.
 */
import { readdirSync, readlinkSync } from 'node:fs';
import { openFdCount } from '../fd-count.js';

/** The targets of this process's open fds. */
function describeFds(): string {
  const out: string[] = [];
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      out.push(`${name} -> ${readlinkSync(`/proc/self/fd/${name}`)}`);
    } catch {
      // closed while listing
    }
  }
  return out.join(', ');
}

/**
 * Resolves once this process has at most `expected` fds open.
 * @throws Error listing every open fd if that does not happen within `timeoutMs`.
 */
export async function fdsBackTo(expected: number, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (openFdCount() > expected) {
    if (Date.now() > deadline) throw new Error(`fd leak: ${openFdCount()} open, expected at most ${expected}: ${describeFds()}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export { openFdCount };
