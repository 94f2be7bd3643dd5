/**
 * The server side of the `x-isolation-group` extension (wire format in
 * src/protocol/isolation-group.ts, docs/protocol-extensions.md §8): where a
 * server gets its group from ({@link IsolationGroupSource}, e.g. a device
 * host's worker fed by the host's main thread), and one session's feature:
 * GET the group as JSON, SET one eventfd the server signals whenever the
 * group's `generation` changes.
 *
 * Fds: the registered eventfd is closed when replaced, unregistered (SET
 * without fd) or when the session ends; an fd a SET refuses is never taken,
 * so the session closes it with the rest of the request's fds.
 */
import { ProtocolError } from '../errors.js';
import { DeviceFeatureFlags } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import {
  IsolationGroupFeature,
  checkIsolationGroupView,
  encodeIsolationGroupData,
  isolationGroupCapability,
  type IsolationGroupView,
} from '../protocol/isolation-group.js';
import type { ExtraMembers } from '../protocol/capabilities.js';
import { native } from '../native/addon.js';
import { writableEventFd } from '../device/irqs.js';
import type { Logger } from '../log.js';
import type { ReceivedFds } from '../transport/fds.js';
import type { FeatureHandler, FeatureReplyTooSmall, FeatureTable } from './features.js';

/** Where a server gets the isolation group it serves from. */
export interface IsolationGroupSource {
  /** The group now; `undefined` while there is none (the extension is then not advertised to new sessions). */
  current(): IsolationGroupView | undefined;
  /** Calls `listener` after every change of the group; returns the unsubscribe function. */
  onChange(listener: () => void): () => void;
}

/** An {@link IsolationGroupSource} that holds a view and is updated with {@link IsolationGroupState.set}. */
export class IsolationGroupState implements IsolationGroupSource {
  #view: IsolationGroupView | undefined;
  readonly #listeners = new Set<() => void>();
  readonly #logger: Logger | undefined;

  /**
   * @param view - the initial group, if any.
   * @param logger - where a listener that throws is reported.
   * @throws {InvalidArgumentError} EINVAL for a malformed view.
   */
  constructor(view?: IsolationGroupView, logger?: Logger) {
    this.#view = view === undefined ? undefined : checkIsolationGroupView(view);
    this.#logger = logger;
  }

  current(): IsolationGroupView | undefined {
    return this.#view;
  }

  /**
   * Replaces the group and tells every session (which signals its eventfd if `generation` changed).
   * @throws {InvalidArgumentError} EINVAL for a malformed view (nothing changed).
   */
  set(view: IsolationGroupView): void {
    this.#view = checkIsolationGroupView(view);
    for (const listener of [...this.#listeners]) {
      try {
        listener();
      } catch (err) {
        this.#logger?.error({ err }, 'isolation group listener failed');
      }
    }
  }

  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }
}

/**
 * One session's view of the group: the DEVICE_FEATURE it answers and the
 * notification eventfd its client registered.
 *
 * Notification rule: the eventfd gets 1 added whenever the group's generation
 * differs from the one this session last reported (GET) or signalled; a
 * registration that finds the generation moved since the client's last GET
 * signals at once, so "GET, then register" loses no change.
 */
export class IsolationGroupSession {
  readonly #source: IsolationGroupSource;
  readonly #logger: Logger;
  readonly #unsubscribe: () => void;
  #fd = -1;
  #last: number | undefined;
  #closed = false;

  constructor(source: IsolationGroupSource, logger: Logger) {
    this.#source = source;
    this.#logger = logger;
    this.#last = source.current()?.generation;
    this.#unsubscribe = source.onChange(() => this.#changed());
  }

  /** The VERSION members advertising the extension, or undefined when there is no group now. */
  capability(): ExtraMembers | undefined {
    return this.#source.current() === undefined ? undefined : isolationGroupCapability(IsolationGroupFeature.INDEX);
  }

  /** The feature table of this session (one feature, at {@link IsolationGroupFeature.INDEX}). */
  features(): FeatureTable {
    const feature: FeatureHandler = {
      ops: DeviceFeatureFlags.GET | DeviceFeatureFlags.SET,
      get: (_ctx, _data, argsz) => this.#get(argsz),
      set: (_ctx, data, fds) => this.#set(data, fds),
    };
    return new Map([[IsolationGroupFeature.INDEX, feature]]);
  }

  /** The session ended: stop listening, close the eventfd. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#unsubscribe();
    this.#replace(-1);
  }

  #get(argsz: number): Uint8Array | FeatureReplyTooSmall {
    const view = this.#source.current();
    if (view === undefined) throw new ProtocolError('x-isolation-group: the device has no isolation group now', { errno: Errno.ENODEV });
    const data = encodeIsolationGroupData(view);
    if (argsz < 8 + data.length) return { needed: 8 + data.length };
    this.#last = view.generation;
    return data;
  }

  #set(data: Uint8Array, fds: ReceivedFds): void {
    if (this.#closed) throw new ProtocolError('x-isolation-group: the session is ending', { errno: Errno.ENODEV });
    if (data.length !== 0) throw new ProtocolError(`x-isolation-group SET: data must be empty (got ${data.length} bytes)`);
    if (fds.count > 1) throw new ProtocolError(`x-isolation-group SET: one eventfd at most (got ${fds.count} fds)`);
    if (fds.count === 0) return this.#replace(-1);
    this.#replace(writableEventFd(fds.take(0))); // closes the fd and throws EINVAL if it is no eventfd
    const now = this.#source.current()?.generation;
    if (now !== undefined && this.#last !== undefined && now !== this.#last) this.#changed();
  }

  #replace(fd: number): void {
    if (this.#fd >= 0) native.close(this.#fd);
    this.#fd = fd;
  }

  #changed(): void {
    const now = this.#source.current()?.generation;
    if (now === undefined || now === this.#last || this.#fd < 0) return;
    this.#last = now;
    if (native.eventfdWrite(this.#fd, 1n) !== 0) this.#logger.warn({ generation: now }, 'isolation group notification eventfd could not be signalled');
  }
}

