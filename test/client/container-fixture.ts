/**
 * Sample devices served in-process for the container tests (the DMA engine
 * and the memory device of src/devices), connected clients, and a driver
 * that makes a DMA engine copy guest memory.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import { createDmaEngineDevice, type DmaEngineDevice } from '../../src/devices/dma-engine.js';
import { createMemoryDevice } from '../../src/devices/memory.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, decodeResult, encodeDescriptor } from '../../src/devices/dma-descriptor.js';
import type { VfioUserDevice } from '../../src/device/device.js';
import type { GuestMemory } from '../../src/client/guest-memory.js';
import type { ServeOptions } from '../../src/server/server.js';
import type { DeviceServer } from '../../src/server/server.js';
import { silentLogger } from '../../src/log.js';

/** A sample device served on a temporary socket. */
export interface Served {
  device: VfioUserDevice;
  /** The DMA engine's handle (DMA engines only). */
  engine: DmaEngineDevice | undefined;
  server: DeviceServer;
  path: string;
  close(): Promise<void>;
}

/** Serves a DMA engine or a memory device (`options` go to `serve`). */
export function serveSample(kind: 'dma-engine' | 'memory', options: Omit<ServeOptions, 'path'> = {}): Served {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-container-'));
  const path = join(dir, `${kind}.sock`);
  const engine = kind === 'dma-engine' ? createDmaEngineDevice({ logger: silentLogger() }) : undefined;
  const device = engine ? engine.device : createMemoryDevice({ size: 0x10000, logger: silentLogger() }).device;
  const server = device.serve({ path, ...options });
  return {
    device,
    engine,
    server,
    path,
    async close() {
      await server.close();
      device.dispose();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Serves `kinds`, connects a client to each, runs `fn`, then closes everything (even on failure). */
export async function withDevices(kinds: ReadonlyArray<'dma-engine' | 'memory'>, fn: (clients: VfioUserClient[], served: Served[]) => Promise<void>): Promise<void> {
  const served = kinds.map((k) => serveSample(k));
  const clients: VfioUserClient[] = [];
  try {
    for (const s of served) clients.push(await VfioUserClient.connect(s.path, { logger: silentLogger() }));
    await fn(clients, served);
  } finally {
    for (const c of clients) c.close();
    for (const s of served) await s.close();
  }
}

const u32 = (v: number): Uint8Array => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
};

/** BAR0 registers of the DMA engine (spelled out, as in docs/devices.md). */
const Reg = { CONTROL: 0x04n, RING_BASE_LO: 0x0cn, RING_BASE_HI: 0x10n, RING_SIZE: 0x14n, TAIL: 0x1cn, COMPLETED: 0x20n } as const;

/**
 * Has the DMA engine behind `client` copy `length` bytes from `src` to `dst`
 * (IOVAs) with a two-entry ring at `ring` (descriptor 0 posted) (an IOVA of `memory`; `memoryIova` is
 * the IOVA its offset 0 has, for the mapping the ring is in), and waits for the descriptor's status.
 * @returns the descriptor's status word (1 = DONE).
 */
export async function dmaCopy(client: VfioUserClient, memory: GuestMemory, memoryIova: bigint, ring: bigint, src: bigint, dst: bigint, length: number): Promise<number> {
  // Written through a view without marking: the descriptor is the driver's, not the data under test.
  memory.view(ring - memoryIova, DESCRIPTOR_SIZE).set(encodeDescriptor({ src, dst, length, flags: DescriptorFlags.COPY }));
  await client.regionWrite(0, Reg.CONTROL, u32(0));
  await client.regionWrite(0, Reg.RING_BASE_LO, u32(Number(ring & 0xffffffffn)));
  await client.regionWrite(0, Reg.RING_BASE_HI, u32(Number(ring >> 32n)));
  await client.regionWrite(0, Reg.RING_SIZE, u32(2)); // zeroes HEAD and TAIL; TAIL must stay below the size
  await client.regionWrite(0, Reg.CONTROL, u32(1));
  const completed = async (): Promise<number> => {
    const b = await client.regionRead(0, Reg.COMPLETED, 4);
    return new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);
  };
  const before = await completed();
  await client.regionWrite(0, Reg.TAIL, u32(1));
  for (let i = 0; i < 2000; i++) {
    if ((await completed()) !== before) break;
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  return decodeResult(memory.read(ring - memoryIova, DESCRIPTOR_SIZE)).status;
}
