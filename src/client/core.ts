/**
 * The connection half of a vfio-user client (the VMM side): connect, VERSION,
 * one generic `request()` correlated by message id, reply validation (wrong
 * command, error flag, errno clamped), server→client DMA_READ/DMA_WRITE
 * answered from guest memory on the main or the twin socket, tracing, teardown.
 */
import { ConnectionClosedError, ProtocolError, RemoteError, VfioUserError } from '../errors.js';
import { Command, DEFAULT_MAX_DATA_XFER_SIZE, HeaderFlags, PROTOCOL_MAJOR, PROTOCOL_MINOR, SERVER_MAX_MSG_SIZE, commandName } from '../protocol/constants.js';
import { Errno, errnoName } from '../protocol/errno.js';
import { isError, isReply, replyErrno, type MessageHeader } from '../protocol/header.js';
import { VERSION_REQUEST_PAD, decodeVersion, encodeVersion, type Version } from '../protocol/version.js';
import { migrationExtensionRequest } from '../protocol/migration-extensions.js';
import { clientMmapsRequest } from '../protocol/mmap-saving.js';
import { resolveCapabilities, type Capabilities, type ResolvedCapabilities } from '../protocol/capabilities.js';
import { decodeDmaReadRequest, decodeDmaWriteRequest, encodeDmaAccess, encodeDmaAccessWithData } from '../protocol/dma.js';
import { connectUnix } from '../transport/unix-listener.js';
import { UnixSocketTransport } from '../transport/unix-socket.js';
import { native } from '../native/addon.js';
import type { Message, Transport } from '../transport/transport.js';
import { getDefaultLogger, type Logger } from '../log.js';
import { PendingRequests } from './pending.js';

/** Answers the server's DMA_READ/DMA_WRITE (guest memory mapped without an fd). Throw an error with an errno to refuse. */
export interface DmaResponder {
  read(addr: bigint, count: number): Uint8Array;
  write(addr: bigint, data: Uint8Array): void;
}

/** One message seen by the client, for `--trace`. */
export interface TraceEvent {
  direction: 'send' | 'recv';
  channel: 'main' | 'twin';
  header: MessageHeader;
  payload: Uint8Array;
  fds: number;
  /** process.hrtime.bigint() when it was seen. */
  timeNs: bigint;
  /** For a reply: time since its request was sent. */
  latencyNs?: bigint;
}

/** Options of {@link ClientCore.connect}. */
export interface ClientOptions {
  /** Per-request timeout in ms (default 10 s; 0 = none). */
  timeoutMs?: number;
  /** What we advertise (defaults: max_msg_fds 16, max_data_xfer_size 1 MiB). */
  capabilities?: Capabilities;
  /** Ask for a twin socket for the server's own commands (default false). */
  twinSocket?: boolean;
  /** Answers server→client DMA (guest memory mapped without fds). */
  dma?: DmaResponder;
  /** Called for every message sent or received. */
  trace?: (event: TraceEvent) => void;
  logger?: Logger;
  /** How long to retry connecting while the server's backlog is full (default 5 s). */
  connectTimeoutMs?: number;
}

/** Per-call options of {@link ClientCore.request}. */
export interface RequestOptions {
  fds?: readonly number[];
  /** Override the client's timeout for this request. */
  timeoutMs?: number;
}

const CLIENT_RECEIVE_FDS = 16;

/** A negotiated connection to a vfio-user server. */
export class ClientCore {
  /** Server's capabilities, defaults applied (set by VERSION). */
  server!: ResolvedCapabilities;
  /** Negotiated protocol version. */
  version!: { major: number; minor: number };
  /** The capabilities we sent in VERSION. */
  advertised!: Capabilities;
  /** The capabilities the server sent, as sent (before defaults); undefined if it sent no JSON. */
  serverAdvertised: Capabilities | undefined;
  /** Resolves with the reason once the connection is gone (undefined for a local close or orderly EOF). */
  readonly closed: Promise<Error | undefined>;
  protected readonly logger: Logger;
  readonly #transport: Transport;
  readonly #pending = new PendingRequests();
  readonly #options: ClientOptions;
  #twin: Transport | undefined;
  #dma: DmaResponder | undefined;
  /** The max_data_xfer_size we advertised: the most a server may ask us to move in one DMA message. */
  #maxDataXferSize = DEFAULT_MAX_DATA_XFER_SIZE;
  #resolveClosed!: (e: Error | undefined) => void;

  /** Starts reading `transport`; {@link negotiate} must run before anything else is sent. */
  protected constructor(transport: Transport, options: ClientOptions) {
    this.#transport = transport;
    this.#options = options;
    this.#dma = options.dma;
    this.logger = options.logger ?? getDefaultLogger();
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    transport.start({
      onMessage: (m) => this.#onMessage(m, transport, 'main'),
      onClose: (error) => this.#teardown(error),
    });
  }

  /** Connects a transport to `path` sized for the replies we accept. @throws {SystemError} ENOENT/ECONNREFUSED/EACCES. */
  protected static async connectTransport(path: string, options: ClientOptions): Promise<Transport> {
    const maxMessageSize = Math.max(SERVER_MAX_MSG_SIZE, (options.capabilities?.maxDataXferSize ?? DEFAULT_MAX_DATA_XFER_SIZE) + 64);
    return connectUnix(path, { timeoutMs: options.connectTimeoutMs ?? 5000, transport: { maxMessageSize, coalesceWrites: true } });
  }

  /**
   * VERSION: advertises our capabilities, records the server's, opens the twin socket if granted.
   * @throws {RemoteError} the server's errno when it refuses (EBUSY: it has a client; EPERM: uid not allowed).
   * @throws {ProtocolError} EPROTO for a malformed reply or a major other than 0.
   */
  protected async negotiate(): Promise<void> {
    const caps: Capabilities = { maxMsgFds: CLIENT_RECEIVE_FDS, maxDataXferSize: DEFAULT_MAX_DATA_XFER_SIZE, ...this.#options.capabilities };
    if (this.#options.twinSocket) caps.twinSocket = { supported: true };
    // Ask for this library's migration extensions (and x-client-mmaps: mmap-saving.ts); a server advertises only those asked for.
    caps.migration ??= { extra: { ...migrationExtensionRequest(), ...clientMmapsRequest() } };
    this.#maxDataXferSize = caps.maxDataXferSize ?? DEFAULT_MAX_DATA_XFER_SIZE;
    this.advertised = caps;
    const reply = await this.request(Command.VERSION, encodeVersion({ major: PROTOCOL_MAJOR, minor: PROTOCOL_MINOR, capabilities: caps }, VERSION_REQUEST_PAD));
    const fds = reply.fds.takeAll();
    try {
      const version = decodeReplyVersion(reply.payload);
      this.serverAdvertised = version.capabilities;
      this.server = resolveCapabilities(version.capabilities);
      this.version = { major: version.major, minor: version.minor };
      const twinIndex = this.server.twinSocket.supported ? (this.server.twinSocket.fdIndex ?? 0) : -1;
      const twinFd = fds[twinIndex];
      if (twinFd !== undefined) {
        fds[twinIndex] = -1;
        const twin = new UnixSocketTransport(twinFd);
        this.#twin = twin;
        twin.start({ onMessage: (m) => this.#onMessage(m, twin, 'twin'), onClose: () => {} });
      }
    } finally {
      for (const fd of fds) if (fd >= 0) native.close(fd);
    }
  }

  /** Whether a twin socket carries the server's commands. */
  get hasTwinSocket(): boolean {
    return this.#twin !== undefined;
  }

  /** Installs (or removes) what answers server→client DMA. */
  setDmaResponder(responder: DmaResponder | undefined): void {
    this.#dma = responder;
  }

  /**
   * Sends one command and resolves with its reply. The reply's fds belong to the
   * caller (take what you keep, `closeRemaining()` the rest).
   * @throws {RemoteError} the server's errno for an ERROR reply (payload attached, errno clamped to 1..4096).
   * @throws {TimeoutError} ETIMEDOUT; {@link ConnectionClosedError} ENOTCONN.
   * @throws {ProtocolError} EPROTO when the reply answers another command.
   */
  async request(cmd: number, payload?: Uint8Array | readonly Uint8Array[], options: RequestOptions = {}): Promise<Message> {
    const { msgId, reply } = this.#pending.add(cmd, options.timeoutMs ?? this.#options.timeoutMs ?? 10_000);
    // Traced as it goes out, so a reply's latency and the two timestamps agree.
    this.#trace('send', 'main', { msgId, cmd, msgSize: 16 + byteLength(payload), flags: 0, errorNo: 0 }, payload, options.fds?.length ?? 0);
    try {
      this.#transport.send({ msgId, cmd, flags: HeaderFlags.TYPE_COMMAND }, payload, options.fds);
    } catch (error) {
      this.#pending.reject(msgId, error as Error);
    }
    const m = await reply;
    if (isError(m.header)) {
      m.fds.closeRemaining();
      const errno = replyErrno(m.header);
      throw new RemoteError(`${commandName(cmd)} failed: ${errnoText(errno)}`, cmd, errno, { payload: m.payload });
    }
    return m;
  }

  /**
   * Sends a command with NO_REPLY: nothing comes back, success or failure.
   * @throws {ConnectionClosedError} ENOTCONN when closed.
   */
  post(cmd: number, payload?: Uint8Array, fds?: readonly number[]): void {
    if (this.#transport.closed) throw new ConnectionClosedError(`${commandName(cmd)}: the connection is closed`);
    const header = { msgId: 0, cmd, flags: HeaderFlags.NO_REPLY, errorNo: 0 };
    this.#transport.send(header, payload, fds);
    this.#trace('send', 'main', { ...header, msgSize: 16 + (payload?.length ?? 0) }, payload, fds?.length ?? 0);
  }

  /**
   * The most data one region/DMA message may carry in either direction: the
   * smaller of the server's `max_data_xfer_size` and ours (a bigger reply would
   * exceed what our transport accepts).
   */
  get maxTransferSize(): number {
    return Math.max(1, Math.min(this.server.maxDataXferSize, this.#maxDataXferSize));
  }

  /** Requests still waiting for their reply. */
  get inFlight(): number {
    return this.#pending.size;
  }

  /** Closes the connection (pending requests fail with ConnectionClosedError). */
  close(): void {
    this.#twin?.close();
    this.#transport.close();
  }

  #onMessage(m: Message, via: Transport, channel: 'main' | 'twin'): void {
    const pending = this.#pending.peek(m.header.msgId);
    const latency = pending && isReply(m.header) ? process.hrtime.bigint() - pending.sentAt : undefined;
    this.#trace('recv', channel, m.header, m.payload, m.fds.count, latency);
    if (!isReply(m.header)) return this.#answerServer(m, via, channel);
    if (!pending) {
      m.fds.closeRemaining();
      this.logger.warn({ msgId: m.header.msgId, cmd: m.header.cmd }, 'reply to no pending request; dropped');
      return;
    }
    if (m.header.cmd !== pending.cmd) {
      m.fds.closeRemaining();
      const error = new ProtocolError(`reply ${m.header.msgId} is for ${commandName(m.header.cmd)}, not ${commandName(pending.cmd)}`, { errno: Errno.EPROTO });
      return this.#pending.reject(m.header.msgId, error);
    }
    this.#pending.resolve(m.header.msgId, m);
  }

  /** The server's own commands: DMA_READ/DMA_WRITE from guest memory; anything else is refused. */
  #answerServer(m: Message, via: Transport, channel: 'main' | 'twin'): void {
    m.fds.closeRemaining();
    const base = { msgId: m.header.msgId, cmd: m.header.cmd };
    let payload: Uint8Array;
    try {
      payload = this.#serveDma(m);
    } catch (error) {
      const errno = error instanceof VfioUserError && error.errno ? error.errno : Errno.EINVAL;
      this.#send(via, channel, { ...base, flags: HeaderFlags.TYPE_REPLY | HeaderFlags.ERROR, errorNo: errno });
      return;
    }
    this.#send(via, channel, { ...base, flags: HeaderFlags.TYPE_REPLY, errorNo: 0 }, payload);
  }

  #serveDma(m: Message): Uint8Array {
    const dma = this.#dma;
    if (m.header.cmd === Command.DMA_READ) {
      const a = decodeDmaReadRequest(m.payload);
      this.#checkDmaCount(a.count, 'DMA_READ');
      if (!dma) throw new ProtocolError('DMA_READ: no guest memory to read', { errno: Errno.EFAULT });
      return encodeDmaAccessWithData({ addr: a.addr, count: a.count, data: dma.read(a.addr, Number(a.count)) });
    }
    if (m.header.cmd === Command.DMA_WRITE) {
      const a = decodeDmaWriteRequest(m.payload);
      this.#checkDmaCount(a.count, 'DMA_WRITE');
      if (!dma) throw new ProtocolError('DMA_WRITE: no guest memory to write', { errno: Errno.EFAULT });
      dma.write(a.addr, a.data);
      return encodeDmaAccess({ addr: a.addr, count: a.count });
    }
    throw new ProtocolError(`the server sent ${commandName(m.header.cmd)}, which only clients send`);
  }

  /** A server may not move more than our advertised max_data_xfer_size in one DMA message. */
  #checkDmaCount(count: bigint, what: string): void {
    if (count > BigInt(this.#maxDataXferSize)) {
      throw new ProtocolError(`${what} of ${count} bytes exceeds our max_data_xfer_size ${this.#maxDataXferSize}`, { errno: Errno.EINVAL });
    }
  }

  #send(via: Transport, channel: 'main' | 'twin', header: Omit<MessageHeader, 'msgSize'>, payload?: Uint8Array): void {
    if (via.closed) return;
    via.send(header, payload);
    this.#trace('send', channel, { ...header, msgSize: 16 + (payload?.length ?? 0) }, payload, 0);
  }

  #trace(direction: 'send' | 'recv', channel: 'main' | 'twin', header: MessageHeader, payload: Uint8Array | readonly Uint8Array[] | undefined, fds: number, latencyNs?: bigint): void {
    const trace = this.#options.trace;
    if (!trace) return;
    const bytes = payload === undefined ? new Uint8Array(0) : payload instanceof Uint8Array ? payload : concat(payload);
    trace({ direction, channel, header, payload: bytes, fds, timeNs: process.hrtime.bigint(), ...(latencyNs === undefined ? {} : { latencyNs }) });
  }

  #teardown(error: Error | undefined): void {
    this.#twin?.close();
    this.#pending.closeAll(new ConnectionClosedError('the connection to the server is closed', error ? { cause: error } : {}));
    this.#resolveClosed(error);
  }
}

function decodeReplyVersion(payload: Uint8Array): Version {
  let version: Version;
  try {
    version = decodeVersion(payload);
  } catch (cause) {
    throw new ProtocolError('malformed VERSION reply', { errno: Errno.EPROTO, cause });
  }
  if (version.major !== PROTOCOL_MAJOR) throw new ProtocolError(`the server speaks protocol major ${version.major}`, { errno: Errno.EPROTO });
  return version;
}

function byteLength(payload: Uint8Array | readonly Uint8Array[] | undefined): number {
  if (payload === undefined) return 0;
  if (payload instanceof Uint8Array) return payload.length;
  let n = 0;
  for (const p of payload) n += p.length;
  return n;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(byteLength(parts));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function errnoText(errno: number): string {
  return `${errnoName(errno) ?? 'errno'} ${errno}`;
}
