/**
 * The receiving end of a remote migration (`vfio-user migrate-listen`): a TCP
 * listener that takes one migration at a time and applies it to a local
 * destination — guest pages into the guest memory it prepared, the device
 * stream into its device session, the orchestrator's state changes — until
 * the sender commits. A channel that breaks, a corrupted frame, a stream the
 * device refuses or an abandon before the commit all end the same way: the
 * destination device is reset to RUNNING and the prepared side released.
 * Every migration has an id (the sender's hello names it); the receiver keeps
 * each one's outcome in a {@link MigrationLedger} and answers `outcome`
 * requests for it on any connection, so a sender that lost the commit's reply
 * learns whether the destination committed (docs/protocol-extensions.md §7.1).
 */
import { randomUUID } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { MigrationState as S } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { ChannelFeature, ChannelFrame, decodeMessage, decodeZero, encodeMessage, memoryParts, type Frame } from './channel.js';
import { writeParts, zeroFill } from './memory-copy.js';
import { ChannelSocket, errnoOf, MigrationChannelError, type WireError } from './channel-socket.js';
import { describeSide, resetToRunning } from './destination.js';
import { serverTlsOptions, type ChannelTlsCredentials } from './channel-tls.js';
import { checkMigrationId, MigrationLedger, type ChannelPhase, type LedgerEntry } from './ledger.js';
import type { MigrationSide } from './types.js';

/** What a sender offers in its hello. */
export interface MigrationOffer {
  memory: { size: bigint; iova: bigint };
  /** The sender's address, `host:port`. */
  peer: string;
}

/** The destination a receiver prepared for an offer. */
export interface PreparedDestination {
  side: MigrationSide;
  /** Releases the side when the migration was abandoned (after the receiver reset the device). */
  release(): Promise<void>;
}

/** How one incoming migration ended. */
export interface ReceiveOutcome {
  outcome: 'committed' | 'abandoned' | 'refused';
  /** The migration's id (none when refused before a hello named one). */
  migrationId?: string;
  /** The receiver's phase when it ended: `connect` (no hello), `precopy` (receiving), `switchover` (destination STOP), `commit` (destination RUNNING, commit awaited), `done` (committed). */
  phase: ChannelPhase;
  peer: string;
  reason?: string;
  /** Frames and bytes applied. */
  memoryBytes: bigint;
  deviceBytes: bigint;
  /** The committed destination (the application owns it from here on). */
  destination?: PreparedDestination;
  vmState?: Uint8Array;
}

/** Options of {@link MigrationReceiver.listen}. */
export interface ReceiverOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** 0 picks a free port ({@link MigrationReceiver.port}). */
  port: number;
  /** Largest guest memory accepted (default 64 GiB). */
  maxMemoryBytes?: bigint;
  /**
   * TLS with mutual authentication (channel-tls.ts): only senders with a
   * certificate signed by `ca` are served. Without it the channel is plaintext.
   */
  tls?: ChannelTlsCredentials;
  /** A connection refused at the TLS handshake (no or a wrong certificate, not TLS). */
  onTlsRefused?(peer: string, error: Error): void;
  /** A connection that has not said hello by then is closed, freeing the receiver (default 10 000 ms). */
  helloTimeoutMs?: number;
  /** Creates the destination for an offer (guest memory of the offered size, attached at its IOVA). Throw to refuse. */
  prepare(offer: MigrationOffer): Promise<PreparedDestination>;
  /** Every migration's end, committed (at the commit) or not. */
  onOutcome?(outcome: ReceiveOutcome): void;
  /** The channel of a committed migration closed (the sender has nothing more to say). */
  onCommittedClosed?(outcome: ReceiveOutcome): void;
  /** Runs when the commit request arrives, before it is decided (an application's last check; a test's fault point). */
  beforeCommit?(migrationId: string): Promise<void>;
  /** Runs after the commit was recorded, before it is answered. */
  afterCommit?(migrationId: string): Promise<void>;
  /** Application messages after the commit (`RemoteDestination.message`). */
  onMessage?(head: unknown, body: Uint8Array, destination: PreparedDestination): Promise<{ result: unknown; body?: Uint8Array }>;
}

/** States the sender may ask the destination for. */
const SETTABLE = new Set<number>([S.RESUMING, S.STOP, S.RUNNING_P2P, S.RUNNING]);
/** Stop reading while this much is queued to apply. */
const QUEUE_HIGH = 64 << 20;

/** A TCP listener receiving migrations, one at a time. */
export class MigrationReceiver {
  readonly #server: Server;
  readonly #options: ReceiverOptions;
  readonly #ledger = new MigrationLedger();
  /** The migration being received (until it commits or is abandoned). */
  #current: Session | undefined;
  readonly #sockets = new Set<Socket>();

  private constructor(server: Server, options: ReceiverOptions) {
    this.#server = server;
    this.#options = options;
  }

  /**
   * Listens on `host:port`.
   * @throws Node's listen error (EADDRINUSE, EACCES) with its `code`.
   */
  static async listen(options: ReceiverOptions): Promise<MigrationReceiver> {
    const server = options.tls ? createTlsServer(serverTlsOptions(options.tls)) : createServer();
    const receiver = new MigrationReceiver(server, options);
    if (options.tls) {
      server.on('secureConnection', (socket: Socket) => receiver.#accept(socket));
      server.on('tlsClientError', (error: Error, socket: Socket) => options.onTlsRefused?.(`${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`, error));
    } else server.on('connection', (socket: Socket) => receiver.#accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port, options.host ?? '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    return receiver;
  }

  /** The port listened on. */
  get port(): number {
    const a = this.#server.address();
    return typeof a === 'object' && a !== null ? a.port : 0;
  }

  /**
   * Stops listening (a migration in progress goes on; its outcome is still
   * reported). `force` also closes every connection still open (after a
   * shutdown, when the application is done with them).
   */
  close(force = false): void {
    this.#server.close();
    if (force) for (const s of this.#sockets) s.destroy();
  }

  /** What this receiver knows of a migration id (`unknown` if never seen). */
  outcomeOf(migrationId: string): LedgerEntry {
    return this.#ledger.lookup(migrationId);
  }

  /**
   * Shuts down (SIGTERM): stops listening; a migration not yet committed is
   * abandoned now (its device reset, the sender told by a NOTICE, its outcome
   * reported). A committed one is not touched.
   * @returns the migration that was in progress, as decided (undefined when none was).
   */
  shutdown(reason: string): LedgerEntry | undefined {
    this.close();
    const session = this.#current;
    if (session === undefined) return undefined;
    session.abandon(reason);
    return this.#ledger.lookup(session.migrationId);
  }

  #accept(socket: Socket): void {
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    const peer = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    let session: Session | undefined;
    /** An outcome query or a busy refusal: not a migration, nothing to report. */
    let quiet = false;
    let first = true;
    let refusal: string | undefined;
    const channel: ChannelSocket = new ChannelSocket(socket, {
      onFrame: (frame) => {
        if (session) session.enqueue(frame);
        else if (first) {
          first = false;
          void this.#first(channel, frame, peer, (s) => (session = s)).then((r) => {
            quiet = r.quiet;
            refusal = r.refusal;
          });
        }
      },
      onClose: (error) => {
        if (session) void session.closed(error);
        else if (!quiet) {
          const reason = refusal ?? (error ? error.message : 'closed before a hello');
          this.#options.onOutcome?.({ outcome: 'refused', phase: 'connect', peer, reason, memoryBytes: 0n, deviceBytes: 0n });
        }
      },
    });
    const helloMs = this.#options.helloTimeoutMs ?? 10_000;
    const helloTimer = setTimeout(() => {
      if (session === undefined) channel.destroy(new MigrationChannelError(`no hello in ${helloMs} ms`, Errno.ETIMEDOUT));
    }, helloMs);
    helloTimer.unref();
    socket.once('close', () => clearTimeout(helloTimer));
  }

  /** A connection's first frame: an `outcome` query (answered, then closed), or the hello that starts a session. */
  async #first(channel: ChannelSocket, frame: Frame, peer: string, started: (s: Session) => void): Promise<{ quiet: boolean; refusal?: string }> {
    let op = '?';
    try {
      if (frame.type !== ChannelFrame.REQUEST) throw new MigrationChannelError(`frame type ${frame.type} before a request`, Errno.EPROTO);
      const h = decodeMessage(frame.payload).head as { op?: unknown; args?: unknown };
      op = typeof h.op === 'string' ? h.op : '?';
      const args = (h.args ?? {}) as Record<string, unknown>;
      if (op === 'outcome') {
        const answer = this.#resolve(checkMigrationId(args.migrationId));
        await channel.respond(frame.id, { result: answer }).catch(() => undefined);
        channel.end();
        return { quiet: true };
      }
      if (op !== 'hello') throw new MigrationChannelError(`'${op}' before hello`, Errno.EPROTO);
      if (this.#current !== undefined) throw new MigrationChannelError('another migration is being received', Errno.EBUSY);
      const id = args.migrationId === undefined ? `rx-${randomUUID()}` : checkMigrationId(args.migrationId);
      if (this.#ledger.lookup(id).outcome !== 'unknown') throw new MigrationChannelError(`migration id ${id} was already used`, Errno.EEXIST);
      const session = new Session(channel, peer, id, this.#options, this.#ledger, (outcome) => {
        if (this.#current === session) this.#current = undefined;
        this.#options.onOutcome?.(outcome);
      });
      this.#current = session;
      started(session);
      session.enqueue(frame);
      return { quiet: false };
    } catch (error) {
      const message = `${op}: ${(error as Error).message}`;
      await channel.respond(frame.id, { error: { errno: errnoOf(error), message } }).catch(() => undefined);
      channel.end();
      return { quiet: errnoOf(error) === Errno.EBUSY, refusal: message };
    }
  }

  /**
   * The answer to `outcome`: the ledger's record. The migration still in
   * progress under that id is abandoned first — its sender lost the link and
   * asks, so it will not commit it — which makes the answer final.
   */
  #resolve(migrationId: string): LedgerEntry {
    const session = this.#current;
    if (session !== undefined && session.migrationId === migrationId) session.abandon('the sender lost the link and asked for the outcome before the commit');
    return this.#ledger.lookup(migrationId);
  }
}

/** One incoming migration. */
class Session {
  readonly migrationId: string;
  readonly #channel: ChannelSocket;
  readonly #options: ReceiverOptions;
  readonly #ledger: MigrationLedger;
  readonly #done: (outcome: ReceiveOutcome) => void;
  readonly #queue: Frame[] = [];
  #queued = 0;
  #working = false;
  #prepared: PreparedDestination | undefined;
  #committed = false;
  #finished = false;
  #phase: ChannelPhase = 'connect';
  /** The first streamed frame that could not be applied: everything after it is dropped, every request fails with it. */
  #streamError: WireError | undefined;
  #memoryBytes = 0n;
  #deviceBytes = 0n;
  #vmState: Uint8Array | undefined;
  #commitOutcome: ReceiveOutcome | undefined;
  readonly #peer: string;

  constructor(channel: ChannelSocket, peer: string, migrationId: string, options: ReceiverOptions, ledger: MigrationLedger, done: (outcome: ReceiveOutcome) => void) {
    this.migrationId = migrationId;
    this.#channel = channel;
    this.#peer = peer;
    this.#options = options;
    this.#ledger = ledger;
    this.#done = done;
    this.#enter('connect');
  }

  enqueue(frame: Frame): void {
    this.#queue.push(frame);
    this.#queued += frame.length;
    if (this.#queued > QUEUE_HIGH) this.#channel.pauseReading(true);
    if (!this.#working) void this.#work();
  }

  /**
   * Abandons the migration now unless it committed (SIGTERM, or its sender
   * asking for the outcome): recorded at once, the sender told by a NOTICE,
   * then the device reset and the side released.
   */
  abandon(reason: string): void {
    if (this.#committed || this.#finished) return;
    void this.#finish(reason, true);
  }

  #enter(phase: ChannelPhase): void {
    this.#phase = phase;
    this.#ledger.record({ migrationId: this.migrationId, outcome: 'in-progress', phase });
  }

  async #work(): Promise<void> {
    this.#working = true;
    for (let frame = this.#queue.shift(); frame !== undefined && !this.#finished; frame = this.#queue.shift()) {
      this.#queued -= frame.length;
      if (this.#queued <= QUEUE_HIGH / 2) this.#channel.pauseReading(false);
      await this.#handle(frame);
    }
    this.#working = false;
  }

  async #handle(frame: Frame): Promise<void> {
    switch (frame.type) {
      case ChannelFrame.MEMORY:
      case ChannelFrame.ZERO:
      case ChannelFrame.DEVICE_DATA:
        return this.#apply(frame);
      case ChannelFrame.REQUEST:
        return this.#request(frame);
      default:
        return this.#fail({ errno: Errno.EPROTO, message: `unexpected frame type ${frame.type}` });
    }
  }

  /** A streamed frame: applied, or the first failure reported (NOTICE) and the rest dropped. */
  async #apply(frame: Frame): Promise<void> {
    if (this.#streamError) return;
    const side = this.#prepared?.side;
    try {
      if (side === undefined || this.#committed) throw new MigrationChannelError('data outside a migration', Errno.EPROTO);
      if (frame.type === ChannelFrame.MEMORY) {
        const { gpa, parts, length } = memoryParts(frame);
        writeParts(side.memory, gpa, parts, length); // EFAULT outside the guest memory
        this.#memoryBytes += BigInt(length);
      } else if (frame.type === ChannelFrame.ZERO) {
        const { gpa, length } = decodeZero(frame.payload);
        zeroFill(side.memory, gpa, length); // EFAULT outside the guest memory; writes only where not already zero
        this.#memoryBytes += BigInt(length);
      } else {
        await side.client.migDataWrite(frame.payload);
        this.#deviceBytes += BigInt(frame.payload.length);
      }
    } catch (error) {
      this.#streamError = { errno: errnoOf(error), message: `${frame.type === ChannelFrame.DEVICE_DATA ? 'device stream' : 'guest memory'} frame ${frame.seq}: ${(error as Error).message}` };
      await this.#channel.send(ChannelFrame.NOTICE, 0, encodeMessage(this.#streamError)).catch(() => undefined);
    }
  }

  async #request(frame: Frame): Promise<void> {
    let outcome: { result: unknown; body?: Uint8Array } | { error: WireError };
    let op = '?';
    try {
      const { head, body } = decodeMessage(frame.payload);
      const h = head as { op?: unknown; args?: unknown };
      op = typeof h.op === 'string' ? h.op : '?';
      outcome = await this.#op(op, (h.args ?? {}) as Record<string, unknown>, body);
    } catch (error) {
      outcome = { error: { errno: errnoOf(error), message: `${op}: ${(error as Error).message}` } };
    }
    if (this.#finished && !this.#committed) return; // abandoned meanwhile: the NOTICE said so
    await this.#channel.respond(frame.id, outcome).catch(() => undefined);
    if (op === 'abandon') await this.#finish('the sender abandoned the migration');
    else if (op === 'hello' && 'error' in outcome) await this.#finish(`refused: ${outcome.error.message}`);
  }

  async #op(op: string, args: Record<string, unknown>, body: Uint8Array): Promise<{ result: unknown; body?: Uint8Array }> {
    if (op === 'hello') return { result: await this.#hello(args) };
    const prepared = this.#prepared;
    if (prepared === undefined) throw new MigrationChannelError(`'${op}' before hello`, Errno.EPROTO);
    const { client } = prepared.side;
    if (op === 'message') return this.#message(args, body, prepared);
    if (op === 'abandon') return { result: null };
    if (this.#streamError && op !== 'state') throw new MigrationChannelError(this.#streamError.message, this.#streamError.errno);
    if (this.#committed) throw new MigrationChannelError(`'${op}' after the commit`, Errno.EINVAL);
    switch (op) {
      case 'describe':
        return { result: await describeSide(prepared.side) };
      case 'state':
        return { result: await client.migrationState() };
      case 'arcs':
        return { result: client.migrationExtensions.arcLatency === undefined ? [] : await client.arcLatencies() };
      case 'set':
        return this.#set(args.state, prepared);
      case 'flush':
        return { result: null };
      case 'vmstate':
        this.#vmState = new Uint8Array(body);
        return { result: null };
      case 'complete':
        return this.#commit(prepared);
      default:
        throw new MigrationChannelError(`unknown request '${op}'`, Errno.ENOSYS);
    }
  }

  async #set(state: unknown, prepared: PreparedDestination): Promise<{ result: null }> {
    if (typeof state !== 'number' || !SETTABLE.has(state)) throw new MigrationChannelError(`state ${String(state)} may not be requested of a destination`, Errno.EINVAL);
    await prepared.side.client.setMigrationState(state);
    if (!this.#finished) {
      if (state === S.STOP) this.#enter('switchover');
      else if (state === S.RUNNING && this.#phase === 'switchover') this.#enter('commit');
    }
    return { result: null };
  }

  /** The commit: decided in one turn of the event loop after the checks, so an abandon (SIGTERM, a fence) is either before it or after it. */
  async #commit(prepared: PreparedDestination): Promise<{ result: null }> {
    await this.#options.beforeCommit?.(this.migrationId);
    const state = await prepared.side.client.migrationState();
    if (this.#finished) throw new MigrationChannelError('the migration was abandoned before the commit', Errno.ECANCELED);
    if (state !== S.RUNNING) throw new MigrationChannelError('the destination device is not RUNNING', Errno.EINVAL);
    this.#committed = true;
    this.#phase = 'done';
    this.#ledger.record({ migrationId: this.migrationId, outcome: 'committed', phase: 'done' });
    this.#commitOutcome = {
      outcome: 'committed', migrationId: this.migrationId, phase: 'done', peer: this.#peer, memoryBytes: this.#memoryBytes, deviceBytes: this.#deviceBytes, destination: prepared,
      ...(this.#vmState ? { vmState: this.#vmState } : {}),
    };
    this.#done(this.#commitOutcome);
    await this.#options.afterCommit?.(this.migrationId);
    return { result: null };
  }

  async #hello(args: Record<string, unknown>): Promise<unknown> {
    if (this.#prepared !== undefined) throw new MigrationChannelError('hello twice', Errno.EPROTO);
    const memory = args.memory as { size?: unknown; iova?: unknown } | undefined;
    const max = this.#options.maxMemoryBytes ?? 64n << 30n;
    if (args.channelVersion !== 1) throw new MigrationChannelError(`channel version ${String(args.channelVersion)} is not spoken here (1)`, Errno.EPROTO);
    if (typeof memory?.size !== 'bigint' || typeof memory.iova !== 'bigint' || memory.size <= 0n || memory.size % 4096n !== 0n || memory.iova < 0n || memory.iova % 4096n !== 0n || memory.iova + memory.size > 1n << 64n) {
      throw new MigrationChannelError('guest memory must be a positive number of 4 KiB pages at a page-aligned 64-bit IOVA', Errno.EINVAL);
    }
    if (memory.size > max) throw new MigrationChannelError(`guest memory of ${memory.size} bytes exceeds this receiver's ${max}`, Errno.ENOMEM);
    const prepared = await this.#options.prepare({ memory: { size: memory.size, iova: memory.iova }, peer: this.#peer });
    if (this.#finished) {
      // abandoned while preparing (SIGTERM): nothing will use it
      await prepared.release().catch(() => undefined);
      throw new MigrationChannelError('the migration was abandoned', Errno.ECANCELED);
    }
    this.#prepared = prepared;
    this.#enter('precopy');
    const offered = Array.isArray(args.features) ? args.features : [];
    const features = Object.values(ChannelFeature).filter((f) => offered.includes(f));
    return { channelVersion: 1, maxTransferSize: prepared.side.client.maxTransferSize, migrationId: this.migrationId, features };
  }

  async #message(args: Record<string, unknown>, body: Uint8Array, prepared: PreparedDestination): Promise<{ result: unknown; body?: Uint8Array }> {
    if (!this.#committed) throw new MigrationChannelError('messages are for a committed migration', Errno.EINVAL);
    if (this.#options.onMessage === undefined) throw new MigrationChannelError('this receiver takes no messages', Errno.ENOSYS);
    return this.#options.onMessage(args, body, prepared);
  }

  async #fail(error: WireError): Promise<void> {
    await this.#channel.send(ChannelFrame.NOTICE, 0, encodeMessage(error)).catch(() => undefined);
    this.#channel.destroy(new MigrationChannelError(error.message, error.errno));
  }

  async closed(error: Error | undefined): Promise<void> {
    if (this.#committed || this.#finished) {
      const first = !this.#finished;
      this.#finished = true;
      if (first && this.#commitOutcome) this.#options.onCommittedClosed?.(this.#commitOutcome);
      return;
    }
    await this.#finish(error ? `channel lost: ${error.message}` : 'the sender closed the channel before the commit');
  }

  /**
   * The end of an uncommitted migration: recorded as abandoned at once; the
   * sender told (`notify`: the receiver decided it), then the device reset to RUNNING and the side released.
   */
  async #finish(reason: string, notify = false): Promise<void> {
    if (this.#finished || this.#committed) return;
    this.#finished = true;
    const phase = this.#phase;
    this.#ledger.record({ migrationId: this.migrationId, outcome: 'abandoned', phase, reason });
    if (notify) {
      const notice = { errno: Errno.ECANCELED, message: `the receiver abandoned migration ${this.migrationId}: ${reason}`, outcome: 'abandoned', migrationId: this.migrationId, phase };
      void this.#channel.send(ChannelFrame.NOTICE, 0, encodeMessage(notice)).catch(() => undefined);
      this.#channel.end();
      setTimeout(() => this.#channel.destroy(), 1000).unref();
    } else this.#channel.destroy();
    const prepared = this.#prepared;
    if (prepared !== undefined) {
      await resetToRunning(prepared.side.client);
      await prepared.release().catch(() => undefined);
    }
    this.#done({ outcome: prepared ? 'abandoned' : 'refused', migrationId: this.migrationId, phase, peer: this.#peer, reason, memoryBytes: this.#memoryBytes, deviceBytes: this.#deviceBytes });
  }
}
