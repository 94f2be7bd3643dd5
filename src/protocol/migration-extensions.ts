/**
 * This library's vendor extensions to vfio-user migration (wire format in
 * docs/protocol-extensions.md): four DEVICE_FEATURE features in the upper
 * half of the 16-bit feature index space, each advertised by the server in its
 * VERSION JSON under `capabilities.migration`:
 *
 * - `x-precopy-info` (GET): the pre-copy counters of `VFIO_MIG_GET_PRECOPY_INFO`,
 *   with the 2026 REINIT flag defined from the start;
 * - `x-deadline-state` (SET): a MIG_DEVICE_STATE SET carrying a time budget; the
 *   device reaches the target in time or walks back, and says which;
 * - `x-arc-latency` (GET): per-arc latency, measured and declared, for planning;
 * - `x-migration-identity` (GET): the device's stream identity and the older
 *   state versions it can load, so an orchestrator can refuse a mismatch early.
 *
 * Constants, codecs and the capability members; no I/O.
 */
import { InvalidArgumentError, ProtocolError } from '../errors.js';
import type { Capabilities, ExtraMembers } from './capabilities.js';
import { DeviceFeatureFlags } from './constants.js';
import { Errno } from './errno.js';
import { WireReader } from './wire-reader.js';
import { WireWriter } from './wire-writer.js';

/**
 * Feature indexes this server uses. Kernel indexes are allocated densely from 0
 * (0–12 by mid-2026); the upper half (bit 15 set) is left to vendors here.
 * Clients must use the index the server advertises, never these constants.
 */
export const ExtensionFeature = {
  PRECOPY_INFO: 0x8000,
  MIG_STATE_DEADLINE: 0x8001,
  MIG_ARC_LATENCY: 0x8002,
  MIG_IDENTITY: 0x8003,
} as const;

/** The VERSION JSON members (inside `capabilities.migration`) that advertise the extensions. */
export const ExtensionCapability = {
  PRECOPY_INFO: 'x-precopy-info',
  MIG_STATE_DEADLINE: 'x-deadline-state',
  MIG_ARC_LATENCY: 'x-arc-latency',
  MIG_IDENTITY: 'x-migration-identity',
} as const;

// ------------------------------------------------------------ pre-copy info

/** Size of the pre-copy info GET data. */
export const PRECOPY_INFO_SIZE = 24;

/** Output bits of the pre-copy info `flags`. */
export const PrecopyInfoFlags = {
  /** New initial data was queued: `initial_bytes` restarted, `dirty_bytes` is relative to it (2026 v2 semantics). */
  REINIT: 1 << 0,
} as const;

/** Pre-copy info GET data. */
export interface PrecopyInfo {
  /** Bytes of initial data not read yet. */
  initialBytes: bigint;
  /** Bytes of changed state (deltas) not read yet. */
  dirtyBytes: bigint;
  /** {@link PrecopyInfoFlags} bits. */
  flags: number;
}

/** Encodes pre-copy info data (24 bytes; reserved zero). @throws {InvalidArgumentError} EINVAL. */
export function encodePrecopyInfo(v: PrecopyInfo): Uint8Array {
  return new WireWriter(PRECOPY_INFO_SIZE, 'PRECOPY_INFO')
    .u64(v.initialBytes, 'initial_bytes')
    .u64(v.dirtyBytes, 'dirty_bytes')
    .u32(v.flags, 'flags')
    .zeros(4, 'reserved')
    .finish();
}

/** Decodes pre-copy info data; `reserved` is ignored. @throws {ProtocolError} EINVAL if shorter than 24 bytes. */
export function decodePrecopyInfo(data: Uint8Array): PrecopyInfo {
  const r = new WireReader(data, 'PRECOPY_INFO');
  const v = { initialBytes: r.u64('initial_bytes'), dirtyBytes: r.u64('dirty_bytes'), flags: r.u32('flags') };
  r.skip(4, 'reserved');
  return v;
}

// ------------------------------------------------------------ deadline-carrying SET

/** Size of the deadline SET data, request and reply alike (the reply overwrites the request in place). */
export const DEADLINE_STATE_SIZE = 32;

/** Request bits of the deadline SET `flags`. */
export const DeadlineRequestFlags = {
  /** Decline without moving when the device's estimate for the path exceeds the budget. */
  PREDICT: 1 << 0,
} as const;
const KNOWN_REQUEST_FLAGS = DeadlineRequestFlags.PREDICT;

/** What the device did (reply `outcome`). */
export const DeadlineOutcome = {
  /** The target was reached within the budget. */
  DONE: 0,
  /** The budget ran out first; the device walked back (reply `reached_state` says how far). */
  ROLLED_BACK: 1,
  /** An arc failed (forward or back); the device is in `reached_state` (ERROR after a fatal failure); `errno` says why. */
  FAILED: 2,
  /** PREDICT was set and the estimate exceeded the budget: nothing was done. */
  DECLINED: 3,
} as const;
/** One of the values in {@link DeadlineOutcome}. */
export type DeadlineOutcome = (typeof DeadlineOutcome)[keyof typeof DeadlineOutcome];

/** Informational bits of the deadline reply `flags`. */
export const DeadlineReplyFlags = {
  /** Some arc of the path had no estimate (counted as 0 in `estimate_ns`). */
  ESTIMATE_PARTIAL: 1 << 0,
  /** The deadline passed while an arc was in progress (the arc was awaited). */
  DEADLINE_IN_ARC: 1 << 1,
  /** The arc in progress at the deadline gave up (its hook threw after the abort signal) and was not committed. */
  ARC_ABANDONED: 1 << 2,
} as const;

/** Deadline SET request data. */
export interface DeadlineStateRequest {
  /** The target MigrationState. */
  deviceState: number;
  /** {@link DeadlineRequestFlags} bits. */
  flags: number;
  /** Budget in ns, relative to the server receiving the request; 0 = no deadline. */
  deadlineNs: bigint;
}

/** Deadline SET reply data. */
export interface DeadlineStateReply {
  /** The state the device is in when the reply is sent. */
  reachedState: number;
  /** A {@link DeadlineOutcome} value. */
  outcome: number;
  /** Time the device spent on the request, rollback included. */
  elapsedNs: bigint;
  /** The device's estimate for the forward path, computed before the first arc. */
  estimateNs: bigint;
  /** The errno of a FAILED outcome; 0 otherwise. */
  errno: number;
  /** {@link DeadlineReplyFlags} bits. */
  flags: number;
}

/** Encodes deadline SET request data (32 bytes, reserved zero). @throws {InvalidArgumentError} EINVAL. */
export function encodeDeadlineStateRequest(v: DeadlineStateRequest): Uint8Array {
  return new WireWriter(DEADLINE_STATE_SIZE, 'MIG_STATE_DEADLINE')
    .u32(v.deviceState, 'device_state')
    .u32(v.flags, 'flags')
    .u64(v.deadlineNs, 'deadline_ns')
    .zeros(16, 'reserved')
    .finish();
}

/**
 * Decodes deadline SET request data.
 * @throws {ProtocolError} EINVAL if shorter than 32 bytes, with an unknown flag bit or a non-zero reserved byte.
 */
export function decodeDeadlineStateRequest(data: Uint8Array): DeadlineStateRequest {
  const r = new WireReader(data, 'MIG_STATE_DEADLINE');
  const v = { deviceState: r.u32('device_state'), flags: r.u32('flags'), deadlineNs: r.u64('deadline_ns') };
  if ((v.flags & ~KNOWN_REQUEST_FLAGS) !== 0) throw r.error(`unknown flag bits 0x${(v.flags & ~KNOWN_REQUEST_FLAGS).toString(16)}`);
  if (r.bytes(16, 'reserved').some((b) => b !== 0)) throw r.error('reserved bytes must be zero');
  return v;
}

/** Encodes deadline SET reply data (32 bytes). @throws {InvalidArgumentError} EINVAL. */
export function encodeDeadlineStateReply(v: DeadlineStateReply): Uint8Array {
  return new WireWriter(DEADLINE_STATE_SIZE, 'MIG_STATE_DEADLINE reply')
    .u32(v.reachedState, 'reached_state')
    .u32(v.outcome, 'outcome')
    .u64(v.elapsedNs, 'elapsed_ns')
    .u64(v.estimateNs, 'estimate_ns')
    .u32(v.errno, 'errno')
    .u32(v.flags, 'flags')
    .finish();
}

/** Decodes deadline SET reply data. @throws {ProtocolError} EINVAL if shorter than 32 bytes. */
export function decodeDeadlineStateReply(data: Uint8Array): DeadlineStateReply {
  const r = new WireReader(data, 'MIG_STATE_DEADLINE reply');
  return {
    reachedState: r.u32('reached_state'),
    outcome: r.u32('outcome'),
    elapsedNs: r.u64('elapsed_ns'),
    estimateNs: r.u64('estimate_ns'),
    errno: r.u32('errno'),
    flags: r.u32('flags'),
  };
}

// ------------------------------------------------------------ arc latency

/** Size of the arc latency GET header (`num_arcs`, reserved). */
export const ARC_LATENCY_HEADER_SIZE = 8;
/** Size of one arc latency record. */
export const ARC_LATENCY_ENTRY_SIZE = 48;
/** Most arcs a device can have (STOP_COPY + P2P + PRE_COPY): a reply never exceeds 8 + 15 × 48 bytes. */
export const MAX_DIRECT_ARCS = 15;

/** Where an arc's `estimate_ns` comes from. */
export const ArcEstimateSource = {
  /** No estimate: never run and nothing declared (`estimate_ns` 0). */
  NONE: 0,
  /** The mean of the measured runs. */
  MEASURED: 1,
  /** The device's declared estimate (the arc has not run yet). */
  DECLARED: 2,
} as const;

/** One direct arc's latency record. */
export interface ArcLatency {
  from: number;
  to: number;
  /** Completed runs measured. */
  count: number;
  /** An {@link ArcEstimateSource} value. */
  source: number;
  lastNs: bigint;
  meanNs: bigint;
  maxNs: bigint;
  /** What the device plans with: the measured mean, else the declared figure, else 0. */
  estimateNs: bigint;
}

/** Encodes arc latency GET data (8 + 48 × arcs). @throws {InvalidArgumentError} EINVAL. */
export function encodeArcLatencies(arcs: readonly ArcLatency[]): Uint8Array {
  const w = new WireWriter(ARC_LATENCY_HEADER_SIZE + arcs.length * ARC_LATENCY_ENTRY_SIZE, 'MIG_ARC_LATENCY');
  w.u32(arcs.length, 'num_arcs').zeros(4, 'reserved');
  for (const a of arcs) {
    w.u32(a.from, 'from_state').u32(a.to, 'to_state').u32(a.count, 'count').u32(a.source, 'source');
    w.u64(a.lastNs, 'last_ns').u64(a.meanNs, 'mean_ns').u64(a.maxNs, 'max_ns').u64(a.estimateNs, 'estimate_ns');
  }
  return w.finish();
}

/** Decodes arc latency GET data. @throws {ProtocolError} EINVAL if truncated. */
export function decodeArcLatencies(data: Uint8Array): ArcLatency[] {
  const r = new WireReader(data, 'MIG_ARC_LATENCY');
  const n = r.u32('num_arcs');
  r.skip(4, 'reserved');
  r.need(n * ARC_LATENCY_ENTRY_SIZE, `arcs (num_arcs ${n})`);
  const out: ArcLatency[] = [];
  for (let i = 0; i < n; i++) {
    out.push({
      from: r.u32('from_state'),
      to: r.u32('to_state'),
      count: r.u32('count'),
      source: r.u32('source'),
      lastNs: r.u64('last_ns'),
      meanNs: r.u64('mean_ns'),
      maxNs: r.u64('max_ns'),
      estimateNs: r.u64('estimate_ns'),
    });
  }
  return out;
}

// ------------------------------------------------------------ migration identity

/** Size of the fixed part of the identity GET data (before `accepted_versions`). */
export const MIG_IDENTITY_HEADER_SIZE = 16;
/** Most accepted older state versions a reply lists (more are reported with {@link MigIdentityFlags.ACCEPTED_TRUNCATED}). */
export const MAX_ACCEPTED_VERSIONS = 64;
/** Most UTF-8 bytes of a device type (as in the stream header). */
export const MAX_IDENTITY_TYPE_BYTES = 255;
/** Largest identity GET data: 16 + 64 × 4 + 1 + 255 = 528 bytes. */
export const MAX_MIG_IDENTITY_SIZE = MIG_IDENTITY_HEADER_SIZE + MAX_ACCEPTED_VERSIONS * 4 + 1 + MAX_IDENTITY_TYPE_BYTES;

/** Output bits of the identity `flags`. */
export const MigIdentityFlags = {
  /** The device accepts more older versions than the reply lists: a version missing from the list may still load. */
  ACCEPTED_TRUNCATED: 1 << 0,
} as const;

/** Identity GET data: what the device's stream is stamped with, and what it can load. */
export interface MigrationIdentity {
  /** The device model (1..255 UTF-8 bytes), as in the stream header. */
  deviceType: string;
  pciVendor: number;
  pciDevice: number;
  /** The state layout version the device saves (and loads). */
  stateVersion: number;
  /** Older state versions the device also loads (at most 64; without `stateVersion`). */
  acceptedVersions: number[];
  /** {@link MigIdentityFlags} bits. */
  flags: number;
}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

/**
 * Encodes identity GET data: `{u16 pci_vendor, u16 pci_device, u32 state_version,
 * u32 num_accepted, u32 flags, u32 accepted_versions[num_accepted], u8 type_len,
 * u8 device_type[type_len]}` (17..528 bytes).
 * @throws {InvalidArgumentError} EINVAL on an out-of-range field, more than 64 versions, or a type of 0 or more than 255 bytes.
 */
export function encodeMigrationIdentity(v: MigrationIdentity): Uint8Array {
  const type = utf8.encode(v.deviceType);
  if (v.acceptedVersions.length > MAX_ACCEPTED_VERSIONS) {
    throw new InvalidArgumentError(`MIG_IDENTITY: more than ${MAX_ACCEPTED_VERSIONS} accepted versions (${v.acceptedVersions.length})`);
  }
  if (type.length === 0 || type.length > MAX_IDENTITY_TYPE_BYTES) {
    throw new InvalidArgumentError(`MIG_IDENTITY: device_type must be 1..${MAX_IDENTITY_TYPE_BYTES} UTF-8 bytes, got ${type.length}`);
  }
  const w = new WireWriter(MIG_IDENTITY_HEADER_SIZE + v.acceptedVersions.length * 4 + 1 + type.length, 'MIG_IDENTITY');
  w.u16(v.pciVendor, 'pci_vendor').u16(v.pciDevice, 'pci_device').u32(v.stateVersion, 'state_version');
  w.u32(v.acceptedVersions.length, 'num_accepted').u32(v.flags, 'flags');
  for (const a of v.acceptedVersions) w.u32(a, 'accepted_versions');
  return w.u8(type.length, 'type_len').bytes(type, 'device_type').finish();
}

/**
 * Decodes identity GET data; bytes after `device_type` are ignored (room to grow).
 * @throws {ProtocolError} EINVAL if truncated, `num_accepted` > 64, or `device_type` is empty or not UTF-8.
 */
export function decodeMigrationIdentity(data: Uint8Array): MigrationIdentity {
  const r = new WireReader(data, 'MIG_IDENTITY');
  const pciVendor = r.u16('pci_vendor');
  const pciDevice = r.u16('pci_device');
  const stateVersion = r.u32('state_version');
  const n = r.u32('num_accepted');
  const flags = r.u32('flags');
  if (n > MAX_ACCEPTED_VERSIONS) throw r.error(`num_accepted ${n} above ${MAX_ACCEPTED_VERSIONS}`);
  r.need(n * 4, `accepted_versions (num_accepted ${n})`);
  const acceptedVersions: number[] = [];
  for (let i = 0; i < n; i++) acceptedVersions.push(r.u32('accepted_versions'));
  const typeLength = r.u8('type_len');
  if (typeLength === 0) throw r.error('empty device_type');
  let deviceType: string;
  try {
    deviceType = utf8Strict.decode(r.bytes(typeLength, 'device_type'));
  } catch (cause) {
    if (cause instanceof ProtocolError) throw cause;
    throw r.error('device_type is not UTF-8');
  }
  return { deviceType, pciVendor, pciDevice, stateVersion, acceptedVersions, flags };
}

// ------------------------------------------------------------ discovery

/** The extension features a server advertised: feature indexes, absent when not advertised. */
export interface MigrationExtensions {
  precopyInfo?: number;
  deadlineState?: number;
  arcLatency?: number;
  identity?: number;
}

/** Every extension this library implements: capability member → feature index. */
const EXTENSION_FEATURES: Readonly<Record<string, number>> = {
  [ExtensionCapability.PRECOPY_INFO]: ExtensionFeature.PRECOPY_INFO,
  [ExtensionCapability.MIG_STATE_DEADLINE]: ExtensionFeature.MIG_STATE_DEADLINE,
  [ExtensionCapability.MIG_ARC_LATENCY]: ExtensionFeature.MIG_ARC_LATENCY,
  [ExtensionCapability.MIG_IDENTITY]: ExtensionFeature.MIG_IDENTITY,
};

/**
 * What a client puts in its own VERSION (`capabilities.migration`) to ask for
 * the extensions: one member per extension it understands, value `{}`. A
 * server advertises only extensions a client asked for, so a client that asks
 * for none (QEMU, libvfio-user) gets a reply no longer than before them.
 */
export function migrationExtensionRequest(): ExtraMembers {
  return Object.fromEntries(Object.keys(EXTENSION_FEATURES).map((name) => [name, {}]));
}

/**
 * The `capabilities.migration` members a migratable device's server
 * advertises: those of the extensions the client named in its own
 * `capabilities.migration` (any value), in a fixed order.
 * @param requested - the client's `migration` extra members, if any.
 */
export function migrationExtensionMembers(requested: ExtraMembers | undefined): ExtraMembers {
  if (requested === undefined) return {};
  const names = Object.keys(EXTENSION_FEATURES).filter((name) => Object.hasOwn(requested, name));
  return Object.fromEntries(names.map((name) => [name, { feature: EXTENSION_FEATURES[name] }]));
}

function featureOf(member: unknown): number | undefined {
  if (typeof member !== 'object' || member === null || Array.isArray(member)) return undefined;
  const feature = (member as Record<string, unknown>)['feature'];
  if (typeof feature !== 'number' || !Number.isInteger(feature) || feature < 0 || feature > DeviceFeatureFlags.MASK) return undefined;
  return feature;
}

/**
 * Reads the extensions out of a server's VERSION capabilities (as sent). A
 * member that is missing, or malformed (not an object, no integer `feature` in
 * 0..0xffff), counts as not advertised: a client must then not use the feature.
 */
export function migrationExtensionsOf(caps: Capabilities | undefined): MigrationExtensions {
  const extra = caps?.migration?.extra;
  if (!extra) return {};
  const out: MigrationExtensions = {};
  const precopyInfo = featureOf(extra[ExtensionCapability.PRECOPY_INFO]);
  const deadlineState = featureOf(extra[ExtensionCapability.MIG_STATE_DEADLINE]);
  const arcLatency = featureOf(extra[ExtensionCapability.MIG_ARC_LATENCY]);
  if (precopyInfo !== undefined) out.precopyInfo = precopyInfo;
  if (deadlineState !== undefined) out.deadlineState = deadlineState;
  const identity = featureOf(extra[ExtensionCapability.MIG_IDENTITY]);
  if (arcLatency !== undefined) out.arcLatency = arcLatency;
  if (identity !== undefined) out.identity = identity;
  return out;
}

/** ENOTSUP for an extension the server did not advertise. */
export function notAdvertised(member: string): ProtocolError {
  return new ProtocolError(`the server did not advertise ${member}`, { errno: Errno.ENOTSUP });
}
