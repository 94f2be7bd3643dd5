/**
 * What an fd is, as far as a recording cares: its kind (from `fstat` and the
 * `/proc/self/fd` link), size and seals; and reading a memfd's or file's
 * content without moving its file offset (`pread`), for recordings that
 * capture DMA memory.
 */
import { fstatSync, readFileSync, readSync, readlinkSync } from 'node:fs';
import { native } from '../native/addon.js';
import { RecordLimits, type FdKind, type FdMeta } from './record-format.js';

const S_IFMT = 0o170000;
const S_IFSOCK = 0o140000;
const S_IFIFO = 0o010000;
const S_IFREG = 0o100000;

function kindOf(mode: number, link: string): FdKind {
  if (link.startsWith('/memfd:') || link.startsWith('memfd:')) return 'memfd';
  if (link === 'anon_inode:[eventfd]') return 'eventfd';
  const type = mode & S_IFMT;
  if (type === S_IFSOCK) return 'socket';
  if (type === S_IFIFO) return 'pipe';
  if (type === S_IFREG) return 'file';
  return 'other';
}

/** An fd's description and its file's identity (`dev:ino`, '' when unknown). */
export interface DescribedFd {
  meta: Omit<FdMeta, 'content' | 'ident'>;
  file: string;
}

/** Kind, size, seals, link and file identity of `fd` (never throws: an fd that cannot be examined is `other`, size 0). */
export function describeFd(fd: number): DescribedFd {
  let link = '';
  try {
    link = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    // no /proc, or the fd is gone: the kind comes from fstat alone
  }
  let stat: { size: number; mode: number; dev: number; ino: number };
  try {
    stat = fstatSync(fd);
  } catch {
    return { meta: { kind: 'other', size: 0, seals: undefined, link }, file: '' };
  }
  const kind = kindOf(stat.mode, link);
  const size = kind === 'memfd' || kind === 'file' ? Math.min(stat.size, RecordLimits.fdSize) : 0;
  const seals = native.getSeals(fd);
  return { meta: { kind, size, seals: seals >= 0 ? seals : undefined, link }, file: identity(fd, link, stat) };
}

/**
 * What tells one file from another: st_dev/st_ino, except for anonymous
 * inodes, which every eventfd shares — there the kernel's `eventfd-id`
 * (/proc/self/fdinfo, Linux ≥ 6.0), or '' (unknown) without it.
 */
function identity(fd: number, link: string, stat: { dev: number; ino: number }): string {
  if (!link.startsWith('anon_inode:')) return `${stat.dev}:${stat.ino}`;
  if (link !== 'anon_inode:[eventfd]') return '';
  try {
    const id = /^eventfd-id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
    return id === undefined ? '' : `eventfd:${id}`;
  } catch {
    return '';
  }
}

const ZEROS = Buffer.alloc(RecordLimits.chunk);

function allZero(data: Uint8Array): boolean {
  return Buffer.compare(Buffer.from(data.buffer, data.byteOffset, data.length), ZEROS.subarray(0, data.length)) === 0;
}

/**
 * Reads `fd`'s bytes [0, size) in chunks of at most {@link RecordLimits.chunk}
 * (positioned reads: the fd's offset, shared with its other holders, stays put).
 * Chunks of zeros are left out (a recreated memfd starts zeroed). Stops early at the file's end.
 * @throws the `fs` error of a failed read (EIO, EBADF).
 */
export function readContent(fd: number, size: number): { at: number; data: Uint8Array }[] {
  const chunks: { at: number; data: Uint8Array }[] = [];
  for (let at = 0; at < size; ) {
    const want = Math.min(RecordLimits.chunk, size - at);
    const data = new Uint8Array(want);
    const got = readSync(fd, data, 0, want, at);
    if (got <= 0) break;
    if (!allZero(data.subarray(0, got))) chunks.push({ at, data: got === want ? data : data.subarray(0, got) });
    at += got;
  }
  return chunks;
}
