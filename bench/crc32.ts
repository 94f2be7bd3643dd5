/**
 * CRC-32 throughput of the migration stream's checksums (src/migration/crc32.ts), for the migration
 * section: the native `zlib.crc32` path, the portable table-driven fallback, and a bit-at-a-time
 * reference measured in the same run, at the buffer sizes the stream uses (records of 16 MiB, pages
 * of 4 KiB, small headers).
 */
import { crc32, crc32Portable } from '../src/migration/crc32.js';

/** MB/s of each implementation at one buffer size. */
export interface Crc32Row {
  bufferBytes: number;
  nativeMBps: number;
  portableMBps: number;
  bitwiseMBps: number;
}

function bitwise(bytes: Uint8Array, previous = 0): number {
  let c = ~previous >>> 0;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

function throughput(f: (b: Uint8Array) => number, data: Uint8Array, minBytes: number): number {
  let bytes = 0;
  let sink = 0;
  const t0 = process.hrtime.bigint();
  let seconds = 0;
  while (seconds < 0.25 || bytes < minBytes) {
    sink ^= f(data);
    bytes += data.length;
    seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  }
  if (typeof sink !== 'number') throw new Error('unreachable');
  return Math.round(bytes / 1e6 / seconds);
}

/** Best of three runs of the native and portable paths (one of the slow reference) at 16 MiB, 4 KiB and 64-byte buffers. */
export function crc32Throughput(): Crc32Row[] {
  return [16 << 20, 4096, 64].map((size) => {
    const data = new Uint8Array(size).map((_, i) => (i * 2654435761) >>> 24);
    const best = (f: (b: Uint8Array) => number, minBytes: number): number => Math.max(...[0, 1, 2].map(() => throughput(f, data, minBytes)));
    return { bufferBytes: size, nativeMBps: best(crc32, 64 << 20), portableMBps: best(crc32Portable, 32 << 20), bitwiseMBps: throughput(bitwise, data, 4 << 20) };
  });
}
