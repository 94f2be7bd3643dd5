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
 * Resolution is `vfio-user serve`'s (`src/module-spec.ts`): a package name
 * found from `cwd` becomes its file URL; one that is not (an ESM-only package,
 * or one installed beside vfio-user) stays a bare name, which the worker's
 * `import()` resolves as this module's does.
 */
import { VfioUserError } from '../errors.js';
import { importModuleSpec, resolveModuleSpec, type ModuleSpecWording } from '../module-spec.js';
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
  /** What a worker imports to get the same parent: a `file:` URL, or a bare package name (see the module TSDoc). */
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
  const cwd = options.cwd ?? process.cwd();
  const words = wording(spec);
  const builtinUrl = Object.hasOwn(BUILTIN_PARENTS, spec) ? BUILTIN_PARENTS[spec] : undefined;
  const moduleUrl = builtinUrl ?? resolveModuleSpec(spec, cwd, words);
  const builtin = Object.values(BUILTIN_PARENTS).includes(moduleUrl);
  const namespace = await importModuleSpec(spec, moduleUrl, cwd, words);
  const parent = validated(spec, parentExport(spec, namespace));
  if (builtinUrl !== undefined && parent.name !== spec) {
    throw new VfioUserError(`built-in parent ${spec}: its module declares the name ${parent.name}`, { errno: Errno.EINVAL });
  }
  return { parent, moduleUrl, builtin };
}

/** How the host names parent modules in messages. */
function wording(spec: string): ModuleSpecWording {
  return {
    cannotLoad: `cannot load parent ${spec}`,
    expected: `expected a built-in parent (${Object.keys(BUILTIN_PARENTS).join(', ')}), a module path or a package name`,
    typescriptAdvice: 'compile it (tsc) and load the .js, or use a Node that strips types (22.18+ and 23.6+ by default, 22.6+ with --experimental-strip-types)',
    error: (message, errno, cause) => new VfioUserError(message, cause === undefined ? { errno } : { errno, cause }),
  };
}

/** {@link validateParent}, with a throwing getter of the module's object reported as EINVAL too. */
function validated(spec: string, value: unknown): MdevParent {
  try {
    return validateParent(value, spec);
  } catch (error) {
    if (error instanceof VfioUserError) throw error;
    throw new VfioUserError(`parent ${spec}: reading it threw: ${(error instanceof Error ? error.message : String(error)).split('\n')[0]}`, { errno: Errno.EINVAL, cause: error });
  }
}

/** The module's parent export. @throws {VfioUserError} EINVAL when it has neither a default export nor `parent`. */
function parentExport(spec: string, namespace: Record<string, unknown>): unknown {
  const name = EXPORT_NAMES.find((n) => namespace[n] !== undefined);
  if (name !== undefined) return namespace[name];
  const found = Object.keys(namespace);
  throw new VfioUserError(`parent ${spec} exports no parent: expected a default export (or an export named parent) { name, resources?, types }; it exports ${found.length === 0 ? 'nothing' : found.join(', ')}`, { errno: Errno.EINVAL });
}
