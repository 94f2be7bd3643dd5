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
import { CHANNEL_DEVICE_NAME, ChannelFeature, ChannelFrame, HelloVersion, MAX_CHANNEL_DEVICES, decodeMessage, memoryPrefix, zeroPayload, type Frame } from './channel.js';
import { ChannelSocket, fromWire, MigrationChannelError, type ChannelReply } from './channel-socket.js';
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
  /**
   * The devices migrated, by name (1..{@link MAX_CHANNEL_DEVICES}, unique; a
   * container's, sharing the guest memory). Default: one device, unnamed.
   * Several need a receiver that speaks channel version 2.
   */
  devices?: readonly string[];
}

/** What the receiver answers to `hello`. */
interface Welcome {
  channelVersion: number;
  maxTransferSize: number;
  /** The optional features the receiver takes (absent from older receivers). */
  features?: unknown;
  /** Each device's name and largest transfer (absent from older receivers). */
  devices?: unknown;
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
  /** The devices' names, in the hello's order (one `dev0` for an unnamed single device). */
  readonly deviceNames: readonly string[];
  readonly #maxTransfer: readonly number[];
  /** Requests carry a device index (a hello of several named devices). */
  readonly #indexed: boolean;

  private constructor(address: string, channel: ChannelSocket, welcome: Welcome, migrationId: string, options: RemoteDestinationOptions) {
    this.address = address;
    this.#channel = channel;
    this.maxTransferSize = welcome.maxTransferSize;
    this.deviceNames = options.devices ?? ['dev0'];
    this.#indexed = options.devices !== undefined && options.devices.length > 1;
    const sizes = Array.isArray(welcome.devices) ? welcome.devices.map((d) => (d as { maxTransferSize?: unknown }).maxTransferSize) : [];
    this.#maxTransfer = this.deviceNames.map((_n, i) => (typeof sizes[i] === 'number' && sizes[i] >= 4096 ? sizes[i] : welcome.maxTransferSize));
    this.migrationId = migrationId;
    this.zeroPages = Array.isArray(welcome.features) && welcome.features.includes(ChannelFeature.ZERO_PAGES);
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#resolveTimeoutMs = options.resolveTimeoutMs ?? 10_000;
    this.#tls = options.tls;
  }

  /**
   * Connects to a receiver and offers it the migration of `options.memory`
   * and its device (or, with `options.devices`, several: a container).
   * @throws {InvalidArgumentError} EINVAL for a bad address or device names; {@link ConnectionClosedError} /
   *   a connect error (ECONNREFUSED…) when it cannot be reached; {@link MigrationChannelError}
   *   with the receiver's errno when it refuses (EBUSY: another migration; ENOMEM…), EPROTO from a receiver
   *   that takes one device per migration when several are offered.
   */
  static async connect(url: string, options: RemoteDestinationOptions): Promise<RemoteDestination> {
    const { host, port } = parseChannelAddress(url);
    const timeoutMs = options.timeoutMs ?? 10_000;
    const migrationId = checkMigrationId(options.migrationId ?? randomUUID());
    const devices = options.devices === undefined ? undefined : checkDeviceNames(options.devices);
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
    const version = devices !== undefined && devices.length > 1 ? HelloVersion.MULTI : HelloVersion.SINGLE;
    try {
      const hello = { channelVersion: version, memory: options.memory, migrationId, features: [ChannelFeature.ZERO_PAGES], ...(devices ? { devices: devices.map((name) => ({ name })) } : {}) };
      const { result } = await channel.request('hello', hello, undefined, timeoutMs).catch((error: unknown) => {
        throw olderReceiver(url, version, error);
      });
      const welcome = result as Partial<Welcome>;
      if (welcome.channelVersion !== version || typeof welcome.maxTransferSize !== 'number' || welcome.maxTransferSize < 4096 || !welcomesDevices(welcome, devices)) {
        throw new VfioUserError(`${url}: unexpected hello answer ${JSON.stringify(result)}`, { errno: Errno.EPROTO });
      }
      self = new RemoteDestination(`tcp://${host.includes(':') ? `[${host}]` : host}:${port}`, channel, welcome as Welcome, migrationId, { ...options, ...(devices ? { devices } : {}) });
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

  /** Device `device`'s description (default the first). @throws {MigrationChannelError} EINVAL for no such device. */
  async describe(device = 0): Promise<DeviceDescription> {
    return (await this.#request('describe', this.#at(device))).result as DeviceDescription;
  }

  async migrationState(device = 0): Promise<number> {
    return Number((await this.#request('state', this.#at(device))).result);
  }

  async setMigrationState(state: number, device = 0): Promise<void> {
    await this.#request('set', { state, ...this.#at(device) }, undefined, Math.max(this.#timeoutMs, 60_000));
  }

  async arcLatencies(device = 0): Promise<ArcLatency[]> {
    return (await this.#request('arcs', this.#at(device))).result as ArcLatency[];
  }

  /** The largest device-data chunk for device `device` (its session's). */
  maxTransferSizeOf(device: number): number {
    return this.#maxTransfer[device] ?? this.maxTransferSize;
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

  /** The next piece of device `device`'s stream (a DEVICE_DATA frame whose id is the device's index). */
  async writeDeviceData(data: Uint8Array, device = 0): Promise<void> {
    this.#check();
    this.#at(device);
    await this.#channel.send(ChannelFrame.DEVICE_DATA, device, [data]);
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

  /** A request's device argument: none for device 0 of a single-device hello (as older receivers expect). @throws {InvalidArgumentError} EINVAL for no such device. */
  #at(device: number): { device?: number } {
    if (!Number.isInteger(device) || device < 0 || device >= this.deviceNames.length) throw new InvalidArgumentError(`no device ${device}: this migration has ${this.deviceNames.length}`);
    return this.#indexed ? { device } : {};
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

/** @throws {InvalidArgumentError} EINVAL for no names, too many, a malformed or a repeated one. */
function checkDeviceNames(names: readonly string[]): string[] {
  if (names.length === 0 || names.length > MAX_CHANNEL_DEVICES) throw new InvalidArgumentError(`${names.length} devices: a migration carries 1..${MAX_CHANNEL_DEVICES}`);
  for (const [i, name] of names.entries()) {
    if (!CHANNEL_DEVICE_NAME.test(name)) throw new InvalidArgumentError(`'${name}' is not a device name (1..64 of A-Z a-z 0-9 . _ : -)`);
    if (names.indexOf(name) !== i) throw new InvalidArgumentError(`device name '${name}' is given twice`);
  }
  return [...names];
}

/** Whether the hello's answer lists the offered devices (an older receiver lists none: one device, as offered). */
function welcomesDevices(welcome: Partial<Welcome>, devices: readonly string[] | undefined): boolean {
  if (welcome.devices === undefined) return devices === undefined || devices.length === 1;
  if (!Array.isArray(welcome.devices)) return false;
  const names = welcome.devices.map((d) => (d as { name?: unknown }).name);
  return devices === undefined ? names.length === 1 : names.length === devices.length && devices.every((n, i) => names[i] === n);
}

/** A hello of several devices refused by a receiver that speaks channel version 1 only: said plainly. */
function olderReceiver(url: string, version: number, error: unknown): unknown {
  const refused = error instanceof MigrationChannelError && error.errno === Errno.EPROTO && /channel version/.test(error.message);
  if (version !== HelloVersion.MULTI || !refused) return error;
  return new MigrationChannelError(`${url}: the receiver takes one device per migration (channel version 1), not a container of several: upgrade it (${error.message})`, Errno.EPROTO);
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
