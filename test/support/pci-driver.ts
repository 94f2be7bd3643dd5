/**
 * A guest driver's view of a served PCI device, for server tests: every access
 * is a REGION_READ / REGION_WRITE through a {@link StepClient}, never a call
 * into the device object, so the tests exercise what a real client sees.
 * Config space is region 7; the capability list is walked from 0x34; MSI-X
 * table and PBA are found through the MSI-X capability (BIR + offset).
 */
import assert from 'node:assert/strict';
import { Command, IrqSetFlags, RegionIndex } from '../../src/protocol/constants.js';
import { encodeIrqSet } from '../../src/protocol/irq.js';
import { decodeRegionReadReply, encodeRegionAccess, encodeRegionAccessWithData } from '../../src/protocol/region-access.js';
import { createEventFd, native } from '../../src/native/addon.js';
import type { DeviceDefinition } from '../../src/device/types.js';
import type { ServeOptions } from '../../src/server/server.js';
import type { TestContext } from 'node:test';
import { StepClient } from './step-client.js';
import { serveTestDevice, type ServedDevice } from './server-fixture.js';

/** Standard capability ids a driver looks for. */
export const CapId = { PM: 0x01, MSI: 0x05, EXPRESS: 0x10, MSIX: 0x11 } as const;
/** Config-space offsets of the type 0 header registers the tests use. */
export const Cfg = { VENDOR_ID: 0x00, DEVICE_ID: 0x02, COMMAND: 0x04, STATUS: 0x06, BAR0: 0x10, CAP_PTR: 0x34 } as const;
/** Command register bits. */
export const CommandBits = { MEMORY: 0x2, MASTER: 0x4, INTX_DISABLE: 0x400 } as const;
/** Status register bit 3: the function asserts INTx. */
export const STATUS_INTERRUPT = 0x8;
const MSIX_ENABLE = 0x8000;
const MSIX_FUNCTION_MASK = 0x4000;
const MSI_ENABLE = 0x1;
const MSI_MME = 0x70;

/** One capability found on the list. */
export interface FoundCapability {
  id: number;
  offset: number;
}

/** Where the MSI-X table and PBA are, as the capability says. */
export interface MsixLayout {
  cap: number;
  vectors: number;
  tableBar: number;
  tableOffset: number;
  pbaBar: number;
  pbaOffset: number;
}

/** Region accesses and PCI config-space chores over one client. */
export class PciDriver {
  readonly client: StepClient;

  constructor(client: StepClient) {
    this.client = client;
  }

  /** REGION_READ of `count` bytes; asserts success. */
  async read(region: number, offset: number | bigint, count: number): Promise<Uint8Array> {
    const r = await this.client.ok(Command.REGION_READ, encodeRegionAccess({ offset: BigInt(offset), region, count }));
    const decoded = decodeRegionReadReply(r.payload);
    assert.ok(decoded, 'REGION_READ reply carries the access');
    assert.equal(decoded.count, count, 'REGION_READ reply count');
    return decoded.data;
  }

  /** REGION_WRITE of `data`; asserts success. */
  async write(region: number, offset: number | bigint, data: Uint8Array): Promise<void> {
    await this.client.ok(Command.REGION_WRITE, encodeRegionAccessWithData({ offset: BigInt(offset), region, count: data.length, data }));
  }

  /** Little-endian read of 1, 2 or 4 bytes (default region: config space). */
  async readLe(offset: number, width: 1 | 2 | 4, region: number = RegionIndex.CONFIG): Promise<number> {
    const b = await this.read(region, offset, width);
    const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
    return width === 1 ? v.getUint8(0) : width === 2 ? v.getUint16(0, true) : v.getUint32(0, true);
  }

  /** Little-endian write of 1, 2 or 4 bytes (default region: config space). */
  async writeLe(offset: number, width: 1 | 2 | 4, value: number, region: number = RegionIndex.CONFIG): Promise<void> {
    const b = new Uint8Array(width);
    const v = new DataView(b.buffer);
    if (width === 1) v.setUint8(0, value);
    else if (width === 2) v.setUint16(0, value, true);
    else v.setUint32(0, value >>> 0, true);
    await this.write(region, offset, b);
  }

  config8 = (offset: number): Promise<number> => this.readLe(offset, 1);
  config16 = (offset: number): Promise<number> => this.readLe(offset, 2);
  config32 = (offset: number): Promise<number> => this.readLe(offset, 4);
  setConfig16 = (offset: number, value: number): Promise<void> => this.writeLe(offset, 2, value);
  setConfig32 = (offset: number, value: number): Promise<void> => this.writeLe(offset, 4, value);

  /** The standard capability list, walked from 0x34 (loops and runaway lists fail the test). */
  async capabilities(): Promise<FoundCapability[]> {
    const out: FoundCapability[] = [];
    let at = (await this.config8(Cfg.CAP_PTR)) & 0xfc;
    while (at !== 0) {
      assert.ok(at >= 0x40 && out.length < 48, `capability pointer 0x${at.toString(16)} is sane`);
      assert.ok(!out.some((c) => c.offset === at), 'capability list does not loop');
      out.push({ id: await this.config8(at), offset: at });
      at = (await this.config8(at + 1)) & 0xfc;
    }
    return out;
  }

  /** Offset of capability `id`; fails the test when absent. */
  async capability(id: number): Promise<number> {
    const found = (await this.capabilities()).find((c) => c.id === id);
    assert.ok(found, `capability 0x${id.toString(16)} present`);
    return found.offset;
  }

  /** The Command register. */
  command(): Promise<number> {
    return this.config16(Cfg.COMMAND);
  }

  /** Writes the Command register. */
  setCommand(value: number): Promise<void> {
    return this.setConfig16(Cfg.COMMAND, value);
  }

  /** Reads the MSI-X capability: table size, table and PBA placement. */
  async msixLayout(): Promise<MsixLayout> {
    const cap = await this.capability(CapId.MSIX);
    const control = await this.config16(cap + 2);
    const table = await this.config32(cap + 4);
    const pba = await this.config32(cap + 8);
    return { cap, vectors: (control & 0x7ff) + 1, tableBar: table & 7, tableOffset: table & ~7, pbaBar: pba & 7, pbaOffset: pba & ~7 };
  }

  /** Sets MSI-X Enable and Function Mask as asked (other Message Control bits kept). */
  async setMsix(enable: boolean, functionMask = false): Promise<void> {
    const cap = await this.capability(CapId.MSIX);
    const control = await this.config16(cap + 2);
    let next = enable ? control | MSIX_ENABLE : control & ~MSIX_ENABLE;
    next = functionMask ? next | MSIX_FUNCTION_MASK : next & ~MSIX_FUNCTION_MASK;
    await this.setConfig16(cap + 2, next);
  }

  /** Programs MSI-X table entry `vector` (address, data, Mask bit) through its BAR. */
  async writeMsixEntry(vector: number, entry: { address?: bigint; data?: number; masked: boolean }): Promise<void> {
    const l = await this.msixLayout();
    const b = new Uint8Array(16);
    const v = new DataView(b.buffer);
    const address = entry.address ?? 0xfee00000n;
    v.setUint32(0, Number(address & 0xffffffffn), true);
    v.setUint32(4, Number(address >> 32n), true);
    v.setUint32(8, entry.data ?? vector, true);
    v.setUint32(12, entry.masked ? 1 : 0, true);
    await this.write(l.tableBar, l.tableOffset + 16 * vector, b);
  }

  /** Sets or clears only the Mask bit of table entry `vector` (a 4-byte Vector Control write). */
  async maskMsixVector(vector: number, masked: boolean): Promise<void> {
    const l = await this.msixLayout();
    await this.writeLe(l.tableOffset + 16 * vector + 12, 4, masked ? 1 : 0, l.tableBar);
  }

  /** The PBA's first qword, read through its BAR (bit v = vector v pending). */
  async msixPending(): Promise<bigint> {
    const l = await this.msixLayout();
    const b = await this.read(l.pbaBar, l.pbaOffset, 8);
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
  }

  /** Enables MSI-X with `vectors` (default all) unmasked in the table, Function Mask clear. */
  async enableMsix(vectors?: number): Promise<void> {
    const l = await this.msixLayout();
    for (let vec = 0; vec < (vectors ?? l.vectors); vec++) await this.writeMsixEntry(vec, { masked: false });
    await this.setMsix(true, false);
  }

  /** Enables MSI with 2^log2Vectors vectors allocated (Multiple Message Enable). */
  async enableMsi(log2Vectors = 0): Promise<number> {
    const cap = await this.capability(CapId.MSI);
    const control = await this.config16(cap + 2);
    await this.setConfig16(cap + 2, (control & ~MSI_MME) | (log2Vectors << 4) | MSI_ENABLE);
    return cap;
  }
}

/** Creates `count` eventfds and installs them (TRIGGER|EVENTFD) for IRQ `index` from `start`; the test closes them. */
export async function installEventFds(client: StepClient, index: number, count: number, start = 0): Promise<number[]> {
  const fds = Array.from({ length: count }, () => createEventFd());
  const flags = IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER;
  await client.ok(Command.DEVICE_SET_IRQS, encodeIrqSet({ argsz: 20, flags, index, start, count }), fds);
  return fds;
}

/** Reads (and so clears) every eventfd; returns the positions that had been signalled. */
export function fired(fds: readonly number[]): number[] {
  const out: number[] = [];
  fds.forEach((fd, i) => {
    if (typeof native.eventfdRead(fd) === 'bigint') out.push(i);
  });
  return out;
}

/** Closes fds the test created. */
export function closeAll(fds: readonly number[]): void {
  for (const fd of fds) native.close(fd);
}

/** A served device with a negotiated client and a driver over it. */
export interface OpenDevice {
  served: ServedDevice;
  client: StepClient;
  driver: PciDriver;
}

/**
 * Serves `definition` (default: the fixture's test device), opens a client and
 * runs `fn`. The client and server are closed when `fn` ends, fails, or the
 * test is cut short (a `t.after` hook), exactly once.
 */
export async function withDevice<T>(
  t: TestContext,
  fn: (d: OpenDevice) => Promise<T>,
  definition?: DeviceDefinition,
  options: Omit<ServeOptions, 'path'> = {},
): Promise<T> {
  const served = serveTestDevice(definition, options);
  let client: StepClient | undefined;
  let closing: Promise<void> | undefined;
  const cleanup = (): Promise<void> => {
    closing ??= (async () => {
      client?.close();
      await served.close();
    })();
    return closing;
  };
  t.after(cleanup);
  try {
    client = (await StepClient.open(served.path)).client;
    return await fn({ served, client, driver: new PciDriver(client) });
  } finally {
    await cleanup();
  }
}
