/**
 * A {@link Transport} over a non-blocking UNIX stream socket, driven by one
 * `uv_poll` watcher. Reads drain many queued messages per wake-up into a pooled
 * buffer (payloads are views into it, never reused). Writes go out as one
 * system call per message (or per batch of replies) and queue with
 * back-pressure on EAGAIN or a partial write: a small message without fds is
 * copied into a staging buffer and sent with `send` (the common register
 * access: no iovec array, and no small on-heap array handed to the addon, which
 * would have to move it off-heap); others go as a gathering `sendmsg` with
 * their fds.
 */
import { ConnectionClosedError, InvalidArgumentError, SystemError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { HEADER_SIZE as HEADER_BYTES, SERVER_MAX_MSG_SIZE } from '../protocol/constants.js';
import { native } from '../native/addon.js';
import type { NativePoller } from '../native/types.js';
import { Framer, FramingError } from './framer.js';
import { frameOutgoing, messageSize, writeMessage } from './outgoing.js';
import { ReadAhead } from './read-ahead.js';
import type { OutgoingHeader, PeerCredentials, Transport, TransportHandler } from './transport.js';

const { UV_READABLE, UV_WRITABLE, UV_DISCONNECT } = native.constants;
const POOL_SIZE = 256 * 1024;
const MIN_POOL_ROOM = 16 * 1024;
const MAX_READS_PER_WAKE = 64;
/** Chunks one `sendmsg` may gather (the addon's iovec limit). */
const MAX_IOV = 64;
/** Staging buffer for small messages (header + payload copied in, sent in one call). */
const STAGE_SIZE = 64 * 1024;
/** Payloads up to this size are staged (copied); larger ones go out as views. */
const STAGE_MAX_PAYLOAD = 1024;
/** What a read without fds reports (shared, never modified). */
const NO_FDS: readonly number[] = Object.freeze([]);
/** Linux caps the fds of one `sendmsg` at 253 (SCM_MAX_FD), so no read can bring more. */
const SCM_MAX_FD = 253;

/** Options for {@link UnixSocketTransport}. */
export interface UnixSocketTransportOptions {
  /** Largest `msg_size` accepted from the peer (default 1,048,608, libvfio-user's). */
  maxMessageSize?: number;
  /** Bytes queued beyond which `send` returns false (default 4 MiB). */
  highWaterMark?: number;
  /**
   * Fds queued (duplicates held until their message goes out) beyond which
   * `send` returns false too (default 64): small replies that each carry an fd
   * would otherwise exhaust the process's fds long before the byte mark.
   */
  highWaterFds?: number;
  /**
   * Most fds accepted with one read (default 253, all that Linux can send at
   * once). More are closed and reported as a stream error (EMSGSIZE).
   */
  maxReceiveFds?: number;
  /**
   * Gather messages sent within one microtask checkpoint (e.g. requests a batch
   * of replies triggered) into one `sendmsg`, flushed from a microtask. Costs a
   * microtask hop per send; pays off for pipelined clients. Default false.
   */
  coalesceWrites?: boolean;
}

interface PendingWrite {
  chunks: Uint8Array[];
  fds: number[] | null; // duplicates owned by the queue; sent with the first byte
}

/** A message transport over a connected, non-blocking UNIX stream socket fd. */
export class UnixSocketTransport implements Transport {
  readonly #fd: number;
  readonly #framer: Framer;
  readonly #poller: NativePoller;
  readonly #highWaterMark: number;
  readonly #highWaterFds: number;
  #queuedFds = 0;
  readonly #meta: Int32Array;
  #handler: TransportHandler | undefined;
  #pool = new Uint8Array(POOL_SIZE);
  #poolOffset = 0;
  #queue: PendingWrite[] = [];
  /** Replies produced while one read's messages are delivered, sent together afterwards. */
  #cork: Uint8Array[] = [];
  /** Small messages staged for the next write: bytes [0, #staged); [0, #stageFrom) are already in `#cork` as a view. */
  #stage: Uint8Array | undefined;
  #staged = 0;
  #stageFrom = 0;
  #corked = false;
  readonly #coalesce: boolean;
  #flushScheduled = false;
  #queuedBytes = 0;
  #needDrain = false;
  #reading = false;
  #paused = false;
  #closed = false;
  #watching = 0;
  /** Whether bytes went out since the last read (a reply to what it brought). */
  #sent = false;
  readonly #readAhead = new ReadAhead();

  /**
   * Takes ownership of `fd` (closed by {@link close}). The socket must be
   * non-blocking; every fd made by this package's addon is.
   */
  constructor(fd: number, options: UnixSocketTransportOptions = {}) {
    this.#fd = fd;
    this.#highWaterMark = options.highWaterMark ?? 4 * 1024 * 1024;
    this.#highWaterFds = options.highWaterFds ?? 64;
    this.#meta = new Int32Array(2 + (options.maxReceiveFds ?? SCM_MAX_FD));
    this.#coalesce = options.coalesceWrites ?? false;
    this.#framer = new Framer({
      maxMessageSize: options.maxMessageSize ?? SERVER_MAX_MSG_SIZE,
      closeFd: (f) => native.close(f),
    });
    this.#poller = new native.Poller(fd, (status, events) => this.#onPoll(status, events));
  }

  /** The socket's fd (owned by the transport). */
  get fd(): number {
    return this.#fd;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get pendingWriteBytes(): number {
    return this.#queuedBytes;
  }

  start(handler: TransportHandler): void {
    if (this.#handler) throw new InvalidArgumentError('transport already started');
    this.#handler = handler;
    this.#reading = true;
    this.#updatePoll();
  }

  peerCredentials(): PeerCredentials | undefined {
    return this.#closed ? undefined : native.peerCred(this.#fd);
  }

  pause(): void {
    this.#paused = true;
    this.#updatePoll();
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.#updatePoll();
  }

  send(header: OutgoingHeader, payload?: Uint8Array | readonly Uint8Array[], fds?: readonly number[]): boolean {
    if (this.#closed) throw new ConnectionClosedError(`send of cmd ${header.cmd}: transport is closed`);
    const fdList = fds && fds.length > 0 ? fds : null;
    const size = messageSize(header, payload);
    if (!fdList && size - HEADER_BYTES <= STAGE_MAX_PAYLOAD) return this.#sendStaged(header, payload, size);
    const chunks = frameOutgoing(header, payload);
    if ((this.#corked || this.#coalesce) && !fdList) {
      this.#closeStageSegment();
      // One iovec stays free for the staged bytes that may follow these chunks.
      if (this.#cork.length + chunks.length >= MAX_IOV) this.#flushCork();
      for (const c of chunks) this.#cork.push(c);
      this.#scheduleFlush();
      return !this.#needDrain;
    }
    this.#flushCork(); // keep order: corked messages go first
    return this.#write(chunks, fdList);
  }

  /** Copies a small message into the staging buffer; sends it now unless replies are being gathered. */
  #sendStaged(header: OutgoingHeader, payload: Uint8Array | readonly Uint8Array[] | undefined, size: number): boolean {
    if (this.#staged + size > STAGE_SIZE) this.#flushCork();
    const stage = (this.#stage ??= new Uint8Array(STAGE_SIZE));
    writeMessage(stage, this.#staged, header, size, payload);
    this.#staged += size;
    if (this.#corked || this.#coalesce) this.#scheduleFlush();
    else this.#flushCork();
    return !this.#needDrain;
  }

  /** Under `coalesceWrites`, flushes what was gathered from a microtask (inside a delivered batch, #deliver does). */
  #scheduleFlush(): void {
    if (this.#corked || this.#flushScheduled) return;
    this.#flushScheduled = true;
    queueMicrotask(() => {
      this.#flushScheduled = false;
      if (!this.#closed) this.#flushCork();
    });
  }

  /** Moves the staged bytes not yet in the cork into it, as a view (a larger message follows them). */
  #closeStageSegment(): void {
    if (this.#staged === this.#stageFrom) return;
    this.#cork.push((this.#stage as Uint8Array).subarray(this.#stageFrom, this.#staged));
    this.#stageFrom = this.#staged;
  }

  /** One `sendmsg` of `chunks` (fds with the first byte); queues what does not go out. */
  #write(chunks: Uint8Array[], fdList: readonly number[] | null): boolean {
    if (this.#closed) return false;
    if (this.#queue.length === 0) {
      const sent = native.sendmsg(this.#fd, chunks, fdList);
      if (sent >= 0) {
        this.#sent = true;
        const rest = dropSent(chunks, sent);
        if (rest.length === 0) return true;
        this.#enqueue({ chunks: rest, fds: null });
        return this.#afterEnqueue();
      }
      if (sent !== -Errno.EAGAIN) {
        this.#fail(new SystemError('sendmsg', -sent));
        return false;
      }
    }
    const fds = fdList ? duplicateAll(fdList) : null;
    if (fds instanceof Error) {
      this.#fail(fds); // the message cannot go out whole: the stream would desynchronise
      return false;
    }
    this.#enqueue({ chunks, fds });
    return this.#afterEnqueue();
  }

  /** Sends everything gathered: staged bytes alone with one `send`, else the cork with one `sendmsg`. */
  #flushCork(): void {
    if (this.#cork.length === 0) {
      if (this.#staged > 0) this.#writeStage();
      return;
    }
    this.#closeStageSegment();
    const chunks = this.#cork;
    this.#cork = [];
    this.#write(chunks, null);
    this.#staged = this.#stageFrom = 0; // #enqueue copied whatever was left of the stage
  }

  /** One `send` of the staged bytes; what does not go out is copied to the queue. */
  #writeStage(): void {
    const stage = this.#stage as Uint8Array;
    const size = this.#staged;
    this.#staged = 0;
    if (this.#closed) return;
    let sent = 0;
    if (this.#queue.length === 0) {
      sent = native.send(this.#fd, stage, 0, size);
      if (sent > 0) this.#sent = true;
      if (sent === size) return;
      if (sent === -Errno.EAGAIN) sent = 0;
      else if (sent < 0) return this.#fail(new SystemError('send', -sent));
    }
    this.#enqueue({ chunks: [stage.subarray(sent, size)], fds: null });
    this.#afterEnqueue();
  }

  close(): void {
    this.#shutdown(undefined);
  }

  #enqueue(write: PendingWrite): void {
    // The staging buffer is reused at once: queued bytes from it are copied out.
    const stage = this.#stage?.buffer;
    if (stage) write.chunks = write.chunks.map((c) => (c.buffer === stage ? c.slice() : c));
    this.#queue.push(write);
    for (const c of write.chunks) this.#queuedBytes += c.length;
    this.#queuedFds += write.fds?.length ?? 0;
  }

  #afterEnqueue(): boolean {
    this.#updatePoll();
    if (this.#queuedBytes >= this.#highWaterMark || this.#queuedFds >= this.#highWaterFds) this.#needDrain = true;
    return !this.#needDrain;
  }

  #onPoll(status: number, events: number): void {
    if (this.#closed) return;
    if (status < 0) {
      this.#fail(new SystemError('poll', -status));
      return;
    }
    if (events & UV_WRITABLE) this.#flush();
    if (events & (UV_READABLE | UV_DISCONNECT)) this.#readSome();
  }

  #flush(): void {
    while (this.#queue.length > 0 && !this.#closed) {
      const head = this.#queue[0] as PendingWrite;
      const sent = native.sendmsg(this.#fd, head.chunks, head.fds);
      if (sent === -Errno.EAGAIN) return;
      if (sent < 0) return this.#fail(new SystemError('sendmsg', -sent));
      this.#queuedBytes -= sent;
      this.#queuedFds -= head.fds?.length ?? 0;
      closeFds(head.fds);
      head.fds = null;
      head.chunks = dropSent(head.chunks, sent);
      if (head.chunks.length === 0) this.#queue.shift();
    }
    this.#updatePoll();
    if (this.#needDrain && this.#queue.length === 0) {
      this.#needDrain = false;
      this.#handler?.onDrain?.();
    }
  }

  #readSome(): void {
    let ahead = false; // this read is a read-ahead (see ReadAhead)
    for (let i = 0; i < MAX_READS_PER_WAKE; i++) {
      if (this.#closed || this.#paused || !this.#reading) return;
      if (POOL_SIZE - this.#poolOffset < MIN_POOL_ROOM) {
        this.#pool = new Uint8Array(POOL_SIZE);
        this.#poolOffset = 0;
      }
      const room = this.#pool.subarray(this.#poolOffset);
      const n = native.recvmsg(this.#fd, room, this.#meta);
      if (n === -Errno.EAGAIN) return ahead ? this.#readAhead.miss() : undefined;
      if (ahead) {
        this.#readAhead.hit();
        ahead = false;
      }
      if (n < 0) return this.#fail(new SystemError('recvmsg', -n));
      const fds = this.#takeMetaFds();
      if (n === 0) return this.#onEof(fds);
      const chunk = room.subarray(0, n);
      this.#poolOffset += n;
      if (this.#meta[1] !== 0) return this.#onFdsLost(fds);
      this.#sent = false;
      this.#deliver(chunk, fds);
      if (n < room.length && fds.length === 0) {
        // Drained (poll is level-triggered): wait for the next wake-up, unless a reply just went out.
        ahead = this.#sent && this.#readAhead.shouldTry();
        if (!ahead) return;
      }
    }
  }

  #takeMetaFds(): readonly number[] {
    const count = this.#meta[0] as number;
    if (count === 0) return NO_FDS;
    return Array.from(this.#meta.subarray(2, 2 + count));
  }

  #deliver(chunk: Uint8Array, fds: readonly number[]): void {
    const { messages, error } = this.#framer.push(chunk, fds);
    const handler = this.#handler as TransportHandler;
    this.#corked = messages.length > 1;
    try {
      for (let i = 0; i < messages.length; i++) {
        const m = messages[i]!;
        if (this.#closed) {
          m.fds.closeRemaining();
          continue;
        }
        handler.onMessage(m);
      }
    } finally {
      this.#corked = false;
      this.#flushCork();
    }
    if (error && !this.#closed) this.#streamError(error);
  }

  #onFdsLost(fds: readonly number[]): void {
    closeFds(fds);
    this.#streamError(
      new FramingError('recvmsg: file descriptors were truncated (MSG_CTRUNC); the message they belonged to is lost', Errno.EMSGSIZE),
    );
  }

  #onEof(fds: readonly number[]): void {
    closeFds(fds);
    const error = this.#framer.midMessage
      ? new ConnectionClosedError('peer closed the connection in the middle of a message', { errno: Errno.ECONNRESET })
      : undefined;
    this.#shutdown(error);
  }

  #streamError(error: FramingError): void {
    this.#reading = false;
    this.#updatePoll();
    const handler = this.#handler as TransportHandler;
    if (handler.onStreamError) handler.onStreamError(error);
    else this.#shutdown(error);
  }

  #fail(error: Error): void {
    this.#shutdown(error);
  }

  #shutdown(error: Error | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#poller.close();
    this.#framer.dispose();
    for (const w of this.#queue) closeFds(w.fds);
    this.#queue = [];
    this.#cork = [];
    this.#staged = this.#stageFrom = 0;
    this.#queuedBytes = 0;
    this.#queuedFds = 0;
    native.close(this.#fd);
    this.#handler?.onClose(error);
  }

  #updatePoll(): void {
    if (this.#closed) return;
    let events = 0;
    if (this.#reading && !this.#paused) events |= UV_READABLE;
    if (this.#queue.length > 0) events |= UV_WRITABLE;
    if (events === this.#watching) return;
    this.#watching = events;
    if (events === 0) this.#poller.stop();
    else this.#poller.start(events);
  }
}

/** The chunks left after `sent` bytes went out (views, no copies). */
function dropSent(chunks: Uint8Array[], sent: number): Uint8Array[] {
  let i = 0;
  while (i < chunks.length && sent >= (chunks[i] as Uint8Array).length) {
    sent -= (chunks[i] as Uint8Array).length;
    i++;
  }
  if (i === chunks.length) return [];
  const rest = chunks.slice(i);
  rest[0] = (rest[0] as Uint8Array).subarray(sent);
  return rest;
}

/** Duplicates every fd of a queued message, or none: on failure (EMFILE) those made are closed. */
function duplicateAll(fds: readonly number[]): number[] | SystemError {
  const copies: number[] = [];
  for (const fd of fds) {
    const copy = native.dup(fd);
    if (copy < 0) {
      closeFds(copies);
      return new SystemError('dup', -copy, `fd ${fd}`);
    }
    copies.push(copy);
  }
  return copies;
}

function closeFds(fds: readonly number[] | null): void {
  if (fds) for (const fd of fds) native.close(fd);
}
