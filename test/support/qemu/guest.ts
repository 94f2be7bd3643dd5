/**
 * The guest-side set-up shared by the QEMU tests: a QEMU with some vfio-user
 * devices, its PCI bus, and per device "firmware + driver probe" (find by id,
 * size and place the BARs, enable decoding and bus mastering).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Qemu, type QemuOptions } from './launcher.js';
import { Allocator, Command, PciHost, type Bar, type PciFunction } from './pci.js';
import type { QtestClient } from './qtest.js';

/** Guest RAM the tests use for MSI targets, rings and buffers (above the legacy ROM areas). */
export const GUEST_RAM_BASE = 0x0100_0000n;

/** A temporary directory for sockets; removed by the returned function. */
export function tempDir(prefix: string): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `vfio-user-${prefix}-`));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A running QEMU and its guest's PCI view. */
export interface Guest {
  qemu: Qemu;
  pci: PciHost;
  alloc: Allocator;
}

/** Starts QEMU with `options`; the guest side starts with an empty allocator. */
export async function startGuest(binary: string, options: QemuOptions): Promise<Guest> {
  const qemu = await Qemu.start(binary, options);
  return { qemu, pci: new PciHost(qemu.qtest), alloc: new Allocator() };
}

/** Finds `vendorId:deviceId` on `bus`, places its BARs, enables memory, I/O and bus mastering. */
export async function probe(g: Guest, vendorId: number, deviceId: number, bus = 0, alloc: Allocator = g.alloc): Promise<PciFunction> {
  const fn = await g.pci.find(bus, vendorId, deviceId);
  await fn.assignBars(alloc);
  await fn.enable(Command.MEMORY | Command.IO | Command.BUS_MASTER);
  return fn;
}

/**
 * Byte and dword access to a BAR by offset: port I/O for an I/O BAR, loads and stores otherwise.
 *
 * Writes are posted: QEMU sends REGION_WRITE with NO_REPLY (unless the region
 * is mmappable) and answers qtest at once, so the device may not have seen a
 * write when `write32` resolves. {@link BarAccess.flush} reads the BAR back,
 * as a driver does: the server answers requests in order, so once the read
 * returns every earlier write has been applied.
 */
export interface BarAccess {
  readonly bar: Bar;
  read8(off: number): Promise<number>;
  read32(off: number): Promise<number>;
  write8(off: number, v: number): Promise<void>;
  write32(off: number, v: number): Promise<void>;
  /** A one-byte read of `off` (default 0; pick a register without read side effects). */
  flush(off?: number): Promise<void>;
}

/** {@link BarAccess} for `bar` (assigned) through `q`. */
export function barAccess(q: QtestClient, bar: Bar): BarAccess {
  if (bar.kind === 'io') {
    const port = Number(bar.address);
    return {
      bar,
      read8: (off) => q.inb(port + off),
      read32: async (off) => (await q.inl(port + off)) >>> 0,
      write8: (off, v) => q.outb(port + off, v),
      write32: (off, v) => q.outl(port + off, v),
      flush: async (off = 0) => void (await q.inb(port + off)),
    };
  }
  return {
    bar,
    read8: (off) => q.readb(bar.address + BigInt(off)),
    read32: async (off) => (await q.readl(bar.address + BigInt(off))) >>> 0,
    write8: (off, v) => q.writeb(bar.address + BigInt(off), v),
    write32: (off, v) => q.writel(bar.address + BigInt(off), v),
    flush: async (off = 0) => void (await q.readb(bar.address + BigInt(off))),
  };
}
