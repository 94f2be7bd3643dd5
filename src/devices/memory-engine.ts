/**
 * The memory device's command engine: FILL and CHECKSUM over BAR0, started by
 * a COMMAND write that returns at once, run in bounded slices — one per
 * event-loop turn (`setImmediate`) — and signalled by STATUS and an interrupt
 * when they end. A slice works in 64 KiB chunks and stops after
 * {@link MEMORY_SLICE_BUDGET_MS} or at {@link MEMORY_SLICE_BYTES}, whichever
 * comes first, so even over a 1 GiB BAR0 a command never holds the server for
 * more than a few ms at a time (the first touch of a memfd page costs far
 * more than filling or hashing it, hence a time budget as well as the byte
 * cap): other requests — register reads, migration, the next client — are
 * served between slices. The byte cap also makes a command over `n` MiB take
 * at least `n` event-loop turns, whatever the machine.
 *
 * Rules (the register map is in `memory.ts`):
 * - a command written while one runs is refused: ERROR is set, the running
 *   command goes on and its completion keeps that ERROR bit next to DONE;
 * - a command that is refused outright (FILL range outside BAR0, unknown
 *   value) ends at once with ERROR;
 * - every command that ends (DONE or ERROR, refusals outright included) sets
 *   STATUS.IRQ and raises interrupt 0 if IRQ_ENABLE bit 0 is set;
 * - the FILL registers ignore writes while a command runs;
 * - stopped (migration STOP, STOP_COPY, RESUMING, ERROR) the engine does no
 *   slice: the command waits, with its progress, and goes on when the device
 *   operates again — here or, migrated, on the destination;
 * - reset cancels the running command between two slices and clears the state.
 */
import type { VfioUserDevice } from '../device/device.js';
import { FNV1A_OFFSET_BASIS, fnv1aUpdate } from './fnv1a.js';
import { RunState } from './migration-support.js';

/** Values of the COMMAND register. */
export const MemoryCommand = { FILL: 1, CHECKSUM: 2 } as const;
/** Bits of the STATUS register. */
export const MemoryStatus = { DONE: 1 << 0, ERROR: 1 << 1, BUSY: 1 << 2, IRQ: 1 << 3 } as const;
/** Bits of the IRQ_ENABLE register. */
export const MemoryIrqEnable = { COMPLETION: 1 << 0 } as const;
/** Most bytes a command fills or hashes per event-loop turn. */
export const MEMORY_SLICE_BYTES = 1 << 20;
/** A slice stops taking chunks once it has run this long. */
export const MEMORY_SLICE_BUDGET_MS = 2;
/** Granularity of a slice: the budget is checked between chunks. */
const CHUNK = 64 << 10;

/** The control block's state, as registers show it and migration carries it. */
export interface MemoryControl {
  /** FILL_PATTERN, FILL_OFFSET, FILL_LENGTH. */
  pattern: number;
  offset: number;
  length: number;
  /** DONE, ERROR and IRQ bits (BUSY is `command !== 0`). */
  status: number;
  /** IRQ_ENABLE. */
  irqEnable: number;
  /** CHECKSUM: the result of the last CHECKSUM command that completed (0 after reset). */
  checksum: number;
  /** The running command, 0 when none. */
  command: number;
  /** PROGRESS: bytes the running (or last) command has done. */
  progress: number;
  /** FNV-1a over the bytes hashed so far, while a CHECKSUM runs (0 otherwise). */
  hash: number;
}

/** The state after reset. */
export function idleControl(): MemoryControl {
  return { pattern: 0, offset: 0, length: 0, status: 0, irqEnable: 0, checksum: 0, command: 0, progress: 0, hash: 0 };
}

/** Runs the commands of one memory device. */
export class MemoryEngine {
  readonly control: MemoryControl = idleControl();
  readonly run = new RunState();
  readonly #size: number;
  /** BAR0 and the device, set by {@link attach} once the device exists. */
  #memory: Uint8Array = new Uint8Array(0);
  #device: VfioUserDevice | undefined;
  #slice: NodeJS.Immediate | undefined;
  #idleWaiters: Array<() => void> = [];

  constructor(size: number) {
    this.#size = size;
  }

  attach(device: VfioUserDevice, memory: Uint8Array): void {
    this.#device = device;
    this.#memory = memory;
  }

  get busy(): boolean {
    return this.control.command !== 0;
  }

  /** The STATUS register. */
  status(): number {
    return this.control.status | (this.busy ? MemoryStatus.BUSY : 0);
  }

  /** Resolves once no command runs (a command paused by a stopped migration state waits for the device to run again or reset). */
  idle(): Promise<void> {
    return this.busy ? new Promise((resolve) => this.#idleWaiters.push(resolve)) : Promise.resolve();
  }

  /** A write of `value` to a FILL register: taken only while no command runs. */
  setFill(field: 'pattern' | 'offset' | 'length', value: number): void {
    if (!this.busy) this.control[field] = value >>> 0;
  }

  /** A COMMAND write. */
  command(value: number): void {
    const c = this.control;
    if (this.busy) {
      c.status |= MemoryStatus.ERROR; // refused; the running command is not disturbed
      return;
    }
    c.status &= MemoryStatus.IRQ;
    c.progress = 0;
    const valid = value === MemoryCommand.CHECKSUM || (value === MemoryCommand.FILL && c.offset + c.length <= this.#size);
    if (!valid) return this.#finish(MemoryStatus.ERROR);
    c.command = value;
    c.hash = value === MemoryCommand.CHECKSUM ? FNV1A_OFFSET_BASIS : 0;
    this.#schedule();
  }

  /** A STATUS write: 1 in IRQ clears it (and deasserts INTx); other bits are read-only. */
  clearStatus(bits: number): void {
    if ((bits & MemoryStatus.IRQ) === 0 || (this.control.status & MemoryStatus.IRQ) === 0) return;
    this.control.status &= ~MemoryStatus.IRQ;
    this.#device?.deassertIntx();
  }

  /** Follows the device's migration state: no slice while stopped, resume when it operates again. */
  enter(state: number): void {
    this.run.enter(state);
    if (this.run.stopped) this.#cancelSlice();
    else this.#schedule();
  }

  /** Cancels the running command and clears the control state (the memory stays). */
  reset(): void {
    this.#cancelSlice();
    Object.assign(this.control, idleControl());
    this.#wakeIdle();
  }

  /** Takes a migrated state (validated by the caller); a command in it goes on when the device operates. */
  restore(control: MemoryControl): void {
    this.#cancelSlice();
    Object.assign(this.control, control);
    if (this.busy) this.#schedule();
    else this.#wakeIdle();
  }

  #schedule(): void {
    if (this.#slice || !this.busy || this.run.stopped) return;
    this.#slice = setImmediate(() => this.#step());
  }

  #cancelSlice(): void {
    if (this.#slice) clearImmediate(this.#slice);
    this.#slice = undefined;
  }

  /** One slice of the running command. */
  #step(): void {
    this.#slice = undefined;
    if (!this.busy || this.run.stopped) return;
    if (this.#memory.length !== this.#size) return this.reset(); // the device was disposed: its memory is gone
    const c = this.control;
    const fill = c.command === MemoryCommand.FILL;
    const total = fill ? c.length : this.#size;
    const stop = Math.min(total, c.progress + MEMORY_SLICE_BYTES);
    const deadline = performance.now() + MEMORY_SLICE_BUDGET_MS;
    do {
      const end = Math.min(stop, c.progress + CHUNK);
      if (fill) fillPattern(this.#memory.subarray(c.offset + c.progress, c.offset + end), c.pattern, c.progress);
      else c.hash = fnv1aUpdate(this.#memory.subarray(c.progress, end), c.hash);
      c.progress = end;
    } while (c.progress < stop && performance.now() < deadline);
    if (c.progress === total) this.#finish(MemoryStatus.DONE);
    else this.#schedule();
  }

  /** Ends the command (or a refusal outright) with `outcome`, and interrupts if enabled. */
  #finish(outcome: number): void {
    const c = this.control;
    if (c.command === MemoryCommand.CHECKSUM && outcome === MemoryStatus.DONE) c.checksum = c.hash;
    c.command = 0;
    c.hash = 0;
    c.status = (c.status & (MemoryStatus.ERROR | MemoryStatus.IRQ)) | outcome;
    if ((c.irqEnable & MemoryIrqEnable.COMPLETION) !== 0) {
      c.status |= MemoryStatus.IRQ;
      this.#device?.interrupt(0);
    }
    this.#wakeIdle();
  }

  #wakeIdle(): void {
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const resolve of waiters) resolve();
  }
}

/**
 * Fills `target` with the little-endian bytes of `pattern`, starting at byte
 * `phase % 4` of it (byte `i` of a whole fill is byte `i % 4` of the pattern).
 */
function fillPattern(target: Uint8Array, pattern: number, phase: number): void {
  if (target.length === 0) return;
  const bytes = new Uint8Array(4);
  for (let i = 0; i < 4; i++) bytes[i] = (pattern >>> (8 * ((phase + i) % 4))) & 0xff;
  Buffer.from(target.buffer, target.byteOffset, target.length).fill(bytes);
}
