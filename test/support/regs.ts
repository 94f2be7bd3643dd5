/** 32-bit little-endian register access through a client's REGION_READ / REGION_WRITE (any region). */
import type { VfioUserClient } from '../../src/client/client.js';

export async function read32(client: VfioUserClient, region: number, offset: number): Promise<number> {
  const b = await client.regionRead(region, BigInt(offset), 4);
  return new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);
}

export async function write32(client: VfioUserClient, region: number, offset: number, value: number): Promise<void> {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, value >>> 0, true);
  await client.regionWrite(region, BigInt(offset), b);
}
