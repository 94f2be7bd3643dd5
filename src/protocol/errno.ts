/**
 * Linux errno values as they travel in the vfio-user header's `error_no`. The
 * protocol is defined on Linux, so these are fixed numbers, not the host's.
 */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOSPC: 28,
  EROFS: 30,
  EPIPE: 32,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  EPROTO: 71,
  EBADMSG: 74,
  EOVERFLOW: 75,
  EMSGSIZE: 90,
  ENOTSUP: 95,
  EADDRINUSE: 98,
  ECONNABORTED: 103,
  ECONNRESET: 104,
  ENOTCONN: 107,
  ECONNREFUSED: 111,
  ETIMEDOUT: 110,
  EDQUOT: 122,
  ECANCELED: 125,
} as const;
/** One of the errno values named in {@link Errno}. */
export type Errno = (typeof Errno)[keyof typeof Errno];

const NAMES = new Map<number, string>(Object.entries(Errno).map(([name, value]) => [value, name]));

/** The symbolic name of a Linux errno (`22` → `'EINVAL'`), or `undefined` if unknown. */
export function errnoName(errno: number): string | undefined {
  return NAMES.get(errno);
}

/** Largest errno a reader accepts from a peer; larger values are clamped to EINVAL. */
export const MAX_ERRNO = 4096;
