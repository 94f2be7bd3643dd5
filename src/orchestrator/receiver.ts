/**
 * The receiving end of a remote migration (`vfio-user migrate-listen`): a TCP
 * listener that takes one migration at a time and applies it to a local
 * destination — guest pages into the guest memory it prepared, the device
 * stream into its device session, the orchestrator's state changes — until
 * the sender commits. A channel that breaks, a corrupted frame, a stream the
 * device refuses or an abandon before the commit all end the same way: the
 * destination device is reset to RUNNING and the prepared side released.
 * A container's migration (several devices of one VM, one guest memory:
 * channel.ts, `channelVersion` 2) is received the same way with a session per
 * device: all of them commit together, or all are reset.
 * Every migration has an id (the sender's hello names it); the receiver keeps
 * each one's outcome in a {@link MigrationLedger} and answers `outcome`
 * requests for it on any connection, so a sender that lost the commit's reply
 * learns whether the destination committed (docs/protocol-extensions.md §7.1).
 */
import { randomUUID } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import type { VfioUserClient } from '../client/client.js';
import { Errno } from '../protocol/errno.js';
import { ChannelFrame, decodeMessage, type Frame } from './channel.js';
import { ChannelSocket, errnoOf, MigrationChannelError } from './channel-socket.js';
import { serverTlsOptions, type ChannelTlsCredentials } from './channel-tls.js';
import { checkMigrationId, MigrationLedger, type ChannelPhase, type LedgerEntry } from './ledger.js';
import { Session } from './receiver-session.js';
import type { MigrationSide } from './types.js';

/** What a sender offers in its hello. */
export interface MigrationOffer {
  memory: { size: bigint; iova: bigint };
  /** The sender's address, `host:port`. */
  peer: string;
  /**
   * The devices migrated, in the sender's order, by name: one for a
   * single-device migration (named `dev0` unless the sender named it),
   * several for a container (one VM: all share the guest memory).
   */
  devices: ReadonlyArray<{ name: string }>;
}

/** The destination a receiver prepared for an offer. */
export interface PreparedDestination {
  /** The guest memory and the first (or only) device's session. */
  side: MigrationSide;
  /**
   * With several devices: every device's session in the offer's order (the
   * first is `side.client`), each with `side.memory` attached at `side.iova`.
   * Absent: one device, `side.client`.
   */
  clients?: readonly VfioUserClient[];
  /** Releases the side when the migration was abandoned (after the receiver reset the devices). */
  release(): Promise<void>;
}

/** One device's share of a received migration. */
export interface ReceivedDevice {
  name: string;
  /** Device-stream bytes applied to it. */
  deviceBytes: bigint;
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
  /** Frames and bytes applied (`deviceBytes`: all devices'). */
  memoryBytes: bigint;
  deviceBytes: bigint;
  /** Each device's share, in the offer's order (empty when refused before a hello was taken). */
  devices: ReceivedDevice[];
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
  /**
   * Creates the destination for an offer: guest memory of the offered size and
   * a session with each offered device, the memory attached to every one at the
   * offered IOVA. Throw to refuse (the sender gets the error's errno). Returning
   * a different number of sessions than devices offered refuses the offer (EINVAL).
   */
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
          this.#options.onOutcome?.({ outcome: 'refused', phase: 'connect', peer, reason, memoryBytes: 0n, deviceBytes: 0n, devices: [] });
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
