/**
 * What booting a Linux guest needs, found on this machine or the reason the
 * guest test skips: a qemu-system-x86_64 with vfio-user-pci (`VFIO_USER_QEMU`),
 * a bzImage (`VFIO_USER_GUEST_KERNEL`, e.g. Debian's /boot/vmlinuz-*), a
 * static busybox (`VFIO_USER_GUEST_BUSYBOX`, default /bin/busybox) and the
 * kernel modules the guest loads, taken from /lib/modules/<version of that
 * kernel> (`VFIO_USER_GUEST_MODULES` overrides the directory).
 */
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, openSync, readFileSync, readSync, closeSync } from 'node:fs';
import { basename, join } from 'node:path';
import { gunzipSync } from 'node:zlib';

/** A kernel module to put in the initramfs, decompressed. */
export interface GuestModule {
  name: string;
  data: Uint8Array;
}

/** Everything the guest test needs. */
export interface GuestKit {
  qemu: string;
  kernel: string;
  /** The kernel's release (`uname -r`), read from the bzImage header. */
  release: string;
  busybox: string;
  /** Modules to insmod in this order (dependencies first); built-in ones are left out. */
  modules: GuestModule[];
  /** Per feature asked for: why one of its modules is unavailable (the checks that need it skip); empty if all are there. */
  missing: Record<string, string[]>;
  /** A C compiler that links statically (`gcc -static`), or why there is none. */
  cc: { path: string; skip: false } | { path: undefined; skip: string };
}

/** Reads the release string a bzImage carries (boot protocol ≥ 2.00: `kernel_version` at 0x20e). */
export function kernelRelease(path: string): string | undefined {
  const fd = openSync(path, 'r');
  try {
    const head = Buffer.alloc(0x210);
    if (readSync(fd, head, 0, head.length, 0) < head.length || head.toString('latin1', 0x202, 0x206) !== 'HdrS') return undefined;
    const text = Buffer.alloc(128);
    readSync(fd, text, 0, text.length, head.readUInt16LE(0x20e) + 0x200);
    const release = text.toString('latin1').split(/[\s\0]/)[0];
    return release && /^\d+\.\d+/.test(release) ? release : undefined;
  } finally {
    closeSync(fd);
  }
}

/** Whether an ELF64 file asks for a program interpreter (PT_INTERP): a dynamically linked executable. */
export function hasInterpreter(path: string): boolean {
  const elf = readFileSync(path);
  if (elf.length < 64 || elf.toString('latin1', 0, 4) !== '\x7fELF' || elf[4] !== 2) return true;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const size = elf.readUInt16LE(0x36);
  for (let i = 0; i < elf.readUInt16LE(0x38); i++) {
    const at = phoff + i * size;
    if (at + 4 <= elf.length && elf.readUInt32LE(at) === 3) return true;
  }
  return false;
}

function executable(path: string | undefined): boolean {
  if (!path) return false;
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

const norm = (name: string): string => name.replace(/-/g, '_');
const moduleName = (path: string): string => norm(basename(path).replace(/\.ko(\.(xz|gz|zst))?$/, ''));

/** Reads a module file, decompressing .ko.gz (zlib), .ko.xz (busybox xzcat) and .ko.zst (zstd, if installed). */
function moduleBytes(path: string, busybox: string): Uint8Array | string {
  if (path.endsWith('.ko')) return readFileSync(path);
  if (path.endsWith('.ko.gz')) return gunzipSync(readFileSync(path));
  const [file, args] = path.endsWith('.ko.xz') ? [busybox, ['xzcat', path]] : ['zstd', ['-dc', path]];
  const r = spawnSync(file, args, { maxBuffer: 64 << 20 });
  return r.status === 0 ? r.stdout : `cannot decompress ${path} (${file}: ${r.error?.message ?? r.stderr.toString().trim()})`;
}

/**
 * Resolves `wanted` (module names) and their dependencies in `dir` (modules.dep,
 * modules.builtin): what to load, in order, and why a module is missing.
 */
export function resolveModules(dir: string, wanted: readonly string[], busybox: string): { modules: GuestModule[]; missing: string[] } {
  const builtin = new Set(
    existsSync(join(dir, 'modules.builtin')) ? readFileSync(join(dir, 'modules.builtin'), 'utf8').split('\n').filter(Boolean).map(moduleName) : [],
  );
  const deps = new Map<string, { path: string; deps: string[] }>();
  if (existsSync(join(dir, 'modules.dep'))) {
    for (const line of readFileSync(join(dir, 'modules.dep'), 'utf8').split('\n')) {
      const [path, rest] = line.split(':');
      if (path && rest !== undefined) deps.set(moduleName(path), { path, deps: rest.trim().split(/\s+/).filter(Boolean).map(moduleName) });
    }
  }
  const modules: GuestModule[] = [];
  const missing: string[] = [];
  const loaded = new Set<string>();
  const add = (name: string): boolean => {
    if (builtin.has(name) || loaded.has(name)) return true;
    const entry = deps.get(name);
    if (!entry) {
      missing.push(`${name}: neither built into the kernel nor in ${dir}/modules.dep`);
      return false;
    }
    // modules.dep lists the direct dependency first: load them in reverse.
    if (![...entry.deps].reverse().every(add)) return false;
    const data = moduleBytes(join(dir, entry.path), busybox);
    if (typeof data === 'string') {
      missing.push(`${name}: ${data}`);
      return false;
    }
    modules.push({ name, data });
    loaded.add(name);
    return true;
  };
  wanted.forEach((w) => add(norm(w)));
  return { modules, missing };
}

/** `gcc`, if it can link a static program (glibc's libc.a installed). */
function staticCc(): GuestKit['cc'] {
  const r = spawnSync('gcc', ['-static', '-x', 'c', '-o', '/dev/null', '-'], { input: 'int main(void) { return 0; }\n', encoding: 'utf8' });
  if (r.error) return { path: undefined, skip: `no gcc (${r.error.message}); the guest's vfio-pci check needs a static C program` };
  if (r.status !== 0) return { path: undefined, skip: `gcc -static fails (${r.stderr.trim().split('\n')[0] ?? ''}); install libc6-dev` };
  return { path: 'gcc', skip: false };
}

/**
 * The kit, or why the guest test skips. `features` names the modules each
 * optional check needs; a feature whose modules are missing is reported in
 * {@link GuestKit.missing}, the others are loaded.
 */
export function guestKit(features: Record<string, readonly string[]>): { kit: GuestKit | undefined; skip: string | false } {
  const qemu = process.env['VFIO_USER_QEMU'];
  const kernel = process.env['VFIO_USER_GUEST_KERNEL'];
  const busybox = process.env['VFIO_USER_GUEST_BUSYBOX'] ?? '/bin/busybox';
  const no = (skip: string): { kit: undefined; skip: string } => ({ kit: undefined, skip });
  if (!qemu) return no('VFIO_USER_QEMU is not set (path to a qemu-system-x86_64 with vfio-user-pci; docs/interop.md)');
  if (!executable(qemu)) return no(`VFIO_USER_QEMU=${qemu} is not an executable file`);
  if (!kernel) return no('VFIO_USER_GUEST_KERNEL is not set (a bzImage, e.g. /boot/vmlinuz-* of Debian linux-image-amd64; docs/interop.md)');
  if (!existsSync(kernel)) return no(`VFIO_USER_GUEST_KERNEL=${kernel} does not exist`);
  const release = kernelRelease(kernel);
  if (!release) return no(`VFIO_USER_GUEST_KERNEL=${kernel} is not a bzImage with a version string`);
  if (!executable(busybox)) return no(`no busybox at ${busybox} (install busybox-static or set VFIO_USER_GUEST_BUSYBOX)`);
  if (hasInterpreter(busybox)) return no(`${busybox} is not a statically linked x86-64 ELF (the guest has no libc); install busybox-static or set VFIO_USER_GUEST_BUSYBOX`);
  const dir = process.env['VFIO_USER_GUEST_MODULES'] ?? join('/lib/modules', release);
  const modules: GuestModule[] = [];
  const missing: Record<string, string[]> = {};
  for (const [feature, wanted] of Object.entries(features)) {
    const found = resolveModules(dir, wanted, busybox);
    missing[feature] = found.missing;
    if (found.missing.length > 0) continue;
    for (const m of found.modules) if (!modules.some((n) => n.name === m.name)) modules.push(m);
  }
  return { kit: { qemu, kernel, release, busybox, modules, missing, cc: staticCc() }, skip: false };
}
