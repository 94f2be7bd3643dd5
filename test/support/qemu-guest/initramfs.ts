/**
 * A Linux initramfs written from TypeScript: the cpio "newc" format (the
 * kernel's `usr/gen_init_cpio` output, documented in the kernel's
 * Documentation/driver-api/early-userspace/buffer-format.rst), gzip-compressed
 * with node:zlib. Nothing outside Node is needed to build the guest's root.
 */
import { gzipSync } from 'node:zlib';

/** One entry of the archive; paths are relative to the root, without a leading slash. */
export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Uint8Array; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const MAGIC = '070701';
const HEADER_SIZE = 110;

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffff_ffff) throw new RangeError(`cpio field out of range: ${n}`);
  return n.toString(16).padStart(8, '0');
}

const pad4 = (n: number): number => (4 - (n % 4)) % 4;

interface Member {
  name: string;
  mode: number;
  data: Uint8Array;
  rdevMajor: number;
  rdevMinor: number;
}

function member(e: CpioEntry): Member {
  const base = { name: e.path, rdevMajor: 0, rdevMinor: 0 };
  switch (e.kind) {
    case 'dir':
      return { ...base, mode: S_IFDIR | (e.mode ?? 0o755), data: new Uint8Array(0) };
    case 'file':
      return { ...base, mode: S_IFREG | (e.mode ?? 0o644), data: e.data };
    case 'symlink':
      return { ...base, mode: S_IFLNK | 0o777, data: new TextEncoder().encode(e.target) };
    case 'chardev':
      return { ...base, mode: S_IFCHR | (e.mode ?? 0o600), data: new Uint8Array(0), rdevMajor: e.major, rdevMinor: e.minor };
  }
}

function encodeMember(m: Member, ino: number): Buffer[] {
  const name = Buffer.from(`${m.name}\0`, 'utf8');
  const fields = [ino, m.mode, 0, 0, m.mode & S_IFDIR ? 2 : 1, 0, m.data.length, 0, 0, m.rdevMajor, m.rdevMinor, name.length, 0];
  const header = Buffer.from(MAGIC + fields.map(hex8).join(''), 'ascii');
  return [
    header,
    name,
    Buffer.alloc(pad4(HEADER_SIZE + name.length)),
    Buffer.from(m.data.buffer, m.data.byteOffset, m.data.length),
    Buffer.alloc(pad4(m.data.length)),
  ];
}

/**
 * The uncompressed newc archive of `entries`, in order, ended by the
 * `TRAILER!!!` record. Parents must come before their children.
 * @throws RangeError when a size does not fit the format's 32-bit fields.
 */
export function cpioNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  entries.forEach((e, i) => parts.push(...encodeMember(member(e), i + 1)));
  parts.push(...encodeMember({ name: 'TRAILER!!!', mode: 0, data: new Uint8Array(0), rdevMajor: 0, rdevMinor: 0 }, 0));
  return Buffer.concat(parts);
}

/** {@link cpioNewc}, gzip-compressed (what `-initrd` takes). */
export function initramfs(entries: readonly CpioEntry[]): Buffer {
  return gzipSync(cpioNewc(entries), { level: 1 });
}
