/**
 * Guest RAM for a vfio-user client: a memfd the client allocates and maps in
 * this process, which it then DMA_MAPs into one or more client sessions,
 * either with its fd (the server mmaps it and touches it directly) or without
 * (the server reads and writes it through DMA_READ/DMA_WRITE messages, which
 * a per-client dispatcher answers by IOVA).
 *
 * Addresses given to {@link GuestMemory.read}/`write`/`view` are guest
 * physical addresses *relative to this block* (0 … size − 1); where the
 * device sees them is chosen per session by `attach({ iova })`.
 *
 * Size: Node 20 caps one ArrayBuffer at 4 GiB, so the memory is mapped as a
 * row of windows of at most 1 GiB each. `read`/`write` cross windows freely;
 * a `view` must lie inside one window (an {@link InvalidArgumentError} says
 * so otherwise).
 *
 * Dirty tracking (page size 4096): pages written through `write()`, through
 * views marked dirty, and by the server's DMA_WRITE messages. The server's own
 * stores into an fd-mode mapping bypass this process entirely: ask the server
 * for them (DMA logging, or `dmaUnmap(..., { dirtyPageSize })`).
 */
import { ConnectionClosedError, InvalidArgumentError, StateError } from '../errors.js';
import { createSealedMemfd, mapFd, native, unmap } from '../native/addon.js';
import { DmaMapFlags } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import type { VfioUserClient } from './client.js';
import type { DmaResponder } from './core.js';

/** Page size of the dirty bitmap and of the alignment rules. */
export const GUEST_PAGE_SIZE = 4096;
/** Largest mmap window (Node 20 caps one ArrayBuffer at 4 GiB). */
export const GUEST_WINDOW_SIZE = 1 << 30;

/** Options of {@link GuestMemory.create}. */
export interface GuestMemoryOptions {
  /** memfd name, shown in /proc/<pid>/maps (default `guest-ram`). */
  name?: string;
  /** Window size: a power-of-two multiple of 4096, at most 1 GiB (default 1 GiB; smaller only for tests). */
  windowSize?: number;
}

/** How the server reaches the memory: its own mmap of our fd, or DMA_READ/DMA_WRITE messages. */
export type GuestMemoryMode = 'fd' | 'message';

/** Options of {@link GuestMemory.attach}. */
export interface GuestMemoryAttachOptions {
  /** Where the device sees the memory (page aligned). */
  iova: bigint;
  /** Default `'fd'`. */
  mode?: GuestMemoryMode;
  /** The device may write (DMA_MAP WRITE flag; default true). Refused DMA_WRITEs get EACCES. */
  writable?: boolean;
  /** First byte of this memory to map (page aligned, default 0). */
  offset?: bigint;
  /** Bytes to map (page aligned, default: from `offset` to the end). */
  size?: bigint;
}

/** One DMA mapping of a {@link GuestMemory} into one client session. */
export interface GuestMemoryAttachment {
  readonly client: VfioUserClient;
  readonly iova: bigint;
  readonly size: bigint;
  /** Offset of `iova` in the memory. */
  readonly offset: bigint;
  readonly mode: GuestMemoryMode;
  readonly writable: boolean;
  /** Still mapped (false after detach, dispose or the connection closing). */
  readonly active: boolean;
  /**
   * DMA_UNMAP. Idempotent. If the connection is already gone the mapping is
   * simply forgotten.
   * @throws {RemoteError} the server's errno, {@link TimeoutError} ETIMEDOUT (the mapping then stays registered).
   */
  detach(): Promise<void>;
}

/** What a {@link Mapping} is made of. */
interface MappingInit {
  memory: GuestMemory;
  dispatcher: DmaDispatcher;
  client: VfioUserClient;
  iova: bigint;
  size: bigint;
  offset: bigint;
  mode: GuestMemoryMode;
  writable: boolean;
  /** Called once when the mapping goes away. */
  onForget: (m: Mapping) => void;
}

/** One attachment, as its memory and the client's dispatcher see it. */
class Mapping implements GuestMemoryAttachment {
  readonly memory: GuestMemory;
  readonly client: VfioUserClient;
  readonly iova: bigint;
  readonly size: bigint;
  readonly offset: bigint;
  readonly mode: GuestMemoryMode;
  readonly writable: boolean;
  readonly end: bigint;
  readonly #dispatcher: DmaDispatcher;
  readonly #onForget: (m: Mapping) => void;
  #active = true;
  #detaching: Promise<void> | undefined;

  constructor(init: MappingInit) {
    this.memory = init.memory;
    this.client = init.client;
    this.iova = init.iova;
    this.size = init.size;
    this.offset = init.offset;
    this.mode = init.mode;
    this.writable = init.writable;
    this.end = init.iova + init.size;
    this.#dispatcher = init.dispatcher;
    this.#onForget = init.onForget;
  }

  get active(): boolean {
    return this.#active;
  }

  detach(): Promise<void> {
    if (!this.#active) return Promise.resolve();
    this.#detaching ??= this.#unmap().finally(() => (this.#detaching = undefined));
    return this.#detaching;
  }

  async #unmap(): Promise<void> {
    try {
      await this.client.dmaUnmap(this.iova, this.size);
    } catch (error) {
      if (!(error instanceof ConnectionClosedError)) throw error; // the server may still have it
    }
    this.forget();
  }

  /** Drops the mapping locally (no message). */
  forget(): void {
    if (!this.#active) return;
    this.#active = false;
    this.#dispatcher.remove(this);
    this.#onForget(this);
  }
}

const dispatchers = new WeakMap<VfioUserClient, DmaDispatcher>();

/**
 * Answers one client's DMA_READ/DMA_WRITE from every GuestMemory attached to
 * it, by IOVA. A range not wholly covered is EFAULT; a write touching a
 * read-only mapping is EACCES (nothing is written then).
 */
class DmaDispatcher implements DmaResponder {
  readonly #client: VfioUserClient;
  #mappings: Mapping[] = [];

  private constructor(client: VfioUserClient) {
    this.#client = client;
    void client.closed.then(() => {
      for (const m of [...this.#mappings]) m.forget();
    });
  }

  static of(client: VfioUserClient): DmaDispatcher {
    let d = dispatchers.get(client);
    if (!d) {
      d = new DmaDispatcher(client);
      dispatchers.set(client, d);
    }
    return d;
  }

  add(m: Mapping): void {
    const clash = this.#mappings.find((o) => m.iova < o.end && o.iova < m.end);
    if (clash) {
      throw new InvalidArgumentError(`GuestMemory.attach: IOVA 0x${m.iova.toString(16)}+0x${m.size.toString(16)} overlaps 0x${clash.iova.toString(16)}+0x${clash.size.toString(16)}`, { errno: Errno.EEXIST });
    }
    this.#mappings = [...this.#mappings, m].sort((a, b) => (a.iova < b.iova ? -1 : 1));
    this.#client.setDmaResponder(this);
  }

  remove(m: Mapping): void {
    this.#mappings = this.#mappings.filter((o) => o !== m);
    if (this.#mappings.length === 0) {
      this.#client.setDmaResponder(undefined);
      dispatchers.delete(this.#client);
    }
  }

  read(addr: bigint, count: number): Uint8Array {
    const segments = this.#resolve('DMA_READ', addr, count);
    const first = segments[0];
    if (segments.length === 1 && first) return first.m.memory.read(first.m.offset + (first.at - first.m.iova), first.n);
    const out = new Uint8Array(count);
    let done = 0;
    for (const s of segments) {
      out.set(s.m.memory.read(s.m.offset + (s.at - s.m.iova), s.n), done);
      done += s.n;
    }
    return out;
  }

  write(addr: bigint, data: Uint8Array): void {
    const segments = this.#resolve('DMA_WRITE', addr, data.length);
    const readOnly = segments.find((s) => !s.m.writable);
    if (readOnly) throw new InvalidArgumentError(`DMA_WRITE 0x${addr.toString(16)}+${data.length}: mapping at 0x${readOnly.m.iova.toString(16)} is read-only`, { errno: Errno.EACCES });
    let done = 0;
    for (const s of segments) {
      s.m.memory.write(s.m.offset + (s.at - s.m.iova), data.subarray(done, done + s.n));
      done += s.n;
    }
  }

  /** Splits `[addr, addr + count)` over the mappings. @throws {InvalidArgumentError} EFAULT if a byte is not covered. */
  #resolve(site: string, addr: bigint, count: number): Array<{ m: Mapping; at: bigint; n: number }> {
    const out: Array<{ m: Mapping; at: bigint; n: number }> = [];
    const end = addr + BigInt(count);
    for (let at = addr; at < end; ) {
      const m = this.#mappings.find((o) => o.iova <= at && at < o.end);
      if (!m) throw new InvalidArgumentError(`${site} 0x${addr.toString(16)}+${count}: 0x${at.toString(16)} is not attached guest memory`, { errno: Errno.EFAULT });
      const n = Number((end < m.end ? end : m.end) - at);
      out.push({ m, at, n });
      at += BigInt(n);
    }
    return out;
  }
}

/** memfd-backed guest RAM, mapped here and attachable to client sessions. */
export class GuestMemory {
  /** Size in bytes. */
  readonly size: bigint;
  /** memfd name. */
  readonly name: string;
  readonly #fd: number;
  readonly #windows: Uint8Array[];
  readonly #windowSize: number;
  readonly #dirty: Uint8Array;
  readonly #attachments = new Set<Mapping>();
  #disposed = false;

  private constructor(name: string, fd: number, size: number, windowSize: number) {
    this.name = name;
    this.#fd = fd;
    this.size = BigInt(size);
    this.#windowSize = windowSize;
    this.#windows = [];
    this.#dirty = new Uint8Array(Math.ceil(size / GUEST_PAGE_SIZE / 8));
    try {
      for (let at = 0; at < size; at += windowSize) {
        this.#windows.push(new Uint8Array(mapFd(fd, at, Math.min(windowSize, size - at), true)));
      }
    } catch (error) {
      for (const w of this.#windows) unmap(w.buffer as ArrayBuffer);
      throw error;
    }
  }

  /**
   * Allocates `size` bytes of zeroed guest RAM (a memfd, mapped here), sealed
   * against resizing (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`, as QEMU's
   * memory-backend-memfd): no one holding the fd, this process included,
   * can shrink it under a server's mapping, and servers that require sealed
   * DMA fds map it.
   * @param size - a positive multiple of 4096.
   * @throws {InvalidArgumentError} EINVAL for a bad size or window size.
   * @throws {SystemError} EMFILE/ENOMEM/ENOSPC when the memfd cannot be created or mapped.
   */
  static create(size: number | bigint, options: GuestMemoryOptions = {}): GuestMemory {
    const n = typeof size === 'bigint' ? size : Number.isSafeInteger(size) ? BigInt(size) : -1n;
    if (n <= 0n || n % BigInt(GUEST_PAGE_SIZE) !== 0n || n > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new InvalidArgumentError(`GuestMemory.create: size ${size} must be a positive multiple of ${GUEST_PAGE_SIZE}`);
    }
    const windowSize = options.windowSize ?? GUEST_WINDOW_SIZE;
    if (!Number.isSafeInteger(windowSize) || windowSize < GUEST_PAGE_SIZE || windowSize > GUEST_WINDOW_SIZE || (windowSize & (windowSize - 1)) !== 0) {
      throw new InvalidArgumentError(`GuestMemory.create: windowSize ${windowSize} must be a power of two from ${GUEST_PAGE_SIZE} to ${GUEST_WINDOW_SIZE}`);
    }
    const name = options.name ?? 'guest-ram';
    const fd = createSealedMemfd(name, Number(n));
    try {
      return new GuestMemory(name, fd, Number(n), windowSize);
    } catch (error) {
      native.close(fd);
      throw error;
    }
  }

  /** The memfd (owned by this object; dup it to keep it past {@link dispose}). */
  get fd(): number {
    this.#check('fd');
    return this.#fd;
  }

  /** Whether {@link dispose} ran. */
  get disposed(): boolean {
    return this.#disposed;
  }

  /** Live mappings into client sessions. */
  get attachments(): readonly GuestMemoryAttachment[] {
    return [...this.#attachments];
  }

  /**
   * Copies `length` bytes at `gpa`.
   * @throws {InvalidArgumentError} EFAULT for a range outside the memory; {@link StateError} after dispose.
   */
  read(gpa: bigint, length: number): Uint8Array {
    const start = this.#range('read', gpa, length);
    const first = this.#piece(start, length);
    if (first.length === length) return first.slice();
    const out = new Uint8Array(length);
    for (let done = 0; done < length; ) {
      const piece = this.#piece(start + done, length - done);
      out.set(piece, done);
      done += piece.length;
    }
    return out;
  }

  /**
   * Copies `data` to `gpa` and marks the pages dirty.
   * @throws {InvalidArgumentError} EFAULT for a range outside the memory; {@link StateError} after dispose.
   */
  write(gpa: bigint, data: Uint8Array): void {
    const start = this.#range('write', gpa, data.length);
    for (let done = 0; done < data.length; ) {
      const piece = this.#piece(start + done, data.length - done);
      piece.set(data.subarray(done, done + piece.length));
      done += piece.length;
    }
    this.#mark(start, data.length);
  }

  /**
   * A live view of `length` bytes at `gpa` (shared with fd-mode servers).
   * Writes through it are not tracked unless `markDirty` (the pages are
   * marked now, for a caller about to write) or a later {@link markDirty}.
   * The view becomes empty once the memory is disposed.
   * @throws {InvalidArgumentError} EFAULT outside the memory, EINVAL when the range crosses a 1 GiB window.
   */
  view(gpa: bigint, length: number, options: { markDirty?: boolean } = {}): Uint8Array {
    const start = this.#range('view', gpa, length);
    const piece = this.#piece(start, length);
    if (piece.length !== length) {
      throw new InvalidArgumentError(`GuestMemory.view: 0x${gpa.toString(16)}+${length} crosses a ${this.#windowSize}-byte mapping window; use read()/write()`);
    }
    if (options.markDirty) this.#mark(start, length);
    return piece;
  }

  /** Marks the pages of `[gpa, gpa + length)` dirty (after writing through a view). @throws {InvalidArgumentError} EFAULT. */
  markDirty(gpa: bigint, length: number): void {
    this.#mark(this.#range('markDirty', gpa, length), length);
  }

  /** Indexes of the pages dirtied since the last take, ascending; clears them. */
  takeDirty(): number[] {
    const pages: number[] = [];
    this.#dirty.forEach((byte, i) => {
      for (let bit = 0; byte !== 0 && bit < 8; bit++) if (byte & (1 << bit)) pages.push(i * 8 + bit);
    });
    this.#dirty.fill(0);
    return pages;
  }

  /** The dirty bitmap (page `p` is bit `p % 8` of byte `p >> 3`, as vfio's), copied; clears it. */
  takeDirtyBitmap(): Uint8Array {
    const out = this.#dirty.slice();
    this.#dirty.fill(0);
    return out;
  }

  /**
   * DMA_MAPs this memory (or `[offset, offset + size)` of it) into `client`'s
   * device at `iova`: with the memfd (`'fd'`, the server mmaps it) or without
   * (`'message'`, the server uses DMA_READ/DMA_WRITE). Installs the client's
   * DMA responder, which serves every GuestMemory attached to that client
   * (replacing one passed as `ClientOptions.dma`).
   * @throws {InvalidArgumentError} EINVAL for misaligned or out-of-range bounds, EEXIST when the IOVA range overlaps another attachment of this client.
   * @throws {RemoteError} the server's errno (EINVAL overlap, ENOSPC too big, EACCES/ENODEV mmap failures).
   */
  async attach(client: VfioUserClient, options: GuestMemoryAttachOptions): Promise<GuestMemoryAttachment> {
    this.#check('attach');
    const offset = options.offset ?? 0n;
    const size = options.size ?? this.size - offset;
    const page = BigInt(GUEST_PAGE_SIZE);
    if (options.iova < 0n || options.iova % page !== 0n || offset < 0n || offset % page !== 0n || size <= 0n || size % page !== 0n || offset + size > this.size) {
      throw new InvalidArgumentError(`GuestMemory.attach: iova 0x${options.iova.toString(16)}, offset 0x${offset.toString(16)}, size 0x${size.toString(16)} must be page aligned and inside the ${this.size}-byte memory`);
    }
    const mode = options.mode ?? 'fd';
    const writable = options.writable ?? true;
    const dispatcher = DmaDispatcher.of(client);
    const onForget = (m: Mapping): void => void this.#attachments.delete(m);
    const mapping = new Mapping({ memory: this, dispatcher, client, iova: options.iova, size, offset, mode, writable, onForget });
    dispatcher.add(mapping); // before DMA_MAP: the server may DMA before its reply arrives
    this.#attachments.add(mapping);
    try {
      const flags = DmaMapFlags.READ | (writable ? DmaMapFlags.WRITE : 0);
      await client.dmaMap({ addr: options.iova, size, flags, offset: mode === 'fd' ? offset : 0n }, mode === 'fd' ? this.#fd : undefined);
    } catch (error) {
      mapping.forget();
      throw error;
    }
    return mapping;
  }

  /**
   * DMA_UNMAPs every attachment (of `client` only, if given).
   * @throws {RemoteError} the first errno a server answered (the others are still tried).
   */
  async detach(client?: VfioUserClient): Promise<void> {
    const targets = [...this.#attachments].filter((m) => client === undefined || m.client === client);
    const results = await Promise.allSettled(targets.map((m) => m.detach()));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /**
   * Forgets every attachment without telling the servers (call {@link detach}
   * first for an orderly DMA_UNMAP; later server DMA messages get EFAULT),
   * unmaps the memory and closes the memfd. Idempotent. Servers that mapped
   * the fd keep their own mapping.
   */
  dispose(): void {
    if (this.#disposed) return;
    for (const m of [...this.#attachments]) m.forget();
    this.#disposed = true;
    for (const w of this.#windows) unmap(w.buffer as ArrayBuffer);
    this.#windows.length = 0;
    native.close(this.#fd);
  }

  #check(site: string): void {
    if (this.#disposed) throw new StateError(`GuestMemory.${site}: the memory is disposed`, { errno: Errno.EBADF });
  }

  /** Validates a range; returns its start as a number. */
  #range(site: string, gpa: bigint, length: number): number {
    this.#check(site);
    if (!Number.isSafeInteger(length) || length < 0 || gpa < 0n || gpa + BigInt(length) > this.size) {
      throw new InvalidArgumentError(`GuestMemory.${site}: 0x${gpa.toString(16)}+${length} is outside the ${this.size}-byte memory`, { errno: Errno.EFAULT });
    }
    return Number(gpa);
  }

  /** The longest view from `start`, up to `length` bytes, inside one window. */
  #piece(start: number, length: number): Uint8Array {
    const index = Math.floor(start / this.#windowSize);
    const window = this.#windows[index] as Uint8Array;
    const at = start - index * this.#windowSize;
    return window.subarray(at, Math.min(window.length, at + length));
  }

  #mark(start: number, length: number): void {
    if (length === 0) return;
    const last = Math.floor((start + length - 1) / GUEST_PAGE_SIZE);
    for (let p = Math.floor(start / GUEST_PAGE_SIZE); p <= last; p++) {
      this.#dirty[p >> 3] = (this.#dirty[p >> 3] ?? 0) | (1 << (p & 7));
    }
  }
}
