/**
 * A {@link HostApi} over a device host's control socket (control.ts's JSON
 * lines): what `vfio-user mdev` and `lsmdev` use. A failed operation rejects
 * with a {@link VfioUserError} carrying the host's errno and its one-line message.
 */
import { createConnection, type Socket } from 'node:net';
import { ConnectionClosedError, TimeoutError, VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import type { DefineRequest, DefinitionEntry, HostApi, HostStatus, ListRequest, ModifyRequest, StopRequest, StopResult, TypeInfo, UndefineRequest } from './api.js';
import type { ControlReply, HostOp } from './control.js';
import type { GroupView, InstanceStatus } from './types.js';

/** Options of {@link connectHost}. */
export interface ConnectHostOptions {
  /** How long one operation may take before it rejects with ETIMEDOUT (default 120 s: a start runs callouts and builds a device). */
  timeoutMs?: number;
  /** Longest reply line accepted, bytes (default 64 MiB). */
  maxReplyBytes?: number;
}

/** A connected control client: the host's operations plus `close()`. */
export interface HostConnection extends HostApi {
  /** The control socket's path. */
  readonly socket: string;
  /** Closes the connection; pending operations reject with ENOTCONN. Idempotent. */
  close(): void;
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

/** The error a reply's `{errno, message}` stands for. */
function replyError(error: { errno?: unknown; message?: unknown }): VfioUserError {
  const name = typeof error.errno === 'string' ? error.errno : '';
  const errno = Object.hasOwn(Errno, name) ? Errno[name as keyof typeof Errno] : /^\d+$/.test(name) ? Number(name) : Errno.EIO;
  return new VfioUserError(typeof error.message === 'string' ? error.message : `host error ${name}`, { errno });
}

class ControlClient implements HostConnection {
  readonly socket: string;
  readonly #conn: Socket;
  readonly #pending = new Map<number, Pending>();
  readonly #timeoutMs: number;
  readonly #maxReplyBytes: number;
  #nextId = 1;
  #buffer = '';
  /** Why the connection is unusable (closed, refused by the host). */
  #failure: VfioUserError | undefined;

  constructor(socket: string, conn: Socket, options: ConnectHostOptions) {
    this.socket = socket;
    this.#conn = conn;
    this.#timeoutMs = options.timeoutMs ?? 120_000;
    this.#maxReplyBytes = options.maxReplyBytes ?? 64 << 20;
    conn.setEncoding('utf8');
    conn.on('data', (text: string) => this.#onData(text));
    conn.on('error', (error) => this.#fail(new ConnectionClosedError(`host at ${socket}: ${error.message}`)));
    conn.on('close', () => this.#fail(new ConnectionClosedError(`host at ${socket} closed the connection`)));
  }

  #onData(text: string): void {
    this.#buffer += text;
    if (this.#buffer.length > this.#maxReplyBytes && !this.#buffer.includes('\n')) {
      this.#fail(new VfioUserError(`host at ${this.socket}: reply longer than ${this.#maxReplyBytes} bytes`, { errno: Errno.EMSGSIZE }));
      this.#conn.destroy();
      return;
    }
    for (let nl = this.#buffer.indexOf('\n'); nl >= 0; nl = this.#buffer.indexOf('\n')) {
      const line = this.#buffer.slice(0, nl);
      this.#buffer = this.#buffer.slice(nl + 1);
      this.#onReply(line);
    }
  }

  #onReply(line: string): void {
    let reply: ControlReply;
    try {
      reply = JSON.parse(line) as ControlReply;
    } catch {
      this.#fail(new VfioUserError(`host at ${this.socket}: reply is not JSON`, { errno: Errno.EPROTO }));
      return;
    }
    const pending = typeof reply.id === 'number' ? this.#pending.get(reply.id) : undefined;
    if (pending === undefined) {
      // A reply to no request: the host refusing this connection (EPERM, EAGAIN) or an oversize request (EMSGSIZE).
      if (reply.ok === false) this.#fail(replyError(reply.error ?? {}));
      return;
    }
    this.#pending.delete(reply.id as number);
    clearTimeout(pending.timer);
    if (reply.ok === true) pending.resolve(reply.result);
    else pending.reject(replyError(reply.error ?? {}));
  }

  #fail(error: VfioUserError): void {
    // The first reason sticks: a refusal (EPERM) is followed by the close it causes.
    this.#failure ??= error;
    for (const [id, pending] of this.#pending) {
      this.#pending.delete(id);
      clearTimeout(pending.timer);
      pending.reject(this.#failure);
    }
  }

  /** Sends one request; it rejects with ETIMEDOUT after `timeoutMs` (default: the connection's) plus `extraMs`. */
  #call<T>(op: HostOp, args?: object, extraMs = 0): Promise<T> {
    if (this.#failure) return Promise.reject(this.#failure);
    const id = this.#nextId++;
    const timeoutMs = Math.min(2 ** 31 - 1, this.#timeoutMs + extraMs);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new TimeoutError(`host at ${this.socket}: ${op} took longer than ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.#conn.write(`${JSON.stringify(args === undefined ? { id, op } : { id, op, args })}\n`);
    });
  }

  status(): Promise<HostStatus> {
    return this.#call('status');
  }
  types(request: { parent?: string } = {}): Promise<TypeInfo[]> {
    return this.#call('types', request);
  }
  list(request: ListRequest = {}): Promise<{ instances: InstanceStatus[]; definitions: DefinitionEntry[] }> {
    return this.#call('list', request);
  }
  define(request: DefineRequest): Promise<DefinitionEntry> {
    return this.#call('define', request);
  }
  undefine(request: UndefineRequest): Promise<{ removed: DefinitionEntry[] }> {
    return this.#call('undefine', request);
  }
  start(request: DefineRequest): Promise<InstanceStatus> {
    return this.#call('start', request);
  }
  stop(request: StopRequest): Promise<StopResult> {
    // The host waits up to the release timeout for the client to leave, then forces it.
    const wait = typeof request.timeoutMs === 'number' && request.timeoutMs > 0 ? request.timeoutMs : 0;
    return this.#call('stop', request, wait);
  }
  groups(): Promise<GroupView[]> {
    return this.#call('groups');
  }
  modify(request: ModifyRequest): Promise<DefinitionEntry> {
    return this.#call('modify', request);
  }

  close(): void {
    this.#fail(new ConnectionClosedError(`connection to the host at ${this.socket} closed`));
    this.#conn.destroy();
  }
}

/**
 * Connects to the host whose control socket is `socket` (`<runDir>/control.sock`).
 * Operations then fail with the host's errno: ENOENT, EEXIST, EINVAL, EBUSY,
 * ENOSPC, ECANCELED (see api.ts); EPERM when the host refuses our uid;
 * ENOTCONN when the connection closes; ETIMEDOUT past `timeoutMs`.
 * @throws {VfioUserError} ENOENT or ECONNREFUSED: one line, "no vfio-user host
 *   at <socket> (start one: vfio-user host)"; EACCES when the socket or its directory is not ours.
 */
export async function connectHost(socket: string, options: ConnectHostOptions = {}): Promise<HostConnection> {
  const conn = createConnection(socket);
  try {
    await new Promise<void>((resolve, reject) => {
      conn.once('connect', resolve);
      conn.once('error', reject);
    });
  } catch (error) {
    conn.destroy();
    const code = (error as NodeJS.ErrnoException).code ?? '';
    if (code === 'ENOENT' || code === 'ECONNREFUSED') {
      throw new VfioUserError(`no vfio-user host at ${socket} (start one: vfio-user host)`, { errno: Errno[code], cause: error });
    }
    const errno = Object.hasOwn(Errno, code) ? Errno[code as keyof typeof Errno] : Errno.EIO;
    throw new VfioUserError(`cannot connect to the vfio-user host at ${socket}: ${code || (error as Error).message}`, { errno, cause: error });
  }
  return new ControlClient(socket, conn, options);
}
