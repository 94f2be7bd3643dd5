/**
 * The device host's control socket, `<runDir>/control.sock` (mode 0600): the
 * {@link HostApi} as JSON lines. Each request is one line
 * `{"id":1,"op":"start","args":{…}}`; each reply one line, in request order
 * per connection: `{"id":1,"ok":true,"result":…}` or
 * `{"id":1,"ok":false,"error":{"errno":"EBUSY","message":"…"}}`.
 *
 * Only the host's own uid, root, and the uids given in `allowedUids` may talk
 * to it: the peer's uid is read with SO_PEERCRED when it connects, and any
 * other uid gets one `EPERM` reply (id `null`) and is disconnected.
 *
 * Built on `node:net` (a UNIX socket server) rather than our transport: the
 * transport frames vfio-user messages and passes fds, while this is a byte
 * stream of lines that needs Node's stream back-pressure (pause/drain). The
 * peer's credentials are still obtainable: libuv exposes the accepted socket's
 * fd (`handle.fd`), from which our addon reads SO_PEERCRED.
 *
 * Bounds: a request line over {@link ControlLimits.maxLineBytes} gets an
 * `EMSGSIZE` reply and the connection is closed; beyond
 * {@link ControlLimits.maxConnections} a new connection gets an `EAGAIN` reply
 * and is closed; each connection runs its requests one at a time and stops
 * reading while {@link ControlLimits.maxQueuedRequests} are waiting or its
 * unread replies exceed {@link ControlLimits.maxBufferedReplyBytes}, so a
 * client that never reads cannot make the host buffer without bound.
 * Malformed JSON or an unknown op gets an `EINVAL` reply; the connection stays.
 */
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { VfioUserError } from '../errors.js';
import { Errno, errnoName } from '../protocol/errno.js';
import { peerCredentials } from '../native/addon.js';
import { silentLogger, type Logger } from '../log.js';
import type { HostApi } from './api.js';

/** The operations the control socket carries: the methods of {@link HostApi}. */
export const HOST_OPS = ['status', 'types', 'list', 'define', 'undefine', 'start', 'stop', 'modify', 'groups'] as const;
/** One of {@link HOST_OPS}. */
export type HostOp = (typeof HOST_OPS)[number];

/** A request line. `id` (a number or string) is echoed in the reply. */
export interface ControlRequest {
  id: number | string;
  op: HostOp;
  /** The method's argument (an object), absent for `status`. */
  args?: unknown;
}

/** A failure as a reply carries it: the errno's name (`"EBUSY"`, or the number as text when unnamed) and one line. */
export interface ControlError {
  errno: string;
  message: string;
}

/** A reply line. `id` is `null` when the request had none (unparsable line, refused peer). */
export type ControlReply = { id: number | string | null; ok: true; result: unknown } | { id: number | string | null; ok: false; error: ControlError };

/** Bounds of a control server. */
export interface ControlLimits {
  /** Longest request line, bytes (default 1 MiB). */
  maxLineBytes: number;
  /** Connections at once (default 64). */
  maxConnections: number;
  /** Requests read but not yet answered, per connection, before reading pauses (default 16). */
  maxQueuedRequests: number;
  /** Unread reply bytes per connection before reading pauses (default 4 MiB). */
  maxBufferedReplyBytes: number;
}

/** Default {@link ControlLimits}. */
export const DEFAULT_CONTROL_LIMITS: ControlLimits = {
  maxLineBytes: 1 << 20,
  maxConnections: 64,
  maxQueuedRequests: 16,
  maxBufferedReplyBytes: 4 << 20,
};

/** Options of {@link ControlServer.listen}. */
export interface ControlServerOptions {
  /** Uids allowed beside the host's own and root. */
  allowedUids?: readonly number[];
  /** The host's uid (default: the process's). */
  uid?: number;
  logger?: Logger;
  limits?: Partial<ControlLimits>;
}

/** The reply error for `error`: its errno's name and first line (EIO for an error without errno). */
export function toControlError(error: unknown): ControlError {
  const message = (error instanceof Error ? error.message : String(error)).split('\n')[0] ?? '';
  if (error instanceof VfioUserError && error.errno !== undefined) return { errno: errnoName(error.errno) ?? String(error.errno), message };
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code === 'string' && Object.hasOwn(Errno, code)) return { errno: code, message };
  return { errno: 'EIO', message };
}

/** Replaces a stale socket file at `path` (nobody listening); refuses a live one or a non-socket. */
async function clearStale(path: string): Promise<void> {
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (st === undefined) return;
  if (!st.isSocket()) throw new VfioUserError(`${path}: exists and is not a socket; refusing to replace it`, { errno: Errno.EEXIST });
  const live = await new Promise<boolean>((resolve) => {
    const probe = createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new VfioUserError(`${path}: another host is running (its control socket answers)`, { errno: Errno.EADDRINUSE });
  unlinkSync(path);
}

/** The control socket's server. */
export class ControlServer {
  /** The socket file's path. */
  readonly path: string;
  readonly #server: Server;
  /** Admitted connections (counted against the limit). */
  readonly #connections = new Set<Socket>();
  /** Every open socket, refused ones included (destroyed by close). */
  readonly #sockets = new Set<Socket>();
  #closed = false;

  private constructor(path: string, server: Server) {
    this.path = path;
    this.#server = server;
  }

  /**
   * Listens on `path` (mode 0600; a stale socket left by a killed host is replaced) and serves `api` there.
   * @throws {VfioUserError} EADDRINUSE when another host answers on `path`; EEXIST when `path` is not a socket.
   * @throws Node's `listen` errors (EACCES, ENOENT for a missing directory).
   */
  static async listen(path: string, api: HostApi, options: ControlServerOptions = {}): Promise<ControlServer> {
    await clearStale(path);
    const limits = { ...DEFAULT_CONTROL_LIMITS, ...options.limits };
    const allowed = new Set([options.uid ?? process.getuid?.() ?? 0, 0, ...(options.allowedUids ?? [])]);
    const logger = options.logger ?? silentLogger();
    const server = createServer({ allowHalfOpen: false });
    const control = new ControlServer(path, server);
    server.on('connection', (socket: Socket) => control.#accept(socket, api, allowed, limits, logger));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const previous = process.umask(0o177); // the socket file is created 0600: no window with a wider mode
      try {
        server.listen(path, () => {
          server.off('error', reject);
          resolve();
        });
      } finally {
        process.umask(previous);
      }
    });
    chmodSync(path, 0o600);
    server.on('error', (error) => logger.error({ event: 'control-error', err: error }, 'control socket error'));
    return control;
  }

  /** Stops accepting, disconnects every client (a request in progress still completes in the host) and removes the socket file. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const socket of this.#sockets) socket.destroy();
    await closed;
  }

  #accept(socket: Socket, api: HostApi, allowed: Set<number>, limits: ControlLimits, logger: Logger): void {
    const refuse = (errno: string, message: string): void => {
      socket.end(`${JSON.stringify({ id: null, ok: false, error: { errno, message } })}\n`);
      setTimeout(() => socket.destroy(), 1000).unref();
    };
    socket.on('error', () => socket.destroy());
    if (this.#closed) return void socket.destroy();
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    let peer: { pid: number; uid: number; gid: number };
    try {
      if (typeof fd !== 'number' || fd < 0) throw new Error('no fd');
      peer = peerCredentials(fd);
    } catch {
      return refuse('EPERM', 'cannot read the peer credentials of this connection');
    }
    if (!allowed.has(peer.uid)) {
      logger.warn({ event: 'control-refused', peer: { pid: peer.pid, uid: peer.uid } }, `control connection refused: uid ${peer.uid} not allowed`);
      return refuse('EPERM', `uid ${peer.uid} is not allowed on this host's control socket (vfio-user host --allow-uid ${peer.uid})`);
    }
    if (this.#connections.size >= limits.maxConnections) {
      logger.warn({ event: 'control-busy', peer: { pid: peer.pid, uid: peer.uid } }, 'control connection refused: too many connections');
      return refuse('EAGAIN', `too many control connections (${limits.maxConnections}); try again`);
    }
    this.#connections.add(socket);
    socket.once('close', () => this.#connections.delete(socket));
    logger.debug({ event: 'control-connected', peer: { pid: peer.pid, uid: peer.uid } }, 'control client connected');
    new ControlConnection(socket, api, limits, logger).start();
  }
}

/** One client's connection: lines in, requests run one at a time, replies out in order. */
class ControlConnection {
  readonly #socket: Socket;
  readonly #api: HostApi;
  readonly #limits: ControlLimits;
  readonly #logger: Logger;
  readonly #queue: string[] = [];
  #partial: Buffer[] = [];
  #partialBytes = 0;
  #running = false;

  constructor(socket: Socket, api: HostApi, limits: ControlLimits, logger: Logger) {
    this.#socket = socket;
    this.#api = api;
    this.#limits = limits;
    this.#logger = logger;
  }

  start(): void {
    this.#socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    this.#socket.on('drain', () => this.#flowControl());
  }

  #onData(chunk: Buffer): void {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl >= 0; nl = chunk.indexOf(10, start)) {
      const piece = chunk.subarray(start, nl);
      if (this.#partialBytes + piece.length > this.#limits.maxLineBytes) return this.#oversize();
      const line = Buffer.concat([...this.#partial, piece]).toString('utf8');
      this.#partial = [];
      this.#partialBytes = 0;
      start = nl + 1;
      if (line.trim() !== '') this.#queue.push(line);
    }
    const rest = chunk.subarray(start);
    if (this.#partialBytes + rest.length > this.#limits.maxLineBytes) return this.#oversize();
    if (rest.length > 0) {
      this.#partial.push(Buffer.from(rest));
      this.#partialBytes += rest.length;
    }
    this.#flowControl();
    void this.#drainQueue();
  }

  #oversize(): void {
    this.#queue.length = 0;
    this.#partial = [];
    const error = { errno: 'EMSGSIZE', message: `request line longer than ${this.#limits.maxLineBytes} bytes; closing` };
    this.#socket.end(`${JSON.stringify({ id: null, ok: false, error })}\n`);
    this.#socket.pause();
  }

  /** Reads only while the queue and the unread replies stay within bounds. */
  #flowControl(): void {
    if (this.#socket.destroyed || this.#socket.writableEnded) return;
    const full = this.#queue.length >= this.#limits.maxQueuedRequests || this.#socket.writableLength > this.#limits.maxBufferedReplyBytes;
    if (full) this.#socket.pause();
    else this.#socket.resume();
  }

  async #drainQueue(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      for (let line = this.#queue.shift(); line !== undefined; line = this.#queue.shift()) {
        // The next request runs only once the client has read enough of the replies so far.
        while (this.#socket.writableLength > this.#limits.maxBufferedReplyBytes && !this.#socket.destroyed) await drainedOrClosed(this.#socket);
        if (this.#socket.destroyed || this.#socket.writableEnded) return;
        const reply = await this.#handle(line);
        if (this.#socket.destroyed || this.#socket.writableEnded) return;
        this.#socket.write(`${serialize(reply)}\n`);
        this.#flowControl();
      }
    } finally {
      this.#running = false;
    }
  }

  async #handle(line: string): Promise<ControlReply> {
    let request: unknown;
    try {
      request = JSON.parse(line);
    } catch {
      return { id: null, ok: false, error: { errno: 'EINVAL', message: 'request is not JSON (one object per line: {"id":1,"op":"status"})' } };
    }
    const parsed = parseRequest(request);
    if ('error' in parsed) return { id: parsed.id, ok: false, error: { errno: 'EINVAL', message: parsed.error } };
    const { id, op, args } = parsed;
    try {
      const result = await invoke(this.#api, op, args);
      return { id, ok: true, result };
    } catch (error) {
      const failure = toControlError(error);
      if (failure.errno === 'EIO') this.#logger.error({ event: 'control-op-failed', op, err: error }, `control ${op} failed unexpectedly`);
      return { id, ok: false, error: failure };
    }
  }
}

/** The reply as one JSON line; a result JSON cannot carry becomes an EIO reply (the host must not crash on it). */
function serialize(reply: ControlReply): string {
  try {
    return JSON.stringify(reply);
  } catch (error) {
    return JSON.stringify({ id: reply.id, ok: false, error: { errno: 'EIO', message: `reply not serializable: ${(error as Error).message}` } });
  }
}

/** Resolves on the socket's next 'drain' or its 'close', whichever comes first. */
function drainedOrClosed(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.on('drain', done);
    socket.on('close', done);
  });
}

function parseRequest(request: unknown): ControlRequest | { id: number | string | null; error: string } {
  if (typeof request !== 'object' || request === null || Array.isArray(request)) return { id: null, error: 'request is not a JSON object' };
  const { id, op, args } = request as Record<string, unknown>;
  const goodId = typeof id === 'number' || typeof id === 'string' ? id : null;
  if (goodId === null) return { id: null, error: 'request without an "id" (a number or a string)' };
  if (typeof op !== 'string' || !(HOST_OPS as readonly string[]).includes(op)) return { id: goodId, error: `unknown op ${JSON.stringify(op)} (${HOST_OPS.join(', ')})` };
  if (args !== undefined && (typeof args !== 'object' || args === null || Array.isArray(args))) return { id: goodId, error: `${op}: "args" must be an object` };
  return { id: goodId, op: op as HostOp, args };
}

function invoke(api: HostApi, op: HostOp, args: unknown): Promise<unknown> {
  // Requests are checked field by field by the host itself (DeviceHost validates every request it gets); `op` is one of HOST_OPS.
  const method = api[op] as (request: never) => Promise<unknown>;
  return method.call(api, (args ?? {}) as never);
}
