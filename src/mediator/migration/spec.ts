/**
 * What a mediated-migration plugin is told about the upstream device
 * (docs/mediated-migration.md): which registers make up its state, how to
 * quiesce it, which memory to carry, which areas stay mappable while saving.
 * Validated once, by {@link normalizeSpec}.
 */
import { InvalidArgumentError } from '../../errors.js';
import { RegionIndex } from '../../protocol/constants.js';

/** A register (or a block of them) in one of the upstream's regions. */
export interface RegisterRef {
  region: number;
  offset: number;
  /** Bytes: 1, 2, 4 or 8 for a control register; any size up to 64 KiB for a saved block. */
  size: number;
  /** For logs and the stream's section names. */
  name?: string;
}

/** How the plugin stops the upstream's activity (its DMA) before the device state is read. */
export interface QuiesceSpec {
  /** The register whose `runMask` bits make the device run (e.g. CONTROL.ENABLE); 1, 2 or 4 bytes. */
  control: RegisterRef;
  runMask: number;
  /** Polled after clearing `runMask` until `(value & mask) === value` (e.g. STATUS.BUSY clear). */
  idle?: { register: RegisterRef; mask: number; value: number };
  /** How long to wait for `idle` (default 5000 ms): then the arc fails with ETIMEDOUT. */
  timeoutMs?: number;
}

/** A span of a region whose contents are device state (BAR memory). */
export interface MemoryArea {
  region: number;
  /** Default 0. */
  offset?: bigint;
  /** Default: to the end of the region. */
  size?: bigint;
}

/** A span of a region that stays mappable while saving (the SPARSE_MMAP_SAVING layout). */
export interface SavingArea {
  offset: bigint;
  size: bigint;
}

/** An access the plugin saw because its area was trapped while saving. */
export interface TrappedAccess {
  region: number;
  offset: bigint;
  count: number;
  write: boolean;
  /** The bytes written (a write). */
  data?: Uint8Array;
}

/** {@link createMigrationPlugin}'s description of the upstream device. */
export interface MediatedMigrationSpec {
  /** The device model named in the stream (a destination refuses another one). */
  deviceType: string;
  /** Layout version of the state (default 1). */
  stateVersion?: number;
  /** Registers (or blocks) read at STOP_COPY and written back, in this order, on the destination. */
  registers?: readonly RegisterRef[];
  quiesce?: QuiesceSpec;
  /** BAR memory carried in the stream: `'mmappable'` (default) = every area the upstream offers for mmap; `[]` = none. */
  memory?: 'mmappable' | readonly MemoryArea[];
  /** Per region index: the areas that stay mappable while saving (default: none — every mmappable area is trapped). */
  savingMmap?: Readonly<Record<number, readonly SavingArea[]>>;
  /** Config-space spans restored besides the standard writable fields (offset, size). */
  configExtra?: ReadonlyArray<{ offset: number; size: number }>;
  /** Called for every access to a trapped area while saving (recording them is up to the callback). */
  onTrappedAccess?: (access: TrappedAccess, sessionId: number) => void;
  /** Offer PRE_COPY (default true). */
  preCopy?: boolean;
  /** Offer RUNNING_P2P / PRE_COPY_P2P (default false); P2P states quiesce the device as STOP does. */
  p2p?: boolean;
}

/** The spec with defaults applied. */
export interface NormalizedSpec {
  deviceType: string;
  stateVersion: number;
  registers: readonly RegisterRef[];
  quiesce: (QuiesceSpec & { timeoutMs: number }) | undefined;
  memory: 'mmappable' | readonly MemoryArea[];
  savingMmap: ReadonlyMap<number, readonly SavingArea[]>;
  configExtra: ReadonlyArray<{ offset: number; size: number }>;
  onTrappedAccess: MediatedMigrationSpec['onTrappedAccess'];
  preCopy: boolean;
  p2p: boolean;
}

/** Largest register block (one REGION_READ). */
export const MAX_REGISTER_BLOCK = 64 * 1024;
const LAST_REGION = RegionIndex.VGA;

function fail(what: string): never {
  throw new InvalidArgumentError(`mediated migration spec: ${what}`);
}

function checkRegister(r: RegisterRef, what: string, control: boolean): void {
  if (!Number.isInteger(r.region) || r.region < 0 || r.region > LAST_REGION) fail(`${what}: region ${r.region} is not a region index`);
  if (!Number.isSafeInteger(r.offset) || r.offset < 0) fail(`${what}: offset ${r.offset} is not a non-negative integer`);
  const sizes = control ? [1, 2, 4] : undefined;
  if (sizes ? !sizes.includes(r.size) : !Number.isInteger(r.size) || r.size < 1 || r.size > MAX_REGISTER_BLOCK) {
    fail(`${what}: size ${r.size} is not ${sizes ? sizes.join(', ') : `1..${MAX_REGISTER_BLOCK}`}`);
  }
}

/**
 * Checks a spec and applies defaults.
 * @throws {InvalidArgumentError} EINVAL naming the first member that is wrong.
 */
export function normalizeSpec(spec: MediatedMigrationSpec): NormalizedSpec {
  if (typeof spec.deviceType !== 'string' || spec.deviceType.length === 0 || spec.deviceType.length > 255) fail('deviceType must be 1..255 characters');
  const stateVersion = spec.stateVersion ?? 1;
  if (!Number.isInteger(stateVersion) || stateVersion < 0 || stateVersion > 0xffff_ffff) fail(`stateVersion ${stateVersion} is not a u32`);
  const registers = spec.registers ?? [];
  registers.forEach((r, i) => checkRegister(r, `registers[${i}]`, false));
  let quiesce: NormalizedSpec['quiesce'];
  if (spec.quiesce) {
    checkRegister(spec.quiesce.control, 'quiesce.control', true);
    if (spec.quiesce.idle) checkRegister(spec.quiesce.idle.register, 'quiesce.idle.register', true);
    const timeoutMs = spec.quiesce.timeoutMs ?? 5000;
    if (!(timeoutMs > 0)) fail(`quiesce.timeoutMs ${timeoutMs} must be > 0`);
    quiesce = { ...spec.quiesce, timeoutMs };
  }
  const memory = spec.memory ?? 'mmappable';
  if (memory !== 'mmappable') {
    memory.forEach((m, i) => {
      if (!Number.isInteger(m.region) || m.region < 0 || m.region > LAST_REGION || m.region === RegionIndex.CONFIG) fail(`memory[${i}]: region ${m.region} is not a BAR`);
      if ((m.offset ?? 0n) < 0n || (m.size !== undefined && m.size <= 0n)) fail(`memory[${i}]: bad offset or size`);
    });
  }
  const savingMmap = new Map<number, readonly SavingArea[]>();
  for (const [key, areas] of Object.entries(spec.savingMmap ?? {})) {
    const region = Number(key);
    if (!Number.isInteger(region) || region < 0 || region > LAST_REGION) fail(`savingMmap: ${key} is not a region index`);
    areas.forEach((a, i) => {
      if (a.offset < 0n || a.size <= 0n) fail(`savingMmap[${key}][${i}]: bad offset or size`);
    });
    savingMmap.set(region, areas);
  }
  const configExtra = spec.configExtra ?? [];
  configExtra.forEach((c, i) => {
    if (!Number.isInteger(c.offset) || !Number.isInteger(c.size) || c.offset < 0 || c.size < 1 || c.offset + c.size > 4096) fail(`configExtra[${i}] is outside config space`);
  });
  return {
    deviceType: spec.deviceType,
    stateVersion,
    registers,
    quiesce,
    memory,
    savingMmap,
    configExtra,
    onTrappedAccess: spec.onTrappedAccess,
    preCopy: spec.preCopy ?? true,
    p2p: spec.p2p ?? false,
  };
}
