/**
 * Shared by the cell tests: a temp run dir, a cell of the fixture parent
 * bound on its own socket, and the process's open fd count.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bindInstanceSocket, InstanceCell, type CellOptions, type InstanceSocket } from '../../src/host/cell.js';
import type { MdevAttr } from '../../src/host/types.js';
import type { IsolationGroupView } from '../../src/protocol/isolation-group.js';

/** URL of the fixture parent module (its compiled .js). */
export const PARENT_URL = new URL('./fixtures/cells/parent.js', import.meta.url).href;

/** Open fds of this process. */
export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Threads of this process. */
export function threads(): number {
  return readdirSync('/proc/self/task').length;
}

/**
 * `count()` once it is at most `target`, or after 2 s whatever it is: an ended worker's thread and the
 * runtime's own helper threads come and go a moment after the event that ends them; a leak stays.
 */
export async function settledCount(count: () => number, target: number): Promise<number> {
  for (let i = 0; i < 100 && count() > target; i++) await new Promise((resolve) => setTimeout(resolve, 20));
  return count();
}

/** The lowest of a few readings of `count()` (a baseline not inflated by a thread about to end). */
export async function baseline(count: () => number): Promise<number> {
  let low = count();
  for (let i = 0; i < 10; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    low = Math.min(low, count());
  }
  return low;
}

/**
 * This process's settled fd count after one cell was started and stopped in `dir` (the first cell loads modules
 * and libuv's thread pool in this thread too): the baseline a suite's leak checks compare with.
 */
export async function warmFdBaseline(dir: string): Promise<number> {
  const warm = await startCell(dir, 'echo');
  await warm.close();
  return baseline(openFds);
}

/** A 0700 temp run dir, removed by `dispose`. */
export function runDir(): { dir: string; dispose(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-cells-'));
  return { dir, dispose: () => rmSync(dir, { recursive: true, force: true }) };
}

let counter = 0;

/** A fresh lower-case UUID for a test instance. */
export function testUuid(): string {
  counter++;
  return `00000000-0000-4000-8000-${counter.toString(16).padStart(12, '0')}`;
}

/** A bound socket and the cell serving it; `close` stops the cell (terminates it) and removes the socket. */
export interface TestCell {
  cell: InstanceCell;
  socket: InstanceSocket;
  close(): Promise<void>;
}

/** Binds `<dir>/<uuid>.sock` and starts a cell of fixture type `type` on it (in the isolation group `group(uuid)` if given). */
export async function startCell(dir: string, type: string, options: CellOptions = {}, attrs: MdevAttr[] = [], group?: (uuid: string) => IsolationGroupView): Promise<TestCell> {
  const uuid = testUuid();
  const socket = bindInstanceSocket(join(dir, `${uuid}.sock`));
  try {
    const spec = { uuid, parent: 'cells', parentModule: PARENT_URL, type, attrs, socket: socket.path, listenFd: socket.fd, ...(group ? { group: group(uuid) } : {}) };
    const cell = await InstanceCell.start(spec, options);
    return {
      cell,
      socket,
      close: async () => {
        await cell.terminate();
        socket.close();
      },
    };
  } catch (error) {
    socket.close();
    throw error;
  }
}

/** `count` bytes of a u32 read as little-endian. */
export function u32(bytes: Uint8Array): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
}
