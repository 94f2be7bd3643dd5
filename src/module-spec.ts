/**
 * Finding and importing a user's ES module from what they typed: a path
 * (`./my-device.js`, `/abs/dev.mjs`), a `file:` URL, or a package name. Shared
 * by `vfio-user serve MODULE` (src/cli/device-module.ts) and the device
 * host's `--parent MODULE` (src/host/parent-loader.ts); each supplies its own
 * wording and error class, so that every failure is one line naming the
 * module in its caller's terms.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isAbsolute, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Errno } from './protocol/errno.js';

/** How a caller names its modules in messages, and the error it throws. */
export interface ModuleSpecWording {
  /** Prefix of every message, naming the module: `cannot load device module ./x.js`. */
  cannotLoad: string;
  /** Appended to the "no such file" message: `expected a sample device (…), a module path or a package name`. */
  expected: string;
  /** What to do with a TypeScript module on a Node that does not run it (after "does not run TypeScript: "). */
  typescriptAdvice: string;
  /** Builds the error thrown (the caller's class), with its errno and cause. */
  error(message: string, errno: number, cause?: unknown): Error;
}

/** Whether `spec` names a file rather than a package. */
export function isPathSpec(spec: string, cwd: string): boolean {
  return spec.startsWith('.') || isAbsolute(spec) || spec.startsWith('file:') || /\.(m?js|cjs|m?ts)$/.test(spec) || existsSync(join(cwd, spec));
}

/**
 * The URL to import for `spec`: a `file:` URL for a path or a package found
 * from `cwd`, else the bare package name (an ESM-only package, or one
 * installed next to vfio-user: `import()` resolves it from this library's
 * location).
 * @throws the wording's error with ENOENT when a path names no file.
 */
export function resolveModuleSpec(spec: string, cwd: string, wording: ModuleSpecWording): string {
  if (spec.startsWith('file:')) return spec;
  if (isPathSpec(spec, cwd)) {
    const file = resolve(cwd, spec);
    if (!existsSync(file)) throw wording.error(`${wording.cannotLoad}: no such file (${file}); ${wording.expected}`, Errno.ENOENT);
    return pathToFileURL(file).href;
  }
  try {
    // A package installed where the user works (its node_modules), as `node` resolves it from there.
    return pathToFileURL(createRequire(join(cwd, 'noop.js')).resolve(spec)).href;
  } catch {
    return spec;
  }
}

/**
 * Imports `url` (from {@link resolveModuleSpec}) and returns its namespace.
 * @throws the wording's error: ENOENT when a bare package name or `file:` URL finds nothing; EINVAL for
 *   a TypeScript module on a Node that does not run it, and for any other load failure (syntax error,
 *   a missing dependency, a throw at import), with the loader's first line.
 */
export async function importModuleSpec(spec: string, url: string, cwd: string, wording: ModuleSpecWording): Promise<Record<string, unknown>> {
  try {
    return (await import(url)) as Record<string, unknown>;
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    const reason = (e instanceof Error ? e.message : String(e)).split('\n')[0] ?? '';
    if (e.code === 'ERR_UNKNOWN_FILE_EXTENSION') {
      throw wording.error(`${wording.cannotLoad}: Node ${process.version} does not run TypeScript: ${wording.typescriptAdvice}`, Errno.EINVAL, error);
    }
    if ((e.code === 'ERR_MODULE_NOT_FOUND' || e.code === 'MODULE_NOT_FOUND') && url === spec) {
      throw wording.error(`${wording.cannotLoad}: no such file or package (from ${cwd}): ${reason}`, Errno.ENOENT, error);
    }
    throw wording.error(`${wording.cannotLoad}: ${e instanceof Error ? `${e.name}: ` : ''}${reason}`, Errno.EINVAL, error);
  }
}
