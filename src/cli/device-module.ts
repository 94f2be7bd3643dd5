/**
 * What `vfio-user serve` serves: a sample device by name (`gpio`, `memory`,
 * `dma-engine`), or a device of the user's own from an ES module — a path
 * (`./my-device.js`, `/abs/dev.mjs`, `file:` URL) or a package name.
 *
 * The module's default export, else its export named `device`, else
 * `createDevice`, must be one of:
 * - a device definition (the object `createDevice` takes: it has `pci`);
 * - a device (`createDevice(...)`'s result, a `VfioUserDevice`);
 * - a function, possibly async, called with {@link DeviceFactoryOptions}
 *   (the arguments after `--`, the socket path), returning one of the above.
 *
 * Every way this can go wrong is one line naming the module, what was found
 * and what is expected: a module that cannot be found or loaded (ENOENT,
 * or the loader's own error), an export of the wrong shape (EINVAL), a
 * definition `createDevice` refuses (its EINVAL), a factory that throws (its
 * errno, else EINVAL).
 */
import { createDevice, VfioUserDevice } from '../device/device.js';
import type { DeviceDefinition } from '../device/types.js';
import { createDmaEngineDevice } from '../devices/dma-engine.js';
import { createGpioDevice } from '../devices/gpio.js';
import { createMemoryDevice } from '../devices/memory.js';
import { VfioUserError } from '../errors.js';
import { importModuleSpec, resolveModuleSpec, type ModuleSpecWording } from '../module-spec.js';
import { Errno } from '../protocol/errno.js';
import { CliError } from './common.js';

/** The sample devices known by name. */
export const BUILTIN_DEVICES = ['gpio', 'memory', 'dma-engine'] as const;
/** One of {@link BUILTIN_DEVICES}. */
export type BuiltinDevice = (typeof BUILTIN_DEVICES)[number];

/** What a device module's factory is called with. */
export interface DeviceFactoryOptions {
  /** The command line's arguments after `--` (`vfio-user serve ./dev.js --socket S -- --lanes 4`). */
  args: readonly string[];
  /** The socket path the device will be served on. */
  socket: string;
}

/** A device ready to serve, and how to name it. */
export interface LoadedDevice {
  device: VfioUserDevice;
  /** `gpio`, or `<device name> from <module>`. */
  label: string;
}

/** Options of {@link loadDevice}. */
export interface LoadDeviceOptions extends DeviceFactoryOptions {
  /** BAR0 size of the memory sample device (bytes); refused for any other device. */
  size?: number;
  /** Where relative paths and package names resolve from (default: the current directory). */
  cwd?: string;
}

/** The export names looked at, in order. */
const EXPORT_NAMES = ['default', 'device', 'createDevice'] as const;
const EXPECTED = 'a device definition (an object with `pci`, as createDevice takes), a device (createDevice(...)), or a function (possibly async) returning one';

/**
 * Builds the device `spec` names: a sample device, or the export of a module.
 * @throws {CliError} ENOENT for a module that does not exist; EINVAL for a bad
 *   export, a definition createDevice refuses, `--size`/arguments a sample device does not take;
 *   a factory's own errno (else EINVAL) when it throws; the loader's message when the module does not load.
 */
export async function loadDevice(spec: string, options: LoadDeviceOptions): Promise<LoadedDevice> {
  if ((BUILTIN_DEVICES as readonly string[]).includes(spec)) return { device: builtin(spec as BuiltinDevice, options), label: spec };
  if (options.size !== undefined) throw new CliError(`--size applies to the memory device only, not ${spec}`, { errno: Errno.EINVAL });
  const namespace = await importModule(spec, options.cwd ?? process.cwd());
  const device = await deviceFromExports(spec, namespace, options);
  return { device, label: `${device.name} from ${spec}` };
}

function builtin(kind: BuiltinDevice, options: LoadDeviceOptions): VfioUserDevice {
  if (options.args.length > 0) throw new CliError(`the sample device ${kind} takes no arguments after -- (got ${options.args.join(' ')})`, { errno: Errno.EINVAL });
  if (options.size !== undefined && kind !== 'memory') throw new CliError(`--size applies to the memory device only, not ${kind}`, { errno: Errno.EINVAL });
  switch (kind) {
    case 'gpio':
      return createGpioDevice().device;
    case 'memory':
      return createMemoryDevice(options.size === undefined ? {} : { size: options.size }).device;
    case 'dma-engine':
      return createDmaEngineDevice().device;
  }
}

/** How `serve` names the device module `spec` in messages; its errors are CliErrors. */
function wording(spec: string): ModuleSpecWording {
  return {
    cannotLoad: `cannot load device module ${spec}`,
    expected: `expected a sample device (${BUILTIN_DEVICES.join(', ')}), a module path or a package name`,
    typescriptAdvice: 'compile it (tsc) and serve the .js, or use a Node that strips types (22.18+ and 23.6+ by default, 22.6+ with --experimental-strip-types)',
    error: (message, errno, cause) => new CliError(message, cause === undefined ? { errno } : { errno, cause }),
  };
}

async function importModule(spec: string, cwd: string): Promise<Record<string, unknown>> {
  const words = wording(spec);
  return importModuleSpec(spec, resolveModuleSpec(spec, cwd, words), cwd, words);
}

/** A short description of a value, for messages: `a number (42)`, `an object with keys a, b`. */
export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'function') return isClass(value) ? `a class (${value.name || 'anonymous'})` : `a function (${value.name || 'anonymous'})`;
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === 'object') {
    if (typeof (value as { then?: unknown }).then === 'function') return 'a promise';
    const keys = Object.keys(value);
    return keys.length === 0 ? 'an empty object' : `an object with keys ${keys.slice(0, 8).join(', ')}${keys.length > 8 ? ', …' : ''} but no \`pci\``;
  }
  const text = typeof value === 'string' ? JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value) : String(value);
  return `a ${typeof value} (${text})`;
}

function isClass(fn: unknown): boolean {
  return typeof fn === 'function' && /^class[\s{]/.test(Function.prototype.toString.call(fn));
}

/** A device built by this or another copy of the library (a module may resolve `vfio-user` to its own). */
function isDevice(value: unknown): value is VfioUserDevice {
  if (value instanceof VfioUserDevice) return true;
  const v = value as Partial<VfioUserDevice> | null;
  return typeof v === 'object' && v !== null && typeof v.serve === 'function' && typeof v.dispose === 'function' && typeof v.definition === 'object';
}

function isDefinition(value: unknown): value is DeviceDefinition {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && typeof (value as { pci?: unknown }).pci === 'object' && (value as { pci?: unknown }).pci !== null;
}

/** A device from a definition. @throws {CliError} with createDevice's errno (EINVAL) naming the module. */
function realize(spec: string, where: string, definition: DeviceDefinition): VfioUserDevice {
  try {
    return createDevice(definition);
  } catch (error) {
    throw new CliError(`${spec}: ${where} is not a valid device definition: ${(error as Error).message}`, { errno: Errno.EINVAL, cause: error });
  }
}

async function deviceFromExports(spec: string, namespace: Record<string, unknown>, options: LoadDeviceOptions): Promise<VfioUserDevice> {
  const name = EXPORT_NAMES.find((n) => namespace[n] !== undefined);
  if (name === undefined) {
    const found = Object.keys(namespace);
    throw new CliError(`${spec} exports no device: expected a default export (or an export named device or createDevice) that is ${EXPECTED}; it exports ${found.length === 0 ? 'nothing' : found.join(', ')}`, { errno: Errno.EINVAL });
  }
  const where = name === 'default' ? 'the default export' : `the export '${name}'`;
  const value = namespace[name];
  if (isDevice(value)) return value;
  if (isDefinition(value)) return realize(spec, where, value);
  if (typeof value !== 'function' || isClass(value)) throw new CliError(`${spec}: ${where} is ${describeValue(value)}; expected ${EXPECTED}`, { errno: Errno.EINVAL });
  let made: unknown;
  try {
    made = await (value as (o: DeviceFactoryOptions) => unknown)({ args: [...options.args], socket: options.socket });
  } catch (error) {
    const errno = error instanceof VfioUserError ? error.errno : Errno.EINVAL;
    throw new CliError(`${spec}: the device factory (${where}) threw: ${(error as Error)?.message ?? String(error)}`, { errno, cause: error });
  }
  if (isDevice(made)) return made;
  if (isDefinition(made)) return realize(spec, `what the factory (${where}) returned`, made);
  throw new CliError(`${spec}: the device factory (${where}) returned ${describeValue(made)}; expected a device definition (with \`pci\`) or a device (createDevice(...))`, { errno: Errno.EINVAL });
}
