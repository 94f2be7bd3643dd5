/**
 * A small driver for the sample DMA engine (`src/devices/dma-engine.ts`), as
 * a guest OS would write it on top of what a VMM provides: registers through
 * REGION_READ/REGION_WRITE of BAR0, a descriptor ring in guest RAM, and
 * completions learnt from MSI-X interrupts. Used by `vfio-user demo`.
 */
import type { VfioUserClient } from '../client/client.js';
import type { GuestMemory } from '../client/guest-memory.js';
import type { InterruptEvent, Interrupts } from '../client/interrupts.js';
import { RegionIndex } from '../protocol/constants.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, DescriptorStatus, decodeResult, encodeDescriptor } from '../devices/dma-descriptor.js';
import { DMA_ENGINE_ID, DmaEngineControl, DmaEngineReg, DmaEngineStatus, DmaEngineVector } from '../devices/dma-engine.js';
import { CliError, hex } from './common.js';

/** One copy job: `length` bytes from `src` to `dst` (guest physical addresses in the memory block). */
export interface CopyJob {
  /** Sequence number. */
  seq: number;
  /** Ring index its descriptor occupies. */
  slot: number;
  src: bigint;
  dst: bigint;
  length: number;
  /** FNV-1a 32 of the source, computed by the driver before posting. */
  expected: number;
}

/** What the device wrote back for a job. */
export interface JobResult {
  status: number;
  checksum: number;
}

/** Driver state over one client session. */
export class DmaEngineDriver {
  readonly client: VfioUserClient;
  readonly memory: GuestMemory;
  /** Where the device sees gpa 0 of {@link memory}. */
  readonly iova: bigint;
  /** Guest physical address of the ring. */
  readonly ringGpa: bigint;
  readonly ringSize: number;
  #tail = 0;

  constructor(client: VfioUserClient, memory: GuestMemory, iova: bigint, ringGpa: bigint, ringSize: number) {
    this.client = client;
    this.memory = memory;
    this.iova = iova;
    this.ringGpa = ringGpa;
    this.ringSize = ringSize;
  }

  /** Reads a 32-bit BAR0 register. */
  async reg(offset: number): Promise<number> {
    const b = await this.client.regionRead(RegionIndex.BAR0, BigInt(offset), 4);
    return new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);
  }

  /** Writes a 32-bit BAR0 register. */
  async setReg(offset: number, value: number): Promise<void> {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    await this.client.regionWrite(RegionIndex.BAR0, BigInt(offset), b);
  }

  /**
   * Checks the ID register, resets the engine, programs the ring and enables it.
   * @throws {CliError} when BAR0 does not look like the DMA engine.
   */
  async start(): Promise<number> {
    const id = await this.reg(DmaEngineReg.ID);
    if (id !== DMA_ENGINE_ID) throw new CliError(`BAR0 ID register reads ${hex(id, 8)}, not the DMA engine's ${hex(DMA_ENGINE_ID, 8)}`);
    await this.setReg(DmaEngineReg.CONTROL, DmaEngineControl.RESET);
    const ring = this.iova + this.ringGpa;
    await this.setReg(DmaEngineReg.RING_BASE_LO, Number(ring & 0xffff_ffffn));
    await this.setReg(DmaEngineReg.RING_BASE_HI, Number(ring >> 32n));
    await this.setReg(DmaEngineReg.RING_SIZE, this.ringSize);
    await this.setReg(DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
    this.#tail = 0;
    return id;
  }

  /** Ring index the next posted descriptor takes. */
  get tail(): number {
    return this.#tail;
  }

  /** Writes the jobs' descriptors (status PENDING) into the ring, then rings the doorbell (TAIL). */
  async post(jobs: readonly CopyJob[]): Promise<void> {
    for (const job of jobs) {
      if (job.slot !== this.#tail) throw new CliError(`dma driver: job ${job.seq} was given ring slot ${job.slot}, the tail is ${this.#tail}`);
      const descriptor = encodeDescriptor({ src: this.iova + job.src, dst: this.iova + job.dst, length: job.length, flags: DescriptorFlags.COPY });
      this.memory.write(this.ringGpa + BigInt(job.slot * DESCRIPTOR_SIZE), descriptor);
      this.#tail = (this.#tail + 1) % this.ringSize;
    }
    await this.setReg(DmaEngineReg.TAIL, this.#tail);
  }

  /** The device-written checksum and status of a job's descriptor. */
  result(job: CopyJob): JobResult {
    return decodeResult(this.memory.view(this.ringGpa + BigInt(job.slot * DESCRIPTOR_SIZE), DESCRIPTOR_SIZE));
  }

  /**
   * Waits until every job's descriptor is no longer PENDING, sleeping on MSI-X
   * interrupts in between (never polling the ring on a timer).
   * @returns the interrupts consumed.
   * @throws {CliError} when the engine halts or no interrupt arrives within `timeoutMs`.
   */
  async waitFor(jobs: readonly CopyJob[], irqs: Interrupts, timeoutMs: number): Promise<number> {
    let interrupts = 0;
    while (jobs.some((j) => (this.result(j).status & 0xffff) === DescriptorStatus.PENDING)) {
      const event = await nextInterrupt(irqs, timeoutMs);
      interrupts++;
      if (event.vector === DmaEngineVector.ERROR && ((await this.reg(DmaEngineReg.STATUS)) & DmaEngineStatus.HALTED) !== 0) {
        throw new CliError(`the DMA engine halted (HEAD ${await this.reg(DmaEngineReg.HEAD)}, TAIL ${this.#tail})`);
      }
    }
    return interrupts;
  }

  /** Disables the engine. */
  async stop(): Promise<void> {
    await this.setReg(DmaEngineReg.CONTROL, 0);
  }
}

/** The next interrupt on any vector of `irqs`. @throws {CliError} after `timeoutMs`. */
export function nextInterrupt(irqs: Interrupts, timeoutMs: number): Promise<InterruptEvent> {
  return new Promise((resolve, reject) => {
    const onInterrupt = (event: InterruptEvent): void => {
      clearTimeout(timer);
      resolve(event);
    };
    const timer = setTimeout(() => {
      irqs.off('interrupt', onInterrupt);
      reject(new CliError(`no MSI-X interrupt within ${timeoutMs} ms`));
    }, timeoutMs);
    irqs.once('interrupt', onInterrupt);
  });
}
