/**
 * Loads the native addon and wraps its set-up calls in helpers that throw
 * {@link SystemError}. Hot-path calls (`sendmsg`, `recvmsg`, `read`, ...)
 * stay raw on {@link native}: they return `-errno` instead of throwing; pass
 * their result to {@link throwIfErrno} where an error is fatal.
 *
 * Two hazards every user of this module must respect:
 * - Close a {@link NativePoller} before closing the fd it watches. libuv
 *   aborts the process if it finds a watched fd closed, and refuses
 *   (`EEXIST`) a second poller on an fd number it still watches.
 * - A mapping is live memory: writing to a `PROT_READ`-only mapping kills the
 *   process with SIGSEGV. Touching it past the end of the file (the file
 *   shrank, or the mapping was longer than the file) raises SIGBUS, which the
 *   addon's SIGBUS guard absorbs for every mapping made by {@link mapFd}: the
 *   faulting page becomes zeros (writes to it are lost), the mapping is marked
 *   (see {@link mappingFaulted}) and {@link sigbusFaults} counts up. Callers
 *   that map a peer's file must check those and fail the access; files we
 *   create and hand out are sealed instead ({@link createSealedMemfd}).
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { SystemError } from '../errors.js';
import type { NativeBinding } from './types.js';

export type { NativeBinding, NativeConstants, NativePoller } from './types.js';

/** The package's root directory: this file is `dist/src/native/addon.js` once compiled. */
const PACKAGE_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** How to get an addon when none loads: one line, whatever installed the package. */
const FIX =
  'compile it with `npm rebuild vfio-user` (pnpm: `npx node-gyp rebuild -C node_modules/vfio-user`; ' +
  'in a clone: `npm run build`), which needs python3, make and a C compiler';

/** node-gyp-build's resolver: the first of build/Release, build/Debug, prebuilds/<platform>-<arch>/. */
interface NodeGypBuild {
  path(dir: string): string;
}

/** The first line of an error's message. */
function firstLine(error: unknown): string {
  return String(error instanceof Error ? error.message : error).split('\n')[0] ?? '';
}

/**
 * Loads the addon the way node-gyp-build resolves it (its install step built
 * build/Release only when no prebuild loads). Fails with one line saying what
 * is missing and how to get it.
 */
function load(): NativeBinding {
  const require = createRequire(import.meta.url);
  const nodeGypBuild = require('node-gyp-build') as NodeGypBuild;
  let file: string;
  try {
    file = nodeGypBuild.path(PACKAGE_ROOT);
  } catch (error) {
    const target = `${process.platform}-${process.arch}`;
    throw new Error(
      `vfio-user: no native addon for ${target} (neither a prebuilds/${target}/ build for this libc nor build/Release); ${FIX}`,
      { cause: error },
    );
  }
  try {
    return require(file) as NativeBinding;
  } catch (error) {
    throw new Error(`vfio-user: the native addon ${file} does not load (${firstLine(error)}); ${FIX}`, { cause: error });
  }
}

/**
 * The raw addon. Hot-path calls return `-errno`; set-up calls throw a plain `Error`.
 * A copy of the exports object, which Node-API leaves in dictionary mode: every
 * `native.x` load would miss V8's inline caches.
 */
export const native: NativeBinding = { ...load() };

/** What the addon attaches to the errors it throws. */
interface NativeError extends Error {
  errno: number;
  syscall: string;
}

function isNativeError(error: unknown): error is NativeError {
  return (
    error instanceof Error &&
    typeof (error as Partial<NativeError>).errno === 'number' &&
    typeof (error as Partial<NativeError>).syscall === 'string'
  );
}

/**
 * Runs a set-up call of the addon, turning the `Error` it throws for a failed
 * syscall into a {@link SystemError} (with the original as `cause`).
 * `TypeError`s for bad arguments pass through unchanged.
 */
export function callNative<T>(call: () => T, detail = ''): T {
  try {
    return call();
  } catch (error) {
    if (isNativeError(error)) throw new SystemError(error.syscall, error.errno, detail, { cause: error });
    throw error;
  }
}

/**
 * Returns `result` unless it is negative, in which case it is `-errno` and a
 * {@link SystemError} for `syscall` is thrown.
 *
 * @throws {SystemError} with `errno = -result` when `result < 0`.
 */
export function throwIfErrno(result: number, syscall: string, detail = ''): number {
  if (result < 0) throw new SystemError(syscall, -result, detail);
  return result;
}

/**
 * A connected pair of non-blocking, close-on-exec UNIX stream sockets.
 *
 * @throws {SystemError} `EMFILE`/`ENFILE` when out of fds.
 */
export function socketPair(): [number, number] {
  return callNative(() => native.socketPair());
}

/**
 * Creates an anonymous memory file (`memfd_create`) of `size` bytes.
 * `flags` may include `native.constants.MFD_ALLOW_SEALING`.
 *
 * @throws {SystemError} `EMFILE` when out of fds, `EINVAL` for bad flags,
 *   `EFBIG`/`ENOSPC`/`ENOMEM` when `size` cannot be allocated. The fd is
 *   closed if sizing fails.
 */
export function memfdCreate(name: string, size: number, flags = 0): number {
  const fd = callNative(() => native.memfdCreate(name, flags), name);
  try {
    callNative(() => native.ftruncate(fd, size), name);
  } catch (error) {
    native.close(fd);
    throw error;
  }
  return fd;
}

/** Seals that make a memfd's size fixed for good: no shrink, no grow, no new seals. */
const FIXED_SIZE_SEALS = native.constants.F_SEAL_SHRINK | native.constants.F_SEAL_GROW | native.constants.F_SEAL_SEAL;

/**
 * Creates a memfd of `size` bytes whose size nobody can change: sealed with
 * `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` (as QEMU's memory-backend-memfd
 * does by default). Hand this, not a plain memfd, to a peer that maps it: a
 * peer's `ftruncate` then fails with EPERM instead of making our own accesses
 * fault with SIGBUS, and servers that map only sealed fds accept it.
 *
 * @throws {SystemError} as {@link memfdCreate}; `EPERM`/`EINVAL` if sealing
 *   fails (not expected for a fresh memfd). The fd is closed on any failure.
 */
export function createSealedMemfd(name: string, size: number): number {
  const fd = memfdCreate(name, size, native.constants.MFD_ALLOW_SEALING);
  try {
    throwIfErrno(native.addSeals(fd, FIXED_SIZE_SEALS), 'fcntl', `${name}: F_ADD_SEALS`);
  } catch (error) {
    native.close(fd);
    throw error;
  }
  return fd;
}

let faultCounter: Uint32Array | undefined;

/**
 * How many SIGBUS faults the addon's guard has absorbed in this process so
 * far (a plain memory load after the first call). When it changes, ask
 * {@link mappingFaulted} which of your mappings faulted.
 *
 * @throws {SystemError} on the first call only: `EMFILE`/`ENOMEM` when the
 *   counter page cannot be created or mapped.
 */
export function sigbusFaults(): number {
  if (faultCounter === undefined) {
    const fd = callNative(() => native.sigbusCounterFd());
    try {
      faultCounter = new Uint32Array(mapFd(fd, 0, native.constants.PAGE_SIZE, false), 0, 1);
    } finally {
      native.close(fd);
    }
  }
  return faultCounter[0]!;
}

/**
 * Whether the SIGBUS guard repaired a fault in `buffer` (a {@link mapFd}
 * mapping): its file shrank under it and at least one page now reads as zeros
 * and drops writes. False for an unmapped buffer or one not from {@link mapFd}.
 */
export function mappingFaulted(buffer: ArrayBuffer): boolean {
  return native.mappingFaulted(buffer);
}

/**
 * Maps `length` bytes of `fd` from `offset` (`MAP_SHARED`) as an ArrayBuffer.
 * Release it with {@link unmap}; if you do not, GC unmaps it.
 *
 * @param offset - must be a multiple of `native.constants.PAGE_SIZE`.
 * @param writable - `PROT_READ | PROT_WRITE` when true, else `PROT_READ`
 *   (then any write through a view crashes the process with SIGSEGV).
 * @throws {SystemError} `EINVAL` for a misaligned offset, `EACCES` when the fd
 *   is not open for the access asked, `ENODEV` when it cannot be mapped,
 *   `ENOMEM` when out of address space or when 65536 mappings are
 *   alive (the SIGBUS guard's limit); `EBADF` for a bad fd.
 * @throws {TypeError} when `length` is 0.
 */
export function mapFd(fd: number, offset: number, length: number, writable: boolean): ArrayBuffer {
  const { PROT_READ, PROT_WRITE } = native.constants;
  const prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  return callNative(() => native.mmap(fd, offset, length, prot));
}

/**
 * Unmaps a buffer from {@link mapFd} right away: every view of it becomes
 * empty (length 0, reads give `undefined`). Returns false, doing nothing, if
 * it was already unmapped or did not come from {@link mapFd}.
 *
 * Never unmap a buffer that an asynchronous operation (a pending `fs.write`,
 * a worker) is still reading: native code holding its raw pointer would fault.
 */
export function unmap(buffer: ArrayBuffer): boolean {
  return native.munmap(buffer);
}

/**
 * A non-blocking, close-on-exec eventfd.
 *
 * @param flags - 0 or `native.constants.EFD_SEMAPHORE`.
 * @throws {SystemError} `EMFILE`/`ENFILE` when out of fds, `EINVAL` for bad flags.
 */
export function createEventFd(initval = 0, flags = 0): number {
  return callNative(() => native.eventfd(initval, flags));
}

/**
 * Closes `fd`. An `EINTR` is ignored (Linux has released the fd anyway).
 * Use `native.close` where an error must not throw (cleanup paths).
 *
 * @throws {SystemError} `EBADF` when `fd` is not open, `EIO` on a write-back error.
 */
export function closeFd(fd: number): void {
  const result = native.close(fd);
  if (result !== -4) throwIfErrno(result, 'close');
}

/**
 * The process at the other end of a connected UNIX socket (`SO_PEERCRED`):
 * as it was when it called `connect()` or `socketpair()`.
 *
 * @throws {SystemError} `ENOTSOCK` when `fd` is not a socket, `EBADF` for a bad fd.
 */
export function peerCredentials(fd: number): { pid: number; uid: number; gid: number } {
  return callNative(() => native.peerCred(fd));
}
