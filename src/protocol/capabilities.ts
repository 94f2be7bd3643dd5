/**
 * The VERSION message's JSON capabilities: parsing with libvfio-user's type
 * rules, deterministic formatting, and default resolution. Unknown keys are kept
 * in `extra` records so extensions can be advertised and read back.
 */
import { InvalidArgumentError, ProtocolError } from '../errors.js';
import {
  DEFAULT_MAX_DATA_XFER_SIZE,
  DEFAULT_MAX_DMA_MAPS,
  DEFAULT_MAX_MSG_FDS,
  DEFAULT_PGSIZES,
  MAX_MSG_FDS_LIMIT,
  U64_MAX,
} from './constants.js';

/** Unknown JSON members, preserved as parsed. */
export type ExtraMembers = Record<string, unknown>;

/** `capabilities.migration`. */
export interface MigrationCapability {
  /** Migration (dirty bitmap) page size; libvfio-user requires 4096 if the device migrates. */
  pgsize?: number;
  extra?: ExtraMembers;
}

/** `capabilities.twin_socket`. */
export interface TwinSocketCapability {
  supported?: boolean;
  /** Reply only: index of the server→client socket in the reply's fds. */
  fdIndex?: number;
  extra?: ExtraMembers;
}

/** `capabilities` as sent; every member optional (see {@link resolveCapabilities}). */
export interface Capabilities {
  /** `max_msg_fds`: fds the sender can receive per message, 0..1024. */
  maxMsgFds?: number;
  /** `max_data_xfer_size`: largest data count in region/DMA/migration data messages. */
  maxDataXferSize?: number;
  /** `max_dma_maps` (spec; ignored by libvfio-user). */
  maxDmaMaps?: number;
  /** `pgsizes`: OR of supported DMA page sizes (spec; ignored by libvfio-user). */
  pgsizes?: bigint;
  migration?: MigrationCapability;
  twinSocket?: TwinSocketCapability;
  /** `write_multiple`: REGION_WRITE_MULTI supported (spec; not libvfio-user). */
  writeMultiple?: boolean;
  /** Unknown `capabilities` members, e.g. extensions this library does not know. */
  extra?: ExtraMembers;
}

/** Capabilities with the specification's defaults filled in. */
export interface ResolvedCapabilities {
  maxMsgFds: number;
  maxDataXferSize: number;
  maxDmaMaps: number;
  pgsizes: bigint;
  /** Present only if the peer advertised migration. */
  migration: { pgsize: number | undefined } | undefined;
  twinSocket: { supported: boolean; fdIndex: number | undefined };
  writeMultiple: boolean;
  extra: ExtraMembers;
}

const CAP_KEYS = new Set([
  'max_msg_fds',
  'max_data_xfer_size',
  'max_dma_maps',
  'pgsizes',
  'migration',
  'twin_socket',
  'write_multiple',
]);
const MIGRATION_KEYS = new Set(['pgsize']);
const TWIN_KEYS = new Set(['supported', 'fd_index']);

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function bad(message: string): ProtocolError {
  return new ProtocolError(`version JSON: ${message}`);
}

function intMember(o: JsonObject, key: string, min: number, max: number): number | undefined {
  if (!Object.hasOwn(o, key)) return undefined;
  const v = o[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw bad(`${key} must be an integer in ${min}..${max}, got ${JSON.stringify(v)}`);
  }
  return v;
}

function boolMember(o: JsonObject, key: string): boolean | undefined {
  if (!Object.hasOwn(o, key)) return undefined;
  const v = o[key];
  if (typeof v !== 'boolean') throw bad(`${key} must be a boolean, got ${JSON.stringify(v)}`);
  return v;
}

function objectMember(o: JsonObject, key: string): JsonObject | undefined {
  if (!Object.hasOwn(o, key)) return undefined;
  const v = o[key];
  if (!isObject(v)) throw bad(`${key} must be an object`);
  return v;
}

function extraOf(o: JsonObject, known: Set<string>): ExtraMembers | undefined {
  const entries = Object.entries(o).filter(([k]) => !known.has(k));
  return entries.length === 0 ? undefined : Object.fromEntries(entries);
}

/** Assigns only defined values, so absent members stay absent (not `undefined`). */
function compact<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

function pgsizesMember(o: JsonObject): bigint | undefined {
  if (!Object.hasOwn(o, 'pgsizes')) return undefined;
  const v = o['pgsizes'];
  // JSON numbers above 2^53 arrive as the nearest double; BigInt() keeps that double exactly.
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || BigInt(v) > U64_MAX) {
    throw bad(`pgsizes must be an integer in 0..2^64-1, got ${JSON.stringify(v)}`);
  }
  return BigInt(v);
}

function parseMigration(o: JsonObject): MigrationCapability {
  return compact({
    pgsize: intMember(o, 'pgsize', 1, Number.MAX_SAFE_INTEGER),
    extra: extraOf(o, MIGRATION_KEYS),
  });
}

function parseTwinSocket(o: JsonObject): TwinSocketCapability {
  return compact({
    supported: boolMember(o, 'supported'),
    fdIndex: intMember(o, 'fd_index', 0, Number.MAX_SAFE_INTEGER),
    extra: extraOf(o, TWIN_KEYS),
  });
}

/**
 * Validates a parsed `capabilities` object and converts it to {@link Capabilities}.
 * @throws {ProtocolError} EINVAL for a member of the wrong type or out of range.
 */
export function capabilitiesFromJson(o: JsonObject): Capabilities {
  const migration = objectMember(o, 'migration');
  const twin = objectMember(o, 'twin_socket');
  return compact({
    maxMsgFds: intMember(o, 'max_msg_fds', 0, MAX_MSG_FDS_LIMIT),
    maxDataXferSize: intMember(o, 'max_data_xfer_size', 1, Number.MAX_SAFE_INTEGER),
    maxDmaMaps: intMember(o, 'max_dma_maps', 0, Number.MAX_SAFE_INTEGER),
    pgsizes: pgsizesMember(o),
    migration: migration && parseMigration(migration),
    twinSocket: twin && parseTwinSocket(twin),
    writeMultiple: boolMember(o, 'write_multiple'),
    extra: extraOf(o, CAP_KEYS),
  });
}

/**
 * Parses the VERSION JSON text (without its NUL). As in libvfio-user, a JSON
 * value that is not an object, or an object without `capabilities`, means
 * "no capabilities" (defaults); other top-level members are ignored.
 * @returns the capabilities, or `undefined` if none were given.
 * @throws {ProtocolError} EINVAL for unparsable JSON or a badly typed member.
 */
export function parseCapabilitiesJson(text: string): Capabilities | undefined {
  let top: unknown;
  try {
    top = JSON.parse(text);
  } catch (cause) {
    throw new ProtocolError('version JSON: not parsable', { cause });
  }
  if (!isObject(top) || !Object.hasOwn(top, 'capabilities')) return undefined;
  const caps = top['capabilities'];
  if (!isObject(caps)) throw bad('capabilities must be an object');
  return capabilitiesFromJson(caps);
}

function member(key: string, json: string): string {
  return `${JSON.stringify(key)}:${json}`;
}

function intJson(v: number, key: string): string {
  if (!Number.isSafeInteger(v) || v < 0) throw new InvalidArgumentError(`capabilities: ${key} = ${v} is not a valid count`);
  return String(v);
}

function extraJson(extra: ExtraMembers | undefined, known: Set<string>, where: string): string[] {
  if (extra === undefined) return [];
  return Object.entries(extra).map(([k, v]) => {
    if (known.has(k)) throw new InvalidArgumentError(`capabilities: extra member ${where}${k} shadows a known member`);
    let json: string | undefined;
    try {
      json = JSON.stringify(v);
    } catch (cause) {
      throw new InvalidArgumentError(`capabilities: extra member ${where}${k} is not JSON-serialisable`, { cause });
    }
    if (json === undefined) throw new InvalidArgumentError(`capabilities: extra member ${where}${k} is not JSON`);
    return member(k, json);
  });
}

function objectJson(parts: string[]): string {
  return `{${parts.join(',')}}`;
}

function migrationJson(m: MigrationCapability): string {
  const parts: string[] = [];
  if (m.pgsize !== undefined) parts.push(member('pgsize', intJson(m.pgsize, 'migration.pgsize')));
  return objectJson([...parts, ...extraJson(m.extra, MIGRATION_KEYS, 'migration.')]);
}

function twinJson(t: TwinSocketCapability): string {
  const parts: string[] = [];
  if (t.supported !== undefined) parts.push(member('supported', String(t.supported)));
  if (t.fdIndex !== undefined) parts.push(member('fd_index', intJson(t.fdIndex, 'twin_socket.fd_index')));
  return objectJson([...parts, ...extraJson(t.extra, TWIN_KEYS, 'twin_socket.')]);
}

/**
 * Formats `{"capabilities":{…}}` compactly, members in a fixed order
 * (max_msg_fds, max_data_xfer_size, max_dma_maps, pgsizes, migration,
 * twin_socket, write_multiple, then `extra` in insertion order).
 * @throws {InvalidArgumentError} EINVAL for a non-integer count, a pgsizes outside u64,
 * or an `extra` member that shadows a known one or is not JSON-serialisable.
 */
export function formatCapabilitiesJson(caps: Capabilities): string {
  const p: string[] = [];
  if (caps.maxMsgFds !== undefined) p.push(member('max_msg_fds', intJson(caps.maxMsgFds, 'max_msg_fds')));
  if (caps.maxDataXferSize !== undefined) {
    p.push(member('max_data_xfer_size', intJson(caps.maxDataXferSize, 'max_data_xfer_size')));
  }
  if (caps.maxDmaMaps !== undefined) p.push(member('max_dma_maps', intJson(caps.maxDmaMaps, 'max_dma_maps')));
  if (caps.pgsizes !== undefined) {
    if (caps.pgsizes < 0n || caps.pgsizes > U64_MAX) throw new InvalidArgumentError('capabilities: pgsizes outside u64');
    p.push(member('pgsizes', caps.pgsizes.toString()));
  }
  if (caps.migration !== undefined) p.push(member('migration', migrationJson(caps.migration)));
  if (caps.twinSocket !== undefined) p.push(member('twin_socket', twinJson(caps.twinSocket)));
  if (caps.writeMultiple !== undefined) p.push(member('write_multiple', String(caps.writeMultiple)));
  p.push(...extraJson(caps.extra, CAP_KEYS, ''));
  return objectJson([member('capabilities', objectJson(p))]);
}

/**
 * Fills in the specification's defaults: max_msg_fds 1, max_data_xfer_size
 * 1 MiB, max_dma_maps 65535, pgsizes 4096, twin socket off, write_multiple off.
 * @param caps - what the peer sent, or `undefined` if it sent none.
 */
export function resolveCapabilities(caps: Capabilities | undefined): ResolvedCapabilities {
  const c = caps ?? {};
  return {
    maxMsgFds: c.maxMsgFds ?? DEFAULT_MAX_MSG_FDS,
    maxDataXferSize: c.maxDataXferSize ?? DEFAULT_MAX_DATA_XFER_SIZE,
    maxDmaMaps: c.maxDmaMaps ?? DEFAULT_MAX_DMA_MAPS,
    pgsizes: c.pgsizes ?? DEFAULT_PGSIZES,
    migration: c.migration === undefined ? undefined : { pgsize: c.migration.pgsize },
    twinSocket: { supported: c.twinSocket?.supported ?? false, fdIndex: c.twinSocket?.fdIndex },
    writeMultiple: c.writeMultiple ?? false,
    extra: c.extra ?? {},
  };
}
