/**
 * The CLI as a VMM: a session with a device (a connected client) plus the
 * guest RAM it owns — a memfd, optionally initialised from a file, DMA_MAPped
 * with its fd at an IOVA as QEMU's `memory-backend-memfd,share=on` is — and
 * the migration of such a session, with its guest RAM, to a device on another
 * socket or to a receiver (`vfio-user migrate-listen`) at `tcp://HOST:PORT`.
 *
 * Who holds what (a vfio-user device resets when its client goes, so a
 * device only keeps its state while some session holds it):
 * - before the migration the caller holds the source session;
 * - {@link migrateSession} to a socket opens the destination session itself
 *   (guest RAM of the same size at the same IOVA); to `tcp://` the receiver
 *   opens it on its host;
 * - migrated: the destination runs the device. A local destination session
 *   is returned and the caller holds it from now on (it is that device's
 *   VMM: closing it resets the device); a remote one is held by the
 *   receiver. The source session stays open with its device STOPPED (it
 *   must not run again: its guest now runs at the destination); the caller
 *   closes it, and the device stays STOPPED after that;
 * - not migrated (aborted, failed): the source runs again and stays the
 *   caller's; the local destination session was reset and closed here.
 */
import { createHash } from 'node:crypto';
import { openSync, closeSync, fstatSync, readSync } from 'node:fs';
import { VfioUserClient } from '../client/client.js';
import { GUEST_PAGE_SIZE, GuestMemory } from '../client/guest-memory.js';
import { migrate } from '../orchestrator/migrate.js';
import { parseChannelAddress, RemoteDestination } from '../orchestrator/remote.js';
import type { MigrationReport, MigrationSide, Progress } from '../orchestrator/types.js';
import { Errno } from '../protocol/errno.js';
import { CliError, connectFailure, errorReason } from './common.js';
import { isLoopback, loadTlsCredentials, type ChannelTlsCredentials } from '../orchestrator/channel-tls.js';

/** Where the CLI's VMM maps guest RAM for the device by default (4 GiB, as the demo). */
export const DEFAULT_IOVA = 0x1_0000_0000n;
/** Guest RAM of a session when neither a size nor a file says otherwise. */
export const DEFAULT_GUEST_RAM = 64 << 20;
/** The request `migrate` sends a receiver after the commit: its guest RAM's SHA-256 (the receiver's answer: `{ sha256 }`). */
export const GUEST_RAM_DIGEST_REQUEST = 'guest-ram-digest';

/** A device session and the guest RAM attached to it (the orchestrator's {@link MigrationSide} plus the socket). */
export interface VmmSession extends MigrationSide {
  /** The device's socket. */
  readonly socket: string;
}

/** A session this module opened: {@link close} releases it. */
export interface OwnedVmmSession extends VmmSession {
  /** Closes the client (the device resets: vfio-user semantics) and frees the guest RAM. Idempotent. */
  close(): void;
}

/** Options of {@link openVmmSession}. */
export interface OpenSessionOptions {
  /** Guest RAM bytes (a multiple of 4096; default: the file's size rounded up to a page, else 64 MiB). */
  guestRamBytes?: number | bigint;
  /** Initialise guest RAM from this file (it must fit). */
  guestRamFile?: string;
  /** Where the device sees guest RAM (default 0x1_0000_0000). */
  iova?: bigint;
  /** Connect and per-request limit (ms; default 10 000). */
  timeoutMs?: number;
  /** memfd name, shown in /proc/PID/maps (default `vfio-user-guest-ram`). */
  name?: string;
}

/** Reads `file` whole (fd closed whatever happens). @throws {CliError} ENOENT/EACCES/EISDIR naming the file. */
function readGuestRamFile(file: string, limit: number | undefined): Uint8Array {
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    const size = fstatSync(fd).size;
    if (limit !== undefined && size > limit) throw new CliError(`--guest-ram-file ${file}: ${size} bytes do not fit in ${limit} bytes of guest RAM`, { errno: Errno.E2BIG });
    const data = new Uint8Array(size);
    for (let at = 0; at < size; ) {
      const n = readSync(fd, data, at, size - at, at);
      if (n === 0) break;
      at += n;
    }
    return data;
  } catch (error) {
    if (error instanceof CliError) throw error;
    const e = error as NodeJS.ErrnoException;
    throw new CliError(`--guest-ram-file ${file}: ${e.code ?? e.message}`, { errno: typeof e.errno === 'number' ? -e.errno : Errno.EIO, cause: error });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Connects to the device at `socket` as its VMM: creates guest RAM (a sealed
 * memfd, initialised from `guestRamFile` if given) and DMA_MAPs it with its fd at `iova`.
 * @throws {CliError} naming the socket: connect errors (ENOENT, ECONNREFUSED, EBUSY: another client holds the device),
 *   a DMA_MAP the server refuses (its errno); EINVAL for a size that is not a positive multiple of 4096; the file's errno.
 */
export async function openVmmSession(socket: string, options: OpenSessionOptions = {}): Promise<OwnedVmmSession> {
  const iova = options.iova ?? DEFAULT_IOVA;
  const wanted = options.guestRamBytes === undefined ? undefined : Number(options.guestRamBytes);
  if (wanted !== undefined && (!Number.isSafeInteger(wanted) || wanted <= 0 || wanted % GUEST_PAGE_SIZE !== 0)) {
    throw new CliError(`guest RAM: ${wanted} bytes is not a positive multiple of ${GUEST_PAGE_SIZE}`, { errno: Errno.EINVAL });
  }
  const init = options.guestRamFile === undefined ? undefined : readGuestRamFile(options.guestRamFile, wanted);
  const size = wanted ?? (init ? Math.max(GUEST_PAGE_SIZE, Math.ceil(init.length / GUEST_PAGE_SIZE) * GUEST_PAGE_SIZE) : DEFAULT_GUEST_RAM);
  const timeoutMs = options.timeoutMs ?? 10_000;
  let client: VfioUserClient;
  try {
    client = await VfioUserClient.connect(socket, { timeoutMs, connectTimeoutMs: timeoutMs });
  } catch (error) {
    throw new CliError(`connect ${socket}: ${connectFailure(socket, error)}`, { cause: error });
  }
  let memory: GuestMemory | undefined;
  try {
    memory = GuestMemory.create(size, { name: options.name ?? 'vfio-user-guest-ram' });
    if (init) memory.write(0n, init);
    await memory.attach(client, { iova, mode: 'fd' });
  } catch (error) {
    memory?.dispose();
    client.close();
    throw new CliError(`${socket}: guest RAM of ${size} bytes at IOVA 0x${iova.toString(16)}: ${errorReason(error)}`, { cause: error });
  }
  return ownedSession(socket, client, memory, iova);
}

function ownedSession(socket: string, client: VfioUserClient, memory: GuestMemory, iova: bigint): OwnedVmmSession {
  let closed = false;
  return {
    socket, client, memory, iova,
    close() {
      if (closed) return;
      closed = true;
      client.close();
      memory.dispose();
    },
  };
}

/** SHA-256 (hex) of all of `memory`, read 16 MiB at a time. */
export function guestRamDigest(memory: GuestMemory): string {
  const hash = createHash('sha256');
  const chunk = 16 << 20;
  for (let at = 0n; at < memory.size; at += BigInt(chunk)) {
    const n = memory.size - at < BigInt(chunk) ? Number(memory.size - at) : chunk;
    hash.update(memory.read(at, n));
  }
  return hash.digest('hex');
}

/** The file path through which another process (same uid) can read this process's guest RAM: its memfd in /proc. */
export function guestRamPath(memory: GuestMemory): string {
  return `/proc/${process.pid}/fd/${memory.fd}`;
}

/** Options of {@link migrateSession}. */
export interface MigrateSessionOptions {
  /** Downtime budget (ms, default 300). */
  downtimeBudgetMs?: number;
  /** Pre-copy bandwidth cap (bytes/s). */
  bandwidthLimit?: number;
  /** The whole migration's limit (ms, default 60 000). */
  timeLimitMs?: number;
  /** Connect and per-request limit (ms, default 10 000). */
  requestTimeoutMs?: number;
  /** tcp:// targets: a QEMU tls-creds-x509 directory (ca-cert.pem, client-cert.pem, client-key.pem). */
  tlsCreds?: string;
  /** tcp:// targets: allow a plaintext channel beyond loopback. */
  noTls?: boolean;
  /** tcp:// targets: how long to ask the receiver how a commit whose reply was lost ended (ms, default 10 000). */
  resolveTimeoutMs?: number;
  /** Aborts the migration at its next step (the source runs again unless the commit was sent). */
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
}

/** What {@link migrateSession} did. */
export interface SessionMigration {
  report: MigrationReport;
  /** A local target, migrated: the destination session, now the caller's (closing it resets the device). */
  destination?: OwnedVmmSession;
  /** Migrated: SHA-256 of the source's guest RAM (stopped: the switch-over snapshot). */
  sourceRamDigest?: string;
  /**
   * Migrated: SHA-256 of the destination's guest RAM right after the commit
   * (equal to the source's unless the device wrote guest RAM once it ran; no guest runs here).
   */
  destinationRamDigest?: string;
}

/** Whether `target` is a migration channel address rather than a socket path. */
export const isChannelTarget = (target: string): boolean => /^[a-z][a-z0-9+.-]*:\/\//i.test(target);

/**
 * Migrates the device of `source` and its guest RAM to `target`: a socket
 * path (a device on this host: this function opens its session) or
 * `tcp://HOST:PORT` (a receiver, `vfio-user migrate-listen`). Ownership: module TSDoc.
 * @throws {MigrationCompatibilityError} when the devices differ or one does not migrate (nothing changed);
 * @throws {CliError} the target cannot be reached or prepared (ENOENT, ECONNREFUSED, EBUSY, the receiver's errno),
 *   bad TLS settings (EINVAL); an abort or failure is reported in `report`, not thrown.
 */
export async function migrateSession(source: VmmSession, target: string, options: MigrateSessionOptions = {}): Promise<SessionMigration> {
  const run = (destination: Parameters<typeof migrate>[0]['destination']): Promise<MigrationReport> =>
    migrate({
      source: { client: source.client, memory: source.memory, iova: source.iova },
      destination,
      downtimeBudgetMs: options.downtimeBudgetMs ?? 300,
      ...(options.bandwidthLimit === undefined ? {} : { bandwidthLimit: options.bandwidthLimit }),
      timeoutMs: options.timeLimitMs ?? 60_000,
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    });
  if (isChannelTarget(target)) return migrateRemote(source, target, options, run);
  if (target === source.socket) throw new CliError(`migrate: the target ${target} is the source's own socket`, { errno: Errno.EINVAL });
  const destination = await openVmmSession(target, { guestRamBytes: source.memory.size, iova: source.iova, timeoutMs: options.requestTimeoutMs ?? 10_000, name: 'vfio-user-destination-ram' });
  let report: MigrationReport;
  try {
    report = await run(destination);
  } catch (error) {
    destination.close();
    throw error;
  }
  if (report.outcome !== 'migrated') {
    destination.close();
    return { report };
  }
  return { report, destination, sourceRamDigest: guestRamDigest(source.memory), destinationRamDigest: guestRamDigest(destination.memory) };
}

async function migrateRemote(
  source: VmmSession, url: string, options: MigrateSessionOptions, run: (d: RemoteDestination) => Promise<MigrationReport>,
): Promise<SessionMigration> {
  let host: string;
  try {
    host = parseChannelAddress(url).host;
  } catch (error) {
    throw new CliError(`migrate: ${(error as Error).message}`, { errno: Errno.EINVAL, cause: error });
  }
  const tls = channelTls(host, { ...(options.tlsCreds === undefined ? {} : { tlsCreds: options.tlsCreds }), tls: options.noTls !== true }, 'client', 'migrate: a channel to');
  let destination: RemoteDestination;
  try {
    destination = await RemoteDestination.connect(url, {
      memory: { size: source.memory.size, iova: source.iova },
      timeoutMs: options.requestTimeoutMs ?? 10_000,
      resolveTimeoutMs: options.resolveTimeoutMs ?? 10_000,
      ...(tls ? { tls } : {}),
    });
  } catch (error) {
    throw new CliError(`migrate: ${url}: ${(error as Error).message}`, { cause: error });
  }
  try {
    const report = await run(destination);
    if (report.outcome !== 'migrated') return { report };
    const sourceRamDigest = guestRamDigest(source.memory);
    // The receiver holds the destination now; its digest is informative: a receiver that cannot answer does not undo the migration.
    const answer = await destination.message({ vmm: GUEST_RAM_DIGEST_REQUEST }).catch(() => undefined);
    const sha = (answer?.result as { sha256?: unknown } | undefined)?.sha256;
    return { report, sourceRamDigest, ...(typeof sha === 'string' ? { destinationRamDigest: sha } : {}) };
  } finally {
    destination.close();
  }
}

/**
 * The channel's TLS credentials for `side`: loaded from `--tls-creds`; none on
 * loopback; beyond loopback TLS is required unless `--no-tls` says otherwise.
 * @throws {CliError} for unreadable credentials, or a plaintext channel beyond loopback without `--no-tls`.
 */
export function channelTls(host: string, options: { tlsCreds?: string; tls?: boolean }, side: 'server' | 'client', what: string): ChannelTlsCredentials | undefined {
  if (options.tlsCreds !== undefined) {
    try {
      return loadTlsCredentials(options.tlsCreds, side);
    } catch (error) {
      throw new CliError((error as Error).message, { cause: error });
    }
  }
  if (isLoopback(host) || options.tls === false) return undefined;
  throw new CliError(`${what} ${host} (beyond loopback) needs --tls-creds DIR (mutual TLS: ca-cert.pem, ${side}-cert.pem, ${side}-key.pem as QEMU's tls-creds-x509), or --no-tls for a plaintext, unauthenticated channel`);
}
