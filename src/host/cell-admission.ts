/**
 * The main-thread half of a cell's admissions: the worker asks (`admit`) for
 * each client it accepted, the host's hook decides, the verdict goes back
 * (`admit-verdict`). When the worker stopped waiting (`admit-cancel`: its
 * admission timeout, a stop), an `ok` the hook gave or gives later started no
 * session: whoever the hook reserved something for (a group's ownership) is
 * reported as abandoned, so the host can release it.
 */
import { Errno } from '../protocol/errno.js';
import type { Logger } from '../log.js';
import { checkVerdict, type AdmitVerdict } from '../server/server.js';
import type { CellPeer } from './cell-protocol.js';

/**
 * Decides, in the host's main thread, whether a client may attach the instance (e.g. its isolation group's
 * owner and viability). May be async; bounded by `CellOptions.admitTimeoutMs` (then EAGAIN). A hook that
 * throws, rejects or answers something else than a verdict refuses the client with EPERM.
 */
export type CellAdmission = (client: CellPeer) => AdmitVerdict | Promise<AdmitVerdict>;

/** Admissions remembered for a late `admit-cancel` (bounded). */
const MAX_ADMISSIONS = 256;

/** One admission the worker asked for. */
interface Admission {
  client: CellPeer;
  verdict?: AdmitVerdict;
  cancelled: boolean;
}

/** What {@link CellAdmissions} needs from its cell. */
export interface CellAdmissionsLink {
  logger: Logger;
  /** Sends a verdict to the worker (not called once the worker stopped waiting). */
  answer(id: number, verdict: AdmitVerdict): void;
  /** An `ok` verdict started no session. */
  abandoned(client: CellPeer): void;
}

/** Admissions of one cell. */
export class CellAdmissions {
  /** The hook asked for new admissions (undefined: every client is admitted). */
  hook: CellAdmission | undefined;
  readonly #link: CellAdmissionsLink;
  readonly #pending = new Map<number, Admission>();

  constructor(link: CellAdmissionsLink, hook?: CellAdmission) {
    this.#link = link;
    this.hook = hook;
  }

  /** The worker asks about a client it accepted: the hook decides, the verdict is sent back. */
  ask(id: number, client: CellPeer): void {
    const admission: Admission = { client: { pid: client.pid, uid: client.uid, gid: client.gid }, cancelled: false };
    this.#pending.set(id, admission);
    for (const old of this.#pending.keys()) {
      if (this.#pending.size <= MAX_ADMISSIONS) break;
      this.#pending.delete(old);
    }
    void this.#verdict(this.hook, admission.client).then((verdict) => {
      admission.verdict = verdict;
      if (admission.cancelled) return this.#abandon(id, admission);
      // An `ok` is remembered a while: the worker may still give up on it (its timeout raced the verdict).
      if (!verdict.ok) this.#pending.delete(id);
      this.#link.answer(id, verdict);
    });
  }

  /** The worker stopped waiting for admission `id`. */
  cancel(id: number): void {
    const admission = this.#pending.get(id);
    if (!admission) return;
    admission.cancelled = true;
    if (admission.verdict) this.#abandon(id, admission);
  }

  /** The hook's verdict as a plain object; EPERM if it throws, rejects or answers nonsense. */
  async #verdict(hook: CellAdmission | undefined, client: CellPeer): Promise<AdmitVerdict> {
    if (!hook) return { ok: true };
    try {
      return checkVerdict(await hook({ ...client }));
    } catch (error) {
      this.#link.logger.error({ err: error, pid: client.pid }, 'admission hook failed; client refused');
      return { ok: false, errno: Errno.EPERM, message: `admission failed: ${String((error as Error | null)?.message ?? error).split('\n')[0]}` };
    }
  }

  /** A cancelled admission whose verdict is known: an `ok` started no session. */
  #abandon(id: number, admission: Admission): void {
    this.#pending.delete(id);
    if (!admission.verdict?.ok) return;
    this.#link.logger.warn({ pid: admission.client.pid }, 'an admitted client got no session (the cell stopped waiting for the verdict)');
    this.#link.abandoned(admission.client);
  }
}
