/**
 * The mediator's contract: a vfio-user proxy between one client and one
 * upstream device per session, forwarding everything in both directions and
 * letting plugins interpose (docs/mediation.md).
 *
 * Directions: the *client* is whoever connects to the mediator's listening
 * socket (a VMM); the *upstream* is the device server the mediator connects to.
 * Client→upstream messages are commands (and replies to the upstream's DMA
 * requests); upstream→client messages are replies (and the upstream's DMA
 * requests, on the main socket or the twin socket).
 */
import type { Logger } from '../log.js';
import type { MessageHeader } from '../protocol/header.js';
import type { PeerCredentials } from '../transport/transport.js';

/** One message as a plugin sees it. Fds are borrowed: the mediator closes them after the message was handled. */
export interface MediatedMessage {
  /** The header as received (msgId is the sender's own). */
  readonly header: MessageHeader;
  /** `msg_size - 16` bytes, a view that stays valid. Never modified by the mediator. */
  readonly payload: Uint8Array;
  /** Fds that arrived with the message; forwarded untouched unless a verdict replaces them. */
  readonly fds: readonly number[];
}

/**
 * What a hook decides for one message. `undefined` (or `{ forward: {} }`) forwards
 * it as received. Fds named in a verdict are borrowed too (the mediator dups what it keeps).
 */
export type Verdict =
  | undefined
  /** Forward with some fields replaced (cmd stays; a reply keeps its request's id). */
  | { forward: { payload?: Uint8Array; fds?: readonly number[] } }
  /** Answer a command here, without the other side seeing it (for a reply hook: replace the reply). */
  | { reply: { payload?: Uint8Array; fds?: readonly number[] } }
  /** Answer with an error reply carrying this errno (replaces the reply in a reply hook). */
  | { error: number }
  /** Swallow the message: nobody answers (for a command, the sender's own timeout applies). */
  | { drop: true }
  /** Close the session (both sides), as a peer that went away would. */
  | { disconnect: true };

/** A hook's result: synchronous verdicts keep the fast path (no await). */
export type MaybePromise<T> = T | Promise<T>;

/** What a plugin can do in a session besides answering hooks. */
export interface MediatorSessionContext {
  /** Session number (1, 2, …) in this mediator. */
  readonly id: number;
  /** The client's credentials (SO_PEERCRED). */
  readonly client: PeerCredentials | undefined;
  readonly log: Logger;
  /**
   * Sends a command of the mediator's own to the upstream (a fresh msgId the
   * client never sees; its reply is not forwarded). Resolves with the reply;
   * rejects RemoteError for an error reply, ConnectionClosedError (ENOTCONN) when
   * the upstream went away, TimeoutError (ETIMEDOUT) after `timeoutMs` (default the mediator's upstreamTimeoutMs).
   */
  upstreamRequest(cmd: number, payload?: Uint8Array, fds?: readonly number[], timeoutMs?: number): Promise<MediatedMessage>;
  /**
   * Sends a command of the mediator's own to the client (DMA_READ / DMA_WRITE on
   * the client's twin socket when it has one, else the main socket). Same rejections.
   */
  clientRequest(cmd: number, payload?: Uint8Array, fds?: readonly number[], timeoutMs?: number): Promise<MediatedMessage>;
  /** Per-session state a plugin keeps (key: anything it owns). */
  readonly state: Map<unknown, unknown>;
  /** The VERSION exchange once done: both JSON objects as parsed (undefined before). */
  readonly version: { client: Record<string, unknown>; upstream: Record<string, unknown> } | undefined;
  /** Closes the session (both sides). */
  close(reason?: string): void;
}

/**
 * A plugin: every hook optional, run in registration order (the first verdict
 * other than plain forward wins for that message; a `forward` with changes is
 * passed to the next plugin as the new message). A hook that throws or rejects
 * becomes an error reply (the thrown error's errno, EIO otherwise) — never a crash.
 */
export interface MediatorPlugin {
  readonly name: string;
  /** A session started (client accepted, upstream connected). */
  onSessionStart?(ctx: MediatorSessionContext): MaybePromise<void>;
  /** A command from the client, before it is forwarded upstream. */
  onClientCommand?(msg: MediatedMessage, ctx: MediatorSessionContext): MaybePromise<Verdict>;
  /** The upstream's reply to a forwarded client command, before the client sees it. `request` is the command as forwarded. */
  onUpstreamReply?(reply: MediatedMessage, request: MediatedMessage, ctx: MediatorSessionContext): MaybePromise<Verdict>;
  /** A command from the upstream (DMA_READ/DMA_WRITE), before it is forwarded to the client. */
  onUpstreamCommand?(msg: MediatedMessage, ctx: MediatorSessionContext): MaybePromise<Verdict>;
  /** The client's reply to a forwarded upstream command, before the upstream sees it. */
  onClientReply?(reply: MediatedMessage, request: MediatedMessage, ctx: MediatorSessionContext): MaybePromise<Verdict>;
  /** The session ended (either side closed, or close()). Must not throw (logged). */
  onSessionEnd?(ctx: MediatorSessionContext, reason: string): void;
}

/** Which side of the mediator a message crossed, as a tap sees it. */
export type TapSide = 'client' | 'upstream';

/**
 * A passive observer of the wire (record/replay): called for every message as
 * it crosses the mediator's *client-facing* socket(s) (`side: 'client'`) and,
 * when `upstream` is set, the upstream-facing ones. Fds are borrowed for the
 * duration of the call. Must not throw (a throw is logged and the tap removed).
 */
export interface MediatorTap {
  /** Also observe the upstream side. Default false. */
  readonly upstream?: boolean;
  onMessage(
    event: { side: TapSide; direction: 'in' | 'out'; channel: 'main' | 'twin'; header: MessageHeader; payload: Uint8Array; fds: readonly number[]; timeNs: bigint },
    ctx: MediatorSessionContext,
  ): void;
  onSessionEnd?(ctx: MediatorSessionContext, reason: string): void;
}

/** Limits of the listening side (what a server enforces) and the upstream side (what a client survives). */
export interface MediatorLimits {
  /** Largest message accepted from either side (default 1,048,608 + 16). */
  maxMessageSize: number;
  /** Client commands forwarded and not yet answered, per session; beyond it the client socket is paused (default 64). */
  maxPendingRequests: number;
  /** Bytes queued towards either side beyond which the other side's reading pauses (default 4 MiB). */
  highWaterMark: number;
  /** A client that has not sent VERSION within this time is closed (default 10 s). */
  handshakeTimeoutMs: number;
  /** How long a forwarded command waits for the upstream's reply before the client gets ETIMEDOUT (default 30 s; 0 = never). */
  upstreamTimeoutMs: number;
  /** Connecting to the upstream: total time allowed (default 5 s). */
  connectTimeoutMs: number;
  /** Concurrent client sessions (default 16; each has its own upstream connection). */
  maxSessions: number;
}

/** Options of {@link Mediator.listen}. */
export interface MediatorOptions {
  /** The upstream device's socket path. */
  upstream: string;
  /** Socket path to listen on (mode 0600 unless `mode`). */
  listen: string;
  mode?: number;
  /** Uids allowed to connect besides our own (as ServeOptions.allowedUids). */
  allowedUids?: readonly number[];
  plugins?: readonly MediatorPlugin[];
  taps?: readonly MediatorTap[];
  limits?: Partial<MediatorLimits>;
  log?: Logger;
}
