/**
 * The emulated PCI configuration space (vfio region 7) of one function: pure
 * state, no I/O. Every access is split into segments — the header, each
 * capability, and the unclaimed rest — and each segment applies its own
 * write rules (read-only, RW, RW1C, BAR sizing).
 */
import { InvalidArgumentError, ProtocolError, StateError } from '../errors.js';
import { readBarAddress, readRomAddress, type BarLayout } from './bars.js';
import type { Capability } from './capabilities/capability.js';
import { MsiCapability } from './capabilities/msi.js';
import { MsixCapability } from './capabilities/msix.js';
import { buildLayout, type Layout, type Segment } from './layout.js';
import type { RegisterFile } from './register-file.js';
import { PciCommand, PciHeader, PciStatus, RomFlags, STATUS_RW1C } from './registers.js';
import { decodeSnapshot, encodeSnapshot, fingerprint, type SnapshotShape } from './snapshot.js';
import {
  InterruptMode,
  type ConfigSpaceEvent,
  type ConfigSpaceListener,
  type ConfigSpaceOptions,
  type VendorArea,
} from './types.js';

/** A BAR as laid out: slot, type, size, prefetchable. */
export type BarInfo = BarLayout;
/** Where a capability sits: name, id, offset, size, extended. */
export type CapabilityInfo = Pick<Capability, 'name' | 'id' | 'offset' | 'size' | 'extended'>;

interface Piece {
  readonly segment: Segment;
  readonly start: number;
  readonly end: number;
}

interface Observed {
  readonly command: number;
  readonly mode: InterruptMode;
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/**
 * One function's config space. Build it once from a {@link ConfigSpaceOptions}
 * (validated all at once), then serve driver `read`/`write` accesses.
 *
 * How the IRQ layer hooks in:
 * * To decide how to signal, read {@link interruptMode} (`msix` > `msi` >
 *   `intx` > `none`) and, per vector, `msix.isMasked(v)` / `msi.isMasked(v)`.
 * * When a vector fires while masked, call `setPending(v, true)`; the driver
 *   sees it in the PBA / Pending Bits. INTx level goes to {@link setIntxAsserted}.
 * * Listen with {@link onChange}: on `msix-unmask` / `msi-unmask` with
 *   `pending: true`, deliver the held interrupt and call `setPending(v, false)`;
 *   on `interrupt-mode`, re-check pending vectors and drop or raise INTx; on
 *   `command`, note Bus Master / INTx Disable. Unmask events are raised whatever
 *   the enable bits say; check {@link interruptMode} before delivering.
 * * MSI-X table and PBA accesses arrive through the BAR named in `msix.table`
 *   / `msix.pba`; route them to `msix.tableRead`/`tableWrite`/`pbaRead`/`pbaWrite`.
 */
export class ConfigSpace {
  /** 256, or 4096 with the PCI Express capability. */
  readonly size: number;
  readonly #layout: Layout;
  readonly #regs: RegisterFile;
  readonly #powerOn: Uint8Array;
  readonly #shape: SnapshotShape;
  readonly #vendorArea: VendorArea | undefined;
  readonly #listeners = new Set<ConfigSpaceListener>();
  readonly #msi: MsiCapability | undefined;
  readonly #msix: MsixCapability | undefined;

  /**
   * @param options - the function's description.
   * @throws {InvalidArgumentError} EINVAL naming the first option that breaks a rule
   *   (BAR size not a power of two, 64-bit BAR in BAR5, MSI-X table outside its BAR, …).
   */
  constructor(options: ConfigSpaceOptions) {
    this.#layout = buildLayout(options, (events) => this.#dispatch(events));
    this.#regs = this.#layout.regs;
    this.size = this.#regs.size;
    this.#powerOn = this.#regs.bytes.slice();
    const r = this.#regs;
    const extraSize = this.#layout.capabilities.reduce((sum, c) => sum + (c.stateSize ?? 0), 0);
    this.#shape = { configSize: this.size, extraSize, fingerprint: fingerprint(this.#powerOn, r.wmask, r.w1cmask, r.devmask) };
    this.#vendorArea = options.vendorArea;
    this.#msi = this.#layout.capabilities.find((c) => c instanceof MsiCapability);
    this.#msix = this.#layout.capabilities.find((c) => c instanceof MsixCapability);
  }

  // ------------------------------------------------------------------ access

  /**
   * A driver read, at any offset, length and alignment. Unclaimed bytes come
   * from the vendor area when there is one, else read as zero.
   * @param offset - byte offset in config space.
   * @param length - bytes to read (0 is allowed).
   * @returns a new array of `length` bytes.
   * @throws {ProtocolError} EINVAL when `offset + length` exceeds {@link size},
   *   or the vendor area returns the wrong number of bytes; whatever the vendor area throws.
   */
  read(offset: number | bigint, length: number): Uint8Array {
    const start = this.#checkRange(offset, length, 'read');
    const out = new Uint8Array(length);
    for (const p of this.#pieces(start, length)) out.set(this.#readPiece(p), p.start - start);
    return out;
  }

  /**
   * A driver write, at any offset, length and alignment. Read-only bits keep
   * their value (writes to read-only registers are ignored); RW1C bits written
   * as 1 are cleared; BARs keep only their size-aligned address bits.
   * Events are dispatched after the whole access.
   * @param offset - byte offset in config space.
   * @param data - the bytes written (empty is allowed).
   * @throws {ProtocolError} EINVAL when `offset + data.length` exceeds {@link size},
   *   or when part of the range is unclaimed and there is no vendor area
   *   (nothing is written then); whatever the vendor area throws.
   */
  write(offset: number | bigint, data: Uint8Array): void {
    const start = this.#checkRange(offset, data.length, 'write');
    const pieces = this.#pieces(start, data.length);
    const unclaimed = pieces.find((p) => p.segment.kind === 'unclaimed');
    if (unclaimed !== undefined && this.#vendorArea === undefined) {
      throw new ProtocolError(`config write ${hex(start)}+${data.length}: ${hex(unclaimed.start)} is not claimed and there is no vendor area`);
    }
    const before = this.#observe();
    const events: ConfigSpaceEvent[] = [];
    try {
      for (const p of pieces) this.#writePiece(p, data.subarray(p.start - start, p.end - start), events);
    } finally {
      this.#dispatch([...this.#stateEvents(before), ...events]);
    }
  }

  /**
   * The emulated config bytes, for `lspci -F` (see {@link formatLspciDump}).
   * The vendor area is not consulted: its bytes appear as zero.
   * @returns a copy of all {@link size} bytes.
   */
  dump(): Uint8Array {
    return this.#regs.bytes.slice();
  }

  #checkRange(offset: number | bigint, length: number, what: string): number {
    const off = typeof offset === 'bigint' ? offset : Number.isSafeInteger(offset) ? BigInt(offset) : -1n;
    if (!Number.isSafeInteger(length) || length < 0 || off < 0n || off + BigInt(length) > BigInt(this.size)) {
      throw new ProtocolError(`config ${what} ${String(offset)}+${length} outside 0–${hex(this.size)}`);
    }
    return Number(off);
  }

  #pieces(start: number, length: number): Piece[] {
    const end = start + length;
    const out: Piece[] = [];
    for (const segment of this.#layout.segments) {
      if (segment.end <= start || segment.start >= end) continue;
      out.push({ segment, start: Math.max(start, segment.start), end: Math.min(end, segment.end) });
    }
    return out;
  }

  #readPiece(p: Piece): Uint8Array {
    const length = p.end - p.start;
    if (p.segment.kind !== 'unclaimed' || this.#vendorArea === undefined) return this.#regs.read(p.start, length);
    const bytes = this.#vendorArea.read(p.start, length);
    if (bytes.length !== length) {
      throw new ProtocolError(`config read ${hex(p.start)}+${length}: vendor area returned ${bytes.length} bytes`);
    }
    return bytes;
  }

  #writePiece(p: Piece, bytes: Uint8Array, events: ConfigSpaceEvent[]): void {
    const { segment } = p;
    if (segment.kind === 'unclaimed') {
      this.#vendorArea?.write(p.start, bytes.slice());
      return;
    }
    const cap = segment.capability;
    const before = cap?.afterWrite === undefined ? undefined : this.#regs.read(segment.start, segment.end - segment.start);
    this.#regs.write(p.start, bytes);
    if (before !== undefined) cap?.afterWrite?.(before, events);
  }

  // ------------------------------------------------------------------ events

  /**
   * Subscribes to config-space changes. Listeners run synchronously after the
   * access (or reset/restore) that caused them and must not throw.
   * @param listener - receives each {@link ConfigSpaceEvent}.
   * @returns a function that unsubscribes.
   */
  onChange(listener: ConfigSpaceListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #observe(): Observed {
    return { command: this.command, mode: this.interruptMode };
  }

  #stateEvents(before: Observed): ConfigSpaceEvent[] {
    const out: ConfigSpaceEvent[] = [];
    const command = this.command;
    if (command !== before.command) out.push({ type: 'command', previous: before.command, current: command });
    const mode = this.interruptMode;
    if (mode !== before.mode) out.push({ type: 'interrupt-mode', previous: before.mode, current: mode });
    return out;
  }

  #dispatch(events: readonly ConfigSpaceEvent[]): void {
    for (const event of events) for (const listener of this.#listeners) listener(event);
  }

  // ------------------------------------------------------------------ state

  /** The Command register. */
  get command(): number {
    return this.#regs.u16(PciHeader.COMMAND);
  }

  /** The Status register. */
  get status(): number {
    return this.#regs.u16(PciHeader.STATUS);
  }

  /** Command bit 10: the driver disabled INTx. */
  get intxDisabled(): boolean {
    return (this.command & PciCommand.INTX_DISABLE) !== 0;
  }

  /** Command bit 2: the function may do DMA and send MSI/MSI-X messages. */
  get busMasterEnabled(): boolean {
    return (this.command & PciCommand.MASTER) !== 0;
  }

  /** Command bit 1: memory BARs decode. */
  get memoryEnabled(): boolean {
    return (this.command & PciCommand.MEMORY) !== 0;
  }

  /** Command bit 0: I/O BARs decode. */
  get ioEnabled(): boolean {
    return (this.command & PciCommand.IO) !== 0;
  }

  /** Interrupt Pin (0 none, 1–4 INTA–INTD). */
  get interruptPin(): number {
    return this.#layout.identity.interruptPin;
  }

  /**
   * The active interrupt mechanism: `msix` if MSI-X is enabled, else `msi` if
   * MSI is enabled, else `intx` if there is an interrupt pin and INTx is not
   * disabled, else `none`.
   */
  get interruptMode(): InterruptMode {
    if (this.#msix?.enabled === true) return InterruptMode.MSIX;
    if (this.#msi?.enabled === true) return InterruptMode.MSI;
    if (this.interruptPin !== 0 && !this.intxDisabled) return InterruptMode.INTX;
    return InterruptMode.NONE;
  }

  /** MSI state, or undefined without an MSI capability. */
  get msi(): MsiCapability | undefined {
    return this.#msi;
  }

  /** MSI-X state, table and PBA, or undefined without an MSI-X capability. */
  get msix(): MsixCapability | undefined {
    return this.#msix;
  }

  /** The capabilities in address order (standard, then extended). */
  get capabilities(): readonly CapabilityInfo[] {
    return this.#layout.capabilities;
  }

  /** The six BAR slots; absent BARs and the upper half of a 64-bit BAR are undefined. */
  get bars(): ReadonlyArray<BarInfo | undefined> {
    return this.#layout.bars;
  }

  /**
   * The address BAR `index` is programmed to, flag bits stripped (both dwords
   * for a 64-bit BAR). An absent BAR, or the upper half of a 64-bit BAR, gives 0n.
   * @param index - 0–5.
   * @throws {InvalidArgumentError} EINVAL for an index outside 0–5.
   */
  barAddress(index: number): bigint {
    if (!Number.isInteger(index) || index < 0 || index >= this.#layout.bars.length) {
      throw new InvalidArgumentError(`BAR index ${index} outside 0–5`);
    }
    const bar = this.#layout.bars[index];
    return bar === undefined ? 0n : readBarAddress(this.#regs, bar);
  }

  /** Expansion ROM size, or undefined without a ROM. */
  get romSize(): bigint | undefined {
    return this.#layout.romSize;
  }

  /** Expansion ROM address bits (31:11), without the enable bit. */
  get romAddress(): bigint {
    return readRomAddress(this.#regs);
  }

  /** Expansion ROM enable bit (bit 0). */
  get romEnabled(): boolean {
    return (this.#regs.u32(PciHeader.ROM_ADDRESS) & RomFlags.ENABLE) !== 0;
  }

  /**
   * Device side: reflects the INTx line in Status bit 3 (Interrupt Status).
   * @param asserted - the function is asserting its interrupt pin.
   * @throws {StateError} EINVAL when the function has no interrupt pin.
   */
  setIntxAsserted(asserted: boolean): void {
    if (this.interruptPin === 0) throw new StateError('setIntxAsserted: the function has no interrupt pin');
    const status = this.status & ~PciStatus.INTERRUPT;
    this.#regs.set16(PciHeader.STATUS, asserted ? status | PciStatus.INTERRUPT : status);
  }

  /**
   * Device side: sets Status error bits (the driver clears them by writing 1).
   * @param bits - a subset of bits 8 and 11–15.
   * @throws {InvalidArgumentError} EINVAL for any other bit.
   */
  signalStatus(bits: number): void {
    if (!Number.isInteger(bits) || (bits & ~STATUS_RW1C) !== 0) {
      throw new InvalidArgumentError(`signalStatus: ${hex(bits)} has bits other than the RW1C error bits`);
    }
    this.#regs.set16(PciHeader.STATUS, this.status | bits);
  }

  // ------------------------------------------------------------------ lifecycle

  /**
   * Function-level reset: every register back to its power-on value (Command,
   * Status, BARs, ROM, MSI, MSI-X table all masked, PBA clear); identity and
   * layout are unchanged. Raises `command` / `interrupt-mode` events for what changed.
   */
  reset(): void {
    const before = this.#observe();
    this.#regs.bytes.set(this.#powerOn);
    for (const cap of this.#layout.capabilities) cap.reset?.();
    this.#dispatch(this.#stateEvents(before));
  }

  /**
   * The whole emulated state: config bytes plus the MSI-X table and PBA. The
   * vendor area is the device author's and is not included.
   * @returns bytes for {@link restore} (format in snapshot.ts).
   */
  snapshot(): Uint8Array {
    const parts = this.#layout.capabilities.map((c) => c.saveState?.() ?? new Uint8Array(0));
    const extra = new Uint8Array(this.#shape.extraSize);
    let at = 0;
    for (const p of parts) {
      extra.set(p, at);
      at += p.length;
    }
    return encodeSnapshot(this.#regs.bytes, extra, this.#shape.fingerprint);
  }

  /**
   * Loads a {@link snapshot} taken from a function with the same options.
   * Nothing changes unless the whole snapshot is accepted. Raises `command` /
   * `interrupt-mode` events for what changed.
   * @param bytes - the snapshot.
   * @throws {ProtocolError} EINVAL for a malformed snapshot, a different size
   *   or layout fingerprint (BAR sizes, capabilities, access masks), or a
   *   read-only bit (identity, BAR flags, capability contents) that differs.
   */
  restore(bytes: Uint8Array): void {
    const parts = decodeSnapshot(bytes, this.#shape);
    const mismatch = this.#regs.firstFixedMismatch(parts.config);
    if (mismatch >= 0) {
      throw new ProtocolError(`config snapshot: read-only byte ${hex(mismatch)} differs (another device or layout)`);
    }
    const before = this.#observe();
    this.#regs.loadVariable(parts.config);
    let at = 0;
    for (const cap of this.#layout.capabilities) {
      const n = cap.stateSize ?? 0;
      cap.loadState?.(parts.extra.subarray(at, at + n));
      at += n;
    }
    this.#dispatch(this.#stateEvents(before));
  }
}
