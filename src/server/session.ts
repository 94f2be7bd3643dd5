/**
 * One client's session with a device: VERSION first, then every command
 * decoded, validated and handled strictly in arrival order (pipelined requests
 * are queued; replies leave in the same order), NO_REPLY honoured. Server→client
 * DMA_READ/DMA_WRITE go out on the twin socket when negotiated, otherwise
 * interleaved on the main socket: replies to them are picked out of the stream
 * while the request that needs them waits, so neither side deadlocks.
 */
import { ConnectionClosedError, ProtocolError } from '../errors.js';
import { ReplyWithPayload, errnoOf } from './reply-error.js';
import { HeaderFlags, commandName } from '../protocol/constants.js';
import { isReply } from '../protocol/header.js';
import { checkRequestFds, decodeRequest } from '../protocol/request.js';
import type { ResolvedCapabilities } from '../protocol/capabilities.js';
import type { Message, OutgoingHeader, Transport } from '../transport/transport.js';
import type { FramingError } from '../transport/framer.js';
import { DmaController } from '../device/dma.js';
import { ResetReason } from '../device/types.js';
import { HANDLERS } from './dispatch.js';
import { checkCommandAllowed } from '../migration/gating.js';
import { negotiate, type Negotiated } from './negotiate.js';
import type { DmaLayoutOption } from './client-profile.js';
import { ServerRequests } from './server-requests.js';
import type { HandlerContext, HandlerReply, ServerLimits, SessionDevice } from './types.js';
import { serverTracing, traceRequest, traceSessionEnd } from './trace.js';
import { IsolationGroupSession, type IsolationGroupSource } from './isolation-group.js';
import { MmapSavingSession } from './mmap-saving.js';

/** Options of a {@link Session}. */
export interface SessionOptions {
  limits: ServerLimits;
  /** Largest message accepted (header included). */
  maxMessageSize: number;
  /** How long a server→client DMA request may wait for its reply (default 10 s). */
  dmaTimeoutMs?: number;
  /** DMA message layout: `'auto'` (default) recognises QEMU's client (client-profile.ts). */
  dmaLayout?: DmaLayoutOption;
  /**
   * How long a client may take to send VERSION before it is dropped (default
   * 10 s): a client that connects and says nothing would hold the device and
   * every other client would get EBUSY.
   */
  handshakeTimeoutMs?: number;
  /** Requests queued beyond this pause reading from the socket (default 256). */
  maxQueued?: number;
  /** The device's isolation group: the `x-isolation-group` extension is offered while it has one. */
  isolationGroup?: IsolationGroupSource;
}

/** A served client. Resolves `closed` once the device has been cleaned up. */
export class Session {
  readonly #device: SessionDevice;
  readonly #transport: Transport;
  readonly #options: SessionOptions;
  readonly #queue: Message[] = [];
  readonly #requests: ServerRequests;
  readonly #dma: DmaController;
  readonly #group: IsolationGroupSession | undefined;
  #negotiated: Negotiated | undefined;
  #context: HandlerContext | undefined;
  #busy = false;
  /** The request being handled asynchronously, if any (teardown waits for it). */
  #inFlight: Promise<void> | undefined;
  #closing = false;
  /** Replies wait in the transport beyond its high-water mark: reading and handling stop until it drains. */
  #congested = false;
  #handshakeTimer: NodeJS.Timeout | undefined;
  #resolveClosed!: (error: Error | undefined) => void;
  /** Resolves with the reason (undefined for an orderly EOF) after cleanup. */
  readonly closed: Promise<Error | undefined>;

  constructor(device: SessionDevice, transport: Transport, options: SessionOptions) {
    this.#device = device;
    this.#transport = transport;
    this.#options = options;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    this.#requests = new ServerRequests(transport, options.dmaTimeoutMs ?? 10_000);
    this.#dma = new DmaController({
      transport: this.#requests.dmaTransport(() => this.#negotiated),
      onUnmap: (region) => this.#notify(() => device.dmaUnmapping?.(region)),
    });
    this.#group = options.isolationGroup && new IsolationGroupSession(options.isolationGroup, device.logger);
    device.attach(this.#dma);
    transport.start({
      onMessage: (m) => this.#onMessage(m),
      onStreamError: (e) => this.#onStreamError(e),
      onDrain: () => this.#onDrain(),
      onClose: (e) => void this.#teardown(e),
    });
    this.#handshakeTimer = setTimeout(() => this.#handshakeExpired(), options.handshakeTimeoutMs ?? 10_000);
    this.#handshakeTimer.unref();
  }

  /** The client's negotiated capabilities, once VERSION is done. */
  get client(): ResolvedCapabilities | undefined {
    return this.#negotiated?.client;
  }

  /** Ends the session (the device is reset for the next client). */
  close(): void {
    this.#transport.close();
  }

  /** Runs a device hook; a hook that throws is logged, never allowed to break the session. */
  #notify(hook: () => void): void {
    try {
      hook();
    } catch (err) {
      this.#device.logger.error({ err }, 'device DMA hook failed');
    }
  }

  #onMessage(m: Message): void {
    if (isReply(m.header)) {
      this.#requests.settle(m, 'main socket');
      return;
    }
    this.#queue.push(m);
    if (this.#queue.length > (this.#options.maxQueued ?? 256)) this.#transport.pause();
    this.#pump();
  }

  /** Handles queued requests in order; synchronous ones inline, an async one blocks the queue. */
  #pump(): void {
    while (!this.#busy && !this.#congested && this.#queue.length > 0 && !this.#closing) {
      const m = this.#queue.shift() as Message;
      const pending = this.#handle(m);
      if (pending) {
        this.#busy = true;
        this.#inFlight = pending.then(() => {
          this.#busy = false;
          this.#inFlight = undefined;
          this.#pump();
        });
        return;
      }
    }
    if (this.#queue.length === 0 && !this.#closing && !this.#congested) this.#transport.resume();
  }

  /** The client reads its replies again: handle what is queued, then read more. */
  #onDrain(): void {
    if (!this.#congested) return;
    this.#congested = false;
    this.#pump();
  }

  #handshakeExpired(): void {
    if (this.#negotiated || this.#closing) return;
    this.#device.logger.warn({ timeoutMs: this.#options.handshakeTimeoutMs ?? 10_000 }, 'no VERSION in time: client dropped');
    this.close();
  }

  /**
   * Sends one reply. A client that does not read its replies fills the
   * transport's queue: past its high-water mark the session stops reading and
   * handling until it drains, so the server's memory stays bounded. A send
   * that fails (e.g. EMFILE duplicating a reply's fd) ends this session, never
   * the process.
   */
  #send(header: OutgoingHeader, payload?: Uint8Array | readonly Uint8Array[], fds?: readonly number[]): void {
    let flowing: boolean;
    try {
      flowing = this.#transport.send(header, payload, fds);
    } catch (err) {
      this.#device.logger.error({ err, cmd: commandName(header.cmd) }, 'reply could not be sent: closing the session');
      this.close();
      return;
    }
    if (!flowing && !this.#congested) {
      this.#congested = true;
      this.#transport.pause();
    }
  }

  /** Handles one request; returns a promise only if the handler went asynchronous. */
  #handle(m: Message): Promise<void> | undefined {
    const started = serverTracing ? performance.now() : 0;
    let result: HandlerReply | undefined | Promise<HandlerReply | undefined>;
    try {
      result = this.#dispatch(m);
    } catch (error) {
      m.fds.closeRemaining();
      this.#replyError(m, error, started);
      return undefined;
    }
    if (!(result instanceof Promise)) {
      m.fds.closeRemaining();
      this.#reply(m, result, started);
      return undefined;
    }
    return result.then(
      (reply) => this.#reply(m, reply, started),
      (error: unknown) => this.#replyError(m, error, started),
    ).finally(() => m.fds.closeRemaining());
  }

  /** Decodes and runs one request. */
  #dispatch(m: Message): HandlerReply | undefined | Promise<HandlerReply | undefined> {
    if (!this.#negotiated) return this.#negotiate(m);
    const request = decodeRequest(m.header, m.payload, this.#options.maxMessageSize);
    if (m.fds.count > this.#options.limits.maxMsgFds) {
      throw new ProtocolError(`${m.fds.count} fds in one message exceed the advertised max_msg_fds ${this.#options.limits.maxMsgFds}`);
    }
    const { use } = checkRequestFds(request, m.fds.count);
    const migration = this.#device.migration;
    if (migration) checkCommandAllowed(migration.state as never, request.cmd);
    const handler = HANDLERS[request.cmd];
    return handler(this.#context as HandlerContext, request as never, m.fds, use);
  }

  #negotiate(m: Message): HandlerReply {
    try {
      const extensions = this.#group?.capability();
      const result = negotiate(m, this.#options.limits, this.#requests, this.#device.logger, this.#device.migration !== undefined, this.#options.dmaLayout, extensions);
      if (result.profile.name !== 'vfio-user') this.#device.logger.info({ profile: result.profile }, 'client recognised; DMA messages in its layout');
      this.#negotiated = result;
      clearTimeout(this.#handshakeTimer);
      this.#context = {
        device: this.#device,
        dma: this.#dma,
        client: result.client,
        server: this.#options.limits,
        dmaTransport: this.#requests.dmaTransport(() => result),
        logger: this.#device.logger,
        ...(this.#group && result.extensions ? { sessionFeatures: this.#group.features() } : {}),
        ...(this.#device.migration ? { mmapSaving: new MmapSavingSession(result.clientMmaps) } : {}),
      };
      return result.reply;
    } catch (error) {
      // A failed negotiation ends the session (libvfio-user closes too), after the error reply.
      setImmediate(() => this.close());
      throw error;
    }
  }

  #reply(m: Message, reply: HandlerReply | undefined, started: number): void {
    if (serverTracing) traceRequest(this.#device.logger, m, started);
    try {
      if (this.#transport.closed || (m.header.flags & HeaderFlags.NO_REPLY) !== 0) return;
      this.#send({ msgId: m.header.msgId, cmd: m.header.cmd, flags: HeaderFlags.TYPE_REPLY }, reply?.payload, reply?.fds);
    } finally {
      reply?.afterSend?.();
    }
  }

  #replyError(m: Message, error: unknown, started: number): void {
    const errno = errnoOf(error);
    if (serverTracing) traceRequest(this.#device.logger, m, started, errno);
    this.#device.logger.debug({ cmd: commandName(m.header.cmd), msgId: m.header.msgId, errno, err: error }, 'request failed');
    if (this.#transport.closed || (m.header.flags & HeaderFlags.NO_REPLY) !== 0) return;
    const payload = error instanceof ReplyWithPayload ? error.payload : undefined;
    const flags = HeaderFlags.TYPE_REPLY | HeaderFlags.ERROR;
    this.#send({ msgId: m.header.msgId, cmd: m.header.cmd, flags, errorNo: errno }, payload);
  }

  #onStreamError(error: FramingError): void {
    // The stream is out of sync: answer the offending header if there was one, then close.
    this.#device.logger.warn({ err: error }, 'stream error, closing the session');
    if (error.header && !isReply(error.header)) {
      this.#send({ msgId: error.header.msgId, cmd: error.header.cmd, flags: HeaderFlags.TYPE_REPLY | HeaderFlags.ERROR, errorNo: error.errno });
    }
    this.#transport.close();
  }

  async #teardown(error: Error | undefined): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    clearTimeout(this.#handshakeTimer);
    for (const m of this.#queue.splice(0)) m.fds.closeRemaining();
    this.#group?.close();
    this.#requests.close(new ConnectionClosedError('the client went away', { cause: error }));
    this.#negotiated?.twin?.close();
    this.#dma.close();
    // A request in flight (a SET walking its arcs) finishes first: the next client finds the state it committed.
    await this.#inFlight;
    try {
      await this.#device.reset(ResetReason.LOST_CONNECTION);
    } catch (resetError) {
      this.#device.logger.error({ err: resetError }, 'device reset after disconnect failed');
    }
    this.#device.detach();
    traceSessionEnd(this.#device.logger, error);
    this.#resolveClosed(error);
  }
}
