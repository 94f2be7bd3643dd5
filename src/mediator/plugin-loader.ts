/**
 * Loading mediator plugins from an ES module the user names (`vfio-user
 * mediate --plugin ./my-plugin.js`): a path, a `file:` URL or a package name,
 * found as `vfio-user serve ./my-device.js` finds a device module
 * (src/module-spec.ts).
 *
 * The module exports `plugin` (a plugin or an array of plugins), or
 * `createPlugin(args)` (possibly async) returning one of those, or a default
 * export of either kind. Every failure is one line naming the module.
 */
import { InvalidArgumentError, VfioUserError } from '../errors.js';
import { importModuleSpec, resolveModuleSpec, type ModuleSpecWording } from '../module-spec.js';
import { Errno } from '../protocol/errno.js';
import type { MediatorPlugin } from './types.js';

const EXPECTED = 'a plugin (an object with a `name` and hooks), an array of plugins, or a function (possibly async) returning either, exported as `plugin`, `createPlugin` or default';

function wording(spec: string): ModuleSpecWording {
  return {
    cannotLoad: `cannot load mediator plugin ${spec}`,
    expected: 'expected a module path (./my-plugin.js) or a package name',
    typescriptAdvice: 'compile it (tsc) and pass the .js, or use a Node that strips types (22.18+ and 23.6+ by default)',
    error: (message, errno, cause) => new InvalidArgumentError(message, cause === undefined ? { errno } : { errno, cause }),
  };
}

/**
 * Imports `specifier` and returns its plugins.
 * @param args - passed to a `createPlugin` factory (the command line's arguments after `--`).
 * @param cwd - where relative paths and package names resolve from (default: the current directory).
 * @throws {InvalidArgumentError} ENOENT when the module does not exist; EINVAL when it does not load or exports
 *   no plugin (or a plugin without a name); a factory's own errno (else EINVAL) when it throws.
 */
export async function loadPlugins(specifier: string, args: readonly string[] = [], cwd = process.cwd()): Promise<MediatorPlugin[]> {
  const words = wording(specifier);
  const ns = await importModuleSpec(specifier, resolveModuleSpec(specifier, cwd, words), cwd, words);
  const found = ns.plugin ?? ns.createPlugin ?? ns.default;
  if (found === undefined) throw bad(specifier, `it exports none of plugin, createPlugin, default (exports: ${Object.keys(ns).join(', ') || 'none'})`);
  let value: unknown = found;
  if (typeof found === 'function') {
    try {
      value = await (found as (a: readonly string[]) => unknown)([...args]);
    } catch (error) {
      const errno = error instanceof VfioUserError && error.errno !== undefined ? error.errno : Errno.EINVAL;
      const reason = error instanceof Error ? error.message : String(error);
      throw new InvalidArgumentError(`mediator plugin ${specifier}: its factory failed: ${reason}`, { errno, cause: error });
    }
  }
  const plugins = Array.isArray(value) ? (value as unknown[]) : [value];
  if (plugins.length === 0) throw bad(specifier, 'it gave an empty array');
  return plugins.map((p, i) => checkPlugin(specifier, p, plugins.length > 1 ? i : undefined));
}

function checkPlugin(specifier: string, p: unknown, index: number | undefined): MediatorPlugin {
  const where = index === undefined ? '' : ` (#${index})`;
  if (typeof p !== 'object' || p === null) throw bad(specifier, `it gave ${p === null ? 'null' : typeof p}${where}`);
  const name = (p as { name?: unknown }).name;
  if (typeof name !== 'string' || name === '') throw bad(specifier, `its plugin${where} has no name`);
  return p as MediatorPlugin;
}

function bad(specifier: string, what: string): InvalidArgumentError {
  return new InvalidArgumentError(`mediator plugin ${specifier}: ${what}; expected ${EXPECTED}`, { errno: Errno.EINVAL });
}
