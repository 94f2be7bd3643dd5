/**
 * The raw surface of the native addon (`native/*.c`, entry point
 * `native/addon.c`). Plain syscall wrappers, nothing more: all protocol logic
 * lives in TypeScript.
 *
 * Conventions:
 * - Hot-path calls (`sendmsg`, `send`, `recvmsg`, `accept`, `connect`, `read`, `write`,
 *   `eventfdRead`, `eventfdWrite`) never throw for an OS error: they return a
 *   negative errno (`-11` for EAGAIN). They throw `TypeError` for bad arguments.
 * - Set-up calls throw an `Error` with numeric `errno` (positive) and `syscall`
 *   properties; `src/native/addon.ts` turns it into a {@link SystemError}.
 * - Every fd the addon creates is `O_CLOEXEC`; sockets and eventfds are
 *   non-blocking.
 * - Every fd the addon hands out (created, accepted, received, `dup`ed) is
 *   owned by the thread's environment that got it until `close` (from any
 *   thread) releases it; when a worker thread ends, the fds it still owns are
 *   closed. Close such fds with `close`, never with `fs.closeSync`.
 */
export interface NativeBinding {
  /** `socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)`. Throws. */
  unixSocket(): number;
  /** `bind()` to a filesystem path (≤ 107 bytes). Throws. */
  bind(fd: number, path: string): void;
  /** `listen()`. Throws. */
  listen(fd: number, backlog: number): void;
  /** `accept4(..., SOCK_NONBLOCK | SOCK_CLOEXEC)`: the new fd, or -errno. */
  accept(fd: number): number;
  /** `connect()` to a path: 0, or -errno (`-EAGAIN` when the backlog is full). */
  connect(fd: number, path: string): number;
  /** `socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC)`. Throws. */
  socketPair(): [number, number];
  /**
   * One `sendmsg(MSG_NOSIGNAL | MSG_DONTWAIT)` of `data` (gathered as an iovec
   * list, up to 64 entries) with `fds` as one SCM_RIGHTS cmsg (at most 1024).
   * Returns bytes sent (fds go with the first byte), or -errno. Fds need at
   * least one byte of data (TypeError otherwise), and Linux refuses more than
   * `constants.SCM_MAX_FD` (253) in one message with -EINVAL.
   */
  sendmsg(fd: number, data: readonly Uint8Array[], fds: readonly number[] | null): number;
  /**
   * One `send(MSG_NOSIGNAL | MSG_DONTWAIT)` of `buf[offset, offset + length)`,
   * without fds. Returns bytes sent, or -errno. An `offset`/`length` outside
   * `buf` is a TypeError.
   */
  send(fd: number, buf: Uint8Array, offset: number, length: number): number;
  /**
   * One `recvmsg(MSG_CMSG_CLOEXEC | MSG_DONTWAIT)` into `buf`, accepting up to
   * `meta.length - 2` fds. Returns bytes read (0 = EOF) or -errno. On return
   * `meta[0]` = number of fds received, `meta[1]` = flags (bit 0: MSG_CTRUNC —
   * fds were lost, bit 1: MSG_TRUNC), `meta[2 ..]` = the fds. Fds from every
   * SCM_RIGHTS cmsg are collected; those beyond `meta`'s room are closed and
   * reported as truncation. An empty `buf` is a TypeError (0 would read as EOF).
   */
  recvmsg(fd: number, buf: Uint8Array, meta: Int32Array): number;
  /** `shutdown(fd, how)` (0 RD, 1 WR, 2 RDWR). Returns 0 or -errno. */
  shutdown(fd: number, how: number): number;
  /** `getsockopt(SO_PEERCRED)`. Throws. */
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  /** `getsockopt(SO_ACCEPTCONN)`: 1 for a listening socket, 0 for another socket, or -errno (-ENOTSOCK, -EBADF). */
  listening(fd: number): number;
  /** `close()`. Returns 0 or -errno (never throws, so it is safe in `finally`). */
  close(fd: number): number;
  /** `fcntl(F_DUPFD_CLOEXEC)`: a new fd for the same file, or -errno. */
  dup(fd: number): number;
  /** `read()` into `buf` (not empty: TypeError): bytes, or -errno. */
  read(fd: number, buf: Uint8Array): number;
  /** `write()` of `buf`: bytes, or -errno. */
  write(fd: number, buf: Uint8Array): number;
  /** `fstat()`: size, mode and st_blksize. Throws. */
  fstat(fd: number): { size: number; mode: number; blksize: number };
  /** `memfd_create(name, flags | MFD_CLOEXEC)`. Throws. */
  memfdCreate(name: string, flags: number): number;
  /** `ftruncate()`. Throws. */
  ftruncate(fd: number, size: number): void;
  /**
   * `fcntl(F_GET_SEALS)`: the file's seals (a mask of `constants.F_SEAL_*`),
   * or -errno (`-EINVAL` when the file does not support sealing).
   */
  getSeals(fd: number): number;
  /**
   * `fcntl(F_ADD_SEALS, seals)` with a mask of `constants.F_SEAL_*`: 0, or
   * -errno. -EPERM once `F_SEAL_SEAL` is set (a memfd created without
   * `MFD_ALLOW_SEALING` starts with it); -EBUSY for `F_SEAL_WRITE` while a
   * writable shared mapping exists. `F_SEAL_SHRINK` stops a peer from
   * shrinking a memfd under our mappings (SIGBUS past the new end).
   */
  addSeals(fd: number, seals: number): number;
  /** `eventfd(initval, flags | EFD_CLOEXEC | EFD_NONBLOCK)`. Throws. */
  eventfd(initval: number, flags: number): number;
  /** Reads an eventfd counter: the value (bigint > 0), or -errno as a number. */
  eventfdRead(fd: number): bigint | number;
  /** Adds `value` to an eventfd counter (an 8-byte `write()`): 0 or -errno. */
  eventfdWrite(fd: number, value: bigint): number;
  /**
   * `mmap(NULL, length, prot, MAP_SHARED, fd, offset)` exposed as an external
   * ArrayBuffer. `offset` must be page aligned. Throws.
   */
  mmap(fd: number, offset: number, length: number, prot: number): ArrayBuffer;
  /**
   * Detaches `buffer` (every view becomes length 0) and `munmap`s it. A second
   * call, or a call on a buffer that `mmap` did not create, is a no-op that
   * returns false; otherwise returns true. If never called, GC unmaps.
   */
  munmap(buffer: ArrayBuffer): boolean;
  /**
   * Whether the SIGBUS guard replaced a page of this `mmap` mapping with zeros
   * (its file shrank under it). False when unmapped or not from `mmap`.
   */
  mappingFaulted(buffer: ArrayBuffer): boolean;
  /**
   * A new fd (close-on-exec) of the page holding the SIGBUS guard's fault
   * counter (a u32 at offset 0), installing the guard if needed. Throws.
   */
  sigbusCounterFd(): number;
  /** `msync(MS_SYNC)` over a mapping. Throws. */
  msync(buffer: ArrayBuffer): void;
  /**
   * `ioctl(fd, request, arg)`: `arg` is passed by pointer when it is a
   * Uint8Array, by value when a number. Returns the ioctl's result, or -errno.
   */
  ioctl(fd: number, request: number, arg: Uint8Array | number): number;
  /**
   * `prctl(PR_SET_PDEATHSIG, signal)`: this process receives `signal` when
   * the thread that created it exits (0 cancels). Returns 0 or -errno.
   */
  setParentDeathSignal(signal: number): number;
  /**
   * A `uv_poll_t` watching `fd`. The callback runs through
   * `napi_make_callback` (so exceptions reach `uncaughtException` and promise
   * jobs drain after it) with `(status, events)`: status 0 or -errno,
   * events a mask of `constants.UV_READABLE | UV_WRITABLE | UV_DISCONNECT`.
   * While started, the poller keeps the event loop alive and itself from GC.
   */
  Poller: new (fd: number, callback: (status: number, events: number) => void) => NativePoller;
  /** Constants from the system headers. */
  constants: NativeConstants;
}

/** A started or stopped `uv_poll_t`. */
export interface NativePoller {
  /** (Re)start watching for `events` (UV_READABLE | UV_WRITABLE). */
  start(events: number): void;
  /** Stop watching; the poller can be started again. */
  stop(): void;
  /** Stop and release the handle (does not close the fd). Idempotent. */
  close(): void;
}

/** Numeric constants exported by the addon. */
export interface NativeConstants {
  readonly UV_READABLE: number;
  readonly UV_WRITABLE: number;
  readonly UV_DISCONNECT: number;
  readonly PROT_READ: number;
  readonly PROT_WRITE: number;
  readonly MFD_ALLOW_SEALING: number;
  /** Seal for `addSeals`: no further seals can be added. */
  readonly F_SEAL_SEAL: number;
  /** Seal for `addSeals`: the file cannot shrink (`ftruncate` smaller fails with EPERM). */
  readonly F_SEAL_SHRINK: number;
  /** Seal for `addSeals`: the file cannot grow. */
  readonly F_SEAL_GROW: number;
  /** Seal for `addSeals`: the contents cannot be modified. */
  readonly F_SEAL_WRITE: number;
  readonly EFD_SEMAPHORE: number;
  readonly PAGE_SIZE: number;
  readonly MAX_SEND_FDS: number;
  /**
   * Linux's limit on fds in one SCM_RIGHTS message (253, `SCM_MAX_FD` in the
   * kernel; not in the uapi headers): `sendmsg` with more returns -EINVAL.
   * The most fds a peer can be told it may send in one message.
   */
  readonly SCM_MAX_FD: number;
}
