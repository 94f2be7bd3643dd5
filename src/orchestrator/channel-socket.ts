/**
 * One end of a migration channel over a stream socket (TCP): frames out with
 * back-pressure, frames in checked by {@link FrameDecoder}, and request/response
 * correlation for the side that asks. Both ends of a remote migration use it.
 */
import type { Socket } from 'node:net';
import { ConnectionClosedError, TimeoutError, VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { ChannelFrame, FrameDecoder, FrameEncoder, decodeMessage, encodeMessage, type Frame } from './channel.js';

/** The peer of a migration channel answered a request with an error, or reported one (NOTICE). */
export class MigrationChannelError extends VfioUserError {
  constructor(message: string, errno: number) {
    super(message, { errno });
    this.name = 'MigrationChannelError';
  }
}

/** A request's answer: the JSON result and any binary bytes. */
export interface ChannelReply {
  result: unknown;
  body: Uint8Array;
}

/** A failure as it crosses the channel. */
export interface WireError {
  errno: number;
  message: string;
}

/** The errno of any error (EIO when it has none). */
export function errnoOf(error: unknown): number {
  const errno = (error as { errno?: unknown } | undefined)?.errno;
  return typeof errno === 'number' && errno > 0 ? errno : Errno.EIO;
}

/** Turns a WireError into the error thrown locally. */
export function fromWire(where: string, head: unknown): MigrationChannelError {
  const e = head as Partial<WireError> | undefined;
  const errno = typeof e?.errno === 'number' && e.errno > 0 && e.errno <= 4096 ? e.errno : Errno.EIO;
  return new MigrationChannelError(`${where}: ${typeof e?.message === 'string' ? e.message : 'failed'}`, errno);
}

interface Pending {
  resolve(reply: ChannelReply): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

/** Callbacks of a {@link ChannelSocket}. */
export interface ChannelHandlers {
  /** A frame other than a RESPONSE to one of our requests. */
  onFrame(frame: Frame): void;
  /** The channel is gone (an error when it broke, or a protocol violation). */
  onClose(error: Error | undefined): void;
}

/** A migration channel over a connected socket. */
export class ChannelSocket {
  readonly #socket: Socket;
  readonly #encoder = new FrameEncoder();
  readonly #decoder = new FrameDecoder();
  readonly #pending = new Map<number, Pending>();
  readonly #handlers: ChannelHandlers;
  #nextId = 1;
  #closed: Error | undefined;
  #drainWaiters: Array<() => void> = [];

  constructor(socket: Socket, handlers: ChannelHandlers) {
    this.#socket = socket;
    this.#handlers = handlers;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#receive(chunk));
    socket.on('drain', () => this.#drained());
    socket.on('error', (error) => this.#close(error));
    socket.on('close', () => this.#close(new ConnectionClosedError('migration channel closed by the peer')));
  }

  /** The peer's address, `host:port`. */
  get peer(): string {
    return `${this.#socket.remoteAddress ?? '?'}:${this.#socket.remotePort ?? '?'}`;
  }

  /** Why the channel is closed, if it is. */
  get closedBy(): Error | undefined {
    return this.#closed;
  }

  /** Stops (true) or resumes reading (the receiver's back-pressure). */
  pauseReading(paused: boolean): void {
    if (paused) this.#socket.pause();
    else this.#socket.resume();
  }

  /**
   * Sends one frame; resolves at once, or when the socket drained if it is over its buffer.
   * `onWritten` runs once the payload's bytes are no longer needed (handed to the kernel, or the write failed).
   * @throws {ConnectionClosedError} ENOTCONN once the channel is closed.
   */
  async send(type: number, id: number, payload: readonly Uint8Array[], onWritten?: () => void): Promise<void> {
    if (this.#closed) {
      onWritten?.();
      throw this.#closed;
    }
    const header = this.#encoder.header(type, id, payload);
    this.#socket.cork();
    let ok = this.#socket.write(header);
    payload.forEach((part, i) => {
      ok = (i === payload.length - 1 && onWritten ? this.#socket.write(part, () => onWritten()) : this.#socket.write(part)) && ok;
    });
    if (payload.length === 0) onWritten?.();
    this.#socket.uncork();
    if (!ok) await new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
    if (this.#closed) throw this.#closed;
  }

  /**
   * A REQUEST `{ op, args }` with optional bytes; resolves with the RESPONSE.
   * @throws {MigrationChannelError} with the peer's errno when it refused;
   * {@link TimeoutError} ETIMEDOUT; {@link ConnectionClosedError} when the channel broke.
   */
  async request(op: string, args: unknown = {}, body?: Uint8Array, timeoutMs = 30_000): Promise<ChannelReply> {
    if (this.#closed) throw this.#closed;
    const id = this.#nextId;
    this.#nextId = (this.#nextId % 0xffff_fffe) + 1;
    const reply = new Promise<ChannelReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new TimeoutError(`migration channel '${op}' got no answer in ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
    });
    // The reply may fail (the channel closed) while the request is still being sent: observed here, thrown once.
    reply.catch(() => undefined);
    try {
      await this.send(ChannelFrame.REQUEST, id, encodeMessage({ op, args }, body));
    } catch (error) {
      const pending = this.#pending.get(id);
      if (pending) clearTimeout(pending.timer);
      this.#pending.delete(id);
      throw error;
    }
    return reply;
  }

  /** Answers request `id` with a result, or an error. */
  async respond(id: number, outcome: { result: unknown; body?: Uint8Array } | { error: WireError }): Promise<void> {
    const head = 'error' in outcome ? { ok: false, ...outcome.error } : { ok: true, result: outcome.result ?? null };
    await this.send(ChannelFrame.RESPONSE, id, encodeMessage(head, 'error' in outcome ? undefined : outcome.body));
  }

  /** Ends the channel after what is queued was sent. */
  end(): void {
    this.#socket.end();
  }

  /** Closes at once. */
  destroy(error?: Error): void {
    this.#close(error ?? new ConnectionClosedError('migration channel closed'));
    this.#socket.destroy();
  }

  #receive(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (error) {
      this.destroy(error as Error);
      return;
    }
    for (const frame of frames) {
      if (frame.type === ChannelFrame.RESPONSE) this.#answer(frame);
      else this.#handlers.onFrame(frame);
    }
  }

  #answer(frame: Frame): void {
    const pending = this.#pending.get(frame.id);
    if (pending === undefined) return; // timed out meanwhile
    this.#pending.delete(frame.id);
    clearTimeout(pending.timer);
    try {
      const { head, body } = decodeMessage(frame.payload);
      const h = head as { ok?: unknown; result?: unknown };
      if (h.ok === true) pending.resolve({ result: h.result, body });
      else pending.reject(fromWire('migration channel peer', head));
    } catch (error) {
      pending.reject(error as Error);
    }
  }

  #drained(): void {
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const w of waiters) w();
  }

  #close(error: Error): void {
    if (this.#closed) return;
    this.#closed = error;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(error);
    }
    this.#pending.clear();
    this.#drained();
    this.#handlers.onClose(error instanceof ConnectionClosedError ? undefined : error);
  }
}
