/** Moving a device's migration stream in tests: MIG_DATA_READ to the end, MIG_DATA_WRITE in odd-sized pieces. */
import type { VfioUserClient } from '../../src/client/client.js';

/** MIG_DATA_READ until an empty read, `chunk` bytes at a time; @returns the pieces as read. */
export async function drainParts(client: VfioUserClient, chunk = 65536): Promise<Uint8Array[]> {
  const parts: Uint8Array[] = [];
  for (let data = await client.migDataRead(chunk); data.length > 0; data = await client.migDataRead(chunk)) parts.push(data);
  return parts;
}

/** MIG_DATA_READ until an empty read; @returns the whole stream. */
export async function drain(client: VfioUserClient, chunk = 65536): Promise<Uint8Array> {
  return Buffer.concat(await drainParts(client, chunk));
}

/** MIG_DATA_WRITE of `stream` in pieces whose sizes follow `next` from 1 (re-chunking the stream, as a peer may). */
export async function feedVarying(client: VfioUserClient, stream: Uint8Array, next: (size: number) => number): Promise<void> {
  for (let at = 0, size = 1; at < stream.length; at += size, size = next(size) || 1) {
    await client.migDataWrite(stream.subarray(at, at + size));
  }
}
