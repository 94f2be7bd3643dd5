/**
 * The isolation groups of a running host (groups.ts's model) fed from what
 * the host has: its instance records (running, starting, stopping, failed)
 * and its definitions (a defined instance that is not running is an inactive
 * member, so its group is not viable until it runs). The instances call the
 * {@link InstanceGroupHooks} this implements: a change of any record
 * recomputes the groups (once per turn of the event loop, and before any
 * admission or view is read), cells ask it for admissions and report the
 * end of admitted connections, and each group's new view is pushed to its
 * active members' cells.
 *
 * The definitions are re-read when the host changes them (define, undefine,
 * modify) and when it starts; a file edited behind the host's back counts
 * from its next definition operation.
 */
import type { Logger } from '../log.js';
import type { DefinitionStore } from './definitions.js';
import { GroupRegistry, groupIdOf, type AdmitClient, type AdmitVerdict, type GroupMemberSource } from './groups.js';
import type { ParentRegistry } from './host-parents.js';
import { findType, splitTypeId } from './parent-loader.js';
import type { InstanceRecord } from './host-instances.js';
import { InstanceState, type GroupMemberState, type GroupView } from './types.js';

/** What the instances tell the groups (host-instances.ts calls these). */
export interface InstanceGroupHooks {
  /** Records were added or removed, or one's state changed. */
  changed(): void;
  /** The view of the group of `uuid` (to start its cell with). */
  view(uuid: string): GroupView | undefined;
  /** May `client` attach member `uuid`? */
  admit(uuid: string, client: AdmitClient): AdmitVerdict;
  /** An admitted connection to `uuid` ended (session closed, or never started). */
  sessionEnded(uuid: string): void;
}

/** What {@link HostGroups} reads from the host. */
export interface HostGroupsSources {
  logger: Logger;
  parents: ParentRegistry;
  /** A store that does not log its problems (they were logged at start). */
  store: DefinitionStore;
  /** Every instance record. */
  records(): InstanceRecord[];
  /** `<runDir>/<uuid>.sock`. */
  socketPath(uuid: string): string;
  /** Hands a view to a running instance's cell. Must not throw. */
  push(uuid: string, view: GroupView): void;
}

const STATE_OF: Readonly<Record<InstanceState, GroupMemberState>> = {
  [InstanceState.ACTIVE]: 'active',
  [InstanceState.FAILED]: 'failed',
  [InstanceState.STARTING]: 'inactive',
  [InstanceState.STOPPING]: 'inactive',
};

/** The groups of one host (see the module comment). */
export class HostGroups implements InstanceGroupHooks {
  readonly #sources: HostGroupsSources;
  readonly #registry: GroupRegistry;
  #definitions: { uuid: string; parent: string; mdevType: string; attrs: Record<string, string>[] }[] = [];
  #dirty = false;

  /** No group until {@link HostGroups.reloadDefinitions} or a change. */
  constructor(sources: HostGroupsSources) {
    this.#sources = sources;
    this.#registry = new GroupRegistry({ logger: sources.logger, push: (uuid, view) => sources.push(uuid, view) });
  }

  /** Re-reads the definitions (unreadable ones are skipped) and recomputes the groups. Never throws. */
  reloadDefinitions(): void {
    try {
      this.#definitions = this.#sources.store.load().definitions.map((d) => ({ uuid: d.uuid, parent: d.parent, mdevType: d.config.mdev_type, attrs: d.config.attrs.map((a) => ({ ...a })) }));
    } catch (error) {
      this.#sources.logger.warn({ event: 'groups-definitions-unreadable', err: error }, 'definitions not readable: groups count the running instances only');
      this.#definitions = [];
    }
    this.#flush();
  }

  changed(): void {
    if (this.#dirty) return;
    this.#dirty = true;
    queueMicrotask(() => this.#flush());
  }

  view(uuid: string): GroupView | undefined {
    this.#flushIfDirty();
    return this.#registry.viewOf(uuid);
  }

  admit(uuid: string, client: AdmitClient): AdmitVerdict {
    this.#flushIfDirty();
    return this.#registry.admit(uuid, client);
  }

  sessionEnded(uuid: string): void {
    this.#flushIfDirty();
    this.#registry.sessionEnded(uuid);
  }

  /** Every group, sorted by id. */
  views(): GroupView[] {
    this.#flushIfDirty();
    return this.#registry.views();
  }

  /** The group id of `uuid` (running or defined), if it has one. */
  groupOf(uuid: string): string | undefined {
    this.#flushIfDirty();
    return this.#registry.groupOf(uuid);
  }

  #flushIfDirty(): void {
    if (this.#dirty) this.#flush();
  }

  #flush(): void {
    this.#dirty = false;
    this.#registry.update(this.#members());
  }

  #members(): GroupMemberSource[] {
    const { parents, records, socketPath } = this.#sources;
    const members: GroupMemberSource[] = [];
    const seen = new Set<string>();
    for (const r of records()) {
      seen.add(r.uuid);
      const parent = r.loaded.parent;
      const group = groupIdOf(parent.name, findType(parent, r.typeName), r.uuid, r.attrs);
      members.push({ uuid: r.uuid, parent: parent.name, group, socket: r.socketPath, state: STATE_OF[r.state] });
    }
    for (const d of this.#definitions) {
      const loaded = parents.find(d.parent);
      const typeName = loaded && splitTypeId(loaded.parent, d.mdevType);
      if (seen.has(d.uuid) || loaded === undefined || typeName === undefined) continue; // a UUID runs once; an unknown type has no group
      seen.add(d.uuid);
      const group = groupIdOf(d.parent, findType(loaded.parent, typeName), d.uuid, d.attrs);
      members.push({ uuid: d.uuid, parent: d.parent, group, socket: socketPath(d.uuid), state: 'inactive' });
    }
    return members;
  }
}
