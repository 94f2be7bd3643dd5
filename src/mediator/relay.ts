/**
 * The relay's message paths. Client commands go upstream under ids the
 * mediator assigns (their replies come back under the client's own id);
 * upstream commands (DMA_READ/DMA_WRITE, on the main or twin socket) go to
 * the client the same way, and the client's replies go back on the channel the
 * command came on. Plugin hooks run on the way through (relay-hooks.ts), each
 * kind of message in its own ordered lane (relay-lane.ts). Fds are passed
 * through untouched and closed once sent. Session life, flow control and
 * timeouts are in session.ts.
 */
import { Errno } from '../protocol/errno.js';
import { Command, HeaderFlags, commandName } from '../protocol/constants.js';
import { isError, isReply, replyErrno, validateCommandHeader, wantsReply } from '../protocol/header.js';
import { RemoteError } from '../errors.js';
import { errnoOf } from '../server/reply-error.js';
import type { Logger } from '../log.js';
import { socketPair, native } from '../native/addon.js';
import { UnixSocketTransport, type UnixSocketTransportOptions } from '../transport/unix-socket.js';
import type { FramingError } from '../transport/framer.js';
import type { Message, OutgoingHeader, Transport } from '../transport/transport.js';
import { runChain, type Outcome } from './relay-hooks.js';
import { Lane } from './relay-lane.js';
import { PendingTable, type Channel, type PendingEntry } from './relay-pending.js';
import { grantedTwinIndex, versionJson } from './relay-version.js';
import { SessionTaps } from './relay-taps.js';
import type { MediatedMessage, MediatorLimits, MediatorPlugin, MediatorSessionContext, MediatorTap, TapSide } from './types.js';

const NO_FDS: readonly number[] = Object.freeze([]);
const EMPTY = new Uint8Array(0);
/** Client commands held beyond maxPendingRequests (while reading is paused, at most one read's worth). */
const MAX_HELD = 16_384;
const MAX_HELD_BYTES = 32 * 1024 * 1024;
type Hook = 'onClientCommand' | 'onUpstreamReply' | 'onUpstreamCommand' | 'onClientReply';

/** The plugins that have one kind of hook, in registration order. */
interface HookList {
  plugins: MediatorPlugin[];
  names: string[];
}

/** A message's fds taken out of the transport's keeping (the relay closes them once handled). */
function mediated(m: Message): MediatedMessage {
  return { header: m.header, payload: m.payload, fds: m.fds.count === 0 ? NO_FDS : m.fds.takeAll() };
}

function closeAll(fds: readonly number[]): void {
  for (const fd of fds) native.close(fd);
}

/** The message paths of a session; {@link MediatorSession} supplies its life and flow control. */
export abstract class Relay {
  readonly log: Logger;
  readonly limits: MediatorLimits;
  readonly plugins: readonly MediatorPlugin[];
  readonly clientMain: Transport;
  clientTwin: Transport | undefined;
  upstream: Transport | undefined;
  upstreamTwin: Transport | undefined;
  /** Commands sent to the upstream (keyed by the upstream-facing id). */
  readonly toUpstream = new PendingTable();
  /** Commands sent to the client (keyed by the client-facing id). */
  readonly toClient = new PendingTable();
  readonly lanes: { clientCommand: Lane; clientReply: Lane; upstreamCommand: Lane; upstreamReply: Lane };
  closing = false;
  readonly taps: SessionTaps;
  readonly #hooks: Record<Hook, HookList>;

  /** This relay as the plugins' context (the session implements it). */
  get #ctx(): MediatorSessionContext {
    return this as unknown as MediatorSessionContext;
  }

  constructor(client: Transport, plugins: readonly MediatorPlugin[], taps: readonly MediatorTap[], limits: MediatorLimits, log: Logger) {
    this.clientMain = client;
    this.plugins = plugins;
    this.taps = new SessionTaps(taps, log);
    this.limits = limits;
    this.log = log;
    const idle = (): void => this.syncReading();
    this.lanes = { clientCommand: new Lane(idle), clientReply: new Lane(idle), upstreamCommand: new Lane(idle), upstreamReply: new Lane(idle) };
    const list = (hook: Hook): HookList => {
      const having = plugins.filter((p) => typeof p[hook] === 'function');
      return { plugins: having, names: having.map((p) => p.name) };
    };
    this.#hooks = { onClientCommand: list('onClientCommand'), onUpstreamReply: list('onUpstreamReply'), onUpstreamCommand: list('onUpstreamCommand'), onClientReply: list('onClientReply') };
  }

  abstract send(t: Transport, side: TapSide, channel: Channel, header: OutgoingHeader, payload: Uint8Array, fds: readonly number[]): void;
  abstract syncReading(): void;
  abstract drained(t: Transport): void;
  abstract paused(side: TapSide): boolean;
  abstract deadline(timeoutMs: number): number;
  abstract armTimer(deadline: number): void;
  abstract negotiated(): void;
  abstract clientGone(error: Error | undefined): void;
  abstract upstreamGone(error: Error | undefined): void;
  abstract clientBroken(reason: string): void;
  abstract close(reason?: string): void;
  abstract transportOptions(): UnixSocketTransportOptions;
  /** Both sides' VERSION JSON, set by the relay when the first successful VERSION reply is forwarded. */
  abstract version: { client: Record<string, unknown>; upstream: Record<string, unknown> } | undefined;

  /** Starts reading the upstream's main socket. */
  attachUpstream(t: Transport): void {
    this.upstream = t;
    t.start({
      onMessage: (m) => this.#fromUpstream(m, 'main'),
      onStreamError: (e) => this.upstreamGone(e),
      onDrain: () => this.drained(t),
      onClose: (e) => this.upstreamGone(e),
    });
  }

  /** Starts reading the client's main socket. */
  startClient(): void {
    const t = this.clientMain;
    t.start({
      onMessage: (m) => this.#fromClient(m, 'main'),
      onStreamError: (e) => this.#clientStreamError(e),
      onDrain: () => this.drained(t),
      onClose: (e) => this.clientGone(e),
    });
  }

  /** The upstream socket a channel names (the main one when there is no twin). */
  upstreamOn(channel: Channel): Transport | undefined {
    return channel === 'twin' && this.upstreamTwin ? this.upstreamTwin : this.upstream;
  }

  /** Sends an error reply `errno` for command `cmd` sent under `msgId`. */
  replyError(t: Transport | undefined, side: TapSide, channel: Channel, msgId: number, cmd: number, errno: number): void {
    if (t === undefined || t.closed) return;
    this.send(t, side, channel, { msgId, cmd, flags: HeaderFlags.TYPE_REPLY | HeaderFlags.ERROR, errorNo: errno }, EMPTY, NO_FDS);
  }

  /** Fewer requests are pending upstream (a reply came or one timed out): held commands go on, reading may resume. */
  requestsSettled(): void {
    if (this.#held.length > 0) this.#releaseHeld();
    if (this.paused('client')) this.syncReading();
  }

  closeLanes(): void {
    for (const lane of Object.values(this.lanes)) lane.close();
  }

  // ---- from the client -------------------------------------------------------

  #fromClient(m: Message, channel: Channel): void {
    const msg = mediated(m);
    if (this.taps.count > 0) this.taps.received(this.#ctx, 'client', channel, msg.header, msg.payload, msg.fds);
    if (this.closing) return closeAll(msg.fds);
    if (isReply(msg.header)) return this.#clientReply(msg);
    const invalid = validateCommandHeader(msg.header, this.limits.maxMessageSize);
    const t = channel === 'twin' ? this.clientTwin : this.clientMain;
    if (invalid) {
      closeAll(msg.fds);
      this.log.warn({ err: invalid }, 'invalid command from the client: EINVAL');
      return this.replyError(t, 'client', channel, msg.header.msgId, msg.header.cmd, Errno.EINVAL);
    }
    if (channel === 'twin') {
      closeAll(msg.fds);
      this.log.warn({ cmd: msg.header.cmd }, 'the client sent a command on the twin socket; ignored');
      return;
    }
    if (this.#held.length > 0 || this.toUpstream.active >= this.limits.maxPendingRequests) {
      // Over the pending bound: held here (reading is paused, so this queue holds at most one read's worth).
      this.#held.push(msg);
      this.#heldBytes += msg.header.msgSize;
      if (this.#held.length > MAX_HELD || this.#heldBytes > MAX_HELD_BYTES) {
        // Only possible while the upstream waits for this client's answer to a DMA request (reading cannot pause then).
        this.log.error({ held: this.#held.length, bytes: this.#heldBytes }, 'the client floods commands beyond every bound: session closed');
        return this.close('client over the pending bounds');
      }
      return this.syncReading();
    }
    this.#clientCommand(msg);
  }

  /** Client commands read while maxPendingRequests were in flight, in order. */
  readonly #held: MediatedMessage[] = [];
  #heldBytes = 0;

  /** Messages held beyond the pending bound. */
  get heldCount(): number {
    return this.#held.length;
  }

  /** Passes held commands on while the pending bound allows. */
  #releaseHeld(): void {
    while (this.#held.length > 0 && this.toUpstream.active < this.limits.maxPendingRequests && !this.closing) {
      const msg = this.#held.shift() as MediatedMessage;
      this.#heldBytes -= msg.header.msgSize;
      this.#clientCommand(msg);
    }
  }

  /** Closes the fds of held commands (the session ended). */
  dropHeld(): void {
    for (const msg of this.#held.splice(0)) closeAll(msg.fds);
    this.#heldBytes = 0;
  }

  #clientCommand(msg: MediatedMessage): void {
    if (msg.header.cmd === Command.VERSION) this.#clientVersion = msg.payload;
    if (this.#hooks.onClientCommand.plugins.length === 0) {
      this.#forwardCommand(msg.header.msgId, msg);
      return closeAll(msg.fds);
    }
    this.#inLane(this.lanes.clientCommand, msg, () => this.#hookClientCommand(msg));
  }

  #clientVersion: Uint8Array = EMPTY;

  #hookClientCommand(orig: MediatedMessage): void | Promise<void> {
    const { plugins, names } = this.#hooks.onClientCommand;
    const ctx = this.#ctx;
    const out = runChain(plugins.length, names, orig, (i, msg) => plugins[i]!.onClientCommand!(msg, ctx));
    if (out instanceof Promise) return out.then((o) => this.#applyClientCommand(orig, o));
    this.#applyClientCommand(orig, out);
  }

  #applyClientCommand(orig: MediatedMessage, o: Outcome): void {
    const h = orig.header;
    if (!this.closing) {
      if (o.kind === 'forward') this.#forwardCommand(h.msgId, o.msg);
      else if (wantsReply(h)) this.#answer(o, this.clientMain, 'client', 'main', h.msgId, h.cmd);
    }
    closeAll(orig.fds);
  }

  /** Forwards a client command upstream under a fresh id (registered unless NO_REPLY). */
  #forwardCommand(clientId: number, msg: MediatedMessage): void {
    const upstream = this.upstream as Transport;
    const h = msg.header;
    let id: number;
    if (wantsReply(h)) {
      const deadline = this.deadline(this.limits.upstreamTimeoutMs);
      // The payload is kept for reply hooks only: a pending 1 MiB write would otherwise stay in memory until answered.
      const payload = this.#hooks.onUpstreamReply.plugins.length > 0 ? msg.payload : EMPTY;
      id = this.toUpstream.add({ kind: 'forwarded', origId: clientId, channel: 'main', request: { header: h, payload, fds: NO_FDS }, deadline, expired: false });
      this.armTimer(deadline);
      if (this.toUpstream.active >= this.limits.maxPendingRequests) this.syncReading();
    } else {
      id = this.toUpstream.freeId();
    }
    this.send(upstream, 'upstream', 'main', { msgId: id, cmd: h.cmd, flags: h.flags, errorNo: h.errorNo }, msg.payload, msg.fds);
  }

  #clientReply(msg: MediatedMessage): void {
    const e = this.toClient.take(msg.header.msgId);
    if (this.paused('upstream')) this.syncReading();
    if (e === undefined || e.expired) {
      closeAll(msg.fds);
      if (e === undefined) this.log.warn({ msgId: msg.header.msgId, cmd: msg.header.cmd }, 'a reply from the client matches no request: dropped');
      return;
    }
    if (e.kind === 'own') return this.#settle(e, msg);
    if (this.#hooks.onClientReply.plugins.length === 0) {
      this.#forwardClientReply(e, msg);
      return closeAll(msg.fds);
    }
    const { plugins, names } = this.#hooks.onClientReply;
    const ctx = this.#ctx;
    this.#inLane(this.lanes.clientReply, msg, () => {
      const out = runChain(plugins.length, names, msg, (i, r) => plugins[i]!.onClientReply!(r, e.request, ctx));
      const apply = (o: Outcome): void => {
        if (!this.closing) {
          if (o.kind === 'forward') this.#forwardClientReply(e, o.msg);
          else this.#answer(o, this.upstreamOn(e.channel), 'upstream', e.channel, e.origId, e.request.header.cmd);
        }
        closeAll(msg.fds);
      };
      if (out instanceof Promise) return out.then(apply);
      apply(out);
    });
  }

  #forwardClientReply(e: PendingEntry, msg: MediatedMessage): void {
    const t = this.upstreamOn(e.channel);
    if (t === undefined || t.closed) return;
    const h = msg.header;
    this.send(t, 'upstream', e.channel, { msgId: e.origId, cmd: h.cmd, flags: h.flags, errorNo: h.errorNo }, msg.payload, msg.fds);
  }

  #clientStreamError(error: FramingError): void {
    this.log.warn({ err: error }, 'stream error from the client: session closed');
    const h = error.header;
    if (h && !isReply(h)) this.replyError(this.clientMain, 'client', 'main', h.msgId, h.cmd, error.errno);
    this.clientBroken('client stream error');
  }

  // ---- from the upstream -----------------------------------------------------

  #fromUpstream(m: Message, channel: Channel): void {
    const msg = mediated(m);
    if (this.taps.count > 0) this.taps.received(this.#ctx, 'upstream', channel, msg.header, msg.payload, msg.fds);
    if (this.closing) return closeAll(msg.fds);
    if (isReply(msg.header)) return this.#upstreamReply(msg);
    const invalid = validateCommandHeader(msg.header, this.limits.maxMessageSize);
    if (invalid) {
      closeAll(msg.fds);
      this.log.warn({ err: invalid }, 'invalid command from the upstream: EINVAL');
      return this.replyError(this.upstreamOn(channel), 'upstream', channel, msg.header.msgId, msg.header.cmd, Errno.EINVAL);
    }
    if (this.#hooks.onUpstreamCommand.plugins.length === 0) {
      this.#forwardUpstreamCommand(msg, channel);
      return closeAll(msg.fds);
    }
    const { plugins, names } = this.#hooks.onUpstreamCommand;
    const ctx = this.#ctx;
    this.#inLane(this.lanes.upstreamCommand, msg, () => {
      const out = runChain(plugins.length, names, msg, (i, c) => plugins[i]!.onUpstreamCommand!(c, ctx));
      const apply = (o: Outcome): void => {
        const h = msg.header;
        if (!this.closing) {
          if (o.kind === 'forward') this.#forwardUpstreamCommand(o.msg, channel);
          else if (wantsReply(h)) this.#answer(o, this.upstreamOn(channel), 'upstream', channel, h.msgId, h.cmd);
        }
        closeAll(msg.fds);
      };
      if (out instanceof Promise) return out.then(apply);
      apply(out);
    });
  }

  /** Forwards an upstream command to the client (on its twin socket if it came on the upstream's twin). */
  #forwardUpstreamCommand(msg: MediatedMessage, channel: Channel): void {
    const h = msg.header;
    const useTwin = channel === 'twin' && this.clientTwin !== undefined;
    const t = useTwin ? (this.clientTwin as Transport) : this.clientMain;
    let id: number;
    if (wantsReply(h)) {
      const deadline = this.deadline(this.limits.upstreamTimeoutMs);
      const payload = this.#hooks.onClientReply.plugins.length > 0 ? msg.payload : EMPTY;
      id = this.toClient.add({ kind: 'forwarded', origId: h.msgId, channel, request: { header: h, payload, fds: NO_FDS }, deadline, expired: false });
      this.armTimer(deadline);
      this.syncReading(); // the client must be read while the upstream waits for its answer
    } else {
      id = this.toClient.freeId();
    }
    this.send(t, 'client', useTwin ? 'twin' : 'main', { msgId: id, cmd: h.cmd, flags: h.flags, errorNo: h.errorNo }, msg.payload, msg.fds);
  }

  #upstreamReply(msg: MediatedMessage): void {
    const e = this.toUpstream.take(msg.header.msgId);
    this.requestsSettled();
    if (e === undefined || e.expired) {
      closeAll(msg.fds);
      if (e === undefined) this.log.warn({ msgId: msg.header.msgId, cmd: msg.header.cmd }, 'a reply from the upstream matches no request: dropped');
      else this.log.debug({ cmd: msg.header.cmd }, 'late reply from the upstream dropped');
      return;
    }
    if (e.kind === 'own') return this.#settle(e, msg);
    if (this.#hooks.onUpstreamReply.plugins.length === 0) {
      this.#forwardReply(e, msg);
      return closeAll(msg.fds);
    }
    const { plugins, names } = this.#hooks.onUpstreamReply;
    const ctx = this.#ctx;
    this.#inLane(this.lanes.upstreamReply, msg, () => {
      const out = runChain(plugins.length, names, msg, (i, r) => plugins[i]!.onUpstreamReply!(r, e.request, ctx));
      const apply = (o: Outcome): void => {
        if (!this.closing) {
          if (o.kind === 'forward') this.#forwardReply(e, o.msg);
          else this.#answer(o, this.clientMain, 'client', 'main', e.origId, e.request.header.cmd);
        }
        closeAll(msg.fds);
      };
      if (out instanceof Promise) return out.then(apply);
      apply(out);
    });
  }

  /** Forwards the upstream's reply to the client under the client's id; a VERSION reply may set up the twin sockets. */
  #forwardReply(e: PendingEntry, msg: MediatedMessage): void {
    const h = msg.header;
    let fds = msg.fds;
    let theirs = -1;
    if (h.cmd === Command.VERSION && !isError(h)) {
      const twin = this.#negotiate(msg);
      if (twin) {
        theirs = twin.theirs;
        fds = [...fds];
        (fds as number[])[twin.index] = theirs;
      }
    }
    this.send(this.clientMain, 'client', 'main', { msgId: e.origId, cmd: h.cmd, flags: h.flags, errorNo: h.errorNo }, msg.payload, fds);
    if (theirs >= 0) native.close(theirs);
  }

  /**
   * A successful VERSION reply: records both JSON objects for plugins and,
   * when the upstream grants a twin socket, keeps the upstream's end and
   * makes a socket pair whose other end the client gets at the same fd index.
   */
  #negotiate(reply: MediatedMessage): { index: number; theirs: number } | undefined {
    const upstream = versionJson(reply.payload);
    if (this.version === undefined) this.version = { client: versionJson(this.#clientVersion), upstream };
    this.negotiated();
    const index = grantedTwinIndex(upstream);
    const fd = index === undefined ? undefined : reply.fds[index];
    if (index === undefined || fd === undefined || this.upstreamTwin !== undefined) return undefined;
    const copy = native.dup(fd);
    if (copy < 0) {
      this.log.error({ errno: -copy }, 'cannot keep the upstream twin socket: session closed');
      this.close('out of fds');
      return undefined;
    }
    let pair: [number, number];
    try {
      pair = socketPair();
    } catch (err) {
      native.close(copy);
      this.log.error({ err }, 'cannot make the client twin socket: session closed');
      this.close('out of fds');
      return undefined;
    }
    this.upstreamTwin = this.#openTwin(copy, 'upstream');
    this.clientTwin = this.#openTwin(pair[0], 'client');
    return { index, theirs: pair[1] };
  }

  #openTwin(fd: number, side: TapSide): Transport {
    const t = new UnixSocketTransport(fd, this.transportOptions());
    t.start({
      onMessage: (m) => (side === 'client' ? this.#fromClient(m, 'twin') : this.#fromUpstream(m, 'twin')),
      onStreamError: (e) => {
        this.log.warn({ err: e, side }, 'stream error on a twin socket: session closed');
        this.close(`${side} twin socket stream error`);
      },
      onDrain: () => this.drained(t),
      onClose: (e) => {
        if (!this.closing && e) this.log.warn({ err: e, side }, 'twin socket lost');
      },
    });
    if (this.paused(side)) t.pause();
    return t;
  }

  // ---- shared ------------------------------------------------------------------

  /** A hook's verdict other than forward: answer the sender (reply / error / thrown), or drop / disconnect. */
  #answer(o: Outcome, t: Transport | undefined, side: TapSide, channel: Channel, msgId: number, cmd: number): void {
    switch (o.kind) {
      case 'reply':
        if (t && !t.closed) this.send(t, side, channel, { msgId, cmd, flags: HeaderFlags.TYPE_REPLY }, o.payload ?? EMPTY, o.fds ?? NO_FDS);
        return;
      case 'error':
        return this.replyError(t, side, channel, msgId, cmd, o.errno);
      case 'thrown': {
        const errno = errnoOf(o.error);
        this.log.error({ err: o.error, plugin: o.plugin, cmd: commandName(cmd), errno }, 'plugin hook failed: error reply');
        return this.replyError(t, side, channel, msgId, cmd, errno);
      }
      case 'disconnect':
        this.close('a plugin disconnected the session');
        return;
      default:
        return; // drop
    }
  }

  /** A reply to one of the mediator's own requests: resolves it (fds handed to the caller) or rejects RemoteError. */
  #settle(e: PendingEntry, msg: MediatedMessage): void {
    const h = msg.header;
    if (isError(h)) {
      closeAll(msg.fds);
      const errno = replyErrno(h);
      e.reject?.(new RemoteError(`${commandName(h.cmd)} failed: errno ${errno}`, h.cmd, errno, { payload: msg.payload }));
      return;
    }
    e.resolve?.(msg);
  }

  /** Runs `task` in `lane`; if it waits there and the lane is closed, the message's fds are closed. */
  #inLane(lane: Lane, msg: MediatedMessage, task: () => void | Promise<void>): void {
    lane.run(task, () => closeAll(msg.fds));
    if (lane.backlog >= 256) this.syncReading();
  }
}
