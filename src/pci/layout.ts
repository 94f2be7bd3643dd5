/**
 * Builds a power-on config space from validated options: the header, the
 * capabilities placed in table order and linked, and the segment map that
 * splits every access into header / capability / unclaimed pieces.
 */
import { InvalidArgumentError } from '../errors.js';
import { validateBars, validateRom, type BarLayout } from './bars.js';
import type { Capability, CapabilityContext, CapabilityPlan } from './capabilities/capability.js';
import { CAPABILITY_TABLE } from './capabilities/index.js';
import { installHeader, validateIdentity, type Identity } from './header.js';
import { RegisterFile } from './register-file.js';
import {
  CAPABILITIES_START,
  CapHeader,
  CONFIG_SPACE_SIZE,
  EXPRESS_CONFIG_SPACE_SIZE,
  EXT_CAPABILITIES_START,
  PciHeader,
  PciStatus,
  STD_HEADER_SIZE,
} from './registers.js';
import type { ConfigSpaceEvent, ConfigSpaceOptions } from './types.js';

/** A contiguous piece of config space with one handler. */
export interface Segment {
  readonly start: number;
  /** Exclusive. */
  readonly end: number;
  readonly kind: 'header' | 'capability' | 'unclaimed';
  /** Set for `kind === 'capability'`. */
  readonly capability?: Capability;
}

/** Everything the config space is made of. */
export interface Layout {
  readonly identity: Identity;
  readonly regs: RegisterFile;
  readonly bars: ReadonlyArray<BarLayout | undefined>;
  readonly romSize: bigint | undefined;
  /** In address order: standard, then extended. */
  readonly capabilities: readonly Capability[];
  /** Covers 0 to the config space size without gaps, in address order. */
  readonly segments: readonly Segment[];
}

interface Placed {
  readonly plan: CapabilityPlan;
  readonly offset: number;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

function place(plans: readonly CapabilityPlan[], start: number, end: number, area: string): Placed[] {
  const out: Placed[] = [];
  let at = start;
  for (const plan of plans) {
    if (at + plan.size > end) {
      throw new InvalidArgumentError(`capabilities: ${area} capabilities need more than 0x${(end - start).toString(16)} bytes`);
    }
    out.push({ plan, offset: at });
    at = align4(at + plan.size);
  }
  return out;
}

function planAll(o: ConfigSpaceOptions, bars: ReadonlyArray<BarLayout | undefined>): { std: Placed[]; ext: Placed[] } {
  const std: CapabilityPlan[] = [];
  const ext: CapabilityPlan[] = [];
  for (const def of CAPABILITY_TABLE) (def.extended ? ext : std).push(...def.plan(o, bars));
  if (ext.length > 0 && o.express === undefined) {
    throw new InvalidArgumentError('extended capabilities (serialNumber, vsecs) need the express capability');
  }
  return {
    std: place(std, CAPABILITIES_START, CONFIG_SPACE_SIZE, 'standard'),
    ext: place(ext, EXT_CAPABILITIES_START, EXPRESS_CONFIG_SPACE_SIZE, 'extended'),
  };
}

function link(regs: RegisterFile, std: readonly Capability[], ext: readonly Capability[]): void {
  const first = std[0];
  if (first !== undefined) {
    regs.define(PciHeader.CAPABILITY_LIST, 1, first.offset);
    regs.bytes[PciHeader.STATUS] = (regs.bytes[PciHeader.STATUS] ?? 0) | PciStatus.CAP_LIST;
  }
  std.forEach((cap, i) => (regs.bytes[cap.offset + CapHeader.NEXT] = std[i + 1]?.offset ?? 0));
  ext.forEach((cap, i) => regs.set32(cap.offset, regs.u32(cap.offset) | ((ext[i + 1]?.offset ?? 0) << 20)));
}

function segmentsOf(size: number, caps: readonly Capability[]): Segment[] {
  const out: Segment[] = [{ start: 0, end: STD_HEADER_SIZE, kind: 'header' }];
  let at = STD_HEADER_SIZE;
  for (const cap of caps) {
    if (cap.offset > at) out.push({ start: at, end: cap.offset, kind: 'unclaimed' });
    out.push({ start: cap.offset, end: cap.offset + cap.size, kind: 'capability', capability: cap });
    at = cap.offset + cap.size;
  }
  if (at < size) out.push({ start: at, end: size, kind: 'unclaimed' });
  return out;
}

/**
 * Validates all options, then builds the power-on config space.
 * @param options - the device author's description.
 * @param emit - dispatches events raised outside config accesses (MSI-X table writes).
 * @throws {InvalidArgumentError} EINVAL naming the first option that breaks a rule.
 */
export function buildLayout(options: ConfigSpaceOptions, emit: (events: ConfigSpaceEvent[]) => void): Layout {
  const identity = validateIdentity(options);
  const bars = validateBars(options.bars);
  const romSize = validateRom(options.rom);
  const placed = planAll(options, bars);
  const size = options.express === undefined ? CONFIG_SPACE_SIZE : EXPRESS_CONFIG_SPACE_SIZE;
  const regs = new RegisterFile(size);
  installHeader(regs, identity, bars, romSize);
  const ctx: CapabilityContext = { regs, bars, emit };
  const std = placed.std.map((p) => p.plan.install(ctx, p.offset));
  const ext = placed.ext.map((p) => p.plan.install(ctx, p.offset));
  link(regs, std, ext);
  const capabilities = [...std, ...ext];
  return { identity, regs, bars, romSize, capabilities, segments: segmentsOf(size, capabilities) };
}
