/**
 * The receiving end of a remote migration (`vfio-user migrate-listen`): a TCP
 * listener that takes one migration at a time and applies it to a local
 * destination — guest pages into the guest memory it prepared, the device
 * stream into its device session, the orchestrator's state changes — until
 * the sender commits. A channel that breaks, a corrupted frame, a stream the
 * device refuses or an abandon before the commit all end the same way: the
 * destination device is reset to RUNNING and the prepared side released.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { MigrationState as S } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { ChannelFrame, decodeMemory, decodeMessage, encodeMessage, type Frame } from './channel.js';
import { ChannelSocket, errnoOf, MigrationChannelError, type WireError } from './channel-socket.js';
import { describeSide, resetToRunning } from './destination.js';
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
  /** A connection that has not said hello by then is closed, freeing the receiver (default 10 000 ms). */
  helloTimeoutMs?: number;
  /** Creates the destination for an offer (guest memory of the offered size, attached at its IOVA). Throw to refuse. */
  prepare(offer: MigrationOffer): Promise<PreparedDestination>;
  /** Every migration's end, committed (at the commit) or not. */
  onOutcome?(outcome: ReceiveOutcome): void;
  /** The channel of a committed migration closed (the sender has nothing more to say). */
  onCommittedClosed?(outcome: ReceiveOutcome): void;
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
  #busy = false;

  private constructor(server: Server, options: ReceiverOptions) {
    this.#server = server;
    this.#options = options;
  }

  /**
   * Listens on `host:port`.
   * @throws Node's listen error (EADDRINUSE, EACCES) with its `code`.
   */
  static async listen(options: ReceiverOptions): Promise<MigrationReceiver> {
    const server = createServer();
    const receiver = new MigrationReceiver(server, options);
    server.on('connection', (socket) => receiver.#accept(socket));
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

  /** Stops listening (a migration in progress goes on; its outcome is still reported). */
  close(): void {
    this.#server.close();
  }

  #accept(socket: Socket): void {
    if (this.#busy) {
      const refused = new ChannelSocket(socket, { onFrame: (f) => void refuse(refused, f), onClose: () => undefined });
      return;
    }
    this.#busy = true;
    new Session(socket, this.#options, (outcome) => {
      this.#busy = false;
      this.#options.onOutcome?.(outcome);
    });
  }
}

/** Answers the first request EBUSY and closes. */
async function refuse(channel: ChannelSocket, frame: Frame): Promise<void> {
  if (frame.type === ChannelFrame.REQUEST) {
    await channel.respond(frame.id, { error: { errno: Errno.EBUSY, message: 'another migration is being received' } }).catch(() => undefined);
  }
  channel.end();
}

/** One incoming migration. */
class Session {
  readonly #channel: ChannelSocket;
  readonly #options: ReceiverOptions;
  readonly #done: (outcome: ReceiveOutcome) => void;
  readonly #queue: Frame[] = [];
  #queued = 0;
  #working = false;
  #prepared: PreparedDestination | undefined;
  #committed = false;
  #finished = false;
  /** The first streamed frame that could not be applied: everything after it is dropped, every request fails with it. */
  #streamError: WireError | undefined;
  #memoryBytes = 0n;
  #deviceBytes = 0n;
  #vmState: Uint8Array | undefined;
  #commitOutcome: ReceiveOutcome | undefined;
  readonly #peer: string;

  constructor(socket: Socket, options: ReceiverOptions, done: (outcome: ReceiveOutcome) => void) {
    this.#options = options;
    this.#peer = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    this.#done = done;
    this.#channel = new ChannelSocket(socket, {
      onFrame: (frame) => this.#enqueue(frame),
      onClose: (error) => void this.#closed(error),
    });
    const helloTimer = setTimeout(() => {
      if (this.#prepared === undefined) this.#channel.destroy(new MigrationChannelError(`no hello in ${options.helloTimeoutMs ?? 10_000} ms`, Errno.ETIMEDOUT));
    }, options.helloTimeoutMs ?? 10_000);
    helloTimer.unref();
    socket.once('close', () => clearTimeout(helloTimer));
  }

  #enqueue(frame: Frame): void {
    this.#queue.push(frame);
    this.#queued += frame.payload.length;
    if (this.#queued > QUEUE_HIGH) this.#channel.pauseReading(true);
    if (!this.#working) void this.#work();
  }

  async #work(): Promise<void> {
    this.#working = true;
    for (let frame = this.#queue.shift(); frame !== undefined && !this.#finished; frame = this.#queue.shift()) {
      this.#queued -= frame.payload.length;
      if (this.#queued <= QUEUE_HIGH / 2) this.#channel.pauseReading(false);
      await this.#handle(frame);
    }
    this.#working = false;
  }

  async #handle(frame: Frame): Promise<void> {
    switch (frame.type) {
      case ChannelFrame.MEMORY:
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
        const { gpa, data } = decodeMemory(frame.payload);
        side.memory.write(gpa, data); // EFAULT outside the guest memory
        this.#memoryBytes += BigInt(data.length);
      } else {
        await side.client.migDataWrite(frame.payload);
        this.#deviceBytes += BigInt(frame.payload.length);
      }
    } catch (error) {
      this.#streamError = { errno: errnoOf(error), message: `${frame.type === ChannelFrame.MEMORY ? 'guest memory' : 'device stream'} frame ${frame.seq}: ${(error as Error).message}` };
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
    await this.#channel.respond(frame.id, outcome).catch(() => undefined);
    if (op === 'abandon') await this.#finish('abandoned', 'the sender abandoned the migration');
    else if (op === 'hello' && 'error' in outcome) await this.#finish('abandoned', `refused: ${outcome.error.message}`);
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
      case 'set': {
        const state = args.state;
        if (typeof state !== 'number' || !SETTABLE.has(state)) throw new MigrationChannelError(`state ${String(state)} may not be requested of a destination`, Errno.EINVAL);
        await client.setMigrationState(state);
        return { result: null };
      }
      case 'flush':
        return { result: null };
      case 'vmstate':
        this.#vmState = new Uint8Array(body);
        return { result: null };
      case 'complete':
        if ((await client.migrationState()) !== S.RUNNING) throw new MigrationChannelError('the destination device is not RUNNING', Errno.EINVAL);
        this.#committed = true;
        this.#commitOutcome = { outcome: 'committed', peer: this.#peer, memoryBytes: this.#memoryBytes, deviceBytes: this.#deviceBytes, destination: prepared, ...(this.#vmState ? { vmState: this.#vmState } : {}) };
        this.#done(this.#commitOutcome);
        return { result: null };
      default:
        throw new MigrationChannelError(`unknown request '${op}'`, Errno.ENOSYS);
    }
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
    this.#prepared = await this.#options.prepare({ memory: { size: memory.size, iova: memory.iova }, peer: this.#peer });
    return { channelVersion: 1, maxTransferSize: this.#prepared.side.client.maxTransferSize };
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

  async #closed(error: Error | undefined): Promise<void> {
    if (this.#committed || this.#finished) {
      const first = !this.#finished;
      this.#finished = true;
      if (first && this.#commitOutcome) this.#options.onCommittedClosed?.(this.#commitOutcome);
      return;
    }
    await this.#finish('abandoned', error ? `channel lost: ${error.message}` : 'the sender closed the channel before the commit');
  }

  /** The end of an uncommitted migration: the device reset to RUNNING, the side released. */
  async #finish(outcome: 'abandoned', reason: string): Promise<void> {
    if (this.#finished || this.#committed) return;
    this.#finished = true;
    this.#channel.destroy();
    const prepared = this.#prepared;
    if (prepared !== undefined) {
      await resetToRunning(prepared.side.client);
      await prepared.release().catch(() => undefined);
    }
    this.#done({ outcome: prepared ? outcome : 'refused', peer: this.#peer, reason, memoryBytes: this.#memoryBytes, deviceBytes: this.#deviceBytes });
  }
}
