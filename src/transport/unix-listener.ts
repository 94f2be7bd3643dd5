/**
 * Listening on and connecting to vfio-user UNIX socket paths. The listener's
 * socket file is created with mode 0600 (no window with a wider mode) and
 * removed on close; a stale path left by a dead server can be replaced.
 */
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { SystemError, TimeoutError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { callNative, native } from '../native/addon.js';
import type { NativePoller } from '../native/types.js';
import { UnixSocketTransport, type UnixSocketTransportOptions } from './unix-socket.js';

const { ECONNREFUSED, EADDRINUSE, ECONNABORTED, ENFILE } = Errno;

/** Options for {@link UnixListener.listen}. */
export interface UnixListenOptions {
  /** Permission bits of the socket file (default 0o600). */
  mode?: number;
  /** `listen()` backlog (default 16). */
  backlog?: number;
  /** Replace a socket file that nobody is listening on (default true). */
  replaceStale?: boolean;
  /** Options for each accepted connection's transport. */
  transport?: UnixSocketTransportOptions;
}

/** A listening UNIX stream socket that hands out one transport per connection. */
export class UnixListener {
  readonly path: string;
  readonly #fd: number;
  readonly #poller: NativePoller;
  readonly #onConnection: (transport: UnixSocketTransport) => void;
  readonly #transportOptions: UnixSocketTransportOptions;
  /** Whether close() removes the socket file (not for a socket adopted by {@link UnixListener.fromFd}). */
  readonly #ownsPath: boolean;
  #closed = false;
  #retryTimer: NodeJS.Timeout | undefined;

  private constructor(path: string, fd: number, options: UnixListenOptions, onConnection: (t: UnixSocketTransport) => void, ownsPath = true) {
    this.path = path;
    this.#fd = fd;
    this.#ownsPath = ownsPath;
    this.#onConnection = onConnection;
    this.#transportOptions = options.transport ?? {};
    this.#poller = new native.Poller(fd, (status) => this.#acceptAll(status));
    this.#poller.start(native.constants.UV_READABLE);
  }

  /**
   * Binds and listens on `path`; `onConnection` receives each accepted,
   * not-yet-started transport.
   * @throws {SystemError} EADDRINUSE if another process serves `path`; EACCES,
   *   ENOENT, ENAMETOOLONG (path over 107 bytes) from `bind`.
   */
  static listen(path: string, options: UnixListenOptions, onConnection: (t: UnixSocketTransport) => void): UnixListener {
    return new UnixListener(path, bindListening(path, options), options, onConnection);
  }

  /**
   * Accepts connections on `fd`, a UNIX stream socket that someone else bound
   * and put in listening state (e.g. a device host's main thread, for a device
   * served in a worker thread, where `process.umask()` is unavailable). The
   * listener owns `fd` (close() closes it) but not the socket file: close()
   * leaves `path` in place, so clients that connect meanwhile wait in the
   * backlog for whoever serves the socket next. `path` only names the socket
   * (logs, {@link UnixListener.path}); `mode`, `backlog` and `replaceStale` are
   * ignored.
   * @throws {SystemError} EINVAL if `fd` is a socket but not listening; ENOTSOCK
   *   (errno 88) if it is not a socket; EBADF if it is not open. `fd` is left
   *   open when it throws.
   */
  static fromFd(fd: number, path: string, options: UnixListenOptions, onConnection: (t: UnixSocketTransport) => void): UnixListener {
    checkListening(fd, path);
    return new UnixListener(path, fd, options, onConnection, false);
  }

  /** Stops accepting, closes the socket and removes the socket file (unless adopted by {@link UnixListener.fromFd}). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    this.#poller.close();
    native.close(this.#fd);
    if (!this.#ownsPath) return;
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }

  #acceptAll(status: number): void {
    if (this.#closed || status < 0) return;
    for (;;) {
      const fd = native.accept(this.#fd);
      if (fd >= 0) {
        this.#onConnection(new UnixSocketTransport(fd, this.#transportOptions));
        if (this.#closed) return;
        continue;
      }
      if (fd === -ECONNABORTED || fd === -Errno.EINTR) continue;
      if (fd === -Errno.EMFILE || fd === -ENFILE) this.#backOff();
      return; // EAGAIN, or a transient error: poll wakes us again
    }
  }

  /** Out of fds: stop polling for a moment instead of spinning on a readable socket. */
  #backOff(): void {
    this.#poller.stop();
    this.#retryTimer = setTimeout(() => {
      if (!this.#closed) this.#poller.start(native.constants.UV_READABLE);
    }, 100);
  }
}

/**
 * Creates a UNIX stream socket bound to `path` (mode `options.mode`, default
 * 0600, with no window where it is wider; a stale socket file replaced unless
 * `replaceStale` is false) and listening (`backlog`, default 16), without
 * accepting: for a caller that hands the fd to {@link UnixListener.fromFd},
 * possibly in another thread. Must run on the main thread (it sets the
 * process umask for the duration of bind). The caller closes the fd and
 * removes the socket file.
 * @returns the listening socket's fd (close-on-exec, non-blocking).
 * @throws {SystemError} EADDRINUSE if another process serves `path`; EACCES,
 *   ENOENT, ENAMETOOLONG (path over 107 bytes) from `bind`.
 */
export function bindListening(path: string, options: Omit<UnixListenOptions, 'transport'> = {}): number {
  const fd = callNative(() => native.unixSocket());
  try {
    bindPrivate(fd, path, options.mode ?? 0o600, options.replaceStale ?? true);
    callNative(() => native.listen(fd, options.backlog ?? 16), path);
  } catch (err) {
    native.close(fd);
    throw err;
  }
  return fd;
}

/** Throws unless `fd` is a listening socket. */
function checkListening(fd: number, path: string): void {
  const r = native.listening(fd);
  if (r < 0) throw new SystemError('getsockopt', -r, path);
  if (r === 0) throw new SystemError('listen', Errno.EINVAL, `${path}: fd ${fd} is not a listening socket`);
}

function bindPrivate(fd: number, path: string, mode: number, replaceStale: boolean): void {
  const previous = process.umask(0o777 & ~mode);
  try {
    try {
      callNative(() => native.bind(fd, path), path);
    } catch (err) {
      if (!replaceStale || !(err instanceof SystemError) || err.errno !== EADDRINUSE || !isStale(path)) throw err;
      unlinkSync(path);
      callNative(() => native.bind(fd, path), path);
    }
  } finally {
    process.umask(previous);
  }
  chmodSync(path, mode);
}

/** A path is a stale socket when it is a socket file and connecting to it is refused. */
function isStale(path: string): boolean {
  if (!lstatSync(path, { throwIfNoEntry: false })?.isSocket()) return false;
  const probe = callNative(() => native.unixSocket());
  try {
    return native.connect(probe, path) === -ECONNREFUSED;
  } finally {
    native.close(probe);
  }
}

/** Options for {@link connectUnix}. */
export interface ConnectOptions {
  /** How long to keep retrying while the server's backlog is full (default 5 s). */
  timeoutMs?: number;
  /** Options for the transport. */
  transport?: UnixSocketTransportOptions;
}

/**
 * Connects to a vfio-user server's socket.
 * @returns a transport, not yet started.
 * @throws {SystemError} ENOENT (no such socket), ECONNREFUSED (nobody listening), EACCES.
 * @throws {TimeoutError} ETIMEDOUT if the server's backlog stayed full.
 */
export async function connectUnix(path: string, options: ConnectOptions = {}): Promise<UnixSocketTransport> {
  const deadline = Date.now() + (options.timeoutMs ?? 5000);
  for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
    const fd = callNative(() => native.unixSocket());
    const r = native.connect(fd, path);
    if (r === 0) return new UnixSocketTransport(fd, options.transport ?? {});
    native.close(fd);
    if (r !== -Errno.EAGAIN && r !== -Errno.EINTR) throw new SystemError('connect', -r, path);
    if (Date.now() >= deadline) throw new TimeoutError(`connect ${path}: the server's backlog stayed full`);
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}
