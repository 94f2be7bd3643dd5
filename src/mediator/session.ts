/**
 * One mediated session: a client accepted on the mediator's socket, its own
 * connection to the upstream device, and the relay between them (see
 * relay.ts for the message paths). This file holds the session's life:
 * connecting, flow control (pausing one side while the other is congested or
 * too many requests are pending), timeouts, the plugin context, teardown.
 */
import { ConnectionClosedError, StateError, TimeoutError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { HEADER_SIZE } from '../protocol/constants.js';
import type { MessageHeader } from '../protocol/header.js';
import type { Logger } from '../log.js';
import { connectUnix } from '../transport/unix-listener.js';
import type { OutgoingHeader, PeerCredentials, Transport } from '../transport/transport.js';
import type { UnixSocketTransportOptions } from '../transport/unix-socket.js';
import { native } from '../native/addon.js';
import { LANE_HIGH_WATER } from './relay-lane.js';
import type { Channel, PendingEntry } from './relay-pending.js';
import { Relay } from './relay.js';
import type { MediatedMessage, MediatorLimits, MediatorPlugin, MediatorSessionContext, MediatorTap, TapSide } from './types.js';

/** Timed-out requests (whose ids stay reserved for their late replies) beyond which the peer is deemed dead. */
const MAX_EXPIRED = 1024;
/** How long a session that ends because of the upstream waits for the client to take its last error replies. */
const FLUSH_GRACE_MS = 2000;
/** The mediator's own requests in flight towards one side beyond which more are refused (EBUSY). */
const MAX_IN_FLIGHT = 32_768;
const EMPTY = new Uint8Array(0);
const NO_FDS: readonly number[] = Object.freeze([]);

/**
 * The options of every transport of a session. `coalesceWrites`: the messages forwarded in one read turn leave
 * in one sendmsg (each sendmsg wakes the peer): bench `mediator` (taskset -c 0), 16 in flight 7.0 → 3.3 µs per
 * request; 1 in flight costs ~0.9 µs more (25.3 → 26.2 µs, the microtask that flushes).
 */
export function mediatorTransportOptions(limits: MediatorLimits): UnixSocketTransportOptions {
  return { maxMessageSize: limits.maxMessageSize, highWaterMark: limits.highWaterMark, coalesceWrites: true };
}

/** What a session needs from its mediator. */
export interface SessionConfig {
  id: number;
  upstreamPath: string;
  plugins: readonly MediatorPlugin[];
  taps: readonly MediatorTap[];
  limits: MediatorLimits;
  log: Logger;
}

/** A client's session through the mediator; also the context plugins get. */
export class MediatorSession extends Relay implements MediatorSessionContext {
  readonly id: number;
  readonly client: PeerCredentials | undefined;
  readonly state = new Map<unknown, unknown>();
  version: { client: Record<string, unknown>; upstream: Record<string, unknown> } | undefined;
  /** Resolves with the reason once both connections are closed. */
  readonly ended: Promise<string>;
  readonly #config: SessionConfig;
  #resolveEnded!: (reason: string) => void;
  #reason = '';
  #finished = false;
  #started = false;
  #congested = new Set<Transport>();
  #clientPaused = false;
  #upstreamPaused = false;
  #handshakeTimer: NodeJS.Timeout | undefined;
  #timer: NodeJS.Timeout | undefined;
  #timerAt = Infinity;
  #closeOnDrain = false;

  constructor(clientTransport: Transport, config: SessionConfig) {
    super(clientTransport, config.plugins, config.taps, config.limits, config.log.child({ session: config.id }));
    this.id = config.id;
    this.#config = config;
    this.client = clientTransport.peerCredentials();
    this.ended = new Promise((resolve) => (this.#resolveEnded = resolve));
    this.#handshakeTimer = setTimeout(() => this.#handshakeExpired(), config.limits.handshakeTimeoutMs);
    this.#handshakeTimer.unref();
  }

  /** Connects to the upstream, runs the plugins' onSessionStart, then starts relaying. */
  async start(): Promise<void> {
    let upstream: Transport;
    try {
      upstream = await connectUnix(this.#config.upstreamPath, { timeoutMs: this.limits.connectTimeoutMs, transport: this.transportOptions() });
    } catch (err) {
      this.log.error({ err, upstream: this.#config.upstreamPath }, 'cannot connect to the upstream: client closed');
      this.#end('upstream unreachable');
      return;
    }
    if (this.closing) return upstream.close();
    this.attachUpstream(upstream);
    this.#started = true;
    for (const p of this.plugins) {
      try {
        await p.onSessionStart?.(this);
      } catch (err) {
        this.log.error({ err, plugin: p.name }, 'plugin onSessionStart failed: session closed');
        this.#end(`plugin ${p.name} failed to start`);
        return;
      }
      if (this.closing) return;
    }
    this.startClient();
  }

  /** The options of every transport the session opens (the listener gives the client's the same). */
  transportOptions(): UnixSocketTransportOptions {
    return mediatorTransportOptions(this.limits);
  }

  // ---- plugin context -------------------------------------------------------

  upstreamRequest(cmd: number, payload: Uint8Array = EMPTY, fds: readonly number[] = NO_FDS, timeoutMs?: number): Promise<MediatedMessage> {
    return this.#ownRequest('upstream', cmd, payload, fds, timeoutMs);
  }

  clientRequest(cmd: number, payload: Uint8Array = EMPTY, fds: readonly number[] = NO_FDS, timeoutMs?: number): Promise<MediatedMessage> {
    return this.#ownRequest('client', cmd, payload, fds, timeoutMs);
  }

  close(reason = 'closed by a plugin'): void {
    this.#end(reason);
  }

  #ownRequest(side: TapSide, cmd: number, payload: Uint8Array, fds: readonly number[], timeoutMs: number | undefined): Promise<MediatedMessage> {
    return new Promise((resolve, reject) => {
      const transport = side === 'upstream' ? this.upstream : (this.clientTwin ?? this.clientMain);
      if (this.closing || transport === undefined || transport.closed) {
        reject(new ConnectionClosedError(`${side} request: the session is closed`));
        return;
      }
      const table = side === 'upstream' ? this.toUpstream : this.toClient;
      if (table.map.size >= MAX_IN_FLIGHT) {
        // Half the msg_id space: forwarded commands always find a free id.
        reject(new StateError(`${side} request: ${table.map.size} requests already in flight`, { errno: Errno.EBUSY }));
        return;
      }
      const header: MessageHeader = { msgId: 0, cmd, msgSize: HEADER_SIZE + payload.length, flags: 0, errorNo: 0 };
      const deadline = this.deadline(timeoutMs ?? this.limits.upstreamTimeoutMs);
      const id = table.add({ kind: 'own', origId: 0, channel: 'main', request: { header, payload, fds: NO_FDS }, deadline, expired: false, resolve, reject });
      const channel: Channel = transport === this.clientTwin ? 'twin' : 'main';
      this.send(transport, side, channel, { msgId: id, cmd, flags: 0 }, payload, fds);
      this.armTimer(deadline);
    });
  }

  // ---- flow control ----------------------------------------------------------

  /** Sends one message; a refusal (peer gone, EMFILE) ends the session, a full queue pauses the other side. */
  send(t: Transport, side: TapSide, channel: Channel, header: OutgoingHeader, payload: Uint8Array, fds: readonly number[]): void {
    if (this.taps.count > 0) this.taps.sent(this, side, channel, header, payload, fds);
    let flowing: boolean;
    try {
      flowing = t.send(header, payload, fds);
    } catch (err) {
      if (!t.closed) {
        this.log.error({ err, side }, 'a message could not be sent: session closed');
        this.#end(`send to the ${side} failed`);
      }
      return;
    }
    if (!flowing && !this.#congested.has(t)) {
      this.#congested.add(t);
      this.syncReading();
    }
  }

  /** A transport flushed its queue. */
  drained(t: Transport): void {
    if (t === this.clientMain && this.#closeOnDrain) return t.close();
    if (this.#congested.delete(t)) this.syncReading();
  }

  /** Pauses or resumes each side's reading from the congestion, pending and backlog state. */
  syncReading(): void {
    let clientCongested = false;
    let upstreamCongested = false;
    for (const t of this.#congested) {
      if (t === this.clientMain || t === this.clientTwin) clientCongested = true;
      else upstreamCongested = true;
    }
    const max = this.limits.maxPendingRequests;
    // A side is never paused for its pending requests while the other waits for its answer (DMA): that would deadlock.
    const pauseClient =
      this.closing ||
      upstreamCongested ||
      ((this.toUpstream.active >= max || this.heldCount > 0) && this.toClient.active === 0) ||
      this.lanes.clientCommand.backlog >= LANE_HIGH_WATER ||
      this.lanes.clientReply.backlog >= LANE_HIGH_WATER;
    const pauseUpstream =
      clientCongested ||
      (this.toClient.active >= max && this.toUpstream.active === 0) ||
      this.lanes.upstreamCommand.backlog >= LANE_HIGH_WATER ||
      this.lanes.upstreamReply.backlog >= LANE_HIGH_WATER;
    if (pauseClient !== this.#clientPaused) {
      this.#clientPaused = pauseClient;
      setReading(pauseClient, this.clientMain, this.clientTwin);
    }
    if (pauseUpstream !== this.#upstreamPaused) {
      this.#upstreamPaused = pauseUpstream;
      setReading(pauseUpstream, this.upstream, this.upstreamTwin);
    }
  }

  /** Whether a side's reading is paused (for transports opened later: the twin sockets). */
  paused(side: TapSide): boolean {
    return side === 'client' ? this.#clientPaused : this.#upstreamPaused;
  }

  // ---- timeouts --------------------------------------------------------------

  deadline(timeoutMs: number): number {
    return timeoutMs > 0 ? performance.now() + timeoutMs : Infinity;
  }

  /** Makes sure the sweep runs by `deadline`. */
  armTimer(deadline: number): void {
    if (deadline === Infinity || (this.#timer !== undefined && this.#timerAt <= deadline)) return;
    clearTimeout(this.#timer);
    this.#timerAt = deadline;
    this.#timer = setTimeout(() => this.#sweep(), Math.max(1, Math.ceil(deadline - performance.now()) + 1));
    this.#timer.unref();
  }

  #sweep(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    if (this.closing) return;
    const now = performance.now();
    let next = Infinity;
    for (const [side, table] of [['upstream', this.toUpstream], ['client', this.toClient]] as const) {
      for (const e of table.map.values()) {
        if (e.expired) continue;
        if (e.deadline > now) next = Math.min(next, e.deadline);
        else this.#expire(side, e);
      }
    }
    if (this.toUpstream.expiredCount + this.toClient.expiredCount > MAX_EXPIRED) {
      this.log.error({ expired: this.toUpstream.expiredCount + this.toClient.expiredCount }, 'too many requests timed out: session closed');
      this.#end('peer unresponsive');
      return;
    }
    this.armTimer(next);
    this.requestsSettled();
    this.syncReading();
  }

  /** A command sent to `side` timed out: its sender gets ETIMEDOUT; the late reply will be dropped. */
  #expire(side: TapSide, e: PendingEntry): void {
    (side === 'upstream' ? this.toUpstream : this.toClient).expire(e);
    const cmd = e.request.header.cmd;
    if (e.kind === 'own') {
      e.reject?.(new TimeoutError(`the ${side} did not answer command ${cmd} in time`));
      return;
    }
    this.log.warn({ cmd, msgId: e.origId, side }, `the ${side} did not answer in time: ETIMEDOUT to the sender`);
    if (side === 'upstream') this.replyError(this.clientMain, 'client', 'main', e.origId, cmd, Errno.ETIMEDOUT);
    else this.replyError(this.upstreamOn(e.channel), 'upstream', e.channel, e.origId, cmd, Errno.ETIMEDOUT);
  }

  // ---- session end -------------------------------------------------------------

  /** VERSION went through: the handshake timer stops. */
  negotiated(): void {
    clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = undefined;
  }

  #handshakeExpired(): void {
    if (this.version !== undefined || this.closing) return;
    this.log.warn({ timeoutMs: this.limits.handshakeTimeoutMs }, 'no VERSION in time: client dropped');
    this.#end('handshake timeout');
  }

  clientGone(error: Error | undefined): void {
    if (!this.closing) {
      if (error) this.log.warn({ err: error }, 'client connection lost');
      this.#end('client closed');
    }
    this.#finish();
  }

  /**
   * The upstream went away: every command still waiting for it gets an
   * ENOTCONN error reply, then the client is closed once it took them.
   */
  upstreamGone(error: Error | undefined): void {
    if (this.closing) return;
    this.log.warn({ err: error }, 'upstream closed: pending commands fail with ENOTCONN, client closed');
    for (const e of this.toUpstream.map.values()) {
      if (e.kind === 'forwarded' && !e.expired) this.replyError(this.clientMain, 'client', 'main', e.origId, e.request.header.cmd, Errno.ENOTCONN);
    }
    this.#end('upstream closed', true);
  }

  /** A stream error on the client's side: answer the offending header (as a server does), then close. */
  clientBroken(reason: string): void {
    this.#end(reason, true);
  }

  #end(reason: string, flushClient = false): void {
    if (this.closing) return;
    this.closing = true;
    this.#reason = reason;
    clearTimeout(this.#handshakeTimer);
    clearTimeout(this.#timer);
    this.closeLanes();
    this.dropHeld();
    const gone = new ConnectionClosedError(`the session ended: ${reason}`);
    for (const e of [...this.toUpstream.drain(), ...this.toClient.drain()]) if (e.kind === 'own' && !e.expired) e.reject?.(gone);
    this.upstream?.close();
    this.upstreamTwin?.close();
    this.clientTwin?.close();
    if (this.#started) this.#notifyEnd(reason);
    if (flushClient && !this.clientMain.closed) {
      // The last error replies may still be staged (coalesced writes go out from a microtask) or queued: close once
      // they left — after this turn if nothing is queued then, else on drain — or after a grace period.
      this.#closeOnDrain = true;
      setImmediate(() => {
        if (this.clientMain.pendingWriteBytes === 0) this.clientMain.close();
      });
      setTimeout(() => this.clientMain.close(), FLUSH_GRACE_MS).unref();
      this.clientMain.resume(); // its reading stays harmless: closing drops what arrives
      return;
    }
    this.clientMain.close();
    this.#finish();
  }

  #notifyEnd(reason: string): void {
    for (const p of this.plugins) {
      try {
        p.onSessionEnd?.(this, reason);
      } catch (err) {
        this.log.error({ err, plugin: p.name }, 'plugin onSessionEnd failed');
      }
    }
    this.taps.end(this, reason);
  }

  #finish(): void {
    if (this.#finished || !this.clientMain.closed) return;
    this.#finished = true;
    this.log.info({ reason: this.#reason }, 'session ended');
    this.#resolveEnded(this.#reason);
  }
}

function setReading(pause: boolean, ...transports: (Transport | undefined)[]): void {
  for (const t of transports) {
    if (t === undefined || t.closed) continue;
    if (pause) t.pause();
    else t.resume();
  }
}

/** Closes fds (errors ignored: the fd was ours). */
export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) native.close(fd);
}
