/**
 * A migration destination on another host (or process), reached over a
 * migration channel (channel.ts) to a receiver (`MigrationReceiver`,
 * `vfio-user migrate-listen`). The receiver applies guest pages and the device
 * stream to its own device session and answers the orchestrator's requests;
 * streamed frames are not acknowledged one by one — a failure to apply one
 * comes back as a NOTICE and fails the next write or request.
 */
import { randomUUID } from 'node:crypto';
import { connect as connectTcp, type Socket } from 'node:net';
import { ConnectionClosedError, InvalidArgumentError, VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import type { ArcLatency } from '../protocol/migration-extensions.js';
import { CHANNEL_VERSION, ChannelFeature, ChannelFrame, decodeMessage, memoryPrefix, zeroPayload, type Frame } from './channel.js';
import { ChannelSocket, fromWire, type ChannelReply } from './channel-socket.js';
import type { DeviceDescription, MigrationDestination } from './destination.js';
import { COPY_CHUNK } from './memory-copy.js';
import { checkMigrationId, type LedgerEntry } from './ledger.js';
import { connectTlsSocket, type ChannelTlsCredentials } from './channel-tls.js';

/** A parsed `tcp://HOST:PORT`. */
export interface ChannelAddress {
  host: string;
  port: number;
}

/**
 * Parses a migration destination address.
 * @throws {InvalidArgumentError} EINVAL for anything but `tcp://HOST:PORT` with a port 1..65535.
 */
export function parseChannelAddress(url: string): ChannelAddress {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new InvalidArgumentError(`'${url}' is not a migration address (tcp://HOST:PORT)`);
  }
  const port = Number(u.port);
  if (u.protocol !== 'tcp:' || u.hostname === '' || !Number.isInteger(port) || port < 1 || port > 65535 || (u.pathname !== '' && u.pathname !== '/')) {
    throw new InvalidArgumentError(`'${url}' is not a migration address (tcp://HOST:PORT)`);
  }
  return { host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port };
}

/** Options of {@link RemoteDestination.connect}. */
export interface RemoteDestinationOptions {
  /** The guest memory to migrate (the receiver creates its own of this size, attached at `iova`). */
  memory: { size: bigint; iova: bigint };
  /** Connect and per-request limit (default 10 000 ms; state changes get the larger of this and 60 s). */
  timeoutMs?: number;
  /** The migration's id, used once per receiver (default a random UUID). */
  migrationId?: string;
  /** How long {@link RemoteDestination.resolveCommit} keeps asking an unreachable receiver (default 10 000 ms). */
  resolveTimeoutMs?: number;
  /** TLS with mutual authentication (channel-tls.ts): the sender's certificate and the CA the receiver's must chain to. */
  tls?: ChannelTlsCredentials;
}

/** What the receiver answers to `hello`. */
interface Welcome {
  channelVersion: number;
  maxTransferSize: number;
  /** The optional features the receiver takes (absent from older receivers). */
  features?: unknown;
}

const now = (): number => performance.now();

/** A {@link MigrationDestination} behind a migration channel. */
export class RemoteDestination implements MigrationDestination {
  readonly address: string;
  readonly maxTransferSize: number;
  /** The id the receiver records this migration's outcome under. */
  readonly migrationId: string;
  /** The receiver takes ZERO frames (feature `zero-pages`): all-zero memory crosses as its address and length. */
  readonly zeroPages: boolean;
  readonly #channel: ChannelSocket;
  readonly #timeoutMs: number;
  readonly #resolveTimeoutMs: number;
  readonly #tls: ChannelTlsCredentials | undefined;
  /** The first failure the receiver reported for a streamed frame. */
  #streamError: Error | undefined;
  /** The receiver said it abandoned the migration (NOTICE with `outcome: 'abandoned'`). */
  #abandonedByPeer: LedgerEntry | undefined;
  readonly #pool = new CopyPool();

  private constructor(address: string, channel: ChannelSocket, welcome: Welcome, migrationId: string, options: RemoteDestinationOptions) {
    this.address = address;
    this.#channel = channel;
    this.maxTransferSize = welcome.maxTransferSize;
    this.migrationId = migrationId;
    this.zeroPages = Array.isArray(welcome.features) && welcome.features.includes(ChannelFeature.ZERO_PAGES);
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#resolveTimeoutMs = options.resolveTimeoutMs ?? 10_000;
    this.#tls = options.tls;
  }

  /**
   * Connects to a receiver and offers it the migration of `options.memory`.
   * @throws {InvalidArgumentError} EINVAL for a bad address; {@link ConnectionClosedError} /
   *   a connect error (ECONNREFUSED…) when it cannot be reached; {@link MigrationChannelError}
   *   with the receiver's errno when it refuses (EBUSY: another migration; ENOMEM…).
   */
  static async connect(url: string, options: RemoteDestinationOptions): Promise<RemoteDestination> {
    const { host, port } = parseChannelAddress(url);
    const timeoutMs = options.timeoutMs ?? 10_000;
    const migrationId = checkMigrationId(options.migrationId ?? randomUUID());
    const socket = await connectSocket(url, timeoutMs, options.tls);
    let self: RemoteDestination | undefined;
    const channel = new ChannelSocket(socket, {
      onFrame: (frame) => {
        if (self) self.#frame(frame);
      },
      onClose: (error) => {
        if (self && error && !self.#streamError) self.#streamError = error;
      },
    });
    try {
      const { result } = await channel.request('hello', { channelVersion: CHANNEL_VERSION, memory: options.memory, migrationId, features: [ChannelFeature.ZERO_PAGES] }, undefined, timeoutMs);
      const welcome = result as Partial<Welcome>;
      if (welcome.channelVersion !== CHANNEL_VERSION || typeof welcome.maxTransferSize !== 'number' || welcome.maxTransferSize < 4096) {
        throw new VfioUserError(`${url}: unexpected hello answer ${JSON.stringify(result)}`, { errno: Errno.EPROTO });
      }
      self = new RemoteDestination(`tcp://${host.includes(':') ? `[${host}]` : host}:${port}`, channel, welcome as Welcome, migrationId, options);
      return self;
    } catch (error) {
      channel.destroy();
      throw error;
    }
  }

  /**
   * Asks the receiver at `url` how migration `migrationId` ended, on a new
   * connection. A migration still in progress there is abandoned by the
   * question (its sender lost it), so `in-progress` is never the answer.
   * @throws {InvalidArgumentError} EINVAL for a bad address or id; a connect error
   *   (ECONNREFUSED, ETIMEDOUT…); {@link MigrationChannelError} with the receiver's errno.
   */
  static async queryOutcome(url: string, migrationId: string, timeoutMs = 10_000, tls?: ChannelTlsCredentials): Promise<LedgerEntry> {
    parseChannelAddress(url);
    checkMigrationId(migrationId);
    const channel = new ChannelSocket(await connectSocket(url, timeoutMs, tls), { onFrame: () => undefined, onClose: () => undefined });
    try {
      const { result } = await channel.request('outcome', { migrationId }, undefined, timeoutMs);
      const e = result as Partial<LedgerEntry>;
      const outcomes = ['committed', 'abandoned', 'unknown', 'in-progress'];
      if (e.migrationId !== migrationId || typeof e.outcome !== 'string' || !outcomes.includes(e.outcome) || typeof e.phase !== 'string') {
        throw new VfioUserError(`${url}: unexpected outcome answer ${JSON.stringify(result)}`, { errno: Errno.EPROTO });
      }
      return { migrationId, outcome: e.outcome, phase: e.phase, ...(typeof e.reason === 'string' ? { reason: e.reason } : {}) };
    } finally {
      channel.destroy();
    }
  }

  /**
   * After the commit's reply was lost: how the migration ended. The receiver's
   * NOTICE when it abandoned it; else its answer to {@link queryOutcome}, asked
   * again until it answers or the resolve timeout passes (then `unknown`, with
   * the last error as the reason). Never throws.
   */
  async resolveCommit(): Promise<LedgerEntry> {
    if (this.#abandonedByPeer) return { ...this.#abandonedByPeer };
    const deadline = now() + this.#resolveTimeoutMs;
    for (;;) {
      const left = deadline - now();
      try {
        return await RemoteDestination.queryOutcome(this.address, this.migrationId, Math.max(100, Math.min(this.#timeoutMs, left)), this.#tls);
      } catch (error) {
        const told = this.#abandonedByPeer as LedgerEntry | undefined; // a NOTICE may have come meanwhile
        if (told) return { ...told };
        if (now() + 200 > deadline) return { migrationId: this.migrationId, outcome: 'unknown', phase: 'commit', reason: `the receiver did not answer in ${this.#resolveTimeoutMs} ms: ${(error as Error).message}` };
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
  }

  async describe(): Promise<DeviceDescription> {
    return (await this.#request('describe')).result as DeviceDescription;
  }

  async migrationState(): Promise<number> {
    return Number((await this.#request('state')).result);
  }

  async setMigrationState(state: number): Promise<void> {
    await this.#request('set', { state }, undefined, Math.max(this.#timeoutMs, 60_000));
  }

  async arcLatencies(): Promise<ArcLatency[]> {
    return (await this.#request('arcs')).result as ArcLatency[];
  }

  /** `writeMemory` copies the bytes (into a buffer of its own, reused once the socket took them) before it returns. */
  readonly copiesMemory = true;

  async writeMemory(gpa: bigint, data: Uint8Array): Promise<void> {
    this.#check();
    const copy = this.#pool.copy(data);
    await this.#channel.send(ChannelFrame.MEMORY, 0, [memoryPrefix(gpa), copy.bytes], copy.release);
  }

  /** All-zero guest memory: a ZERO frame when the receiver takes them, else the zeros themselves. */
  async writeZeroes(gpa: bigint, length: number): Promise<void> {
    this.#check();
    if (this.zeroPages) {
      await this.#channel.send(ChannelFrame.ZERO, 0, [zeroPayload(gpa, length)]);
      return;
    }
    const zeros = new Uint8Array(Math.min(length, 1 << 20));
    for (let done = 0; done < length; done += zeros.length) {
      const n = Math.min(zeros.length, length - done);
      await this.#channel.send(ChannelFrame.MEMORY, 0, [memoryPrefix(gpa + BigInt(done)), zeros.subarray(0, n)]);
    }
  }

  async writeDeviceData(data: Uint8Array): Promise<void> {
    this.#check();
    await this.#channel.send(ChannelFrame.DEVICE_DATA, 0, [data]);
  }

  async flush(): Promise<void> {
    await this.#request('flush');
  }

  async writeVmState(data: Uint8Array): Promise<void> {
    await this.#request('vmstate', {}, data);
  }

  /** Asks the receiver to reset its device (it also does so by itself when the channel breaks); then closes. */
  async abandon(): Promise<void> {
    try {
      await this.#channel.request('abandon', {}, undefined, this.#timeoutMs);
    } catch {
      // the receiver resets the destination when the channel goes
    }
    this.close();
  }

  /**
   * The commit: the receiver keeps the (running) device. An error thrown
   * before the request left carries `commitUnsent: true` (the receiver cannot
   * have committed); any later failure leaves the outcome unknown.
   */
  async complete(): Promise<void> {
    try {
      this.#check();
    } catch (error) {
      throw Object.assign(error as Error, { commitUnsent: true });
    }
    await this.#channel.request('complete', {}, undefined, this.#timeoutMs);
  }

  /**
   * An application message to the receiver after the commit (its `onMessage`
   * answers), e.g. the VMM's verification of the migrated guest.
   * @throws {MigrationChannelError} with the receiver's errno; {@link ConnectionClosedError}.
   */
  async message(head: unknown, body?: Uint8Array, timeoutMs = this.#timeoutMs): Promise<ChannelReply> {
    return this.#request('message', head, body, timeoutMs);
  }

  /** Round-trip time (ms) of an empty request. */
  async ping(): Promise<number> {
    const t = now();
    await this.#request('state');
    return now() - t;
  }

  /** Ends the channel (an uncommitted migration is abandoned by the receiver). Idempotent. */
  close(): void {
    this.#channel.end();
    setTimeout(() => this.#channel.destroy(), 1000).unref();
  }

  async #request(op: string, args: unknown = {}, body?: Uint8Array, timeoutMs = this.#timeoutMs): Promise<ChannelReply> {
    this.#check();
    return this.#channel.request(op, args, body, timeoutMs);
  }

  #check(): void {
    if (this.#streamError) throw this.#streamError;
    if (this.#channel.closedBy) throw this.#channel.closedBy;
  }

  #frame(frame: Frame): void {
    if (frame.type !== ChannelFrame.NOTICE) {
      this.#streamError ??= new ConnectionClosedError(`migration channel: unexpected frame type ${frame.type}`, { errno: Errno.EPROTO });
      this.#channel.destroy(this.#streamError);
      return;
    }
    try {
      const head = decodeMessage(frame.payload).head as { outcome?: unknown; phase?: unknown; message?: unknown };
      if (head.outcome === 'abandoned') {
        this.#abandonedByPeer = { migrationId: this.migrationId, outcome: 'abandoned', phase: typeof head.phase === 'string' ? (head.phase as LedgerEntry['phase']) : 'connect', reason: String(head.message) };
      }
      this.#streamError ??= fromWire('migration receiver', head);
    } catch (error) {
      this.#streamError ??= error as Error;
    }
  }
}

/** Buffers guest memory is copied into for sending: reused once the socket handed them to the kernel (fresh 1 MiB allocations cost page faults). */
class CopyPool {
  static readonly SIZE = COPY_CHUNK;
  static readonly COUNT = 8;
  readonly #free: Uint8Array[] = [];
  #allocated = 0;

  /** A copy of `data` and the callback that gives its buffer back. */
  copy(data: Uint8Array): { bytes: Uint8Array; release: () => void } {
    if (data.length > CopyPool.SIZE) return { bytes: new Uint8Array(data), release: () => undefined };
    let buffer = this.#free.pop();
    if (buffer === undefined) {
      if (this.#allocated >= CopyPool.COUNT) return { bytes: new Uint8Array(data), release: () => undefined };
      buffer = new Uint8Array(CopyPool.SIZE);
      this.#allocated++;
    }
    const own = buffer;
    own.set(data);
    let released = false;
    return {
      bytes: own.subarray(0, data.length),
      release: () => {
        if (released) return;
        released = true;
        this.#free.push(own);
      },
    };
  }
}

/** A connected TCP socket to `url` (tcp://HOST:PORT). @throws {VfioUserError} ETIMEDOUT, ECONNREFUSED, ECONNRESET, EIO. */
async function connectSocket(url: string, timeoutMs: number, tls?: ChannelTlsCredentials): Promise<Socket> {
  const { host, port } = parseChannelAddress(url);
  if (tls) return connectTlsSocket(host, port, tls, timeoutMs, url);
  const socket = connectTcp({ host, port });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new VfioUserError(`connect ${url}: timed out after ${timeoutMs} ms`, { errno: Errno.ETIMEDOUT }));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new VfioUserError(`connect ${url}: ${error.code ?? error.message}`, { errno: errnoOfCode(error.code), cause: error }));
    });
  });
  return socket;
}

/** Maps a Node connect error code to its errno. */
function errnoOfCode(code: string | undefined): number {
  const known: Record<string, number> = { ECONNREFUSED: Errno.ECONNREFUSED, ECONNRESET: Errno.ECONNRESET, ETIMEDOUT: Errno.ETIMEDOUT };
  return (code !== undefined ? known[code] : undefined) ?? Errno.EIO;
}
