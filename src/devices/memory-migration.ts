/**
 * Migration of the memory device (v2 with PRE_COPY and P2P). Its state is the
 * BAR2 control block — registers *and* the command in progress — and the
 * BAR0 memory: the client writes BAR0 through its mmap, so the bytes are
 * device state the destination must have.
 *
 * Device type `memory`, state version 2 (version 1 had no command engine:
 * a 32-byte header, refused by the library as older). All fields little-endian.
 *
 * `'full'` record:
 *
 * | off | size | field |
 * |-----|------|-------|
 * | 0   | 8    | BAR0 size (must equal the destination's) |
 * | 8   | 4    | FILL_PATTERN |
 * | 12  | 4    | FILL_OFFSET |
 * | 16  | 4    | FILL_LENGTH |
 * | 20  | 4    | STATUS: DONE, ERROR, BUSY (set iff a command runs), IRQ |
 * | 24  | 4    | memory encoding: 0 IMAGE, 1 PAGES |
 * | 28  | 4    | IRQ_ENABLE |
 * | 32  | 4    | CHECKSUM (result of the last CHECKSUM command) |
 * | 36  | 4    | running command: 0 none, 1 FILL, 2 CHECKSUM |
 * | 40  | 4    | PROGRESS: bytes the running (or last) command has done |
 * | 44  | 4    | FNV-1a of the bytes hashed so far by a running CHECKSUM (0 otherwise) |
 * | 48  | …    | IMAGE: all of BAR0 (`size` bytes); PAGES: a page list |
 *
 * A command running when the device stops is neither finished nor cancelled:
 * it pauses between two slices (no slice runs in STOP, STOP_COPY, RESUMING or
 * ERROR) and the record carries it — command, progress and partial hash; the
 * FILL registers cannot change while it runs, and the bytes it filled so far
 * are in the memory. The destination goes on from there when it runs, and
 * completes it (STATUS, CHECKSUM, interrupt) as the source would have; so does
 * the source if the migration is abandoned and it runs again.
 *
 * Page list (PAGES, and every `'delta'` record):
 *
 * | off | size | field |
 * |-----|------|-------|
 * | 0   | 4    | page size, 4096 |
 * | 4   | 4    | page count `n` |
 * | 8   | n × 4100 | per page, ascending: u32 page index, then its 4096 bytes |
 *
 * Without pre-copy (STOP → STOP_COPY) the stream has one IMAGE record. With
 * pre-copy, entering PRE_COPY sends an IMAGE record (the initial data) and
 * keeps a *shadow* copy of what it sent; each MIG_DATA_READ that finds the
 * stream drained compares BAR0 with the shadow in 64 KiB blocks (then 4 KiB
 * pages inside a block that differs) and sends the changed pages as a
 * `'delta'` record, updating the shadow from the bytes sent (so a write racing
 * the copy shows up in the next delta). Entering STOP_COPY from PRE_COPY sends
 * the registers and the pages changed since the last delta as a PAGES record;
 * the destination refuses a PAGES record unless an IMAGE record came first in
 * the same resuming stream. The client cannot be intercepted when it writes
 * through its mmap, hence the comparison; the shadow costs `size` bytes while
 * a pre-copy is open and the scan reads 2 × `size` bytes.
 */
import { InvalidArgumentError } from '../errors.js';
import type { MigrationDefinition } from '../migration/types.js';
import { MAX_RECORD_PAYLOAD } from '../migration/stream-format.js';
import { MigrationState } from '../protocol/constants.js';
import { WireReader } from '../protocol/wire-reader.js';
import { MemoryCommand, MemoryStatus, MemoryIrqEnable, type MemoryControl, type MemoryEngine } from './memory-engine.js';
import { checkBits, isPreCopy, openState } from './migration-support.js';

/** Device type in the migration stream. */
export const MEMORY_DEVICE_TYPE = 'memory';
/** Version of the state layout. */
export const MEMORY_STATE_VERSION = 2;
/** Bytes of a `'full'` record before the memory. */
export const MEMORY_STATE_HEADER_SIZE = 48;
/** Granularity of pre-copy deltas. */
export const MEMORY_MIGRATION_PAGE_SIZE = 4096;
/** How a `'full'` record carries BAR0. */
export const MemoryEncoding = { IMAGE: 0, PAGES: 1 } as const;
/** One of {@link MemoryEncoding}. */
export type MemoryEncoding = (typeof MemoryEncoding)[keyof typeof MemoryEncoding];

/** Bytes the scan compares at once before looking at single pages. */
const SCAN_BLOCK = 64 * 1024;
const PAGE = MEMORY_MIGRATION_PAGE_SIZE;
const PAGE_ENTRY = 4 + PAGE;
const PAGE_LIST_HEADER = 8;
const STATUS_BITS = MemoryStatus.DONE | MemoryStatus.ERROR | MemoryStatus.BUSY | MemoryStatus.IRQ;
const WHAT = `${MEMORY_DEVICE_TYPE} state v${MEMORY_STATE_VERSION}`;

/** One page of a page list. */
interface PageEntry {
  index: number;
  bytes: Uint8Array;
}

/** The memory device's migration: state layout, pre-copy tracking, quiesce. */
export class MemoryMigration {
  readonly #engine: MemoryEngine;
  /** BAR0, set by {@link attach} once the device exists. */
  #memory: Uint8Array = new Uint8Array(0);
  /** What the destination has of BAR0, while a pre-copy is open. */
  #shadow: Uint8Array | undefined;
  /** The next `save()` is the final record of a pre-copy. */
  #final = false;
  /** An IMAGE record was loaded in this resuming stream. */
  #baseLoaded = false;

  constructor(engine: MemoryEngine) {
    this.#engine = engine;
  }

  /** Gives the migration BAR0 (the device's shared memory, known only once the device is created). */
  attach(memory: Uint8Array): void {
    this.#memory = memory;
  }

  /** The hooks for `DeviceDefinition.migration`. */
  definition(): MigrationDefinition {
    return {
      preCopy: true,
      p2p: true,
      deviceType: MEMORY_DEVICE_TYPE,
      stateVersion: MEMORY_STATE_VERSION,
      save: () => this.save(),
      saveDelta: () => this.saveDelta(),
      load: (kind, payload) => this.load(kind, payload),
      transition: (from, to) => this.transition(from, to),
      stopCopySize: () => this.stopCopySize(),
    };
  }

  transition(from: number, to: number): void {
    if (isPreCopy(from) && to === MigrationState.STOP_COPY) this.#final = true;
    else if (isPreCopy(from) && !isPreCopy(to)) this.#shadow = undefined; // pre-copy abandoned
    if (to === MigrationState.RESUMING) this.#baseLoaded = false;
    this.#engine.enter(to);
  }

  /**
   * The whole state (IMAGE), or after a pre-copy the registers and the pages
   * changed since the last delta (PAGES).
   * @throws {InvalidArgumentError} EINVAL when BAR0 does not fit one stream record (1 GiB).
   */
  save(): Uint8Array {
    if (this.#final && this.#shadow) {
      this.#final = false;
      const out = this.#pageList(MEMORY_STATE_HEADER_SIZE, this.#changedPages());
      this.#header(out, MemoryEncoding.PAGES);
      this.#shadow = undefined;
      return out;
    }
    this.#final = false;
    const size = this.#memory.length;
    if (MEMORY_STATE_HEADER_SIZE + size > MAX_RECORD_PAYLOAD) {
      throw new InvalidArgumentError(`${WHAT}: a ${size}-byte BAR0 does not fit one migration stream record (at most ${MAX_RECORD_PAYLOAD} bytes)`);
    }
    const out = new Uint8Array(MEMORY_STATE_HEADER_SIZE + size);
    this.#header(out, MemoryEncoding.IMAGE);
    out.set(this.#memory, MEMORY_STATE_HEADER_SIZE);
    // The library copies a payload when it queues it, so the image itself can be the shadow.
    this.#shadow = this.#engine.run.preCopy ? out.subarray(MEMORY_STATE_HEADER_SIZE) : undefined;
    return out;
  }

  /** The pages changed since the last save/delta, or undefined when none did (or no pre-copy is open). */
  saveDelta(): Uint8Array | undefined {
    if (!this.#shadow) return undefined;
    const pages = this.#changedPages();
    return pages.length === 0 ? undefined : this.#pageList(0, pages);
  }

  /** The size of the next `save()`: during a pre-copy a scan counts the pages changed so far (the shadow is not touched). */
  stopCopySize(): number {
    if (this.#shadow) return MEMORY_STATE_HEADER_SIZE + PAGE_LIST_HEADER + this.#changedPages().length * PAGE_ENTRY;
    return MEMORY_STATE_HEADER_SIZE + this.#memory.length;
  }

  /**
   * Applies a record; nothing changes unless the whole record is valid.
   * @throws {ProtocolError} EINVAL for a size, value or order the layout does not allow.
   */
  load(kind: 'full' | 'delta', payload: Uint8Array): void {
    if (kind === 'delta') {
      const r = new WireReader(payload, `${WHAT} delta`);
      if (!this.#baseLoaded) throw r.error('a delta before the memory image');
      this.#apply(this.#readPageList(r));
      return;
    }
    const r = openState(WHAT, payload, MEMORY_STATE_HEADER_SIZE, false);
    const size = r.u64('BAR0 size');
    if (size !== BigInt(this.#memory.length)) throw r.error(`BAR0 size ${size}, this device has ${this.#memory.length}`);
    const { control, encoding } = this.#readControl(r);
    if (encoding === MemoryEncoding.IMAGE) {
      if (r.remaining !== this.#memory.length) throw r.error(`memory image of ${r.remaining} bytes, BAR0 has ${this.#memory.length}`);
      this.#memory.set(r.rest());
      this.#baseLoaded = true;
    } else if (encoding === MemoryEncoding.PAGES) {
      if (!this.#baseLoaded) throw r.error('changed pages before the memory image');
      this.#apply(this.#readPageList(r));
    } else {
      throw r.error(`unknown memory encoding ${encoding}`);
    }
    this.#engine.restore(control);
  }

  /** The header after the BAR0 size: the control state, checked for consistency, and the memory encoding. */
  #readControl(r: WireReader): { control: MemoryControl; encoding: number } {
    const pattern = r.u32('FILL_PATTERN');
    const offset = r.u32('FILL_OFFSET');
    const length = r.u32('FILL_LENGTH');
    const status = checkBits(r, 'STATUS', r.u32('STATUS'), STATUS_BITS);
    const encoding = r.u32('memory encoding');
    const irqEnable = checkBits(r, 'IRQ_ENABLE', r.u32('IRQ_ENABLE'), MemoryIrqEnable.COMPLETION);
    const checksum = r.u32('CHECKSUM');
    const command = r.u32('running command');
    const progress = r.u32('PROGRESS');
    const hash = r.u32('partial hash');
    const size = this.#memory.length;
    const busy = (status & MemoryStatus.BUSY) !== 0;
    const total = command === MemoryCommand.FILL ? length : size;
    if (command !== 0 && command !== MemoryCommand.FILL && command !== MemoryCommand.CHECKSUM) throw r.error(`running command ${command} is not 0, FILL or CHECKSUM`);
    if (busy !== (command !== 0)) throw r.error(`STATUS.BUSY ${busy ? 'set' : 'clear'} with running command ${command}`);
    if (busy && (status & MemoryStatus.DONE) !== 0) throw r.error('STATUS has both BUSY and DONE');
    if (command === MemoryCommand.FILL && offset + length > size) throw r.error(`running FILL of [${offset}, +${length}) outside BAR0's ${size} bytes`);
    if (progress > total) throw r.error(`PROGRESS ${progress} beyond the ${total} bytes of ${command === MemoryCommand.FILL ? 'the running FILL' : 'BAR0'}`);
    if (command !== MemoryCommand.CHECKSUM && hash !== 0) throw r.error(`partial hash 0x${hash.toString(16)} without a running CHECKSUM`);
    const control = { pattern, offset, length, status: status & ~MemoryStatus.BUSY, irqEnable, checksum, command, progress, hash };
    return { control, encoding };
  }

  #header(out: Uint8Array, encoding: MemoryEncoding): void {
    const v = new DataView(out.buffer, out.byteOffset, MEMORY_STATE_HEADER_SIZE);
    v.setBigUint64(0, BigInt(this.#memory.length), true);
    const c = this.#engine.control;
    v.setUint32(8, c.pattern, true);
    v.setUint32(12, c.offset, true);
    v.setUint32(16, c.length, true);
    v.setUint32(20, this.#engine.status(), true);
    v.setUint32(24, encoding, true);
    v.setUint32(28, c.irqEnable, true);
    v.setUint32(32, c.checksum, true);
    v.setUint32(36, c.command, true);
    v.setUint32(40, c.progress, true);
    v.setUint32(44, c.hash, true);
  }

  /** Indexes of the pages where BAR0 differs from the shadow. */
  #changedPages(): number[] {
    const shadow = this.#shadow as Uint8Array;
    const live = Buffer.from(this.#memory.buffer, this.#memory.byteOffset, this.#memory.length);
    const seen = Buffer.from(shadow.buffer, shadow.byteOffset, shadow.length);
    const size = live.length;
    const pages: number[] = [];
    for (let at = 0; at < size; at += SCAN_BLOCK) {
      const end = Math.min(size, at + SCAN_BLOCK);
      if (live.compare(seen, at, end, at, end) === 0) continue;
      for (let p = at; p < end; p += PAGE) {
        if (live.compare(seen, p, p + PAGE, p, p + PAGE) !== 0) pages.push(p / PAGE);
      }
    }
    return pages;
  }

  /** A page list of `pages` after `headerSize` bytes; the shadow takes the bytes sent. */
  #pageList(headerSize: number, pages: readonly number[]): Uint8Array {
    const out = new Uint8Array(headerSize + PAGE_LIST_HEADER + pages.length * PAGE_ENTRY);
    const v = new DataView(out.buffer);
    v.setUint32(headerSize, PAGE, true);
    v.setUint32(headerSize + 4, pages.length, true);
    const shadow = this.#shadow as Uint8Array;
    let at = headerSize + PAGE_LIST_HEADER;
    for (const page of pages) {
      const from = page * PAGE;
      v.setUint32(at, page, true);
      out.set(this.#memory.subarray(from, from + PAGE), at + 4);
      shadow.set(out.subarray(at + 4, at + PAGE_ENTRY), from); // what was sent, even if the client wrote meanwhile
      at += PAGE_ENTRY;
    }
    return out;
  }

  #readPageList(r: WireReader): PageEntry[] {
    const pageSize = r.u32('page size');
    if (pageSize !== PAGE) throw r.error(`page size ${pageSize}, the layout has ${PAGE}`);
    const count = r.u32('page count');
    if (r.remaining !== count * PAGE_ENTRY) throw r.error(`${count} pages need ${count * PAGE_ENTRY} bytes, the record has ${r.remaining}`);
    const limit = this.#memory.length / PAGE;
    const entries: PageEntry[] = [];
    let previous = -1;
    for (let i = 0; i < count; i++) {
      const index = r.u32('page index');
      if (index <= previous || index >= limit) throw r.error(`page index ${index} is out of order or beyond BAR0's ${limit} pages`);
      previous = index;
      entries.push({ index, bytes: r.bytes(PAGE, 'page') });
    }
    return entries;
  }

  #apply(entries: readonly PageEntry[]): void {
    for (const e of entries) this.#memory.set(e.bytes, e.index * PAGE);
  }
}
