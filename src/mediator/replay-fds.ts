/**
 * Recreating the fds a recorded client passed: eventfds become new eventfds,
 * memfds (and regular files) new memfds of the recorded size with the
 * captured content and the recorded seals, sockets and pipes one end of a new
 * socket pair. One file per recorded identity: a memfd the recording passed
 * twice is one recreated memfd passed twice. Everything is closed with the
 * session.
 */
import { writeSync } from 'node:fs';
import { StateError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { createEventFd, memfdCreate, native, socketPair } from '../native/addon.js';
import type { FdMeta } from './record-format.js';

/** Fds one replayed session may hold (a recording asking for more gets EMFILE for those messages). */
const MAX_FDS = 4096;

/** The fds of one replayed session. */
export class ReplayFds {
  readonly #byIdent = new Map<number, number>();
  /** Every fd we own: recreated ones and the other ends of socket pairs. */
  readonly #owned: number[] = [];
  /** Recreated memfds still to be sealed once their content is written. */
  readonly #toSeal = new Map<number, number>();
  /** Fds of the current message created here (content applies to these only). */
  #fresh = new Set<number>();
  /** What a replay report should mention (kinds stood in for). */
  readonly notes = new Set<string>();

  /**
   * The fds for one recorded message, in order: existing ones for identities
   * seen before, new ones otherwise.
   * @throws {SystemError} EMFILE, ENOMEM when an fd cannot be created (any created are closed with the session);
   *   {@link StateError} EMFILE beyond 4096 fds in the session.
   */
  forMessage(metas: readonly FdMeta[]): number[] {
    this.#fresh = new Set();
    return metas.map((meta) => {
      const known = meta.ident > 0 ? this.#byIdent.get(meta.ident) : undefined;
      if (known !== undefined) return known;
      const fd = this.#create(meta);
      this.#fresh.add(fd);
      if (meta.ident > 0) this.#byIdent.set(meta.ident, fd);
      return fd;
    });
  }

  /** Writes a content chunk into `fd` (one of the current message's new fds; others are left alone). */
  content(fd: number, at: number, data: Uint8Array): void {
    if (!this.#fresh.has(fd)) return;
    for (let done = 0; done < data.length; ) done += writeSync(fd, data, done, data.length - done, at + done);
  }

  /** Applies the recorded seals of the current message's new memfds (after their content). */
  seal(): void {
    for (const [fd, seals] of this.#toSeal) {
      const r = native.addSeals(fd, seals);
      if (r < 0) this.notes.add(`the recorded seals 0x${seals.toString(16)} could not be applied (errno ${-r})`);
    }
    this.#toSeal.clear();
  }

  /** Closes every fd of the session. */
  closeAll(): void {
    for (const fd of this.#owned.splice(0)) native.close(fd);
    this.#byIdent.clear();
    this.#toSeal.clear();
  }

  #create(meta: FdMeta): number {
    if (this.#owned.length >= MAX_FDS) throw new StateError(`replay: more than ${MAX_FDS} fds in one session`, { errno: Errno.EMFILE });
    switch (meta.kind) {
      case 'eventfd':
        return this.#own(createEventFd());
      case 'socket':
      case 'pipe': {
        const [ours, theirs] = socketPair();
        this.#owned.push(theirs);
        if (meta.kind === 'pipe') this.notes.add('a pipe was recreated as a socket pair');
        return this.#own(ours);
      }
      default: {
        if (meta.kind === 'file') this.notes.add('a regular file was recreated as a memfd');
        if (meta.kind === 'other') this.notes.add(`an fd of an unknown kind (${meta.link}) was recreated as a memfd`);
        const fd = this.#own(memfdCreate(memfdName(meta.link), meta.size, native.constants.MFD_ALLOW_SEALING));
        if (meta.seals !== undefined && meta.seals !== 0) this.#toSeal.set(fd, meta.seals);
        return fd;
      }
    }
  }

  #own(fd: number): number {
    this.#owned.push(fd);
    return fd;
  }
}

/** `guest-ram` from `/memfd:guest-ram (deleted)`; `replay` for anything else. */
function memfdName(link: string): string {
  const m = /^\/?memfd:(.*?)(?: \(deleted\))?$/.exec(link);
  return (m?.[1] || 'replay').slice(0, 200);
}
