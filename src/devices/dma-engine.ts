/**
 * A descriptor-ring DMA engine: the driver posts 32-byte descriptors (see
 * `dma-descriptor.ts`) in a ring in guest memory and rings a doorbell; the
 * device copies or checksums guest memory through the client's DMA API, writes
 * each descriptor's checksum and status back, and interrupts. It is a PCI
 * Express endpoint with a Device Serial Number, two MSI-X vectors (table and
 * PBA in BAR4) and power management.
 *
 * BAR0 register map (32-bit registers, little-endian, any access width;
 * reserved offsets read 0 and ignore writes):
 *
 * | off  | name         | access | meaning |
 * |------|--------------|--------|---------|
 * | 0x00 | ID           | RO     | 0x01414d44 ("DMA", version 1) |
 * | 0x04 | CONTROL      | RW     | bit 0 ENABLE: process descriptors; bit 1 RESET: write 1 to reset the engine (self-clearing) |
 * | 0x08 | STATUS       | R/W1C  | bit 0 BUSY (RO): a job is running; bit 1 ERROR: a descriptor completed with an error; bit 2 HALTED: ring fault, processing stopped until cleared |
 * | 0x0c | RING_BASE_LO | RW     | ring IOVA bits 31:0 (writable only while ENABLE and BUSY are 0) |
 * | 0x10 | RING_BASE_HI | RW     | ring IOVA bits 63:32 (writable only while ENABLE and BUSY are 0) |
 * | 0x14 | RING_SIZE    | RW     | entries, 1–65536 (writable only while ENABLE and BUSY are 0; a write zeroes HEAD and TAIL) |
 * | 0x18 | HEAD         | RO     | index of the next descriptor the device processes |
 * | 0x1c | TAIL         | RW     | doorbell: index one past the last posted descriptor; a value ≥ RING_SIZE halts |
 * | 0x20 | COMPLETED    | RO     | descriptors completed (DONE or ERROR) since reset, wrapping |
 * | 0x24 | ERRORS       | RO     | descriptors completed with ERROR since reset, wrapping |
 *
 * Processing: after a TAIL write (or ENABLE, or clearing HALTED) the device
 * works asynchronously from HEAD to TAIL: reads the descriptor, reads the
 * source in chunks of at most 1 MiB (`device.dma.read`), writes them to the
 * destination for COPY (`device.dma.write`, which marks the pages dirty while
 * logging), writes checksum and status back into the descriptor, and advances
 * HEAD. A descriptor whose transfer fails (unmapped IOVA → EFAULT, no
 * permission → EACCES, bad flags → EINVAL) completes with status ERROR and
 * the errno in bits 31:16. A descriptor that cannot itself be read or written
 * back halts the engine (STATUS.HALTED, HEAD stays on it). When HEAD reaches
 * TAIL, MSI-X vector 1 fires if the batch had errors or halted, and vector 0
 * if at least one descriptor completed DONE.
 *
 * A job stops quietly when the client disconnects (its DMA is gone); the reset
 * hook (DEVICE_RESET or disconnect) waits for it to stop and clears the
 * engine. CONTROL.RESET does the same from the driver side.
 *
 * Migration (v2, STOP_COPY and P2P). Quiesce: an arc into RUNNING_P2P or a
 * stopped state (STOP, STOP_COPY, RESUMING) stops taking descriptors and waits,
 * before the arc commits, for the descriptor in progress to complete (its data
 * copied, checksum and status written back, HEAD advanced): no descriptor is
 * ever left half done, and the arc takes as long as the rest of one descriptor.
 * A batch interrupted that way is not over: its interrupts are not raised, and
 * its DONE/ERROR counts are kept (and migrated) so that the vectors fire when
 * the batch ends, wherever that is. In RUNNING_P2P the registers work as usual
 * (a TAIL write is taken, a bad one halts and interrupts) but no DMA starts;
 * in a stopped state register writes are ignored and an interrupt the engine
 * owes is kept until it operates again. RUNNING resumes processing if
 * HEAD ≠ TAIL. Device type `dma-engine`, state version 1, 48 bytes, little-endian:
 *
 * | off  | size | field |
 * |------|------|-------|
 * | 0x00 | 4    | CONTROL (bit 0 ENABLE) |
 * | 0x04 | 4    | STATUS without BUSY (bit 1 ERROR, bit 2 HALTED) |
 * | 0x08 | 8    | RING_BASE |
 * | 0x10 | 4    | RING_SIZE (as written; 0 or ≤ 65536 for a working ring) |
 * | 0x14 | 4    | HEAD (< RING_SIZE, or 0 when RING_SIZE is 0) |
 * | 0x18 | 4    | TAIL (idem) |
 * | 0x1c | 4    | COMPLETED |
 * | 0x20 | 4    | ERRORS |
 * | 0x24 | 4    | current batch: descriptors completed DONE so far |
 * | 0x28 | 4    | current batch: descriptors completed with ERROR so far (a halt counts) |
 * | 0x2c | 4    | owed interrupts: bit n = MSI-X vector n, raised while stopped |
 *
 * Guest memory (the ring, the buffers) is not device state: the migration
 * orchestrator moves it, and must have it in place at the same IOVAs before
 * the destination runs.
 */
import { InvalidArgumentError, VfioUserError } from '../errors.js';
import { createDevice, type VfioUserDevice } from '../device/device.js';
import type { DmaController } from '../device/dma.js';
import type { MigrationDefinition } from '../migration/types.js';
import { MigrationState } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import type { Logger } from '../log.js';
import { FNV1A_OFFSET_BASIS, fnv1aUpdate } from './fnv1a.js';
import { RunState, checkBits, openState } from './migration-support.js';
import { RegisterBlock, mergeLanes } from './register-block.js';
import {
  DESCRIPTOR_SIZE,
  DESCRIPTOR_WRITEBACK_OFFSET,
  DescriptorFlags,
  DescriptorStatus,
  decodeDescriptor,
  encodeWriteback,
  errorStatus,
  type Descriptor,
} from './dma-descriptor.js';

/** BAR0 register offsets of the DMA engine. */
export const DmaEngineReg = {
  ID: 0x00,
  CONTROL: 0x04,
  STATUS: 0x08,
  RING_BASE_LO: 0x0c,
  RING_BASE_HI: 0x10,
  RING_SIZE: 0x14,
  HEAD: 0x18,
  TAIL: 0x1c,
  COMPLETED: 0x20,
  ERRORS: 0x24,
} as const;
/** One of {@link DmaEngineReg}. */
export type DmaEngineReg = (typeof DmaEngineReg)[keyof typeof DmaEngineReg];

/** CONTROL bits. */
export const DmaEngineControl = { ENABLE: 1 << 0, RESET: 1 << 1 } as const;
/** STATUS bits. */
export const DmaEngineStatus = { BUSY: 1 << 0, ERROR: 1 << 1, HALTED: 1 << 2 } as const;
/** MSI-X vectors. */
export const DmaEngineVector = { COMPLETION: 0, ERROR: 1 } as const;

/** Value of the ID register. */
export const DMA_ENGINE_ID = 0x01414d44;
/** PCI identity: QEMU's de-facto sample vendor id, class "other system peripheral". */
export const DMA_ENGINE_PCI_ID = { vendorId: 0x1234, deviceId: 0x5a02, classCode: 0x088000 } as const;
/** Largest ring, in descriptors. */
export const DMA_ENGINE_MAX_RING = 65536;
/** Largest piece of a transfer read or written at once. */
export const DMA_ENGINE_CHUNK = 1 << 20;
/** BAR0 (registers) and BAR4 (MSI-X table at 0, PBA at 0x800) sizes. */
export const DMA_ENGINE_BAR0_SIZE = 0x1000;
export const DMA_ENGINE_BAR4_SIZE = 0x1000;
/** Device type in the migration stream. */
export const DMA_ENGINE_DEVICE_TYPE = 'dma-engine';
/** Version of the migration state layout (module TSDoc). */
export const DMA_ENGINE_STATE_VERSION = 1;
/** Size of the migration state. */
export const DMA_ENGINE_STATE_SIZE = 48;

/** A snapshot of the engine's registers and activity. */
export interface DmaEngineState {
  enabled: boolean;
  ringBase: bigint;
  ringSize: number;
  head: number;
  tail: number;
  /** STATUS register value (BUSY included). */
  status: number;
  completed: number;
  errors: number;
  busy: boolean;
}

/** Options of {@link createDmaEngineDevice}. */
export interface DmaEngineOptions {
  /** Device name for logs (default `dma-engine`). */
  name?: string;
  logger?: Logger;
  /** Device Serial Number (default 0x5a02_0000_0000_0001). */
  serialNumber?: bigint;
}

/** The DMA engine device and its state, for tests and (later) migration. */
export interface DmaEngineDevice {
  readonly device: VfioUserDevice;
  /** A snapshot of the engine state. */
  engineState(): DmaEngineState;
  /** Resolves when no job is running. */
  idle(): Promise<void>;
}

/** Thrown inside a job when it must stop (reset, or the client went away). */
class JobAborted extends Error {}

const yieldToIo = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** The engine: registers, ring state and the asynchronous job. */
class DmaEngine {
  #enabled = false;
  #ringBase = 0n;
  #ringSize = 0;
  #head = 0;
  #tail = 0;
  #status = 0;
  #completed = 0;
  #errors = 0;
  #generation = 0;
  /** Descriptors of the current batch completed DONE / with ERROR (vectors fire when the batch ends). */
  #batchDone = 0;
  #batchFailed = 0;
  /** Vectors raised while stopped, bit n = vector n. */
  #owed = 0;
  readonly run = new RunState();
  #job: Promise<void> | undefined;
  /** Generation the running job belongs to; a job of an older one is only winding down. */
  #jobGeneration = -1;
  /** Set right after the device is created. */
  device!: VfioUserDevice;

  /** A job of the current generation is running (a reset job winding down does not count). */
  get #busy(): boolean {
    return this.#job !== undefined && this.#jobGeneration === this.#generation;
  }

  state(): DmaEngineState {
    const busy = this.#busy;
    return {
      enabled: this.#enabled,
      ringBase: this.#ringBase,
      ringSize: this.#ringSize,
      head: this.#head,
      tail: this.#tail,
      status: this.#status | (busy ? DmaEngineStatus.BUSY : 0),
      completed: this.#completed,
      errors: this.#errors,
      busy,
    };
  }

  async idle(): Promise<void> {
    while (this.#job) await this.#job;
  }

  /** Stops the job (it ends at its next step) and clears everything; synchronous part first. */
  async reset(): Promise<void> {
    this.#clear();
    await this.idle();
    this.run.enter(this.device.migration?.state ?? MigrationState.RUNNING);
  }

  /** The migration hooks. */
  migration(): MigrationDefinition {
    return {
      p2p: true,
      deviceType: DMA_ENGINE_DEVICE_TYPE,
      stateVersion: DMA_ENGINE_STATE_VERSION,
      save: () => this.#save(),
      load: (kind, payload) => this.#load(kind, payload),
      transition: (_from, to) => this.#transition(to),
      stopCopySize: () => DMA_ENGINE_STATE_SIZE,
    };
  }

  async #transition(to: number): Promise<void> {
    const resumed = this.run.enter(to);
    if (!this.run.dmaAllowed) await this.idle(); // the loop takes no new descriptor; the one in progress completes
    if (resumed) {
      const owed = this.#owed;
      this.#owed = 0;
      for (let vector = 0; vector < 2; vector++) if ((owed & (1 << vector)) !== 0) this.device.interrupt(vector);
    }
    this.#kick();
  }

  #save(): Uint8Array {
    const out = new Uint8Array(DMA_ENGINE_STATE_SIZE);
    const v = new DataView(out.buffer);
    v.setUint32(0x00, this.#enabled ? DmaEngineControl.ENABLE : 0, true);
    v.setUint32(0x04, this.#status, true);
    v.setBigUint64(0x08, this.#ringBase, true);
    v.setUint32(0x10, this.#ringSize, true);
    v.setUint32(0x14, this.#head, true);
    v.setUint32(0x18, this.#tail, true);
    v.setUint32(0x1c, this.#completed, true);
    v.setUint32(0x20, this.#errors, true);
    v.setUint32(0x24, this.#batchDone, true);
    v.setUint32(0x28, this.#batchFailed, true);
    v.setUint32(0x2c, this.#owed, true);
    return out;
  }

  #load(kind: 'full' | 'delta', payload: Uint8Array): void {
    const r = openState(`${DMA_ENGINE_DEVICE_TYPE} state v${DMA_ENGINE_STATE_VERSION}`, payload, DMA_ENGINE_STATE_SIZE);
    if (kind !== 'full') throw r.error(`a '${kind}' record, but this device sends its whole state in one 'full' record`);
    if (this.#job) throw r.error('the engine is still running a job'); // cannot happen: RESUMING is reached through STOP
    const control = checkBits(r, 'CONTROL', r.u32('CONTROL'), DmaEngineControl.ENABLE);
    const status = checkBits(r, 'STATUS', r.u32('STATUS'), DmaEngineStatus.ERROR | DmaEngineStatus.HALTED);
    const ringBase = r.u64('RING_BASE');
    const ringSize = r.u32('RING_SIZE');
    const head = r.u32('HEAD');
    const tail = r.u32('TAIL');
    const inRing = (i: number): boolean => (ringSize === 0 ? i === 0 : i < ringSize);
    if (!inRing(head) || !inRing(tail)) throw r.error(`HEAD ${head} / TAIL ${tail} outside a ${ringSize}-entry ring`);
    const completed = r.u32('COMPLETED');
    const errors = r.u32('ERRORS');
    const batchDone = r.u32('batch done');
    const batchFailed = r.u32('batch failed');
    const owed = checkBits(r, 'owed interrupts', r.u32('owed interrupts'), (1 << DmaEngineVector.COMPLETION) | (1 << DmaEngineVector.ERROR));
    this.#enabled = control !== 0;
    this.#status = status;
    this.#ringBase = ringBase;
    this.#ringSize = ringSize;
    this.#head = head;
    this.#tail = tail;
    this.#completed = completed;
    this.#errors = errors;
    this.#batchDone = batchDone;
    this.#batchFailed = batchFailed;
    this.#owed = owed;
  }

  /** Raises `vector` now, or once the engine operates again if it is stopped. */
  #raise(vector: number): void {
    if (this.run.stopped) this.#owed |= 1 << vector;
    else this.device.interrupt(vector);
  }

  registers(): RegisterBlock {
    const whileDisabled = (apply: () => void): void => {
      if (!this.#enabled && !this.#busy) apply();
    };
    return new RegisterBlock('dma-engine BAR0', DMA_ENGINE_BAR0_SIZE, {
      [DmaEngineReg.ID]: { read: () => DMA_ENGINE_ID },
      [DmaEngineReg.CONTROL]: { read: () => (this.#enabled ? DmaEngineControl.ENABLE : 0), write: (v, m) => this.#writeControl(v & m) },
      [DmaEngineReg.STATUS]: { read: () => this.state().status, write: (v, m) => this.#clearStatus(v & m) },
      [DmaEngineReg.RING_BASE_LO]: {
        read: () => Number(this.#ringBase & 0xffff_ffffn),
        write: (v, m) => whileDisabled(() => (this.#ringBase = (this.#ringBase & ~0xffff_ffffn) | BigInt(mergeLanes(Number(this.#ringBase & 0xffff_ffffn), v, m)))),
      },
      [DmaEngineReg.RING_BASE_HI]: {
        read: () => Number(this.#ringBase >> 32n),
        write: (v, m) => whileDisabled(() => (this.#ringBase = (this.#ringBase & 0xffff_ffffn) | (BigInt(mergeLanes(Number(this.#ringBase >> 32n), v, m)) << 32n))),
      },
      [DmaEngineReg.RING_SIZE]: {
        read: () => this.#ringSize,
        write: (v, m) => whileDisabled(() => this.#setRingSize(mergeLanes(this.#ringSize, v, m))),
      },
      [DmaEngineReg.HEAD]: { read: () => this.#head },
      [DmaEngineReg.TAIL]: { read: () => this.#tail, write: (v, m) => this.#writeTail(mergeLanes(this.#tail, v, m)) },
      [DmaEngineReg.COMPLETED]: { read: () => this.#completed },
      [DmaEngineReg.ERRORS]: { read: () => this.#errors },
    });
  }

  #setRingSize(size: number): void {
    this.#ringSize = size;
    this.#head = 0;
    this.#tail = 0;
  }

  #writeControl(value: number): void {
    if ((value & DmaEngineControl.RESET) !== 0) {
      this.#clear();
      return;
    }
    const enable = (value & DmaEngineControl.ENABLE) !== 0;
    const wasEnabled = this.#enabled;
    this.#enabled = enable;
    if (enable && !wasEnabled) this.#kick();
  }

  #clearStatus(bits: number): void {
    this.#status &= ~(bits & (DmaEngineStatus.ERROR | DmaEngineStatus.HALTED));
    if ((bits & DmaEngineStatus.HALTED) !== 0) this.#kick();
  }

  #writeTail(value: number): void {
    if (value >= this.#ringSize) {
      this.#halt();
      return;
    }
    this.#tail = value;
    this.#kick();
  }

  #halt(): void {
    this.#status |= DmaEngineStatus.HALTED;
    this.#raise(DmaEngineVector.ERROR);
  }

  #clear(): void {
    this.#generation++;
    this.#enabled = false;
    this.#ringBase = 0n;
    this.#setRingSize(0);
    this.#status = 0;
    this.#completed = 0;
    this.#errors = 0;
    this.#batchDone = 0;
    this.#batchFailed = 0;
    this.#owed = 0;
  }

  /** Starts a job if there is work and none is running. */
  #kick(): void {
    if (this.#job || !this.run.dmaAllowed || !this.#enabled || this.#head === this.#tail || (this.#status & DmaEngineStatus.HALTED) !== 0) return;
    if (this.#ringSize < 1 || this.#ringSize > DMA_ENGINE_MAX_RING || this.#tail >= this.#ringSize) return this.#halt();
    const device = this.device;
    if (!device.connected) return;
    this.#jobGeneration = this.#generation;
    const job = this.#run(device.dma, this.#generation).catch((error: unknown) => {
      if (!(error instanceof JobAborted)) device.logger.error({ err: error }, 'dma-engine: job failed');
    });
    this.#job = job.finally(() => {
      this.#job = undefined;
      this.#kick();
    });
  }

  /** Work is posted and the engine may process it (leaving DMA aside). */
  get #pending(): boolean {
    return this.#enabled && this.#head !== this.#tail && (this.#status & DmaEngineStatus.HALTED) === 0;
  }

  /**
   * Processes descriptors from HEAD to TAIL, then interrupts. Stops early,
   * between descriptors, when DMA is no longer allowed (a migration arc); the
   * batch then goes on when the engine runs again, here or on a destination.
   */
  async #run(dma: DmaController, generation: number): Promise<void> {
    while (this.#pending && this.run.dmaAllowed) {
      const at = this.#ringBase + BigInt(this.#head * DESCRIPTOR_SIZE);
      const outcome = await this.#processOne(dma, generation, at);
      if (outcome === 'halt') {
        this.#status |= DmaEngineStatus.HALTED;
        this.#batchFailed++;
        break;
      }
      this.#head = (this.#head + 1) % this.#ringSize;
      this.#completed = (this.#completed + 1) >>> 0;
      if (outcome === 'done') this.#batchDone++;
      else {
        this.#batchFailed++;
        this.#errors = (this.#errors + 1) >>> 0;
        this.#status |= DmaEngineStatus.ERROR;
      }
      await yieldToIo();
      this.#check(dma, generation);
    }
    if (this.#pending) return; // paused by a migration arc: the batch is not over
    const failed = this.#batchFailed;
    const done = this.#batchDone;
    this.#batchFailed = 0;
    this.#batchDone = 0;
    if (failed > 0) this.#raise(DmaEngineVector.ERROR);
    if (done > 0) this.#raise(DmaEngineVector.COMPLETION);
  }

  /** One descriptor: `'done'`, `'error'` (written back as such) or `'halt'` (the ring itself failed). */
  async #processOne(dma: DmaController, generation: number, at: bigint): Promise<'done' | 'error' | 'halt'> {
    let descriptor: Descriptor;
    try {
      descriptor = decodeDescriptor(await dma.read(at, DESCRIPTOR_SIZE));
    } catch (error) {
      this.#check(dma, generation);
      this.device.logger.warn({ err: error, iova: at }, 'dma-engine: cannot read descriptor, halting');
      return 'halt';
    }
    let result: { checksum: number; status: number };
    try {
      result = { checksum: await this.#transfer(dma, generation, descriptor), status: DescriptorStatus.DONE };
    } catch (error) {
      if (error instanceof JobAborted) throw error;
      this.#check(dma, generation);
      result = { checksum: 0, status: errorStatus(errnoOf(error)) };
    }
    try {
      await dma.write(at + BigInt(DESCRIPTOR_WRITEBACK_OFFSET), encodeWriteback(result));
    } catch (error) {
      this.#check(dma, generation);
      this.device.logger.warn({ err: error, iova: at }, 'dma-engine: cannot write descriptor back, halting');
      return 'halt';
    }
    this.#check(dma, generation);
    return result.status === DescriptorStatus.DONE ? 'done' : 'error';
  }

  /** Copies or checksums one descriptor's bytes in chunks; returns the FNV-1a 32 of the source. */
  async #transfer(dma: DmaController, generation: number, d: Descriptor): Promise<number> {
    const copy = d.flags === DescriptorFlags.COPY;
    if (!copy && d.flags !== DescriptorFlags.CHECKSUM_ONLY) {
      throw new InvalidArgumentError(`dma-engine: descriptor flags 0x${d.flags.toString(16)} must be COPY or CHECKSUM_ONLY`, { errno: Errno.EINVAL });
    }
    let hash = FNV1A_OFFSET_BASIS;
    for (let done = 0; done < d.length; ) {
      const n = Math.min(DMA_ENGINE_CHUNK, d.length - done);
      const chunk = await dma.read(d.src + BigInt(done), n);
      this.#check(dma, generation);
      hash = fnv1aUpdate(chunk, hash);
      if (copy) {
        await dma.write(d.dst + BigInt(done), chunk);
        this.#check(dma, generation);
      }
      done += n;
      if (done < d.length) {
        await yieldToIo();
        this.#check(dma, generation);
      }
    }
    return hash;
  }

  /** Aborts the job if the engine was reset or the client's DMA is gone. */
  #check(dma: DmaController, generation: number): void {
    if (generation !== this.#generation || dma.closed) throw new JobAborted('dma-engine: job stopped');
  }
}

function errnoOf(error: unknown): number {
  return error instanceof VfioUserError && error.errno !== undefined && error.errno > 0 ? error.errno : Errno.EIO;
}

/**
 * Creates the DMA engine.
 * @returns the device and its engine-state accessors.
 */
export function createDmaEngineDevice(options: DmaEngineOptions = {}): DmaEngineDevice {
  const engine = new DmaEngine();
  const registers = engine.registers();
  const device = createDevice({
    name: options.name ?? 'dma-engine',
    ...(options.logger ? { logger: options.logger } : {}),
    pci: { ...DMA_ENGINE_PCI_ID },
    regions: {
      bar0: {
        size: DMA_ENGINE_BAR0_SIZE,
        read: (o, l) => registers.read(o, l),
        write: (o, d) => {
          if (!engine.run.stopped) registers.write(o, d); // a stopped engine changes no state
        },
      },
      bar4: { size: DMA_ENGINE_BAR4_SIZE, read: (_o, l) => new Uint8Array(l), write: () => {} },
    },
    irqs: { msix: 2 },
    msix: { bar: 4, tableOffset: 0, pbaOffset: 0x800 },
    capabilities: { express: { portType: 'endpoint' }, serialNumber: options.serialNumber ?? 0x5a02_0000_0000_0001n },
    reset: () => engine.reset(),
    migration: engine.migration(),
  });
  engine.device = device;
  return { device, engineState: () => engine.state(), idle: () => engine.idle() };
}
