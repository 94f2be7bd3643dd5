/**
 * The `x-isolation-group` vendor extension (docs/protocol-extensions.md §8):
 * a device served by a device host belongs to an isolation group (the unit a
 * client owns: usable only when all its members are active, one owner at a
 * time). A DEVICE_FEATURE GET tells the client its group, the owner and the
 * other members; a SET registers an eventfd the server signals whenever the
 * group's `generation` changes.
 *
 * Advertised in VERSION as `capabilities["x-isolation-group"] = {"feature": N}`.
 * GET data: `u32 length; u32 reserved (0); u8 json[length]` (UTF-8, no NUL).
 * Constants, codecs and the capability member; no I/O.
 */
import { InvalidArgumentError, ProtocolError } from '../errors.js';
import type { ExtraMembers } from './capabilities.js';
import { WireReader } from './wire-reader.js';
import { WireWriter } from './wire-writer.js';

/** The VERSION JSON member (directly inside `capabilities`) that advertises the extension. */
export const ISOLATION_GROUP_CAPABILITY = 'x-isolation-group';

/** The feature index this server uses (clients use the advertised one, never this constant). */
export const IsolationGroupFeature = {
  INDEX: 0x8004,
} as const;

/** Size of the GET data header (`length`, `reserved`). */
export const ISOLATION_GROUP_HEADER_SIZE = 8;

/** Largest JSON text accepted by {@link decodeIsolationGroupData} (a group of a few thousand members). */
export const ISOLATION_GROUP_MAX_JSON = 1 << 20;

/** A member's state: `inactive` when defined but not running (or starting, stopping). */
export type IsolationGroupMemberState = 'active' | 'inactive' | 'failed';

/** One member of an isolation group. */
export interface IsolationGroupMember {
  /** The instance's UUID (lower-case). */
  uuid: string;
  /** Its socket path. */
  socket: string;
  state: IsolationGroupMemberState;
  /** Held for the group's owner: nobody else may attach it. */
  claimed: boolean;
}

/** The owner's credentials (SO_PEERCRED of its first admitted connection). */
export interface IsolationGroupOwner {
  pid: number;
  uid: number;
  gid: number;
}

/** What the GET reports (JSON). Readers ignore members they do not know. */
export interface IsolationGroupView {
  /** The group's id, `<parent>/<key>` on a device host. */
  group: string;
  /** The parent the group belongs to (device hosts include it). */
  parent?: string;
  /** Bumped on every change of the members, their states, viability or owner. */
  generation: number;
  /** Every member is active: only then may a client attach one. */
  viable: boolean;
  owner: IsolationGroupOwner | null;
  /** Sorted by UUID. */
  members: IsolationGroupMember[];
  /** The member the asking connection is attached to (its UUID). */
  self?: string;
}

const MEMBER_STATES: ReadonlySet<string> = new Set(['active', 'inactive', 'failed']);

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function count(o: Json, key: string, where: string, fail: (m: string) => Error): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw fail(`${where}${key} must be a non-negative integer, got ${JSON.stringify(v)}`);
  return v;
}

function text(o: Json, key: string, where: string, fail: (m: string) => Error): string {
  const v = o[key];
  if (typeof v !== 'string') throw fail(`${where}${key} must be a string, got ${JSON.stringify(v)}`);
  return v;
}

function flag(o: Json, key: string, where: string, fail: (m: string) => Error): boolean {
  const v = o[key];
  if (typeof v !== 'boolean') throw fail(`${where}${key} must be a boolean, got ${JSON.stringify(v)}`);
  return v;
}

function ownerOf(v: unknown, fail: (m: string) => Error): IsolationGroupOwner | null {
  if (v === null) return null;
  if (!isObject(v)) throw fail('owner must be an object or null');
  return { pid: count(v, 'pid', 'owner.', fail), uid: count(v, 'uid', 'owner.', fail), gid: count(v, 'gid', 'owner.', fail) };
}

function memberOf(v: unknown, i: number, fail: (m: string) => Error): IsolationGroupMember {
  const where = `members[${i}].`;
  if (!isObject(v)) throw fail(`members[${i}] must be an object`);
  const state = text(v, 'state', where, fail);
  if (!MEMBER_STATES.has(state)) throw fail(`${where}state must be active, inactive or failed, got ${JSON.stringify(state)}`);
  return { uuid: text(v, 'uuid', where, fail), socket: text(v, 'socket', where, fail), state: state as IsolationGroupMemberState, claimed: flag(v, 'claimed', where, fail) };
}

/** The view's known members, checked (unknown keys dropped); `fail` makes the error. */
function checkedView(v: unknown, fail: (m: string) => Error): IsolationGroupView {
  if (!isObject(v)) throw fail('the group must be a JSON object');
  if (!Array.isArray(v['members'])) throw fail('members must be an array');
  const view: IsolationGroupView = {
    group: text(v, 'group', '', fail),
    generation: count(v, 'generation', '', fail),
    viable: flag(v, 'viable', '', fail),
    owner: ownerOf(v['owner'], fail),
    members: (v['members'] as unknown[]).map((m, i) => memberOf(m, i, fail)),
  };
  if (v['parent'] !== undefined) view.parent = text(v, 'parent', '', fail);
  if (v['self'] !== undefined) view.self = text(v, 'self', '', fail);
  return view;
}

/**
 * Checks a view before it is served, keeping only the members this extension defines, members sorted by UUID.
 * @throws {InvalidArgumentError} EINVAL naming the first bad member.
 */
export function checkIsolationGroupView(v: unknown): IsolationGroupView {
  const view = checkedView(v, (m) => new InvalidArgumentError(`isolation group: ${m}`));
  view.members.sort((a, b) => (a.uuid < b.uuid ? -1 : a.uuid > b.uuid ? 1 : 0));
  return view;
}

/** The JSON text of a view, members in a fixed order (group, parent, generation, viable, owner, members, self). */
function viewJson(view: IsolationGroupView): string {
  const { group, parent, generation, viable, owner, members, self } = view;
  return JSON.stringify({
    group,
    ...(parent === undefined ? {} : { parent }),
    generation,
    viable,
    owner: owner && { pid: owner.pid, uid: owner.uid, gid: owner.gid },
    members: members.map(({ uuid, socket, state, claimed }) => ({ uuid, socket, state, claimed })),
    ...(self === undefined ? {} : { self }),
  });
}

/**
 * Encodes GET data: `u32 length; u32 reserved = 0; json`.
 * @throws {InvalidArgumentError} EINVAL for a view that does not pass {@link checkIsolationGroupView}.
 */
export function encodeIsolationGroupData(view: IsolationGroupView): Uint8Array {
  const json = new TextEncoder().encode(viewJson(checkIsolationGroupView(view)));
  return new WireWriter(ISOLATION_GROUP_HEADER_SIZE + json.length, 'x-isolation-group')
    .u32(json.length, 'length')
    .zeros(4, 'reserved')
    .bytes(json, 'json')
    .finish();
}

/**
 * Decodes GET data. Unknown JSON members are ignored; `reserved` is not checked.
 * @throws {ProtocolError} EINVAL if truncated, `length` above 1 MiB, the text not UTF-8 JSON, or a member badly typed.
 */
export function decodeIsolationGroupData(data: Uint8Array): IsolationGroupView {
  const r = new WireReader(data, 'x-isolation-group');
  const length = r.u32('length');
  r.skip(4, 'reserved');
  if (length > ISOLATION_GROUP_MAX_JSON) throw new ProtocolError(`x-isolation-group: JSON length ${length} above ${ISOLATION_GROUP_MAX_JSON}`);
  const bytes = r.bytes(length, 'json');
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (cause) {
    throw new ProtocolError('x-isolation-group: the data is not UTF-8 JSON', { cause });
  }
  return checkedView(parsed, (m) => new ProtocolError(`x-isolation-group: ${m}`));
}

/** The `capabilities` member advertising the extension at feature `index`. */
export function isolationGroupCapability(index: number = IsolationGroupFeature.INDEX): ExtraMembers {
  return { [ISOLATION_GROUP_CAPABILITY]: { feature: index } };
}

/**
 * The feature index a server advertised (from the VERSION reply's `capabilities` extra members), or
 * undefined when the member is absent, not an object, or its `feature` is not an integer in 0..0xffff.
 */
export function isolationGroupFeatureOf(extra: ExtraMembers | undefined): number | undefined {
  const member = extra?.[ISOLATION_GROUP_CAPABILITY];
  if (!isObject(member)) return undefined;
  const feature = member['feature'];
  return typeof feature === 'number' && Number.isInteger(feature) && feature >= 0 && feature <= 0xffff ? feature : undefined;
}
