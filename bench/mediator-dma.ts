/**
 * DMA through passed fds: the DMA engine (`vfio-user serve dma-engine`, its own
 * process) copies guest RAM that this process created as a memfd and passed
 * with DMA_MAP — directly, or through a mediator that hands the same memfd on
 * (the bytes never cross the mediator). One COPY descriptor of `bytes` per
 * run; the time is from the doorbell (TAIL write) to the descriptor's DONE
 * status, polled every millisecond in guest memory. Every copy is checked
 * (destination bytes and the engine's FNV-1a checksum).
 */
import { Buffer } from 'node:buffer';
import { setTimeout as sleep } from 'node:timers/promises';
import { VfioUserClient } from '../src/client/client.js';
import { GuestMemory } from '../src/client/guest-memory.js';
import { DmaEngineControl, DmaEngineReg } from '../src/devices/dma-engine.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, DescriptorStatus, decodeResult, encodeDescriptor } from '../src/devices/dma-descriptor.js';
import { fnv1a32 } from '../src/devices/fnv1a.js';
import { RegionIndex } from '../src/protocol/constants.js';

const IOVA = 0x1_0000_0000n;
const RING_SIZE = 64;
const SRC_GPA = 1n << 20n;

/** Throughput of one path. */
export interface DmaPathResult {
  /** Best GB/s (10^9 bytes per second) over the runs. */
  bestGBps: number;
  /** Median GB/s. */
  medianGBps: number;
  /** Copies measured. */
  runs: number;
}

/** Best and median of GB/s samples. */
export function summariseRates(rates: readonly number[]): DmaPathResult {
  const sorted = [...rates].sort((a, b) => a - b);
  return { bestGBps: round2(sorted[sorted.length - 1] ?? 0), medianGBps: round2(sorted[Math.floor(sorted.length / 2)] ?? 0), runs: sorted.length };
}

function u32(v: number): Uint8Array {
  return new Uint8Array(new Uint32Array([v >>> 0]).buffer);
}

async function program(client: VfioUserClient): Promise<void> {
  const reg = (offset: number, v: number): Promise<void> => client.regionWrite(RegionIndex.BAR0, BigInt(offset), u32(v));
  await reg(DmaEngineReg.CONTROL, DmaEngineControl.RESET);
  await reg(DmaEngineReg.RING_BASE_LO, Number(IOVA & 0xffff_ffffn));
  await reg(DmaEngineReg.RING_BASE_HI, Number(IOVA >> 32n));
  await reg(DmaEngineReg.RING_SIZE, RING_SIZE);
  await reg(DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
}

/** One copy: returns the seconds from doorbell to DONE. @throws {Error} when the engine reports an error or takes over 60 s. */
async function copyOnce(client: VfioUserClient, guest: GuestMemory, slot: number, bytes: number): Promise<number> {
  const at = BigInt(slot * DESCRIPTOR_SIZE);
  const dst = SRC_GPA + BigInt(bytes);
  guest.write(at, encodeDescriptor({ src: IOVA + SRC_GPA, dst: IOVA + dst, length: bytes, flags: DescriptorFlags.COPY }));
  const t0 = process.hrtime.bigint();
  await client.regionWrite(RegionIndex.BAR0, BigInt(DmaEngineReg.TAIL), u32((slot + 1) % RING_SIZE));
  const deadline = Date.now() + 60_000;
  let status = DescriptorStatus.PENDING as number;
  while ((status = decodeResult(guest.read(at, DESCRIPTOR_SIZE)).status & 0xffff) === DescriptorStatus.PENDING) {
    if (Date.now() > deadline) throw new Error('the DMA engine did not complete a copy within 60 s');
    await sleep(1);
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (status !== DescriptorStatus.DONE) throw new Error(`the DMA engine completed the copy with status 0x${status.toString(16)}`);
  return seconds;
}

/**
 * Copies `bytes` of guest RAM `runs` times (after one warm-up copy) through
 * the device at `path` (direct or mediated).
 * @returns GB/s of each copy.
 * @throws {Error} when a copy is wrong (bytes or checksum) or fails.
 */
export async function dmaCopyThroughput(path: string, bytes: number, runs: number): Promise<number[]> {
  const guest = GuestMemory.create(Number(SRC_GPA) + 2 * bytes);
  const client = await VfioUserClient.connect(path);
  try {
    await guest.attach(client, { iova: IOVA });
    const src = new Uint8Array(bytes);
    for (let i = 0; i < bytes; i += 4096) src[i] = (i >>> 12) & 0xff;
    guest.write(SRC_GPA, src);
    await program(client);
    const rates: number[] = [];
    for (let run = 0; run <= runs; run++) {
      guest.write(SRC_GPA + BigInt(bytes), new Uint8Array(bytes).fill(run & 0xff)); // a stale destination
      const seconds = await copyOnce(client, guest, run % RING_SIZE, bytes);
      if (run > 0) rates.push(bytes / seconds / 1e9);
    }
    const last = decodeResult(guest.read(BigInt(((runs % RING_SIZE) * DESCRIPTOR_SIZE)), DESCRIPTOR_SIZE));
    if (last.checksum !== fnv1a32(src)) throw new Error('the DMA engine\'s checksum differs from the source\'s');
    if (Buffer.compare(guest.read(SRC_GPA + BigInt(bytes), bytes), src) !== 0) throw new Error('the copied bytes differ from the source');
    await client.regionWrite(RegionIndex.BAR0, BigInt(DmaEngineReg.CONTROL), u32(0));
    await guest.detach(client);
    return rates;
  } finally {
    await client.close();
    guest.dispose();
  }
}

/** `Uint8Array.prototype.set` of `bytes` between two buffers in this process: best GB/s of `iterations` copies. */
export function jsCopyGBps(bytes: number, iterations: number): number {
  const a = new Uint8Array(bytes).fill(1);
  const b = new Uint8Array(bytes);
  b.set(a);
  let best = 0;
  for (let i = 0; i < iterations; i++) {
    const t0 = process.hrtime.bigint();
    (i & 1 ? a : b).set(i & 1 ? b : a);
    best = Math.max(best, bytes / Number(process.hrtime.bigint() - t0));
  }
  return round2(best);
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}
