/**
 * What one `vfio-user shell` holds across its commands: the client session
 * (the device is not reset between commands), the BAR gate, the guest RAM
 * the shell DMA-mapped (memfds at IOVAs) and the interrupt eventfds it
 * installed. {@link ShellSession.release} undoes what the shell set up; the
 * client itself is closed only when the shell opened it (closing it resets
 * the device: vfio-user semantics).
 */
import type { VfioUserClient } from '../client/client.js';
import { GuestMemory, type GuestMemoryAttachment, type GuestMemoryMode } from '../client/guest-memory.js';
import type { Interrupts } from '../client/interrupts.js';
import { InvalidArgumentError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { BarGate, type AssignBarsMode } from './bar-gate.js';
import { hex } from './common.js';

/** A device session the shell drives (a held session may bring its guest RAM). */
export interface ShellTarget {
  /** The device's socket (shown by `info`, used as the migration source's name). */
  socket: string;
  client: VfioUserClient;
  /** Guest RAM already DMA-mapped in this session (not the shell's: it is never unmapped or freed here). */
  memory?: GuestMemory;
  /** Where `memory` is mapped. */
  iova?: bigint;
}

/** One guest RAM block mapped into the device. */
export interface GuestMapping {
  memory: GuestMemory;
  iova: bigint;
  size: bigint;
  mode: GuestMemoryMode;
  writable: boolean;
  /** Set when the shell mapped it (it unmaps and frees it). */
  attachment?: GuestMemoryAttachment;
}

/** Per-vector bookkeeping of `irq-wait`: the signals already reported. */
export interface IrqState {
  irq: Interrupts;
  /** Signals of each vector (by vector number) that `irq-wait` already returned. */
  seen: Map<number, bigint>;
}

/** The shell's state over one client session. */
export class ShellSession {
  socket: string;
  client: VfioUserClient;
  gate: BarGate;
  readonly mappings: GuestMapping[] = [];
  readonly irqs = new Map<number, IrqState>();
  #ownsClient: boolean;
  readonly #mode: AssignBarsMode;
  readonly #note: (text: string) => void;
  /** A migration destination the shell switched to (it closes it at the end). */
  #held: { close(): void } | undefined;

  constructor(target: ShellTarget, options: { ownsClient: boolean; assignBars: AssignBarsMode; note: (text: string) => void }) {
    this.socket = target.socket;
    this.client = target.client;
    this.#ownsClient = options.ownsClient;
    this.#mode = options.assignBars;
    this.#note = options.note;
    this.gate = new BarGate(target.client, options.assignBars, options.note);
    if (target.memory !== undefined) {
      this.mappings.push({ memory: target.memory, iova: target.iova ?? 0n, size: target.memory.size, mode: 'fd', writable: true });
    }
  }

  /**
   * The mapping holding `[iova, iova + length)` and the offset of `iova` in its memory.
   * @throws {InvalidArgumentError} EFAULT when no single mapping holds the range.
   */
  locate(iova: bigint, length: number): { mapping: GuestMapping; offset: bigint } {
    const mapping = this.mappings.find((m) => iova >= m.iova && iova + BigInt(length) <= m.iova + m.size);
    if (mapping === undefined) {
      throw new InvalidArgumentError(`${hex(iova)}+${length} is not inside one DMA mapping (dma-list shows them)`, { errno: Errno.EFAULT });
    }
    return { mapping, offset: iova - mapping.iova };
  }

  /**
   * Allocates `size` bytes of guest RAM (a sealed memfd) and DMA_MAPs it at `iova`.
   * @throws {InvalidArgumentError} EINVAL for a misaligned size or IOVA, EEXIST for an overlap with another mapping.
   * @throws {RemoteError} the server's errno (EINVAL, ENOSPC, EACCES).
   */
  async map(size: number, iova: bigint, mode: GuestMemoryMode, writable: boolean): Promise<GuestMapping> {
    const end = iova + BigInt(size);
    if (this.mappings.some((m) => iova < m.iova + m.size && end > m.iova)) {
      throw new InvalidArgumentError(`dma-map: ${hex(iova)}+${hex(size)} overlaps a mapping (dma-list shows them)`, { errno: Errno.EEXIST });
    }
    const memory = GuestMemory.create(size, { name: `vfio-user-shell-${hex(iova)}` });
    try {
      const attachment = await memory.attach(this.client, { iova, mode, writable });
      const mapping: GuestMapping = { memory, iova, size: memory.size, mode, writable, attachment };
      this.mappings.push(mapping);
      return mapping;
    } catch (error) {
      memory.dispose();
      throw error;
    }
  }

  /**
   * DMA_UNMAPs and frees the shell's mapping at `iova`.
   * @throws {InvalidArgumentError} ENOENT when the shell mapped nothing there (or the mapping is not the shell's).
   * @throws {RemoteError} the server's errno (the mapping then stays).
   */
  async unmap(iova: bigint): Promise<GuestMapping> {
    const mapping = this.mappings.find((m) => m.iova === iova);
    if (mapping?.attachment === undefined) {
      throw new InvalidArgumentError(`dma-unmap: the shell mapped nothing at ${hex(iova)}`, { errno: Errno.ENOENT });
    }
    await mapping.attachment.detach();
    this.mappings.splice(this.mappings.indexOf(mapping), 1);
    mapping.memory.dispose();
    return mapping;
  }

  /**
   * Continues on another session (a migration's destination, which the shell now holds):
   * releases what the shell set up on the current one (closing its client if the shell owns it).
   */
  async switchTo(target: ShellTarget & { close(): void }): Promise<void> {
    await this.#releaseSetup();
    if (this.#ownsClient) this.client.close();
    this.socket = target.socket;
    this.client = target.client;
    this.#ownsClient = false;
    this.gate = new BarGate(target.client, this.#mode, this.#note);
    if (target.memory !== undefined) this.mappings.push({ memory: target.memory, iova: target.iova ?? 0n, size: target.memory.size, mode: 'fd', writable: true });
    this.#held = target;
  }

  /** Undoes what the shell set up (interrupts, its own DMA mappings), then closes the client if the shell opened it. Never throws. */
  async release(): Promise<void> {
    await this.#releaseSetup();
    if (this.#ownsClient) this.client.close();
    this.#held?.close();
    this.#held = undefined;
  }

  async #releaseSetup(): Promise<void> {
    for (const { irq } of this.irqs.values()) await irq.disable().catch(() => undefined);
    this.irqs.clear();
    for (const m of [...this.mappings]) {
      if (m.attachment !== undefined) {
        await m.attachment.detach().catch(() => undefined);
        m.memory.dispose();
      }
    }
    this.mappings.length = 0;
  }
}
