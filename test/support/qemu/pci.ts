/**
 * PCI from the guest's side, over qtest, as firmware and a driver would do it
 * (QEMU's tests/qtest/libqos/pci.c does the same): configuration mechanism #1
 * (address to port 0xcf8, data at 0xcfc–0xcff), bus enumeration, BAR sizing
 * and assignment, command register, the capability list, and a root port's
 * bus numbers and forwarding windows. With `-accel qtest` no firmware runs, so
 * nothing is assigned until the test does it.
 */
import type { QtestClient } from './qtest.js';

/** Bus/device/function. */
export interface Bdf {
  bus: number;
  dev: number;
  fn: number;
}

/** A BAR as sized (and, once {@link PciFunction.assignBars} ran, placed). */
export interface Bar {
  index: number;
  kind: 'mem32' | 'mem64' | 'io';
  prefetchable: boolean;
  size: bigint;
  /** Guest-physical (memory) or port (I/O) address, 0n until assigned. */
  address: bigint;
}

/** Config-space offsets and bits used here (PCI 3.0 / PCIe 4.0). */
export const Cfg = {
  VENDOR: 0x00, DEVICE: 0x02, COMMAND: 0x04, STATUS: 0x06, REVISION: 0x08, CLASS: 0x09, HEADER_TYPE: 0x0e,
  BAR0: 0x10, SUBSYS_VENDOR: 0x2c, SUBSYS_ID: 0x2e, CAP_PTR: 0x34, INT_LINE: 0x3c, INT_PIN: 0x3d,
  // type-1 header
  PRIMARY_BUS: 0x18, SECONDARY_BUS: 0x19, SUBORDINATE_BUS: 0x1a, IO_BASE: 0x1c, IO_LIMIT: 0x1d,
  MEM_BASE: 0x20, MEM_LIMIT: 0x22, PREF_BASE: 0x24, PREF_LIMIT: 0x26, PREF_BASE_UPPER: 0x28, PREF_LIMIT_UPPER: 0x2c, BRIDGE_CONTROL: 0x3e,
} as const;
export const Command = { IO: 1 << 0, MEMORY: 1 << 1, BUS_MASTER: 1 << 2, INTX_DISABLE: 1 << 10 } as const;
export const Status = { INTERRUPT: 1 << 3, CAP_LIST: 1 << 4 } as const;
export const CapId = { PM: 0x01, MSI: 0x05, PCIE: 0x10, MSIX: 0x11, VENDOR: 0x09 } as const;

/** Addresses handed out to BARs and bridge windows. */
export class Allocator {
  mem: bigint;
  io: bigint;
  readonly memLimit: bigint;
  readonly ioLimit: bigint;

  /** Defaults: libqos's PC windows, 32-bit memory from 0xe0000000, I/O from 0xc000. */
  constructor(mem = 0xe000_0000n, io = 0xc000n, memLimit = 0xfec0_0000n, ioLimit = 0x1_0000n) {
    this.mem = mem;
    this.io = io;
    this.memLimit = memLimit;
    this.ioLimit = ioLimit;
  }

  /** `size` bytes of memory (or I/O) aligned to `align` (default: its size). */
  take(kind: 'mem' | 'io', size: bigint, align = size): bigint {
    const cur = kind === 'mem' ? this.mem : this.io;
    const at = (cur + align - 1n) & ~(align - 1n);
    const end = at + size;
    if (end > (kind === 'mem' ? this.memLimit : this.ioLimit)) throw new Error(`PCI allocator: no room for ${size} bytes of ${kind}`);
    if (kind === 'mem') this.mem = end;
    else this.io = end;
    return at;
  }
}

/** Configuration access through ports 0xcf8/0xcfc. */
export class PciHost {
  readonly qt: QtestClient;

  constructor(qt: QtestClient) {
    this.qt = qt;
  }

  #select(b: Bdf, off: number): Promise<void> {
    return this.qt.outl(0xcf8, (0x8000_0000 | (b.bus << 16) | (b.dev << 11) | (b.fn << 8) | (off & 0xfc)) >>> 0);
  }

  async read8(b: Bdf, off: number): Promise<number> {
    await this.#select(b, off);
    return this.qt.inb(0xcfc + (off & 3));
  }
  async read16(b: Bdf, off: number): Promise<number> {
    await this.#select(b, off);
    return this.qt.inw(0xcfc + (off & 2));
  }
  async read32(b: Bdf, off: number): Promise<number> {
    await this.#select(b, off);
    return (await this.qt.inl(0xcfc)) >>> 0;
  }
  async write8(b: Bdf, off: number, v: number): Promise<void> {
    await this.#select(b, off);
    await this.qt.outb(0xcfc + (off & 3), v);
  }
  async write16(b: Bdf, off: number, v: number): Promise<void> {
    await this.#select(b, off);
    await this.qt.outw(0xcfc + (off & 2), v);
  }
  async write32(b: Bdf, off: number, v: number): Promise<void> {
    await this.#select(b, off);
    await this.qt.outl(0xcfc, v);
  }

  /** The functions present on `bus` (vendor id not 0xffff), multi-function devices included. */
  async enumerate(bus: number): Promise<PciFunction[]> {
    const found: PciFunction[] = [];
    for (let dev = 0; dev < 32; dev++) {
      for (let fn = 0; fn < 8; fn++) {
        const bdf = { bus, dev, fn };
        const id = await this.read32(bdf, Cfg.VENDOR);
        if ((id & 0xffff) === 0xffff) {
          if (fn === 0) break;
          continue;
        }
        const classRev = await this.read32(bdf, Cfg.REVISION);
        const header = await this.read8(bdf, Cfg.HEADER_TYPE);
        found.push(new PciFunction(this, bdf, { vendorId: id & 0xffff, deviceId: id >>> 16, classCode: classRev >>> 8, headerType: header & 0x7f }));
        if (fn === 0 && (header & 0x80) === 0) break;
      }
    }
    return found;
  }

  /** The function with these ids on `bus`. */
  async find(bus: number, vendorId: number, deviceId: number): Promise<PciFunction> {
    const fn = (await this.enumerate(bus)).find((f) => f.vendorId === vendorId && f.deviceId === deviceId);
    if (!fn) throw new Error(`PCI: no ${vendorId.toString(16)}:${deviceId.toString(16)} on bus ${bus}`);
    return fn;
  }
}

/** One function, from config space. */
export class PciFunction {
  bars: Bar[] = [];
  readonly host: PciHost;
  readonly bdf: Bdf;
  readonly vendorId: number;
  readonly deviceId: number;
  /** Class code, 24 bits (base, sub, prog-if). */
  readonly classCode: number;
  /** Header type without the multi-function bit (0 endpoint, 1 bridge). */
  readonly headerType: number;

  constructor(host: PciHost, bdf: Bdf, ids: { vendorId: number; deviceId: number; classCode: number; headerType: number }) {
    this.host = host;
    this.bdf = bdf;
    this.vendorId = ids.vendorId;
    this.deviceId = ids.deviceId;
    this.classCode = ids.classCode;
    this.headerType = ids.headerType;
  }

  read8 = (off: number): Promise<number> => this.host.read8(this.bdf, off);
  read16 = (off: number): Promise<number> => this.host.read16(this.bdf, off);
  read32 = (off: number): Promise<number> => this.host.read32(this.bdf, off);
  write8 = (off: number, v: number): Promise<void> => this.host.write8(this.bdf, off, v);
  write16 = (off: number, v: number): Promise<void> => this.host.write16(this.bdf, off, v);
  write32 = (off: number, v: number): Promise<void> => this.host.write32(this.bdf, off, v);

  /** Sizes BARs 0–5 the standard way (all-ones, read back, restore), decoding off meanwhile. */
  async sizeBars(): Promise<Bar[]> {
    const command = await this.read16(Cfg.COMMAND);
    await this.write16(Cfg.COMMAND, command & ~(Command.IO | Command.MEMORY));
    const bars: Bar[] = [];
    for (let i = 0; i < 6; i++) {
      const off = Cfg.BAR0 + 4 * i;
      const orig = await this.read32(off);
      await this.write32(off, 0xffff_ffff);
      const probe = await this.read32(off);
      await this.write32(off, orig);
      if (probe === 0) continue;
      if (probe & 1) {
        const mask = BigInt((probe & ~3) >>> 0) | 0xffff_0000n;
        bars.push({ index: i, kind: 'io', prefetchable: false, size: ((~mask) & 0xffff_ffffn) + 1n, address: 0n });
        continue;
      }
      const prefetchable = (probe & 8) !== 0;
      if (((probe >>> 1) & 3) === 2) {
        const origHi = await this.read32(off + 4);
        await this.write32(off + 4, 0xffff_ffff);
        const hi = await this.read32(off + 4);
        await this.write32(off + 4, origHi);
        const mask = (BigInt(hi >>> 0) << 32n) | BigInt((probe & ~0xf) >>> 0);
        bars.push({ index: i, kind: 'mem64', prefetchable, size: (~mask & 0xffff_ffff_ffff_ffffn) + 1n, address: 0n });
        i++;
      } else {
        bars.push({ index: i, kind: 'mem32', prefetchable, size: BigInt((~(probe & ~0xf) + 1) >>> 0), address: 0n });
      }
    }
    await this.write16(Cfg.COMMAND, command);
    this.bars = bars;
    return bars;
  }

  /** Sizes (if not yet) and places every BAR with `alloc`, 64-bit ones below 4 GiB too. */
  async assignBars(alloc: Allocator): Promise<Bar[]> {
    if (this.bars.length === 0) await this.sizeBars();
    for (const bar of this.bars) {
      const off = Cfg.BAR0 + 4 * bar.index;
      if (bar.kind === 'io') {
        bar.address = alloc.take('io', bar.size);
        await this.write32(off, Number(bar.address));
      } else {
        // At least a page, as firmware does, so mapped BARs never share one.
        bar.address = alloc.take('mem', bar.size < 4096n ? 4096n : bar.size, bar.size < 4096n ? 4096n : bar.size);
        await this.write32(off, Number(bar.address & 0xffff_ffffn));
        if (bar.kind === 'mem64') await this.write32(off + 4, Number(bar.address >> 32n));
      }
    }
    return this.bars;
  }

  /** The BAR with this index. */
  bar(index: number): Bar {
    const bar = this.bars.find((b) => b.index === index);
    if (!bar) throw new Error(`PCI ${fmt(this.bdf)}: no BAR${index}`);
    return bar;
  }

  /** Sets `bits` in the command register. */
  async enable(bits: number): Promise<void> {
    await this.write16(Cfg.COMMAND, (await this.read16(Cfg.COMMAND)) | bits);
  }

  /** Offsets of the standard capabilities, in list order. */
  async capabilities(): Promise<{ id: number; offset: number }[]> {
    const caps: { id: number; offset: number }[] = [];
    if (((await this.read16(Cfg.STATUS)) & Status.CAP_LIST) === 0) return caps;
    let off = (await this.read8(Cfg.CAP_PTR)) & 0xfc;
    for (let n = 0; off !== 0 && n < 48; n++) {
      const header = await this.read16(off);
      caps.push({ id: header & 0xff, offset: off });
      off = (header >> 8) & 0xfc;
    }
    return caps;
  }

  /** Offset of capability `id`. */
  async capability(id: number): Promise<number> {
    const cap = (await this.capabilities()).find((c) => c.id === id);
    if (!cap) throw new Error(`PCI ${fmt(this.bdf)}: no capability 0x${id.toString(16)}`);
    return cap.offset;
  }
}

/**
 * Gives a bridge (a root port) bus numbers and 1 MiB-aligned memory and 4 KiB-aligned
 * I/O windows taken from `alloc`; enables forwarding.
 * @returns an allocator over the windows, for the BARs of devices behind the bridge.
 */
export async function setUpBridge(bridge: PciFunction, secondary: number, alloc: Allocator, memSize = 16n << 20n, ioSize = 0x1000n): Promise<Allocator> {
  await bridge.write8(Cfg.PRIMARY_BUS, bridge.bdf.bus);
  await bridge.write8(Cfg.SECONDARY_BUS, secondary);
  await bridge.write8(Cfg.SUBORDINATE_BUS, secondary);
  const mem = alloc.take('mem', memSize, 1n << 20n);
  const io = alloc.take('io', ioSize, 0x1000n);
  await bridge.write16(Cfg.MEM_BASE, Number((mem >> 16n) & 0xfff0n));
  await bridge.write16(Cfg.MEM_LIMIT, Number(((mem + memSize - 1n) >> 16n) & 0xfff0n));
  await bridge.write8(Cfg.IO_BASE, Number((io >> 8n) & 0xf0n));
  await bridge.write8(Cfg.IO_LIMIT, Number(((io + ioSize - 1n) >> 8n) & 0xf0n));
  // No prefetchable window: base above limit.
  await bridge.write16(Cfg.PREF_BASE, 0xfff0);
  await bridge.write16(Cfg.PREF_LIMIT, 0x0000);
  await bridge.write32(Cfg.PREF_BASE_UPPER, 0);
  await bridge.write32(Cfg.PREF_LIMIT_UPPER, 0);
  await bridge.enable(Command.IO | Command.MEMORY | Command.BUS_MASTER);
  return new Allocator(mem, io, mem + memSize, io + ioSize);
}

/** `bb:dd.f`. */
export function fmt(b: Bdf): string {
  return `${b.bus.toString(16).padStart(2, '0')}:${b.dev.toString(16).padStart(2, '0')}.${b.fn}`;
}
