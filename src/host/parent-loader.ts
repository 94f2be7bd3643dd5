/**
 * Finds and loads a parent module (`vfio-user host --parent SPEC`): a
 * built-in sample parent by name ({@link BUILTIN_PARENTS}), or an ES module —
 * a path (`./my-parent.js`, `/abs/p.mjs`), a `file:` URL, or a package name.
 * Its default export, else its export named `parent`, must be an
 * {@link MdevParent}; it is validated whole at load (`parent-validate.ts`).
 *
 * The result carries the module's URL: the host's main thread loads a parent
 * for its metadata, and each instance's worker imports the same URL to build
 * the device (`loadParent(moduleUrl)` works there too, from any directory).
 * Resolution copies `src/cli/device-module.ts`'s (the host is below the CLI).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isAbsolute, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { validateParent } from './parent-validate.js';
import type { MdevParent } from './types.js';

export { findType, splitTypeId, typeId, validateParent } from './parent-validate.js';

/**
 * The built-in sample parents: name → URL of the module whose default export
 * is the parent (`src/host/parents/`).
 */
export const BUILTIN_PARENTS: Readonly<Record<string, string>> = Object.freeze({
  'memory-pool': new URL('./parents/memory-pool.js', import.meta.url).href,
  'gpio-bank': new URL('./parents/gpio-bank.js', import.meta.url).href,
});

/** A parent ready to use, and where it came from. */
export interface LoadedParent {
  parent: MdevParent;
  /** The URL a worker imports to get the same parent (`file:` URL, or what `import()` resolved). */
  moduleUrl: string;
  /** Whether it is one of {@link BUILTIN_PARENTS}. */
  builtin: boolean;
}

/** Options of {@link loadParent}. */
export interface LoadParentOptions {
  /** Where relative paths and package names resolve from (default: the current directory). */
  cwd?: string;
}

/** The export names looked at, in order. */
const EXPORT_NAMES = ['default', 'parent'] as const;

/**
 * Loads and validates the parent `spec` names.
 * @param spec a built-in parent's name, a module path, a `file:` URL or a package name.
 * @throws {VfioUserError} ENOENT for a module or package that does not exist; EINVAL for a module that
 *   does not load (syntax error, throws at import, TypeScript on a Node that does not run it), that
 *   exports no parent, or whose parent is malformed (one line naming the module and the problem).
 */
export async function loadParent(spec: string, options: LoadParentOptions = {}): Promise<LoadedParent> {
  const builtinUrl = Object.hasOwn(BUILTIN_PARENTS, spec) ? BUILTIN_PARENTS[spec] : undefined;
  const moduleUrl = builtinUrl ?? resolveSpec(spec, options.cwd ?? process.cwd());
  const builtin = Object.values(BUILTIN_PARENTS).includes(moduleUrl);
  const namespace = await importModule(spec, moduleUrl);
  const parent = validateParent(parentExport(spec, namespace), spec);
  if (builtinUrl !== undefined && parent.name !== spec) {
    throw new VfioUserError(`built-in parent ${spec}: its module declares the name ${parent.name}`, { errno: Errno.EINVAL });
  }
  return { parent, moduleUrl, builtin };
}

/** Whether `spec` names a file rather than a package. */
function isPathSpec(spec: string, cwd: string): boolean {
  return spec.startsWith('.') || isAbsolute(spec) || /\.(m?js|cjs|m?ts)$/.test(spec) || existsSync(join(cwd, spec));
}

function notFound(spec: string, detail: string): VfioUserError {
  const builtins = Object.keys(BUILTIN_PARENTS).join(', ');
  return new VfioUserError(`cannot load parent ${spec}: ${detail}; expected a built-in parent (${builtins}), a module path or a package name`, { errno: Errno.ENOENT });
}

/** The URL to import for `spec`. @throws {VfioUserError} ENOENT when the file or package is not found. */
function resolveSpec(spec: string, cwd: string): string {
  if (spec.startsWith('file:')) return spec;
  if (isPathSpec(spec, cwd)) {
    const file = resolve(cwd, spec);
    if (!existsSync(file)) throw notFound(spec, `no such file (${file})`);
    return pathToFileURL(file).href;
  }
  try {
    // A package installed where the user works (its node_modules), as `node` resolves it from there.
    return pathToFileURL(createRequire(join(cwd, 'noop.js')).resolve(spec)).href;
  } catch {
    // An ESM-only package, or one installed next to vfio-user: resolved from here, as a worker in this directory would.
    try {
      return import.meta.resolve(spec);
    } catch {
      throw notFound(spec, `no such file or package (from ${cwd})`);
    }
  }
}

async function importModule(spec: string, url: string): Promise<Record<string, unknown>> {
  try {
    return (await import(url)) as Record<string, unknown>;
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    const reason = (e instanceof Error ? e.message : String(e)).split('\n')[0] ?? '';
    if (e.code === 'ERR_UNKNOWN_FILE_EXTENSION') {
      throw new VfioUserError(`cannot load parent ${spec}: Node ${process.version} does not run TypeScript: compile it (tsc) and load the .js`, { errno: Errno.EINVAL, cause: error });
    }
    if (e.code === 'ERR_MODULE_NOT_FOUND' && url.startsWith('file:') && !existsSync(new URL(url))) {
      throw new VfioUserError(`cannot load parent ${spec}: no such file (${url})`, { errno: Errno.ENOENT, cause: error });
    }
    throw new VfioUserError(`cannot load parent ${spec}: ${e instanceof Error ? `${e.name}: ` : ''}${reason}`, { errno: Errno.EINVAL, cause: error });
  }
}

/** The module's parent export. @throws {VfioUserError} EINVAL when it has neither a default export nor `parent`. */
function parentExport(spec: string, namespace: Record<string, unknown>): unknown {
  const name = EXPORT_NAMES.find((n) => namespace[n] !== undefined);
  if (name !== undefined) return namespace[name];
  const found = Object.keys(namespace);
  throw new VfioUserError(`parent ${spec} exports no parent: expected a default export (or an export named parent) { name, resources?, types }; it exports ${found.length === 0 ? 'nothing' : found.join(', ')}`, { errno: Errno.EINVAL });
}
