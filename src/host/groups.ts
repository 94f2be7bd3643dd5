/**
 * Isolation groups of a device host (the kernel's IOMMU groups, brought to
 * userspace): every instance belongs to one group; a parent's type declares
 * which instances share one (`MdevType.group`, see {@link groupIdOf}). A group
 * is the unit a client owns:
 *
 * - **Viable** when every member (running or only defined) is active; a client
 *   attaching a member of a group that is not viable is refused (EPERM).
 * - **One owner**: the first client admitted to a member owns the group (its
 *   SO_PEERCRED pid, uid, gid); it keeps it while that pid has a session to any
 *   member, and loses it when its last one closes (its process dying closes
 *   them all). Any other process is refused every member (EBUSY) meanwhile.
 * - **Hot-add**: a member added to an owned group (started, or defined into it)
 *   is claimed for the owner at once: nobody else may attach it.
 * - **Generation**: bumped on every change of a group's view (members, their
 *   states, viability, owner) and pushed to every active member (its cell
 *   serves it to its client, whose notify eventfd fires).
 *
 * Every decision is logged as an audit line: `{event: 'audit', audit: NAME, group, …}`
 * with NAME one of claim, release, refuse, hot-add-claim, member-failed (the
 * cells log the others of the trail during a stop: release-requested,
 * released, forced).
 *
 * Pure bookkeeping in the host's main thread: the host feeds it the members
 * ({@link GroupRegistry.update}), the cells' admissions and session ends.
 */
import { Errno } from '../protocol/errno.js';
import type { Logger } from '../log.js';
import type { AdmitVerdict } from '../server/server.js';
import type { GroupMemberState, GroupOwner, GroupView, MdevAttr, MdevType } from './types.js';

/** The audit events of groups (logged here) and of stopping instances (logged by the cells). */
export const AuditEvent = {
  CLAIM: 'claim',
  RELEASE: 'release',
  REFUSE: 'refuse',
  HOT_ADD_CLAIM: 'hot-add-claim',
  MEMBER_FAILED: 'member-failed',
  RELEASE_REQUESTED: 'release-requested',
  RELEASED: 'released',
  FORCED: 'forced',
} as const;
/** One of {@link AuditEvent}. */
export type AuditEvent = (typeof AuditEvent)[keyof typeof AuditEvent];

/** Logs one audit line (`event: 'audit'`, `audit: name`, then `fields`). Never throws. */
export function audit(logger: Logger, name: AuditEvent, fields: Record<string, unknown>, message: string, level: 'info' | 'warn' = 'info'): void {
  logger[level]({ event: 'audit', audit: name, ...fields }, message);
}

/**
 * The group id of an instance of `type` (of parent `parentName`) with attributes `attrs`:
 * `<parent>/<uuid>` (`'instance'`, the default), `<parent>/type:<name>`, `<parent>/parent`, or
 * `<parent>/<attr>=<value>` for `{attr}` (the attribute's last occurrence; without it, its own group). Never throws.
 */
export function groupIdOf(parentName: string, type: MdevType | undefined, uuid: string, attrs: readonly MdevAttr[]): string {
  const sharing = type?.group ?? 'instance';
  if (sharing === 'type' && type) return `${parentName}/type:${type.name}`;
  if (sharing === 'parent') return `${parentName}/parent`;
  if (typeof sharing === 'object') {
    let value: string | undefined;
    for (const attr of attrs) if (Object.hasOwn(attr, sharing.attr)) value = attr[sharing.attr];
    if (value !== undefined) return `${parentName}/${sharing.attr}=${value}`;
  }
  return `${parentName}/${uuid}`;
}

/** One member as the host knows it. */
export interface GroupMemberSource {
  uuid: string;
  parent: string;
  /** Its group id ({@link groupIdOf}). */
  group: string;
  socket: string;
  state: GroupMemberState;
}

/** A client asking to attach a member (SO_PEERCRED of its connection). */
export type AdmitClient = GroupOwner;

/** The answer to an admission: the server's {@link AdmitVerdict} (here: attach, or refuse EBUSY / EPERM with one line). */
export type { AdmitVerdict };

interface Owner extends GroupOwner {
  /** Member UUID → admitted connections of this pid to it (a session, or one admitted and about to start). */
  sessions: Map<string, number>;
}

interface Group {
  id: string;
  parent: string;
  generation: number;
  owner: Owner | undefined;
  members: Map<string, GroupMemberSource>;
  /** The last view's JSON without its generation (a change bumps the generation). */
  shape: string;
  /** Something that shows in the view may have changed since it was last published. */
  dirty: boolean;
}

/** Options of {@link GroupRegistry}. */
export interface GroupRegistryOptions {
  logger: Logger;
  /** Hands a group's new view to an active member's cell (its client is told). Must not throw. */
  push(uuid: string, view: GroupView): void;
}

const ownerOf = (owner: Owner): GroupOwner => ({ pid: owner.pid, uid: owner.uid, gid: owner.gid });

/** The groups of one host (see the module comment). */
export class GroupRegistry {
  readonly #groups = new Map<string, Group>();
  /** member UUID → its group id. */
  readonly #memberOf = new Map<string, string>();
  readonly #options: GroupRegistryOptions;

  /** No group until the first {@link GroupRegistry.update}. */
  constructor(options: GroupRegistryOptions) {
    this.#options = options;
  }

  /**
   * Takes the host's members as they are now (every instance, and every definition that is not running):
   * groups appear and disappear with their members; a member that stopped being active drops its owner's
   * session (its last one releases the group); a member that failed is logged (member-failed), one added to an
   * owned group is claimed for the owner (hot-add-claim); every group whose view changed gets a new generation,
   * pushed to its active members. Never throws.
   */
  update(members: readonly GroupMemberSource[]): void {
    const next = new Map<string, Map<string, GroupMemberSource>>();
    for (const m of members) {
      const group = next.get(m.group) ?? new Map<string, GroupMemberSource>();
      group.set(m.uuid, m);
      next.set(m.group, group);
    }
    for (const [id, group] of this.#groups) if (!next.has(id)) this.#dropGroup(group);
    for (const [id, byUuid] of next) this.#updateGroup(id, byUuid);
    this.#memberOf.clear();
    for (const m of members) this.#memberOf.set(m.uuid, m.group);
    for (const group of this.#groups.values()) this.#publish(group);
  }

  /**
   * Decides whether `client` may attach member `uuid` (its cell asks when a client connects, before its session). The first
   * client admitted to a group's member owns the group; its later sessions to any member are admitted.
   * @returns `{ok: true}`; or EPERM (the group is not viable, or `uuid` is in no group), EBUSY (another pid owns it).
   */
  admit(uuid: string, client: AdmitClient): AdmitVerdict {
    const id = this.#memberOf.get(uuid);
    const group = id === undefined ? undefined : this.#groups.get(id);
    const who = { pid: client.pid, uid: client.uid, gid: client.gid };
    if (group === undefined) return this.#refuse(undefined, uuid, who, Errno.EPERM, `${uuid} is not an active member of any isolation group`);
    // The member asking serves (its cell is asking), whatever state its start left in the host's records.
    const inactive = [...group.members.values()].filter((m) => m.state !== 'active' && m.uuid !== uuid);
    if (inactive.length > 0) {
      const list = inactive.map((m) => `${m.uuid} ${m.state}`).join(', ');
      return this.#refuse(group, uuid, who, Errno.EPERM, `isolation group ${group.id} is not viable: member ${list}`);
    }
    const owner = group.owner;
    if (owner !== undefined && owner.pid !== client.pid) {
      return this.#refuse(group, uuid, who, Errno.EBUSY, `isolation group ${group.id} is owned by pid ${owner.pid} (uid ${owner.uid})`);
    }
    if (owner !== undefined) {
      owner.sessions.set(uuid, (owner.sessions.get(uuid) ?? 0) + 1);
      return { ok: true };
    }
    group.owner = { ...who, sessions: new Map([[uuid, 1]]) };
    group.dirty = true;
    audit(this.#options.logger, AuditEvent.CLAIM, { group: group.id, uuid, owner: who }, `isolation group ${group.id} claimed by pid ${who.pid} (uid ${who.uid})`);
    this.#publish(group);
    return { ok: true };
  }

  /**
   * An admitted connection to member `uuid` ended: its session closed, or it never became one. The owner's
   * last one releases the group. Never throws.
   */
  sessionEnded(uuid: string): void {
    const id = this.#memberOf.get(uuid);
    const owner = id === undefined ? undefined : this.#groups.get(id)?.owner;
    const count = owner?.sessions.get(uuid);
    if (owner === undefined || count === undefined) return;
    if (count > 1) owner.sessions.set(uuid, count - 1);
    else owner.sessions.delete(uuid);
    const group = this.#groups.get(id as string) as Group;
    if (owner.sessions.size === 0) {
      this.#release(group, 'its last session closed');
      this.#publish(group);
    }
  }

  /** Every group's view, sorted by id. */
  views(): GroupView[] {
    return [...this.#groups.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)).map((g) => this.#view(g));
  }

  /** The view of the group member `uuid` belongs to, if any. */
  viewOf(uuid: string): GroupView | undefined {
    const id = this.#memberOf.get(uuid);
    const group = id === undefined ? undefined : this.#groups.get(id);
    return group && this.#view(group);
  }

  /** The group id of member `uuid`, if it is one. */
  groupOf(uuid: string): string | undefined {
    return this.#memberOf.get(uuid);
  }

  #updateGroup(id: string, byUuid: Map<string, GroupMemberSource>): void {
    const first = byUuid.values().next().value as GroupMemberSource;
    let group = this.#groups.get(id);
    if (group === undefined) {
      group = { id, parent: first.parent, generation: 0, owner: undefined, members: new Map(), shape: '', dirty: true };
      this.#groups.set(id, group);
    }
    const { logger } = this.#options;
    for (const [uuid, member] of byUuid) {
      const before = group.members.get(uuid);
      if (before?.state !== member.state || before.socket !== member.socket) group.dirty = true;
      if (before === undefined && group.owner) {
        audit(logger, AuditEvent.HOT_ADD_CLAIM, { group: id, uuid, owner: ownerOf(group.owner) }, `${uuid} added to isolation group ${id}: claimed for its owner, pid ${group.owner.pid}`);
      }
      if (before?.state === 'active' && member.state === 'failed') {
        const owner = group.owner ? { owner: ownerOf(group.owner) } : {};
        audit(logger, AuditEvent.MEMBER_FAILED, { group: id, uuid, ...owner }, `member ${uuid} of isolation group ${id} failed: the group is not viable`, 'warn');
      }
      if (member.state !== 'active') this.#dropSession(group, uuid);
    }
    for (const uuid of group.members.keys()) {
      if (byUuid.has(uuid)) continue;
      group.dirty = true;
      this.#dropSession(group, uuid);
    }
    group.members = byUuid;
  }

  /** Member `uuid` is no longer active (or no longer a member): its session ended with it. */
  #dropSession(group: Group, uuid: string): void {
    if (group.owner?.sessions.delete(uuid) && group.owner.sessions.size === 0) this.#release(group, `its last session ended with member ${uuid}`);
  }

  #dropGroup(group: Group): void {
    if (group.owner) this.#release(group, 'the group has no members left');
    this.#groups.delete(group.id);
  }

  #release(group: Group, why: string): void {
    const owner = group.owner;
    if (owner === undefined) return;
    group.owner = undefined;
    group.dirty = true;
    audit(this.#options.logger, AuditEvent.RELEASE, { group: group.id, owner: ownerOf(owner), reason: why }, `isolation group ${group.id} released by pid ${owner.pid}: ${why}`);
  }

  #refuse(group: Group | undefined, uuid: string, client: GroupOwner, errno: number, message: string): AdmitVerdict {
    const fields = { ...(group ? { group: group.id } : {}), uuid, client, errno: errno === Errno.EBUSY ? 'EBUSY' : 'EPERM', reason: message };
    audit(this.#options.logger, AuditEvent.REFUSE, fields, `client pid ${client.pid} refused ${uuid}: ${message}`, 'warn');
    return { ok: false, errno, message };
  }

  #view(group: Group): GroupView {
    const viable = [...group.members.values()].every((m) => m.state === 'active');
    const claimed = group.owner !== undefined;
    return {
      group: group.id,
      parent: group.parent,
      generation: group.generation,
      viable,
      owner: group.owner ? ownerOf(group.owner) : null,
      members: [...group.members.values()]
        .sort((a, b) => (a.uuid < b.uuid ? -1 : a.uuid > b.uuid ? 1 : 0))
        .map((m) => ({ uuid: m.uuid, socket: m.socket, state: m.state, claimed })),
    };
  }

  /** Bumps the generation if the view changed, and pushes it to the active members. */
  #publish(group: Group): void {
    if (!group.dirty) return;
    group.dirty = false;
    const { generation: _, ...rest } = this.#view(group);
    const shape = JSON.stringify(rest);
    if (shape === group.shape) return;
    group.shape = shape;
    group.generation++;
    const view = this.#view(group);
    for (const m of group.members.values()) if (m.state === 'active') this.#options.push(m.uuid, view);
  }
}
