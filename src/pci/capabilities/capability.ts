/**
 * The contract between the config space and one capability file. Each
 * capability file exports a {@link CapabilityDefinition}; the table of them in
 * `capabilities/index.ts` fixes the layout order. A definition validates its
 * options and plans zero or more instances; the layout places each instance at
 * the next dword-aligned offset and calls `install`, which writes the power-on
 * registers and their masks (RW / RW1C / device-updated) and returns the
 * instance's write hooks.
 */
import type { BarLayout } from '../bars.js';
import type { RegisterFile } from '../register-file.js';
import type { ConfigSpaceEvent, ConfigSpaceOptions } from '../types.js';

/** What a capability instance gets when it is installed. */
export interface CapabilityContext {
  /** The config space registers. */
  readonly regs: RegisterFile;
  /** Validated BAR slots. */
  readonly bars: ReadonlyArray<BarLayout | undefined>;
  /** Dispatches events raised outside a config access (MSI-X table writes). */
  readonly emit: (events: ConfigSpaceEvent[]) => void;
}

/** An installed capability: its place in config space and its side effects. */
export interface Capability {
  /** Short name (`'pm'`, `'msi'`, `'msix'`, `'express'`, `'vendor'`, `'dsn'`, `'vsec'`). */
  readonly name: string;
  /** Capability id (8-bit standard or 16-bit extended). */
  readonly id: number;
  readonly extended: boolean;
  /** Absolute offset in config space. */
  readonly offset: number;
  /** Length in bytes (the segment it claims). */
  readonly size: number;
  /**
   * Runs after a driver write landed in this capability (masks already applied).
   * @param before - the capability's bytes before the write.
   * @param events - where to queue events; they are dispatched after the whole access.
   */
  afterWrite?(before: Uint8Array, events: ConfigSpaceEvent[]): void;
  /** Size of state kept outside config space (saved in snapshots). */
  readonly stateSize?: number;
  /** @returns `stateSize` bytes of state kept outside config space. */
  saveState?(): Uint8Array;
  /** Loads what {@link saveState} produced (length already checked). */
  loadState?(bytes: Uint8Array): void;
  /** Puts state kept outside config space back to power-on values. */
  reset?(): void;
}

/** One instance a definition wants placed. */
export interface CapabilityPlan {
  /** Bytes it occupies. */
  readonly size: number;
  /** Writes the power-on registers at `offset` and returns the instance. */
  install(ctx: CapabilityContext, offset: number): Capability;
}

/** One row of the capability table. */
export interface CapabilityDefinition {
  readonly name: string;
  /** Placed in extended config space (0x100–0xfff). */
  readonly extended: boolean;
  /**
   * Validates the options this capability reads and plans its instances.
   * @throws {InvalidArgumentError} EINVAL naming the option and rule.
   */
  plan(options: ConfigSpaceOptions, bars: ReadonlyArray<BarLayout | undefined>): CapabilityPlan[];
}

/**
 * Writes a standard capability header: id, and a next pointer of 0 that the
 * layout links later. Both are read-only.
 */
export function installCapHeader(regs: RegisterFile, offset: number, id: number): void {
  regs.define(offset, 1, id);
  regs.define(offset + 1, 1, 0);
}

/** Writes an extended capability header (id, version; next linked later), read-only. */
export function installExtCapHeader(regs: RegisterFile, offset: number, id: number, version: number): void {
  regs.define(offset, 4, (id & 0xffff) | ((version & 0xf) << 16));
}
