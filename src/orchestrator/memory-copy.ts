/**
 * The guest-memory copy of a migration: all of the source's memory, or the
 * pages it dirtied, from the source's mapping to a {@link MemorySink} (the
 * destination's memory, or a channel to it), chunk by chunk. All-zero pages
 * are not sent: the sink gets a zero marker for them (QEMU's "zero page"),
 * which the destination applies by zero-filling where its memory is not
 * already zero. Zero detection and copies are whole-buffer operations
 * (`Buffer.compare` → memcmp, `TypedArray.slice` → memcpy): no per-byte
 * JavaScript on the path.
 */
import { GUEST_PAGE_SIZE, type GuestMemory } from '../client/guest-memory.js';
import { InvalidArgumentError } from '../errors.js';
import { Errno } from '../protocol/errno.js';

/** Guest memory is copied in chunks of this size (also the granularity of limit checks and progress). */
export const COPY_CHUNK = 1 << 20;

/** Takes guest memory at an address: the destination's memory, or a channel to it. */
export interface MemorySink {
  /** `data` at `gpa`: a copy the sink may keep, or (when {@link copies}) a view of the source valid only until the call returns. */
  write(gpa: bigint, data: Uint8Array): void | Promise<void>;
  /** `[gpa, gpa + length)` is all zero on the source. */
  zero(gpa: bigint, length: number): void | Promise<void>;
  /** `write` copies `data` before it returns (so no copy of the source is made for it). */
  readonly copies: boolean;
}

/** Paces transfers (a bandwidth cap); `consume` resolves when the bytes just moved are within the cap. */
export interface Pacer {
  consume(bytes: number): Promise<void>;
}

/** What a copy reports and obeys, chunk by chunk. */
export interface CopyControl {
  pacer?: Pacer | undefined;
  /** Called before each chunk with the guest bytes of this copy still to move; throws to stop the copy (a limit expired). */
  check?(leftBytes: number): void;
  /** Called after each chunk: guest bytes moved (zero pages included) and, of those, bytes sent as zero markers. */
  moved?(bytes: number, zeroBytes: number): void;
  /** Awaits what the sink (or the source) has not done yet, or throws first when a limit trips (`Limits.race`). */
  race?<T>(work: Promise<T>): Promise<T>;
}

/** What a copy moved: guest bytes (zero pages included) and, of those, bytes sent as zero markers. */
export interface CopyResult {
  bytes: number;
  zeroBytes: number;
}

const ZERO = Buffer.alloc(COPY_CHUNK);

/** Whether `b[at, at + n)` (n ≤ COPY_CHUNK) is all zero (memcmp against a zero buffer). */
function zeroAt(b: Buffer, at: number, n: number): boolean {
  return b.compare(ZERO, 0, n, at, at + n) === 0;
}

/** Whether all of `data` is zero. */
export function isAllZero(data: Uint8Array): boolean {
  const b = Buffer.from(data.buffer, data.byteOffset, data.length);
  for (let at = 0; at < b.length; at += COPY_CHUNK) if (!zeroAt(b, at, Math.min(COPY_CHUNK, b.length - at))) return false;
  return true;
}

/**
 * `n` bytes of `from` at `gpa` (n ≤ COPY_CHUNK) as a Buffer: a view of the
 * mapping, or a copy when the range crosses one of its mapping windows.
 */
function sourceBytes(from: GuestMemory, gpa: number, n: number): { bytes: Buffer; live: boolean } {
  let v: Uint8Array;
  let live = true;
  try {
    v = from.view(BigInt(gpa), n);
  } catch (error) {
    if (!(error instanceof InvalidArgumentError) || (error as { errno?: number }).errno === Errno.EFAULT) throw error; // EFAULT: outside the memory
    v = from.read(BigInt(gpa), n);
    live = false;
  }
  return { bytes: Buffer.from(v.buffer, v.byteOffset, v.length), live };
}

/** `b[start, end)`: a copy when `copy` (a live view of the source would change under a sink that keeps it), else a view. */
function piece(b: Buffer, start: number, end: number, copy: boolean): Uint8Array {
  const v = b.subarray(start, end);
  return copy ? new Uint8Array(v) : v;
}

/**
 * Moves one chunk: one zero marker when it is all zero; else runs of
 * non-zero pages as data (copied unless the sink copies) and runs of zero pages as markers.
 * @returns the bytes sent as zero markers.
 */
async function copyChunk(from: GuestMemory, to: MemorySink, gpa: number, n: number, race: Race): Promise<number> {
  const { bytes, live } = sourceBytes(from, gpa, n);
  if (zeroAt(bytes, 0, n)) {
    const p = to.zero(BigInt(gpa), n);
    if (p) await race(p);
    return n;
  }
  let zero = 0;
  let start = 0;
  let runZero = zeroAt(bytes, 0, Math.min(GUEST_PAGE_SIZE, n));
  for (let at = GUEST_PAGE_SIZE; at <= n; at += GUEST_PAGE_SIZE) {
    const z = at < n ? zeroAt(bytes, at, Math.min(GUEST_PAGE_SIZE, n - at)) : !runZero;
    if (z === runZero) continue;
    const end = Math.min(at, n);
    const p = runZero ? to.zero(BigInt(gpa + start), end - start) : to.write(BigInt(gpa + start), piece(bytes, start, end, live && !to.copies));
    if (p) await race(p);
    if (runZero) zero += end - start;
    start = at;
    runZero = z;
  }
  if (start < n) {
    // a last partial page (memory sizes are page multiples; kept for safety)
    const p = runZero ? to.zero(BigInt(gpa + start), n - start) : to.write(BigInt(gpa + start), piece(bytes, start, n, live && !to.copies));
    if (p) await race(p);
    if (runZero) zero += n - start;
  }
  return zero;
}

/** Which `Meter`-like object a copy charges its time to. */
export interface TimeMeter {
  add(bytes: number, ms: number): void;
}

type Race = <T>(work: Promise<T>) => Promise<T>;
const awaitAll: Race = (work) => work;
const now = (): number => performance.now();
const yieldToLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Moves `[gpa, gpa + length)` chunk by chunk under `control`. */
async function copyRange(from: GuestMemory, to: MemorySink, gpa: number, length: number, meter: TimeMeter, control: CopyControl, left: number): Promise<CopyResult> {
  let zeroBytes = 0;
  for (let done = 0; done < length; done += COPY_CHUNK) {
    const n = Math.min(COPY_CHUNK, length - done);
    control.check?.(left - done);
    const t = now();
    const z = await copyChunk(from, to, gpa + done, n, control.race?.bind(control) ?? awaitAll);
    meter.add(n, now() - t);
    zeroBytes += z;
    control.moved?.(n, z);
    if (control.pacer) await control.pacer.consume(n - z);
  }
  return { bytes: length, zeroBytes };
}

/** Copies all of `from` into `to`, yielding to the event loop between chunks. */
export async function copyAllMemory(from: GuestMemory, to: MemorySink, meter: TimeMeter, control: CopyControl = {}): Promise<CopyResult> {
  const size = Number(from.size);
  let zeroBytes = 0;
  for (let gpa = 0; gpa < size; gpa += COPY_CHUNK) {
    const r = await copyRange(from, to, gpa, Math.min(COPY_CHUNK, size - gpa), meter, control, size - gpa);
    zeroBytes += r.zeroBytes;
    await yieldToLoop();
  }
  return { bytes: size, zeroBytes };
}

/** Copies the given 4 KiB pages (sorted, unique), coalescing runs. */
export async function copyPages(from: GuestMemory, to: MemorySink, pages: readonly number[], meter: TimeMeter, control: CopyControl = {}): Promise<CopyResult> {
  let bytes = 0;
  let zeroBytes = 0;
  const total = pages.length * GUEST_PAGE_SIZE;
  for (let i = 0; i < pages.length; ) {
    let j = i + 1;
    while (j < pages.length && pages[j] === (pages[j - 1] as number) + 1) j++;
    const length = (j - i) * GUEST_PAGE_SIZE;
    const r = await copyRange(from, to, (pages[i] as number) * GUEST_PAGE_SIZE, length, meter, control, total - bytes);
    bytes += length;
    zeroBytes += r.zeroBytes;
    i = j;
  }
  return { bytes, zeroBytes };
}

/**
 * Zero-fills `[gpa, gpa + length)` of `memory` where it is not already zero
 * (a destination's memory starts zeroed: reading it is cheaper than writing it),
 * marking the pages it wrote dirty.
 * @returns the bytes it had to write.
 * @throws {InvalidArgumentError} EFAULT for a range outside the memory.
 */
export function zeroFill(memory: GuestMemory, gpa: bigint, length: number): number {
  let written = 0;
  for (let done = 0; done < length; done += COPY_CHUNK) {
    const n = Math.min(COPY_CHUNK, length - done);
    const at = gpa + BigInt(done);
    const { bytes, live } = sourceBytes(memory, Number(at), n);
    if (zeroAt(bytes, 0, n)) continue;
    if (live) {
      bytes.fill(0);
      memory.markDirty(at, n);
    } else memory.write(at, ZERO.subarray(0, n));
    written += n;
  }
  return written;
}

/**
 * Writes `parts` (`length` bytes in all) one after the other at `gpa` of `memory`.
 * @throws {InvalidArgumentError} EFAULT when the range is outside the memory (nothing written).
 */
export function writeParts(memory: GuestMemory, gpa: bigint, parts: readonly Uint8Array[], length: number): void {
  if (gpa < 0n || gpa + BigInt(length) > memory.size) {
    throw new InvalidArgumentError(`guest memory 0x${gpa.toString(16)}+${length} is outside the ${memory.size}-byte memory`, { errno: Errno.EFAULT });
  }
  let at = gpa;
  for (const part of parts) {
    memory.write(at, part);
    at += BigInt(part.length);
  }
}
