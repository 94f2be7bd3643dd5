/**
 * Persistent definitions, stored as mdevctl stores them: one file per
 * definition, `<configDir>/<parent>/<uuid>` (lower-case hyphenated UUID), its
 * content mdevctl's JSON ({@link formatMdevConfig}). A directory written by
 * mdevctl (`/etc/mdevctl.d`) can be used as is, and the other way round.
 * `<configDir>/scripts.d` holds callouts and notifiers, never definitions.
 *
 * Differences from mdevctl, all on the side of safety:
 * - mdevctl aborts a whole `list -d` on one corrupt file; {@link DefinitionStore.load}
 *   reports each bad entry as a {@link DefinitionProblem} and goes on.
 * - mdevctl rewrites a file in place (`fs::write`); {@link DefinitionStore.write}
 *   writes a temp file in the same directory, fsyncs it, renames it over the
 *   definition and fsyncs the directory, so a crash or power loss leaves the old
 *   definition or the new one, never a half file. A temp file left by a writer
 *   that died is ignored by `load` and removed.
 *
 * All methods are synchronous (a definition is a few hundred bytes; the cost is
 * the fsyncs) so that a load, check and write cannot interleave with another
 * one in the same process.
 */
import {
  closeSync, constants, fchmodSync, fstatSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, statSync,
  unlinkSync, writeSync, chmodSync, type Dirent,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { VfioUserError, InvalidArgumentError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { silentLogger, type Logger } from '../log.js';
import type { DefinitionEntry } from './api.js';
import type { MdevConfig } from './types.js';
import { isCanonicalUuid, isUuid, normalizeUuid } from './uuid.js';
import { formatMdevConfig, MAX_CONFIG_BYTES, parseMdevConfig, validateMdevConfig } from './mdev-config.js';

export { parseMdevConfig, formatMdevConfig, validateMdevConfig } from './mdev-config.js';

/** The sub-directory of the config directory that holds scripts, not definitions. */
export const SCRIPTS_DIR = 'scripts.d';
/** File mode of a definition (mdevctl's files are 0644 under the usual umask). */
export const DEFINITION_MODE = 0o644;
/** Mode of a parent directory created by {@link DefinitionStore.write}. */
export const PARENT_DIR_MODE = 0o755;

const PARENT_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;
/** `.<uuid>.tmp-<pid>-<random>`: hidden, so mdevctl skips it too (not a UUID). */
const TEMP_NAME = /^\.([0-9a-f-]{36})\.tmp-(\d+)-[0-9a-f]+$/;

/** A definition as stored: {@link DefinitionEntry} without the runtime `active` flag. */
export type StoredDefinition = Omit<DefinitionEntry, 'active'>;

/** An entry of the config directory that is not a usable definition, and why. */
export interface DefinitionProblem {
  /** Path of the file or directory. */
  file: string;
  /** One line: what is wrong with it. */
  reason: string;
}

/** What {@link DefinitionStore.load} found. */
export interface LoadResult {
  /** Good definitions, by parent (byte order) then UUID, as mdevctl lists them. */
  definitions: StoredDefinition[];
  /** Entries skipped, each with its reason (each also logged at `warn`). */
  problems: DefinitionProblem[];
}

/**
 * Why `name` cannot be a parent name (and so a directory of the config
 * directory), or undefined if it can: 1–64 of `[A-Za-z0-9_.:-]`, not `.`/`..`
 * and not {@link SCRIPTS_DIR}. Never throws.
 */
export function parentNameProblem(name: unknown): string | undefined {
  if (typeof name !== 'string' || !PARENT_NAME.test(name) || name === '.' || name === '..') {
    return `invalid parent name ${JSON.stringify(name)} (1-64 of A-Z a-z 0-9 _ . : -)`;
  }
  if (name === SCRIPTS_DIR) return `'${SCRIPTS_DIR}' is reserved for callout and notifier scripts`;
  return undefined;
}

function checkParent(parent: string): void {
  const problem = parentNameProblem(parent);
  if (problem !== undefined) throw new InvalidArgumentError(problem);
}

/** The errno of a Node fs error (one of {@link Errno}, e.g. EROFS, EISDIR, EDQUOT; codes not in that table map to EIO). */
function errnoOf(err: unknown): number {
  const code = (err as NodeJS.ErrnoException).code;
  const errno = code === undefined ? undefined : (Errno as Record<string, number>)[code];
  return errno ?? Errno.EIO;
}

function fsError(action: string, path: string, err: unknown): VfioUserError {
  const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
  return new VfioUserError(`${action} ${path}: ${code}`, { errno: errnoOf(err), cause: err });
}

function syncDir(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function pidAlive(pid: number): boolean {
  if (pid === process.pid || !(pid > 0)) return false; // this process's writes are synchronous: none is in flight
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Persistent definitions under one config directory (see the module comment). */
export class DefinitionStore {
  /** The config directory (mdevctl's `/etc/mdevctl.d`): `<configDir>/<parent>/<uuid>`. */
  readonly configDir: string;
  private readonly logger: Logger;

  /** Nothing is read or created until a method is called. Never throws. */
  constructor(configDir: string, logger: Logger = silentLogger()) {
    this.configDir = configDir;
    this.logger = logger;
  }

  /** The file of (parent, uuid). @throws {InvalidArgumentError} EINVAL: bad parent name or UUID. */
  pathOf(parent: string, uuid: string): string {
    checkParent(parent);
    return join(this.configDir, parent, normalizeUuid(uuid));
  }

  /**
   * Reads every definition. Never fails because of one entry: corrupt JSON,
   * a bad config, an unreadable or oversized file, a name that is not a
   * lower-case UUID, a sub-directory where a file belongs, a file where a parent
   * directory belongs, a file directly in `scripts.d`, an invalid parent
   * directory name — each becomes a {@link DefinitionProblem} (logged at warn)
   * and is skipped. Temp files of a writer that is gone are removed. A missing
   * config directory means no definitions (mdevctl#56 made that an error).
   *
   * @throws never: an unreadable config directory is itself a problem.
   */
  load(): LoadResult {
    const result: LoadResult = { definitions: [], problems: [] };
    const top = this.readDir(this.configDir, result, true);
    for (const entry of top) {
      const path = join(this.configDir, entry.name);
      if (entry.name === SCRIPTS_DIR) {
        this.checkScriptsDir(path, result);
        continue;
      }
      const isDir = this.isDirectory(entry, path, result);
      if (isDir !== true) {
        if (isDir === false) this.problem(result, path, 'not a directory: definitions go in <config-dir>/<parent>/<uuid>');
        continue;
      }
      const problem = parentNameProblem(entry.name);
      if (problem !== undefined) {
        this.problem(result, path, `${problem}; directory skipped`);
        continue;
      }
      this.loadParent(entry.name, path, result);
    }
    result.definitions.sort((a, b) => compareBytes(a.parent, b.parent) || compareBytes(a.uuid, b.uuid));
    return result;
  }

  /**
   * The definition of (parent, uuid), or undefined if there is none.
   *
   * @throws {InvalidArgumentError} EINVAL: bad parent name or UUID, or the file
   *   holds no valid definition (the message names the file and the problem).
   * @throws {VfioUserError} EACCES, or EIO for any other system error (its code ends the message).
   */
  read(parent: string, uuid: string): MdevConfig | undefined {
    const path = this.pathOf(parent, uuid);
    let text: string;
    try {
      text = readDefinitionFile(path);
    } catch (err) {
      if (err instanceof VfioUserError) throw err;
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw fsError('cannot read', path, err);
    }
    return parseMdevConfig(text, path);
  }

  /**
   * Stores the definition of (parent, uuid) atomically, replacing any previous
   * one: the JSON goes to a temp file in the parent's directory (created 0755
   * if missing), which is fsynced, chmod 0644, renamed over `<uuid>`, and the
   * directory fsynced. On any failure the temp file is removed and the old
   * definition, if any, is left as it was.
   *
   * @returns the definition's path.
   * @throws {InvalidArgumentError} EINVAL: bad parent name, UUID or config.
   * @throws {VfioUserError} EACCES, ENOSPC, EEXIST (a file where the parent directory goes), ENAMETOOLONG, or
   *   EROFS, EISDIR, ENOTDIR, ENOSPC, EDQUOT as the system says, EIO for any other system error (its code ends the message): nothing changed.
   */
  write(parent: string, uuid: string, config: MdevConfig): string {
    const path = this.pathOf(parent, uuid);
    const text = formatMdevConfig(validateMdevConfig(config, `definition ${parent}/${uuid}`));
    const dir = join(this.configDir, parent);
    this.ensureParentDir(dir);
    const temp = join(dir, `.${normalizeUuid(uuid)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      const fd = openSync(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, DEFINITION_MODE);
      try {
        writeAll(fd, Buffer.from(text, 'utf8'));
        fchmodSync(fd, DEFINITION_MODE);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(temp, path);
    } catch (err) {
      try {
        unlinkSync(temp);
      } catch {
        // never created, or already renamed
      }
      throw fsError('cannot write', path, err);
    }
    this.syncDirOrThrow(dir);
    return path;
  }

  /**
   * Deletes the definition of (parent, uuid); the parent's directory stays (as
   * mdevctl leaves it).
   *
   * @returns false if there was none.
   * @throws {InvalidArgumentError} EINVAL: bad parent name or UUID.
   * @throws {VfioUserError} EACCES, EISDIR (a directory there), EROFS, or EIO for any other system error (its code ends the message).
   */
  remove(parent: string, uuid: string): boolean {
    const path = this.pathOf(parent, uuid);
    try {
      if (statSync(path).isDirectory()) throw Object.assign(new Error('is a directory'), { code: 'EISDIR' });
      unlinkSync(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw fsError('cannot remove', path, err);
    }
    this.syncDirOrThrow(join(this.configDir, parent));
    return true;
  }

  /**
   * The parents that have a definition file for `uuid`, in byte order (a UUID
   * may be defined under several parents, as in mdevctl). Files are not parsed.
   *
   * @throws {InvalidArgumentError} EINVAL: `uuid` is not a UUID.
   */
  parentsOf(uuid: string): string[] {
    const name = normalizeUuid(uuid);
    const parents: string[] = [];
    for (const entry of this.readDir(this.configDir, undefined, true)) {
      if (parentNameProblem(entry.name) !== undefined) continue;
      try {
        if (statSync(join(this.configDir, entry.name, name)).isFile()) parents.push(entry.name);
      } catch {
        // no definition under this parent (or unreadable: load() reports those)
      }
    }
    return parents.sort(compareBytes);
  }

  private loadParent(parent: string, dir: string, result: LoadResult): void {
    for (const entry of this.readDir(dir, result, false)) {
      const path = join(dir, entry.name);
      const temp = TEMP_NAME.exec(entry.name);
      if (temp !== null) {
        this.removeStaleTemp(path, Number(temp[2]));
        continue;
      }
      if (!isCanonicalUuid(entry.name)) {
        const hint = isUuid(entry.name) ? `; rename it to ${normalizeUuid(entry.name)}` : '';
        this.problem(result, path, `file name is not a lower-case UUID (8-4-4-4-12)${hint}; skipped`);
        continue;
      }
      const isDir = this.isDirectory(entry, path, result);
      if (isDir !== false) {
        if (isDir) this.problem(result, path, 'a directory where a definition file belongs; skipped');
        continue;
      }
      try {
        const config = this.read(parent, entry.name);
        if (config !== undefined) result.definitions.push({ uuid: entry.name, parent, config });
      } catch (err) {
        this.problem(result, path, `${(err as Error).message.replace(`${path}: `, '')}; skipped`);
      }
    }
  }

  private checkScriptsDir(path: string, result: LoadResult): void {
    for (const entry of this.readDir(path, undefined, false)) {
      const child = join(path, entry.name);
      if (this.isDirectory(entry, child, result) === false) {
        this.problem(result, child, `a file in ${SCRIPTS_DIR}/ (scripts go in ${SCRIPTS_DIR}/callouts/ or ${SCRIPTS_DIR}/notifiers/; never a definition); ignored`);
      }
    }
  }

  private removeStaleTemp(path: string, pid: number): void {
    if (pidAlive(pid)) return;
    try {
      unlinkSync(path);
      this.logger.info({ file: path }, 'removed the temp file of an interrupted definition write');
    } catch (err) {
      this.logger.warn({ file: path, err }, 'cannot remove the temp file of an interrupted definition write');
    }
  }

  private readDir(dir: string, result: LoadResult | undefined, missingOk: boolean): Dirent[] {
    try {
      return readdirSync(dir, { withFileTypes: true });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (!(missingOk && code === 'ENOENT') && result !== undefined) this.problem(result, dir, `cannot read the directory: ${code ?? 'EIO'}`);
      return [];
    }
  }

  /** Whether the entry is a directory (following a symlink); undefined when a link cannot be followed (a problem, reported). */
  private isDirectory(entry: Dirent, path: string, result: LoadResult): boolean | undefined {
    if (!entry.isSymbolicLink()) return entry.isDirectory();
    try {
      return statSync(path).isDirectory();
    } catch (err) {
      this.problem(result, path, `cannot follow the link: ${(err as NodeJS.ErrnoException).code ?? 'EIO'}; skipped`);
      return undefined;
    }
  }

  private ensureParentDir(dir: string): void {
    try {
      const created = mkdirSync(dir, { recursive: true, mode: PARENT_DIR_MODE });
      if (created === undefined) {
        if (!statSync(dir).isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
        return;
      }
      chmodSync(dir, PARENT_DIR_MODE);
      // the new directories' entries must be durable too
      this.syncDirOrThrow(dirname(created));
      if (dirname(created) !== this.configDir) this.syncDirOrThrow(this.configDir);
    } catch (err) {
      if (err instanceof VfioUserError) throw err;
      throw fsError('cannot create', dir, err);
    }
  }

  private syncDirOrThrow(dir: string): void {
    try {
      syncDir(dir);
    } catch (err) {
      throw fsError('cannot fsync the directory', dir, err);
    }
  }

  private problem(result: LoadResult, file: string, reason: string): void {
    result.problems.push({ file, reason });
    this.logger.warn({ event: 'definition-skipped', file, reason }, 'definition skipped');
  }
}

/** Refuses invalid UTF-8 as mdevctl's `read_to_string` does (instead of reading U+FFFD into a value). */
const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** A definition file's text: opened non-blocking (a FIFO never stalls the host), a regular file, bounded. */
function readDefinitionFile(path: string): string {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) {
      throw new InvalidArgumentError(`${path}: ${stat.isDirectory() ? 'a directory' : 'not a regular file'}, not a definition`);
    }
    if (stat.size > MAX_CONFIG_BYTES) throw new InvalidArgumentError(`${path}: larger than ${MAX_CONFIG_BYTES} bytes; not a definition`);
    try {
      return UTF8.decode(readFileSync(fd));
    } catch (err) {
      if (err instanceof TypeError) throw new InvalidArgumentError(`${path}: not UTF-8 text, not a definition`);
      throw err;
    }
  } finally {
    closeSync(fd);
  }
}

function writeAll(fd: number, data: Buffer): void {
  let offset = 0;
  while (offset < data.length) offset += writeSync(fd, data, offset, data.length - offset);
}

/** Byte-order comparison of strings, as Rust's `String` ordering (mdevctl's BTreeMap). */
export function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}
