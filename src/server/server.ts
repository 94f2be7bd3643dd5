/**
 * Serving one device on a UNIX socket path: one client at a time. A second
 * client is refused clearly (its first message is answered with EBUSY, then it
 * is closed) unless the first leaves within a short grace period; it is never
 * queued silently. A peer whose uid is not allowed gets EPERM; an admission
 * hook (`admit`) may refuse a client with its own errno (a device host's
 * isolation groups: EBUSY owned by another client, EPERM not viable).
 * When a client goes away its session tears down (DMA unmapped, IRQ fds closed,
 * the device reset with reason LOST_CONNECTION) and the next client is served.
 */
import { InvalidArgumentError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { HeaderFlags, SERVER_MAX_DATA_XFER_SIZE, SERVER_MAX_MSG_SIZE, DEFAULT_MAX_DMA_MAPS } from '../protocol/constants.js';
import { DEFAULT_MAX_REGIONS } from '../device/dma.js';
import { UnixListener } from '../transport/unix-listener.js';
import type { PeerCredentials, Transport } from '../transport/transport.js';
import { Session } from './session.js';
import type { IsolationGroupSource } from './isolation-group.js';
import type { DmaLayoutOption } from './client-profile.js';
import type { ServerLimits, SessionDevice } from './types.js';

/** Options of {@link DeviceServer.listen}. */
export interface ServeOptions {
  /** Socket path to create (mode 0600 unless `mode` says otherwise); with `listenFd`, only its name. */
  path: string;
  mode?: number;
  /**
   * Serve on this already bound and listening socket instead of creating
   * `path` (see {@link UnixListener.fromFd}): the server owns the fd (close()
   * closes it) but leaves the socket file to whoever bound it. `mode` is then
   * ignored.
   */
  listenFd?: number;
  /** If set, only peers with one of these uids (SO_PEERCRED) are served. */
  allowedUids?: readonly number[];
  /**
   * Limits advertised to clients and enforced (defaults: 1 MiB transfers, 16 fds, 1024 maps, write_multiple).
   * `maxMsgFds` is 1–253; QEMU 10.2 refuses a server that advertises more than 16.
   * `maxDmaMaps` is 1–65535 (QEMU 10.2 refuses more as "too large"); DMA_MAP beyond it fails.
   */
  limits?: Partial<ServerLimits>;
  /** How long a server→client DMA request waits for its reply (default 10 s). */
  dmaTimeoutMs?: number;
  /**
   * Layout of server→client DMA messages: `'auto'` (default) uses QEMU's
   * (u32 count, data at 12) for a client recognised as QEMU at VERSION and
   * the specification's otherwise; `'qemu'` or `'vfio-user'` force one.
   */
  dmaLayout?: DmaLayoutOption;
  /** How long a client may take to send VERSION before it is dropped (default 10 s). */
  handshakeTimeoutMs?: number;
  /** How long a refused client may stay connected before it is closed (default 5 s). */
  refusalTimeoutMs?: number;
  /**
   * A client that connects while another is served waits this long (unread)
   * for that session to end before it is refused with EBUSY, so a client that
   * reconnects right after closing is served, not refused (default 500 ms).
   */
  busyGraceMs?: number;
  /**
   * Called with the client when a session starts, and with `undefined` once it
   * has ended and the device has been cleaned up. Must not throw (a throw is logged).
   */
  onClient?: (client: SessionClient | undefined) => void;
  /**
   * Decides whether a client (its SO_PEERCRED) may have a session, before its
   * VERSION is read. A refusal answers that VERSION with the verdict's errno
   * and closes the connection (logged with the verdict's message). A hook that
   * throws, rejects or returns something else than a verdict refuses with EPERM;
   * one that has not answered within `admitTimeoutMs` refuses with EAGAIN. `signal`
   * is aborted when the server stopped waiting for this verdict (timeout, close):
   * an `ok` given after that started no session.
   */
  admit?: (client: PeerCredentials, signal: AbortSignal) => Promise<AdmitVerdict>;
  /** How long `admit` may take (default 5000 ms). */
  admitTimeoutMs?: number;
  /** The device's isolation group: served with the `x-isolation-group` extension (docs/protocol-extensions.md §8). */
  isolationGroup?: IsolationGroupSource;
}

/** What an admission hook ({@link ServeOptions.admit}) answers. */
export type AdmitVerdict = { ok: true } | { ok: false; errno: number; message: string };

/** Default {@link ServeOptions.admitTimeoutMs}. */
export const DEFAULT_ADMIT_TIMEOUT_MS = 5000;

/** The client of a {@link DeviceServer}: its peer credentials and when its session started. */
export interface SessionClient extends PeerCredentials {
  /** When the session started (ms since the epoch). */
  since: number;
}

/**
 * `max_msg_fds` advertised by default: what QEMU (which refuses more than 16)
 * and libvfio-user accept; clients split SET_IRQS into batches of this many fds.
 */
export const DEFAULT_SERVER_MSG_FDS = 16;
/** Most fds Linux delivers with one message (SCM_MAX_FD): the largest `maxMsgFds` a server may advertise. */
export const MAX_SERVER_MSG_FDS = 253;

/** A device served on a socket path. */
export class DeviceServer {
  readonly path: string;
  readonly #device: SessionDevice;
  readonly #options: ServeOptions;
  readonly #limits: ServerLimits;
  readonly #listener: UnixListener;
  #session: Session | undefined;
  #client: SessionClient | undefined;
  #admission: Promise<void> = Promise.resolve();
  /** Aborted by close(): the admission hook being awaited, if any. */
  #admitting: AbortController | undefined;
  #cleanup: Promise<unknown> = Promise.resolve();
  #sessions = 0;
  #closed = false;

  private constructor(device: SessionDevice, options: ServeOptions) {
    this.path = options.path;
    this.#device = device;
    this.#options = options;
    this.#limits = {
      maxDataXferSize: SERVER_MAX_DATA_XFER_SIZE,
      maxMsgFds: DEFAULT_SERVER_MSG_FDS,
      maxDmaMaps: DEFAULT_MAX_REGIONS,
      writeMultiple: true,
      ...options.limits,
    };
    checkLimits(this.#limits);
    const admitTimeoutMs = options.admitTimeoutMs;
    if (admitTimeoutMs !== undefined && (!Number.isSafeInteger(admitTimeoutMs) || admitTimeoutMs <= 0)) {
      throw new InvalidArgumentError(`admitTimeoutMs: ${admitTimeoutMs} is not a positive integer`);
    }
    const onConnection = (t: Transport): void => this.#onConnection(t);
    this.#listener =
      options.listenFd === undefined
        ? UnixListener.listen(options.path, { mode: options.mode ?? 0o600 }, onConnection)
        : UnixListener.fromFd(options.listenFd, options.path, {}, onConnection);
  }

  /**
   * Starts serving `device` on `options.path`.
   * @throws {InvalidArgumentError} EINVAL for limits out of range (`maxMsgFds` 0–253, `maxDmaMaps` 1–65535, others positive
   *   integers) or an `admitTimeoutMs` that is not a positive integer.
   * @throws {SystemError} EADDRINUSE if another server owns the path; EACCES/ENOENT from bind;
   *   with `listenFd`: EINVAL (not listening), ENOTSOCK, EBADF.
   */
  static listen(device: SessionDevice, options: ServeOptions): DeviceServer {
    return new DeviceServer(device, options);
  }

  /** The current client's session, if one is connected. */
  get session(): Session | undefined {
    return this.#session;
  }

  /** The connected client's credentials (SO_PEERCRED at accept) and when its session started (ms since the epoch). */
  get client(): SessionClient | undefined {
    return this.#session ? this.#client : undefined;
  }

  /** How many sessions have been started so far. */
  get sessionCount(): number {
    return this.#sessions;
  }

  /** Resolves when no session is active and the device has been cleaned up. */
  async idle(): Promise<void> {
    await this.#admission;
    while (this.#session) await this.#session.closed;
    await this.#cleanup;
  }

  /**
   * Stops accepting clients: the listener is closed (with `listenFd`, new connections wait in the backlog
   * of whoever bound the socket), clients waiting for admission are closed; the current session goes on.
   * Idempotent.
   */
  stopListening(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#listener.close();
    this.#admitting?.abort(new Error('the server is closing'));
  }

  /** Stops listening (removes the socket file), ends the session, waits for the device's cleanup. */
  async close(): Promise<void> {
    this.stopListening();
    this.#session?.close();
    await this.idle();
  }

  #onConnection(t: Transport): void {
    const creds = t.peerCredentials();
    const allowed = this.#options.allowedUids;
    if (allowed && (!creds || !allowed.includes(creds.uid))) {
      this.#device.logger.warn({ uid: creds?.uid, pid: creds?.pid }, 'client refused: uid not allowed');
      return this.#refuse(t, Errno.EPERM);
    }
    if (this.#closed) return this.#refuse(t, Errno.EBUSY);
    // Admissions are served in arrival order: each waits (unread) for the
    // previous client's session and cleanup, within its own grace period.
    const deadline = Date.now() + (this.#options.busyGraceMs ?? 500);
    this.#admission = this.#admission.then(() => this.#admit(t, deadline, creds));
  }

  async #admit(t: Transport, deadline: number, creds: PeerCredentials | undefined): Promise<void> {
    const gone = await this.#previousGone(deadline - Date.now());
    if (this.#closed) return t.close();
    if (!gone) {
      this.#device.logger.warn({ pid: creds?.pid }, 'client refused: the device already has a client');
      return this.#refuse(t, Errno.EBUSY);
    }
    if (this.#options.admit) {
      const controller = new AbortController();
      const verdict = await this.#askAdmission(creds, controller);
      if (this.#closed) {
        if (!controller.signal.aborted) controller.abort(new Error('the server is closing')); // an ok that started no session
        return t.close();
      }
      if (!verdict.ok) {
        this.#device.logger.warn({ pid: creds?.pid, uid: creds?.uid, gid: creds?.gid, errno: verdict.errno, reason: verdict.message }, 'client refused by admission');
        return this.#refuse(t, verdict.errno);
      }
    }
    this.#client = creds ? { ...creds, since: Date.now() } : undefined;
    this.#startSession(t);
    this.#notifyClient(this.#client);
  }

  /** The admission hook's verdict, bounded in time; EPERM for a hook that fails or answers nonsense. */
  async #askAdmission(creds: PeerCredentials | undefined, controller: AbortController): Promise<AdmitVerdict> {
    const hook = this.#options.admit as NonNullable<ServeOptions['admit']>;
    if (!creds) return { ok: false, errno: Errno.EPERM, message: 'the peer has no credentials (SO_PEERCRED failed)' };
    this.#admitting = controller;
    const timeoutMs = this.#options.admitTimeoutMs ?? DEFAULT_ADMIT_TIMEOUT_MS;
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<AdmitVerdict>((resolve) => {
      timer = setTimeout(() => resolve({ ok: false, errno: Errno.EAGAIN, message: `admission not decided within ${timeoutMs} ms` }), timeoutMs);
    });
    const aborted = new Promise<AdmitVerdict>((resolve) => {
      controller.signal.addEventListener('abort', () => resolve({ ok: false, errno: Errno.EBUSY, message: 'the server is closing' }), { once: true });
    });
    const asked = Promise.resolve()
      .then(() => hook({ ...creds }, controller.signal))
      .then(checkVerdict, (error: unknown) => ({ ok: false as const, errno: Errno.EPERM, message: `admission hook failed: ${messageOf(error)}` }));
    try {
      const winner = await Promise.race([asked.then((verdict) => ({ verdict, used: true })), Promise.race([expired, aborted]).then((verdict) => ({ verdict, used: false }))]);
      // The hook's verdict is not used: tell the hook (an `ok` it gives now or gave a moment ago started no session).
      if (!winner.used && !controller.signal.aborted) controller.abort(new Error(winner.verdict.ok ? 'unused' : winner.verdict.message));
      return winner.verdict;
    } finally {
      clearTimeout(timer);
      if (this.#admitting === controller) this.#admitting = undefined;
    }
  }

  #notifyClient(client: SessionClient | undefined): void {
    try {
      this.#options.onClient?.(client);
    } catch (err) {
      this.#device.logger.error({ err }, 'onClient callback failed');
    }
  }

  /** Resolves true once no session is active and cleanup is done, false if one is still active after `graceMs`. */
  async #previousGone(graceMs: number): Promise<boolean> {
    const active = this.#session;
    if (!active) return this.#cleanup.then(() => true);
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), Math.max(0, graceMs))));
    const ended = active.closed.then(() => this.#cleanup).then(() => true as const);
    try {
      return await Promise.race([ended, expired]);
    } finally {
      clearTimeout(timer);
    }
  }

  #startSession(t: Transport): void {
    this.#sessions++;
    const session = new Session(this.#device, t, {
      limits: this.#limits,
      maxMessageSize: Math.max(SERVER_MAX_MSG_SIZE, this.#limits.maxDataXferSize + 32),
      ...(this.#options.dmaTimeoutMs === undefined ? {} : { dmaTimeoutMs: this.#options.dmaTimeoutMs }),
      ...(this.#options.dmaLayout === undefined ? {} : { dmaLayout: this.#options.dmaLayout }),
      ...(this.#options.handshakeTimeoutMs === undefined ? {} : { handshakeTimeoutMs: this.#options.handshakeTimeoutMs }),
      ...(this.#options.isolationGroup === undefined ? {} : { isolationGroup: this.#options.isolationGroup }),
    });
    this.#session = session;
    this.#cleanup = session.closed.then((error) => {
      if (this.#session === session) this.#session = undefined;
      this.#device.logger.info({ err: error }, 'client disconnected');
      this.#notifyClient(undefined);
    });
  }

  /** Answers the client's first message with `errno`, then closes it. */
  #refuse(t: Transport, errno: number): void {
    const timer = setTimeout(() => t.close(), this.#options.refusalTimeoutMs ?? 5000);
    t.start({
      onMessage(m) {
        m.fds.closeRemaining();
        if (t.closed) return;
        t.send({ msgId: m.header.msgId, cmd: m.header.cmd, flags: HeaderFlags.TYPE_REPLY | HeaderFlags.ERROR, errorNo: errno });
        setImmediate(() => t.close());
      },
      onStreamError: () => t.close(),
      onClose: () => clearTimeout(timer),
    });
  }
}

/**
 * An admission hook's answer as a plain verdict (a new object): anything else than `{ok: true}` or
 * `{ok: false, errno 1–4095, message}` becomes a refusal with EPERM saying so.
 */
export function checkVerdict(v: unknown): AdmitVerdict {
  const o = v as { ok?: unknown; errno?: unknown; message?: unknown } | null;
  if (o?.ok === true) return { ok: true };
  if (o?.ok === false && typeof o.errno === 'number' && Number.isInteger(o.errno) && o.errno > 0 && o.errno < 4096) {
    return { ok: false, errno: o.errno, message: typeof o.message === 'string' ? o.message : 'refused' };
  }
  return { ok: false, errno: Errno.EPERM, message: `admission hook answered no verdict: ${String(JSON.stringify(v)).slice(0, 100)}` };
}

function messageOf(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split('\n')[0] ?? '';
}

function checkLimits(limits: ServerLimits): void {
  const { maxMsgFds, maxDataXferSize, maxDmaMaps } = limits;
  if (!Number.isInteger(maxMsgFds) || maxMsgFds < 0 || maxMsgFds > MAX_SERVER_MSG_FDS) {
    throw new InvalidArgumentError(`limits.maxMsgFds: ${maxMsgFds} is not in 0–${MAX_SERVER_MSG_FDS}`);
  }
  for (const [name, value] of Object.entries({ maxDataXferSize, maxDmaMaps })) {
    if (!Number.isSafeInteger(value) || value < 1) throw new InvalidArgumentError(`limits.${name}: ${value} is not a positive integer`);
  }
  if (maxDmaMaps > DEFAULT_MAX_DMA_MAPS) throw new InvalidArgumentError(`limits.maxDmaMaps: ${maxDmaMaps} is above ${DEFAULT_MAX_DMA_MAPS} (QEMU refuses more)`);
}
