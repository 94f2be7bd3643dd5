/**
 * Programming a device's BARs as a VMM (or a guest's firmware) does: size
 * them, give each unassigned BAR a naturally aligned address in a window,
 * then turn on memory and I/O decoding in the Command register.
 *
 * Some servers serve a BAR only once it has an address and decoding is on:
 * QEMU's own vfio-user server (`-machine x-remote` with
 * `x-vfio-user-server`) looks every BAR access up in its device's address
 * space, where an unassigned or non-decoding BAR is absent, and refuses the
 * access (EINVAL). Our own devices serve BARs regardless.
 */
import { InvalidArgumentError, StateError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { BarFlags, PciCommand, PciHeader } from '../pci/registers.js';
import { barSizes, readConfig, setCommand, writeConfig, type BarSize, type ConfigAccess } from './pci-config.js';

/** A range of bus addresses BARs may be placed in. */
export interface BarWindow {
  base: bigint;
  size: bigint;
}

/** Options of {@link assignBars}. */
export interface AssignBarsOptions {
  /** Memory BARs (32-bit, and 64-bit ones that fit): default 0xc000_0000 + 1 GiB − 20 MiB (up to the x86 IOAPIC). */
  memWindow?: BarWindow;
  /** 64-bit memory BARs that do not fit in `memWindow`: default 64 GiB + 64 GiB. */
  mem64Window?: BarWindow;
  /** I/O BARs: default 0xc000 + 16 KiB, as a PC BIOS allocates them. */
  ioWindow?: BarWindow;
  /** Re-place BARs that already have an address too (default false: they keep it and new ones avoid it). */
  reassign?: boolean;
}

/** One BAR after {@link assignBars}. */
export interface AssignedBar extends BarSize {
  /** Whether this call gave it its address (false: it had one already). */
  assigned: boolean;
}

/** What {@link assignBars} did. */
export interface BarAssignment {
  bars: AssignedBar[];
  /** The Command register afterwards. */
  command: number;
}

const MEM_WINDOW: BarWindow = { base: 0xc000_0000n, size: 0x3ec0_0000n };
const MEM64_WINDOW: BarWindow = { base: 1n << 36n, size: 1n << 36n };
const IO_WINDOW: BarWindow = { base: 0xc000n, size: 0x4000n };

interface Span {
  start: bigint;
  end: bigint;
}

/**
 * Sizes every BAR, places each unassigned one (largest first, naturally
 * aligned, avoiding BARs that keep their address) and writes its address,
 * then sets Memory Space Enable if there is a memory BAR and I/O Space Enable
 * if there is an I/O BAR. Bus Master is left as it is.
 * @throws {StateError} ENOSPC when a BAR does not fit in its window; EIO when a BAR does not keep the address written.
 * @throws {InvalidArgumentError} EINVAL for a window that is empty or beyond its address width.
 * @throws {RemoteError} the server's errno for a refused config access.
 */
export async function assignBars(client: ConfigAccess, options: AssignBarsOptions = {}): Promise<BarAssignment> {
  const mem = checkWindow('memWindow', options.memWindow ?? MEM_WINDOW, 1n << 32n);
  const mem64 = checkWindow('mem64Window', options.mem64Window ?? MEM64_WINDOW, 1n << 64n);
  const io = checkWindow('ioWindow', options.ioWindow ?? IO_WINDOW, 1n << 32n);
  const sized = await barSizes(client);
  const keep = (b: BarSize): boolean => b.address !== 0n && options.reassign !== true;
  const used: { mem: Span[]; io: Span[] } = { mem: [], io: [] };
  for (const b of sized.filter(keep)) used[b.type === 'io' ? 'io' : 'mem'].push({ start: b.address, end: b.address + b.size });
  const placed = new Map<number, bigint>();
  for (const b of sized.filter((s) => !keep(s)).sort((x, y) => (x.size > y.size ? -1 : x.size < y.size ? 1 : x.index - y.index))) {
    const spans = used[b.type === 'io' ? 'io' : 'mem'];
    const windows = b.type === 'io' ? [io] : b.type === 'mem64' ? [mem, mem64] : [mem];
    const at = windows.map((w) => place(w, b.size, spans)).find((a) => a !== undefined);
    if (at === undefined) {
      throw new StateError(`assignBars: BAR${b.index} (${b.type}, 0x${b.size.toString(16)} bytes) does not fit in its window`, { errno: Errno.ENOSPC });
    }
    spans.push({ start: at, end: at + b.size });
    placed.set(b.index, at);
  }
  for (const [index, address] of placed) await writeBarAddress(client, index, sized.find((b) => b.index === index)?.type === 'mem64', address);
  const bars = await Promise.all(sized.map(async (b) => ({ ...b, address: await readBarAddress(client, b), assigned: placed.has(b.index) })));
  for (const b of bars) {
    const wanted = placed.get(b.index);
    if (wanted !== undefined && b.address !== wanted) {
      throw new StateError(`assignBars: BAR${b.index} reads back 0x${b.address.toString(16)} after 0x${wanted.toString(16)} was written`, { errno: Errno.EIO });
    }
  }
  const decode = (bars.some((b) => b.type !== 'io') ? PciCommand.MEMORY : 0) | (bars.some((b) => b.type === 'io') ? PciCommand.IO : 0);
  const command = decode === 0 ? await readConfig(client, PciHeader.COMMAND, 2) : await setCommand(client, decode);
  return { bars, command };
}

/**
 * Whether BAR `index` decodes now: it holds a non-zero address and the
 * Command register enables its space (memory or I/O). Reads config space
 * only (no sizing, no writes).
 * @throws {InvalidArgumentError} EINVAL for an index outside 0–5.
 * @throws {RemoteError} the server's errno for a refused config read.
 */
export async function barDecodes(client: ConfigAccess, index: number): Promise<boolean> {
  if (!Number.isInteger(index) || index < 0 || index > 5) throw new InvalidArgumentError(`barDecodes: BAR index ${index} outside 0–5`);
  const low = await readConfig(client, PciHeader.BASE_ADDRESS_0 + 4 * index, 4);
  const command = await readConfig(client, PciHeader.COMMAND, 2);
  if (low & BarFlags.IO) return (low & ~0x3) >>> 0 !== 0 && (command & PciCommand.IO) !== 0;
  const bits64 = (low & 0x6) === BarFlags.MEM_TYPE_64 && index < 5;
  const high = bits64 ? await readConfig(client, PciHeader.BASE_ADDRESS_0 + 4 * (index + 1), 4) : 0;
  return ((low & ~0xf) >>> 0 !== 0 || high !== 0) && (command & PciCommand.MEMORY) !== 0;
}

/** The lowest naturally aligned start for `size` bytes in `window` clear of `spans`, or undefined. */
function place(window: BarWindow, size: bigint, spans: readonly Span[]): bigint | undefined {
  const end = window.base + window.size;
  let at = alignUp(window.base, size);
  for (;;) {
    if (at + size > end) return undefined;
    const hit = spans.find((s) => at < s.end && at + size > s.start);
    if (hit === undefined) return at;
    at = alignUp(hit.end, size);
  }
}

function alignUp(value: bigint, to: bigint): bigint {
  return ((value + to - 1n) / to) * to;
}

async function writeBarAddress(client: ConfigAccess, index: number, bits64: boolean, address: bigint): Promise<void> {
  const at = PciHeader.BASE_ADDRESS_0 + 4 * index;
  await writeConfig(client, at, 4, Number(address & 0xffff_ffffn));
  if (bits64) await writeConfig(client, at + 4, 4, Number(address >> 32n));
}

async function readBarAddress(client: ConfigAccess, bar: BarSize): Promise<bigint> {
  const at = PciHeader.BASE_ADDRESS_0 + 4 * bar.index;
  const low = await readConfig(client, at, 4);
  if (bar.type === 'io') return BigInt((low & ~0x3) >>> 0);
  const high = bar.type === 'mem64' ? await readConfig(client, at + 4, 4) : 0;
  return (BigInt(high) << 32n) | BigInt((low & ~0xf) >>> 0);
}

function checkWindow(name: string, w: BarWindow, limit: bigint): BarWindow {
  if (w.base < 0n || w.size <= 0n || w.base + w.size > limit) {
    throw new InvalidArgumentError(`assignBars: ${name} 0x${w.base.toString(16)}+0x${w.size.toString(16)} is empty or beyond 0x${limit.toString(16)}`);
  }
  return w;
}
