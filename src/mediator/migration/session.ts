/**
 * One client session of the migration plugin: the MigrationController (state
 * machine and stream of src/migration) over a device state read from and
 * written to the upstream — config space, the spec's registers, BAR memory —
 * the quiesce around stopped states, the client's declared mmaps, and the
 * DMA steering used for dirty tracking.
 */
import { ProtocolError, TimeoutError } from '../../errors.js';
import { MigrationController } from '../../migration/controller.js';
import type { MigrationDefinition } from '../../migration/types.js';
import { MigrationState, RegionIndex } from '../../protocol/constants.js';
import { Errno } from '../../protocol/errno.js';
import { describeMmap, isSavingState, savingConflicts, type ClientMmap } from '../../protocol/mmap-saving.js';
import { native } from '../../native/addon.js';
import type { MediatorSessionContext } from '../types.js';
import { readConfig, restoreConfig } from './config.js';
import { DmaSteering } from './dma-steering.js';
import { DeviceMemory } from './memory.js';
import type { NormalizedSpec, SavingArea } from './spec.js';
import { SectionKind, decodeSections, encodeSections, readUint, uintBytes, type Section } from './state-codec.js';
import { upstreamPort, type UpstreamPort } from './upstream.js';

const { RUNNING, PRE_COPY } = MigrationState;
/** States in which the upstream runs (P2P states and stopped states are quiesced). */
const operating = (s: number): boolean => s === RUNNING || s === PRE_COPY;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The plugin's state for one session. */
export class MediatedSession {
  readonly spec: NormalizedSpec;
  readonly ctx: MediatorSessionContext;
  readonly port: UpstreamPort;
  readonly steering = new DmaSteering();
  /** Regions the client may mmap (seen in region info): trapped while saving outside their saving layout. */
  readonly mmappable = new Set<number>();
  /** The client's declared mappings (x-client-mmaps). */
  declared: ClientMmap[] = [];
  trappedAccesses = 0;
  /** The client named x-client-mmaps in its VERSION (it then gets the saving layouts). */
  clientAsked = false;
  /** This library's migration extension members the client asked for (advertised back in VERSION). */
  clientExtensions: Record<string, unknown> = {};
  #init: Promise<MigrationController> | undefined;
  #controller: MigrationController | undefined;
  #memory: DeviceMemory | undefined;
  #configSize = 256;
  /** Config bytes read by the final save, for the stream's `config` record. */
  #configSaved: Uint8Array = new Uint8Array(0);
  /** A `config` record received, applied before the next `full` record. */
  #configPending: Uint8Array | undefined;
  /** The quiesce control register's value while the device ran (restored on the way back to running). */
  #runValue: number | undefined;
  /** The state the arc in progress goes to. */
  #arcTarget: number = RUNNING;
  #closed = false;

  constructor(spec: NormalizedSpec, ctx: MediatorSessionContext) {
    this.spec = spec;
    this.ctx = ctx;
    this.port = upstreamPort(ctx);
  }

  /** The controller once built (undefined before the first migration command). */
  get controller(): MigrationController | undefined {
    return this.#controller;
  }

  /** Migration state (RUNNING before the controller exists). */
  get state(): number {
    return this.#controller?.state ?? RUNNING;
  }

  /**
   * The controller, built on first use: the upstream's PCI ids and config
   * size, and its memory areas (mapped through its region fds).
   * @throws the upstream's errors (the next call tries again).
   */
  async ready(): Promise<MigrationController> {
    this.#init ??= this.#build().catch((error: unknown) => {
      this.#init = undefined;
      throw error;
    });
    return this.#init;
  }

  async #build(): Promise<MigrationController> {
    const { info, fd } = await this.port.regionInfo(RegionIndex.CONFIG);
    if (fd !== undefined) native.close(fd);
    this.#configSize = Math.min(Number(info.size), 4096);
    const ids = await this.port.regionRead(RegionIndex.CONFIG, 0n, 4);
    const memory = await DeviceMemory.open(this.port, this.spec.memory);
    if (this.#closed) {
      memory.release();
      throw new ProtocolError('the session ended', { errno: Errno.ENOTCONN });
    }
    this.#memory = memory;
    const config = { snapshot: () => this.#configSaved, restore: (bytes: Uint8Array) => void (this.#configPending = bytes.slice()) };
    const pci = { vendorId: readUint(ids.subarray(0, 2)), deviceId: readUint(ids.subarray(2, 4)) };
    this.#controller = new MigrationController(this.#definition(), config, pci);
    return this.#controller;
  }

  #definition(): MigrationDefinition {
    return {
      deviceType: this.spec.deviceType,
      stateVersion: this.spec.stateVersion,
      preCopy: this.spec.preCopy,
      p2p: this.spec.p2p,
      save: () => this.#save(),
      saveDelta: () => this.#saveDelta(),
      load: (kind, payload) => this.#load(kind, payload),
      transition: (from, to) => this.#transition(from, to),
      stopCopySize: () => (this.#memory?.pending() ?? 0) + this.#configSize + this.spec.registers.reduce((n, r) => n + r.size + 16, 64),
    };
  }

  // ------------------------------------------------------------- saving layout

  /** The saving layout of `region`: the spec's areas (none by default) for an mmappable region; undefined otherwise. */
  savingLayout(region: number): readonly SavingArea[] | undefined {
    return this.mmappable.has(region) ? (this.spec.savingMmap.get(region) ?? []) : undefined;
  }

  /**
   * Refuses a saving target while a declared mapping conflicts with the saving layout.
   * @throws {ProtocolError} EBUSY naming the first conflicting mapping.
   */
  checkSaving(target: number): void {
    if (!isSavingState(target)) return;
    const conflicts = savingConflicts(this.declared, (r) => this.savingLayout(r));
    if (conflicts.length === 0) return;
    const first = conflicts[0]!.mapping;
    this.ctx.log.info({ mapping: describeMmap(first), conflicts: conflicts.length }, 'saving refused: the client holds a mapping the saving layout traps');
    throw new ProtocolError(`the client maps ${describeMmap(first)}, which is trapped while saving (unmap it first)`, { errno: Errno.EBUSY });
  }

  /** Whether an access at `[offset, +count)` of `region` is to a trapped area now (saving, outside the layout). */
  trapped(region: number, offset: bigint, count: number): boolean {
    if (!isSavingState(this.state)) return false;
    const layout = this.savingLayout(region);
    return layout !== undefined && !layout.some((a) => a.offset <= offset && offset + BigInt(count) <= a.offset + a.size);
  }

  // --------------------------------------------------------------- the arcs

  async #transition(from: number, to: number): Promise<void> {
    if (isSavingState(to) && !isSavingState(from)) {
      this.checkSaving(to);
      this.#memory?.forget(); // a new saving stream starts from whole areas
    }
    if (operating(from) && !operating(to)) await this.quiesce();
    if (!operating(from) && operating(to)) await this.resume();
    this.#arcTarget = to;
  }

  /** Stops the upstream's activity (spec.quiesce), remembering the running control value. Idempotent. */
  async quiesce(): Promise<void> {
    const q = this.spec.quiesce;
    if (!q || this.#runValue !== undefined) return;
    const { control } = q;
    const value = readUint(await this.port.regionRead(control.region, BigInt(control.offset), control.size));
    this.#runValue = value;
    if ((value & q.runMask) !== 0) await this.port.regionWrite(control.region, BigInt(control.offset), uintBytes(value & ~q.runMask, control.size));
    if (!q.idle) return;
    const { register, mask, value: idleValue } = q.idle;
    const deadline = performance.now() + q.timeoutMs;
    for (;;) {
      const now = readUint(await this.port.regionRead(register.region, BigInt(register.offset), register.size));
      if ((now & mask) === idleValue) return;
      if (performance.now() > deadline) throw new TimeoutError(`the device did not become idle within ${q.timeoutMs} ms`);
      await sleep(1);
    }
  }

  /** Puts the running control value back (after {@link quiesce}, or as the stream brought it). */
  async resume(): Promise<void> {
    const q = this.spec.quiesce;
    const value = this.#runValue;
    this.#runValue = undefined;
    if (!q || value === undefined || (value & q.runMask) === 0) return;
    await this.port.regionWrite(q.control.region, BigInt(q.control.offset), uintBytes(value, q.control.size));
  }

  /** Runs `work` with the upstream quiesced when it operates now (the DMA steering switch). */
  async whileQuiesced(work: () => Promise<void>): Promise<void> {
    if (!this.spec.quiesce || !operating(this.state) || this.#runValue !== undefined) return work();
    await this.quiesce();
    try {
      await work();
    } finally {
      await this.resume();
    }
  }

  // --------------------------------------------------------------- the state

  async #save(): Promise<Uint8Array> {
    const memory = this.#memory as DeviceMemory;
    if (this.#arcTarget !== MigrationState.STOP_COPY) return encodeSections(await memory.sections(this.port, true));
    this.#configSaved = await readConfig(this.port, this.#configSize);
    const sections: Section[] = await memory.sections(this.port, false);
    for (const [index, r] of this.spec.registers.entries()) {
      sections.push({ kind: SectionKind.REGISTER, index, offset: 0n, data: await this.port.regionRead(r.region, BigInt(r.offset), r.size) });
    }
    if (this.#runValue !== undefined) sections.push({ kind: SectionKind.RUN, index: 0, offset: 0n, data: uintBytes(this.#runValue, 4) });
    return encodeSections(sections);
  }

  async #saveDelta(): Promise<Uint8Array | undefined> {
    const sections = await (this.#memory as DeviceMemory).sections(this.port, false);
    return sections.length === 0 ? undefined : encodeSections(sections);
  }

  async #load(_kind: 'full' | 'delta', payload: Uint8Array): Promise<void> {
    const sections = decodeSections(payload);
    const config = this.#configPending;
    this.#configPending = undefined;
    if (config) await restoreConfig(this.port, config, this.spec.configExtra);
    for (const s of sections) await this.#apply(s);
  }

  async #apply(s: Section): Promise<void> {
    if (s.kind === SectionKind.MEMORY) {
      try {
        return await (this.#memory as DeviceMemory).apply(this.port, s);
      } catch (error) {
        if (error instanceof RangeError) throw new ProtocolError(`mediated device state: ${error.message}`);
        throw error;
      }
    }
    if (s.kind === SectionKind.RUN) {
      if (s.data.length !== 4) throw new ProtocolError('mediated device state: RUN section is not 4 bytes');
      this.#runValue = readUint(s.data);
      return;
    }
    const r = this.spec.registers[s.index];
    if (!r || r.size !== s.data.length) throw new ProtocolError(`mediated device state: register section ${s.index} does not match the spec (another layout)`);
    await this.port.regionWrite(r.region, BigInt(r.offset), s.data);
  }

  /** DEVICE_RESET went through: back to RUNNING, streams and quiesce forgotten. */
  reset(): void {
    this.#controller?.reset();
    this.#runValue = undefined;
    this.#configPending = undefined;
    this.#memory?.forget();
  }

  /** Session end: every fd and mapping released. */
  close(): void {
    this.#closed = true;
    this.steering.close();
    this.#memory?.release();
    this.#memory = undefined;
  }
}
