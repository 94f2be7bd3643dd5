/**
 * The mediator: listens on a socket like a device server, and for each client
 * opens its own connection to the upstream device and relays between them
 * (session.ts, relay.ts), running plugins and taps on the way
 * (docs/mediation.md).
 */
import { InvalidArgumentError } from '../errors.js';
import { SERVER_MAX_MSG_SIZE } from '../protocol/constants.js';
import { getDefaultLogger, type Logger } from '../log.js';
import { UnixListener } from '../transport/unix-listener.js';
import type { Transport } from '../transport/transport.js';
import { MediatorSession, mediatorTransportOptions } from './session.js';
import type { MediatorLimits, MediatorOptions, MediatorPlugin, MediatorTap } from './types.js';

/** The limits a mediator applies when {@link MediatorOptions.limits} leaves them out. */
export const DEFAULT_MEDIATOR_LIMITS: Readonly<MediatorLimits> = Object.freeze({
  maxMessageSize: SERVER_MAX_MSG_SIZE + 16,
  maxPendingRequests: 64,
  highWaterMark: 4 * 1024 * 1024,
  handshakeTimeoutMs: 10_000,
  upstreamTimeoutMs: 30_000,
  connectTimeoutMs: 5000,
  maxSessions: 16,
});

/** What {@link Mediator.onSession} listeners learn about a session. */
export interface MediatorSessionInfo {
  /** Session number (1, 2, …). */
  readonly id: number;
  /** The client's pid/uid/gid, when known. */
  readonly client: { pid: number; uid: number; gid: number } | undefined;
  /** Resolves with the reason once the session ended (both connections closed). */
  readonly ended: Promise<string>;
}

/** A listening mediator. */
export class Mediator {
  /** The socket path clients connect to. */
  readonly path: string;
  /** The upstream device's socket path. */
  readonly upstream: string;
  readonly #listener: UnixListener;
  readonly #limits: MediatorLimits;
  readonly #plugins: readonly MediatorPlugin[];
  readonly #taps: readonly MediatorTap[];
  readonly #log: Logger;
  readonly #allowedUids: ReadonlySet<number>;
  readonly #sessions = new Set<MediatorSession>();
  readonly #listeners = new Set<(s: MediatorSessionInfo) => void>();
  #nextId = 1;
  #closed = false;

  private constructor(o: MediatorOptions, limits: MediatorLimits, log: Logger) {
    this.path = o.listen;
    this.upstream = o.upstream;
    this.#limits = limits;
    this.#plugins = [...(o.plugins ?? [])];
    this.#taps = [...(o.taps ?? [])];
    this.#log = log;
    this.#allowedUids = new Set([process.getuid?.() ?? 0, ...(o.allowedUids ?? [])]);
    const transport = mediatorTransportOptions(limits);
    this.#listener = UnixListener.listen(o.listen, { ...(o.mode === undefined ? {} : { mode: o.mode }), transport }, (t) => this.#onConnection(t));
  }

  /**
   * Listens on `o.listen` (mode 0600 unless `o.mode`). The upstream need not
   * be up yet: each client's session connects to it when the client arrives
   * (a client is closed when the upstream cannot be reached within
   * `connectTimeoutMs`).
   * @throws {InvalidArgumentError} EINVAL for a missing path, a plugin without a name, a limit that is not a positive number.
   * @throws {SystemError} EADDRINUSE if someone serves `o.listen`; EACCES, ENOENT, ENAMETOOLONG from bind.
   */
  static async listen(o: MediatorOptions): Promise<Mediator> {
    if (typeof o.upstream !== 'string' || o.upstream === '') throw new InvalidArgumentError('mediator: upstream socket path missing');
    if (typeof o.listen !== 'string' || o.listen === '') throw new InvalidArgumentError('mediator: listen socket path missing');
    if (o.upstream === o.listen) throw new InvalidArgumentError(`mediator: upstream and listen are the same path (${o.listen})`);
    for (const p of o.plugins ?? []) {
      if (typeof p !== 'object' || p === null || typeof p.name !== 'string' || p.name === '') throw new InvalidArgumentError('mediator: every plugin needs a name');
    }
    for (const t of o.taps ?? []) {
      if (typeof t?.onMessage !== 'function') throw new InvalidArgumentError('mediator: a tap needs onMessage');
    }
    const limits = resolveLimits(o.limits);
    const log = (o.log ?? getDefaultLogger()).child({ mediator: o.listen });
    return Promise.resolve(new Mediator(o, limits, log));
  }

  /** Sessions in progress. */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  /** The limits in force. */
  get limits(): Readonly<MediatorLimits> {
    return this.#limits;
  }

  /** Calls `listener` for each new session; returns a function that removes it. */
  onSession(listener: (s: MediatorSessionInfo) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Stops listening (removes the socket file), ends every session and waits until they are closed. Idempotent. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#listener.close();
    }
    const ending = [...this.#sessions].map((s) => s.ended);
    for (const s of this.#sessions) s.close('the mediator is closing');
    await Promise.all(ending);
  }

  #onConnection(t: Transport): void {
    const creds = t.peerCredentials();
    if (!creds || !this.#allowedUids.has(creds.uid)) {
      this.#log.warn({ uid: creds?.uid, pid: creds?.pid }, 'client refused: uid not allowed');
      return t.close();
    }
    if (this.#closed || this.#sessions.size >= this.#limits.maxSessions) {
      this.#log.warn({ pid: creds.pid, sessions: this.#sessions.size }, 'client refused: too many sessions');
      return t.close();
    }
    const id = this.#nextId++;
    const session = new MediatorSession(t, { id, upstreamPath: this.upstream, plugins: this.#plugins, taps: this.#taps, limits: this.#limits, log: this.#log });
    this.#sessions.add(session);
    void session.ended.then(() => this.#sessions.delete(session));
    this.#log.info({ session: id, pid: creds.pid }, 'client accepted');
    const info: MediatorSessionInfo = { id, client: creds, ended: session.ended };
    for (const l of this.#listeners) {
      try {
        l(info);
      } catch (err) {
        this.#log.error({ err }, 'onSession listener failed');
      }
    }
    void session.start();
  }
}

function resolveLimits(given: Partial<MediatorLimits> | undefined): MediatorLimits {
  const limits = { ...DEFAULT_MEDIATOR_LIMITS, ...given };
  for (const [key, value] of Object.entries(limits)) {
    const zeroOk = key === 'upstreamTimeoutMs';
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (value === 0 && !zeroOk)) {
      throw new InvalidArgumentError(`mediator: limits.${key} = ${String(value)} is not a positive number`);
    }
  }
  if (limits.maxMessageSize < 1024) throw new InvalidArgumentError(`mediator: limits.maxMessageSize ${limits.maxMessageSize} is below 1024`);
  return limits;
}
