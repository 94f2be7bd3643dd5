/**
 * Migration of the memory device (v2 with PRE_COPY and P2P). Its state is the
 * BAR2 control registers *and* the BAR0 memory: the client writes BAR0
 * through its mmap, so the bytes are device state the destination must have.
 *
 * Device type `memory`, state version 1. All fields little-endian.
 *
 * `'full'` record:
 *
 * | off | size | field |
 * |-----|------|-------|
 * | 0   | 8    | BAR0 size (must equal the destination's) |
 * | 8   | 4    | FILL_PATTERN |
 * | 12  | 4    | FILL_OFFSET |
 * | 16  | 4    | FILL_LENGTH |
 * | 20  | 4    | STATUS (0, DONE or ERROR) |
 * | 24  | 4    | memory encoding: 0 IMAGE, 1 PAGES |
 * | 28  | 4    | reserved, 0 |
 * | 32  | …    | IMAGE: all of BAR0 (`size` bytes); PAGES: a page list |
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
import { RunState, isPreCopy, openState, reserved } from './migration-support.js';

/** Device type in the migration stream. */
export const MEMORY_DEVICE_TYPE = 'memory';
/** Version of the state layout. */
export const MEMORY_STATE_VERSION = 1;
/** Bytes of a `'full'` record before the memory. */
export const MEMORY_STATE_HEADER_SIZE = 32;
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
const STATUS_VALUES: readonly number[] = [0, 1, 2];
const WHAT = `${MEMORY_DEVICE_TYPE} state v${MEMORY_STATE_VERSION}`;

/** The BAR2 fill registers. */
export interface FillState {
  pattern: number;
  offset: number;
  length: number;
  status: number;
}

/** One page of a page list. */
interface PageEntry {
  index: number;
  bytes: Uint8Array;
}

/** The memory device's migration: state layout, pre-copy tracking, quiesce. */
export class MemoryMigration {
  readonly run = new RunState();
  readonly #fill: FillState;
  /** BAR0, set by {@link attach} once the device exists. */
  #memory: Uint8Array = new Uint8Array(0);
  /** What the destination has of BAR0, while a pre-copy is open. */
  #shadow: Uint8Array | undefined;
  /** The next `save()` is the final record of a pre-copy. */
  #final = false;
  /** An IMAGE record was loaded in this resuming stream. */
  #baseLoaded = false;

  constructor(fill: FillState) {
    this.#fill = fill;
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
    this.run.enter(to);
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
    this.#shadow = this.run.preCopy ? out.subarray(MEMORY_STATE_HEADER_SIZE) : undefined;
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
    const fill: FillState = { pattern: r.u32('FILL_PATTERN'), offset: r.u32('FILL_OFFSET'), length: r.u32('FILL_LENGTH'), status: r.u32('STATUS') };
    if (!STATUS_VALUES.includes(fill.status)) throw r.error(`STATUS ${fill.status} is not 0, DONE or ERROR`);
    const encoding = r.u32('memory encoding');
    reserved(r, 4);
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
    Object.assign(this.#fill, fill);
  }

  #header(out: Uint8Array, encoding: MemoryEncoding): void {
    const v = new DataView(out.buffer, out.byteOffset, MEMORY_STATE_HEADER_SIZE);
    v.setBigUint64(0, BigInt(this.#memory.length), true);
    v.setUint32(8, this.#fill.pattern, true);
    v.setUint32(12, this.#fill.offset, true);
    v.setUint32(16, this.#fill.length, true);
    v.setUint32(20, this.#fill.status, true);
    v.setUint32(24, encoding, true);
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
