/**
 * A tiny "driver" over {@link StepClient} for the sample-device tests: region
 * reads and writes, config-space capability walking, MSI/MSI-X enabling,
 * eventfd interrupts and memfd guest memory — all through the real socket.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VfioUserDevice } from '../../src/device/device.js';
import type { DeviceServer } from '../../src/server/server.js';
import { createEventFd, mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';
import { Command, DmaMapFlags, IrqIndex, IrqSetFlags, RegionIndex } from '../../src/protocol/constants.js';
import { encodeDmaMapRequest } from '../../src/protocol/dma.js';
import { encodeIrqSet } from '../../src/protocol/irq.js';
import { decodeRegionReadReply, encodeRegionAccess, encodeRegionAccessWithData } from '../../src/protocol/region-access.js';
import { StepClient } from '../support/step-client.js';

/** A device served on a fresh temporary socket. */
export interface Served {
  path: string;
  server: DeviceServer;
  close(): Promise<void>;
}

/** Serves `device` on a temporary socket; `close()` stops the server, disposes the device and removes the directory. */
export function serve(device: VfioUserDevice): Served {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-devices-'));
  const path = join(dir, 'device.sock');
  const server = device.serve(path);
  return {
    path,
    server,
    async close() {
      await server.close();
      device.dispose();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Reads `count` bytes of region `region` at `offset`. */
export async function regionRead(client: StepClient, region: number, offset: number, count: number): Promise<Uint8Array> {
  const reply = await client.ok(Command.REGION_READ, encodeRegionAccess({ offset: BigInt(offset), region, count }));
  const decoded = decodeRegionReadReply(reply.payload);
  assert.ok(decoded, 'REGION_READ reply has data');
  return decoded.data;
}

/** Writes `data` to region `region` at `offset`. */
export async function regionWrite(client: StepClient, region: number, offset: number, data: Uint8Array): Promise<void> {
  await client.ok(Command.REGION_WRITE, encodeRegionAccessWithData({ offset: BigInt(offset), region, count: data.length, data }));
}

/** A little-endian u8/u16/u32 read. */
export async function readLe(client: StepClient, region: number, offset: number, width: 1 | 2 | 4): Promise<number> {
  const b = await regionRead(client, region, offset, width);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return width === 1 ? v.getUint8(0) : width === 2 ? v.getUint16(0, true) : v.getUint32(0, true);
}

/** A little-endian u8/u16/u32 write. */
export async function writeLe(client: StepClient, region: number, offset: number, width: 1 | 2 | 4, value: number): Promise<void> {
  const b = new Uint8Array(width);
  const v = new DataView(b.buffer);
  if (width === 1) v.setUint8(0, value);
  else if (width === 2) v.setUint16(0, value, true);
  else v.setUint32(0, value >>> 0, true);
  await regionWrite(client, region, offset, b);
}

export const read32 = (c: StepClient, region: number, offset: number): Promise<number> => readLe(c, region, offset, 4);
export const write32 = (c: StepClient, region: number, offset: number, value: number): Promise<void> => writeLe(c, region, offset, 4, value);

/** Offset of standard capability `id`, walking the list from 0x34 (undefined if absent). */
export async function findCapability(client: StepClient, id: number): Promise<number | undefined> {
  let at = (await readLe(client, RegionIndex.CONFIG, 0x34, 1)) & 0xfc;
  for (let hops = 0; at !== 0 && hops < 48; hops++) {
    if ((await readLe(client, RegionIndex.CONFIG, at, 1)) === id) return at;
    at = (await readLe(client, RegionIndex.CONFIG, at + 1, 1)) & 0xfc;
  }
  return undefined;
}

/** Offset of extended capability `id`, walking the list from 0x100 (undefined if absent). */
export async function findExtendedCapability(client: StepClient, id: number): Promise<number | undefined> {
  let at = 0x100;
  for (let hops = 0; at !== 0 && hops < 64; hops++) {
    const header = await read32(client, RegionIndex.CONFIG, at);
    if ((header & 0xffff) === id) return at;
    at = (header >>> 20) & 0xffc;
  }
  return undefined;
}

/** Installs one eventfd per vector of IRQ `index` from `start`; returns them (the test closes them). */
export async function installEventFds(client: StepClient, index: number, count: number, start = 0): Promise<number[]> {
  const fds = Array.from({ length: count }, () => createEventFd());
  const flags = IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER;
  await client.ok(Command.DEVICE_SET_IRQS, encodeIrqSet({ argsz: 20, flags, index, start, count }), fds);
  return fds;
}

/**
 * Turns MSI-X on in config space (Enable set, Function Mask clear) and
 * unmasks `vectors` in the table of BAR `tableBar` at `tableOffset`.
 */
export async function enableMsix(client: StepClient, vectors: number, tableBar: number, tableOffset = 0): Promise<void> {
  const cap = await findCapability(client, 0x11);
  assert.ok(cap !== undefined, 'MSI-X capability present');
  const control = await readLe(client, RegionIndex.CONFIG, cap + 2, 2);
  await writeLe(client, RegionIndex.CONFIG, cap + 2, 2, (control | 0x8000) & ~0x4000);
  for (let v = 0; v < vectors; v++) await write32(client, tableBar, tableOffset + 16 * v + 12, 0);
}

/** Turns MSI on (one vector) in config space. */
export async function enableMsi(client: StepClient): Promise<void> {
  const cap = await findCapability(client, 0x05);
  assert.ok(cap !== undefined, 'MSI capability present');
  const control = await readLe(client, RegionIndex.CONFIG, cap + 2, 2);
  await writeLe(client, RegionIndex.CONFIG, cap + 2, 2, (control & ~0x70) | 1);
}

/** The eventfd's counter if it was signalled, polling up to `timeoutMs`; 0n if it never was. */
export async function waitEventFd(fd: number, timeoutMs = 2000): Promise<bigint> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = native.eventfdRead(fd);
    if (typeof value === 'bigint') return value;
    if (Date.now() >= deadline) return 0n;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** The eventfd's counter now (0n if not signalled). */
export function eventCount(fd: number): bigint {
  const value = native.eventfdRead(fd);
  return typeof value === 'bigint' ? value : 0n;
}

/** Guest RAM: a memfd mapped here and DMA_MAPped (READ|WRITE) at `iova`. */
export interface GuestMemory {
  iova: bigint;
  bytes: Uint8Array;
  release(): void;
}

/** Creates `size` bytes of guest RAM and maps it for the device at `iova` (the fd travels with DMA_MAP). */
export async function mapGuestMemory(client: StepClient, iova: bigint, size: number): Promise<GuestMemory> {
  const fd = memfdCreate('guest-ram', size);
  try {
    const bytes = new Uint8Array(mapFd(fd, 0, size, true));
    const flags = DmaMapFlags.READ | DmaMapFlags.WRITE;
    await client.ok(Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags, offset: 0n, addr: iova, size: BigInt(size) }), [fd]);
    return { iova, bytes, release: () => void unmap(bytes.buffer as ArrayBuffer) };
  } finally {
    native.close(fd); // the server has its own copy
  }
}

/** Closes fds (eventfds the tests created). */
export function closeAll(fds: readonly number[]): void {
  for (const fd of fds) native.close(fd);
}

/** Deterministic test bytes. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

export { IrqIndex, RegionIndex };
