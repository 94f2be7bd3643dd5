/**
 * The workload of `vfio-user migrate --demo`: copy jobs streamed to a DMA
 * engine through its descriptor ring in guest RAM, as a guest driver would,
 * each batch verified when done. The stream can pause (the vCPUs stop for the
 * switch-over), be throttled (auto-converge), be captured as the VMM's state
 * ({@link WorkloadState}, carried by the migration) and resume on another
 * engine — in this process or in the receiver of a remote migration.
 */
import { createHash, randomFillSync, randomInt } from 'node:crypto';
import type { VfioUserClient } from '../client/client.js';
import { GuestMemory } from '../client/guest-memory.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, DescriptorStatus, decodeResult, encodeDescriptor } from '../devices/dma-descriptor.js';
import { DmaEngineReg } from '../devices/dma-engine.js';
import { fnv1a32 } from '../devices/fnv1a.js';
import { throttleDelayMs } from '../orchestrator/throttle.js';
import { verifyJob } from './commands/demo.js';
import { DmaEngineDriver, type CopyJob } from './dma-driver.js';

export const GUEST_RAM = 64 << 20;
export const IOVA = 0x1_0000_0000n;
export const RING_GPA = 0n;
export const RING_SIZE = 64;
const DATA_GPA = 1 << 20;
export const MIN_JOB = 64 << 10;
export const MAX_JOB = 256 << 10;
const SLOT = 2 * MAX_JOB;
export const MAX_JOBS = 1_000_000;
/** One batch in flight, data in two halves of BATCH slots (sources and destinations) in guest RAM. */
export const BATCH = 15;
export const JOB_WAIT_MS = 20_000;

/** Whether the device has not finished `job` (its descriptor in guest RAM). */
export const isPending = (memory: GuestMemory, job: CopyJob): boolean =>
  (decodeResult(memory.view(RING_GPA + BigInt(job.slot * DESCRIPTOR_SIZE), DESCRIPTOR_SIZE)).status & 0xffff) === DescriptorStatus.PENDING;

/** Polls the ring in guest RAM (shared with the device) until no job is PENDING; false at `deadline` or when `stop()`. */
export async function waitJobs(memory: GuestMemory, jobs: readonly CopyJob[], deadline: number, stop: () => boolean = () => false): Promise<boolean> {
  while (jobs.some((j) => isPending(memory, j))) {
    if (performance.now() > deadline || stop()) return false;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  return true;
}

/** The guest RAM an unfinished job will still write (its descriptor and its destination), as [start, end) ranges. */
export function holesOf(jobs: readonly CopyJob[]): [number, number][] {
  return jobs.flatMap((j): [number, number][] => [
    [Number(RING_GPA) + j.slot * DESCRIPTOR_SIZE, Number(RING_GPA) + (j.slot + 1) * DESCRIPTOR_SIZE],
    [Number(j.dst), Number(j.dst) + j.length],
  ]);
}

/** SHA-256 of `memory` outside the `holes` (hex): equal digests = equal memory where no unfinished job writes. */
export function digestOutside(memory: Uint8Array, holes: [number, number][]): string {
  const hash = createHash('sha256');
  let at = 0;
  for (const [start, end] of [...holes, [memory.length, memory.length] as [number, number]].sort((x, y) => x[0] - y[0])) {
    if (start > at) hash.update(memory.subarray(at, start));
    at = Math.max(at, end);
  }
  return hash.digest('hex');
}

/** Creates guest RAM and DMA_MAPs it (fd mode) at {@link IOVA}. */
export async function attachGuestRam(client: VfioUserClient, name: string, size = GUEST_RAM): Promise<GuestMemory> {
  const memory = GuestMemory.create(size, { name });
  try {
    await memory.attach(client, { iova: IOVA, mode: 'fd' });
  } catch (error) {
    memory.dispose();
    throw error;
  }
  return memory;
}

/** The stream's position, as the VMM migrates it (JSON; addresses as strings). */
export interface WorkloadState {
  kind: 'vfio-user-demo-jobs';
  total: number;
  posted: number;
  finished: number;
  tail: number;
  failures: string[];
  inFlight: Array<Omit<CopyJob, 'src' | 'dst'> & { src: string; dst: string }>;
}

/** Posts copy jobs in batches (the next once the current is done) until paused or `total` are posted; verifies every finished batch. */
export class JobStream {
  readonly total: number;
  readonly failures: string[] = [];
  /** Jobs posted and not yet seen finished. */
  inFlight: CopyJob[] = [];
  posted = 0;
  finished = 0;
  #paused = false;
  #tail = 0;
  #throttle = 0;
  #driver: DmaEngineDriver;
  #running: Promise<void> | undefined;

  constructor(driver: DmaEngineDriver, total: number) {
    this.#driver = driver;
    this.total = total;
  }

  /** A stream continuing from `state` (captured on another host) on `driver`. */
  static fromState(driver: DmaEngineDriver, state: WorkloadState): JobStream {
    const s = new JobStream(driver, state.total);
    s.posted = state.posted;
    s.finished = state.finished;
    s.#tail = state.tail;
    s.failures.push(...state.failures);
    s.inFlight = state.inFlight.map((j) => ({ ...j, src: BigInt(j.src), dst: BigInt(j.dst) }));
    return s;
  }

  get driver(): DmaEngineDriver {
    return this.#driver;
  }

  /** The position now (consistent at any await point of the loop). */
  state(): WorkloadState {
    return {
      kind: 'vfio-user-demo-jobs',
      total: this.total,
      posted: this.posted,
      finished: this.finished,
      tail: this.#tail,
      failures: [...this.failures],
      inFlight: this.inFlight.map((j) => ({ ...j, src: j.src.toString(), dst: j.dst.toString() })),
    };
  }

  /** Runs on `driver` (its guest RAM) from where the stream is. */
  start(driver: DmaEngineDriver): void {
    this.#driver = driver;
    this.#paused = false;
    this.#running = this.#loop();
  }

  /** No new doorbell after this returns (the one in flight precedes the next request on the connection). */
  pause(): void {
    this.#paused = true;
  }

  /** Auto-converge: after each batch, idle so the guest runs only (100 − percent) % of the time. */
  throttle(percent: number): void {
    this.#throttle = percent;
  }

  async done(): Promise<void> {
    await this.#running;
  }

  async #loop(): Promise<void> {
    const deadline = (): number => performance.now() + JOB_WAIT_MS;
    let batchStarted = performance.now();
    for (;;) {
      if (this.inFlight.length > 0) {
        if (!(await waitJobs(this.#driver.memory, this.inFlight, deadline(), () => this.#paused))) return;
        for (const job of this.inFlight) {
          const problem = verifyJob(this.#driver, job);
          if (problem) this.failures.push(problem);
        }
        this.finished += this.inFlight.length;
        this.inFlight = [];
        const pause = throttleDelayMs(this.#throttle, performance.now() - batchStarted);
        if (pause > 0) await new Promise((resolve) => setTimeout(resolve, pause));
      }
      if (this.#paused || this.posted >= this.total) return;
      batchStarted = performance.now();
      await this.#postBatch();
    }
  }

  async #postBatch(): Promise<void> {
    const count = Math.min(BATCH, this.total - this.posted);
    const half = (this.posted / BATCH) % 2;
    const jobs: CopyJob[] = [];
    for (let i = 0; i < count; i++) {
      const base = BigInt(DATA_GPA + (half * BATCH + i) * SLOT);
      const length = randomInt(MIN_JOB, MAX_JOB + 1);
      const source = this.#driver.memory.view(base, length, { markDirty: true }); // a guest CPU write: the dirty log must see it
      randomFillSync(source);
      jobs.push({ seq: this.posted + i, slot: (this.#tail + i) % RING_SIZE, src: base, dst: base + BigInt(MAX_JOB), length, expected: fnv1a32(source) });
    }
    for (const job of jobs) {
      const descriptor = encodeDescriptor({ src: IOVA + job.src, dst: IOVA + job.dst, length: job.length, flags: DescriptorFlags.COPY });
      this.#driver.memory.write(RING_GPA + BigInt(job.slot * DESCRIPTOR_SIZE), descriptor);
    }
    this.#tail = (this.#tail + count) % RING_SIZE;
    this.inFlight = jobs;
    this.posted += count;
    await this.#driver.setReg(DmaEngineReg.TAIL, this.#tail);
  }
}

/** A driver for the engine of `client` over `memory` (ring at {@link RING_GPA}). */
export const driverFor = (client: VfioUserClient, memory: GuestMemory): DmaEngineDriver => new DmaEngineDriver(client, memory, IOVA, RING_GPA, RING_SIZE);
