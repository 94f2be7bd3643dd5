/**
 * Builds one instance's device from its parent's type, as mdevctl starts an
 * mdev: create it (mdev: write the UUID to `create`), then apply its
 * attributes **in order** (mdev: write each attribute file); if any step
 * fails, remove what was created (mdev: write 1 to `remove`) and report one
 * error naming the step. Nothing is left behind: after a failure the device
 * is disposed and was never served.
 *
 * Attribute names and values are checked before `create` runs, so an unknown
 * attribute costs nothing. Runs in the instance's worker thread (it uses no
 * main-thread-only API).
 */
import { createDevice, VfioUserDevice } from '../device/device.js';
import type { DeviceDefinition, MaybePromise } from '../device/types.js';
import { VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { findType } from './parent-validate.js';
import type { MdevAttr, MdevAttribute, MdevCreateContext, MdevInstanceHandle, MdevParent, MdevType } from './types.js';

/** A built instance: its device (not yet served) and how to release it. */
export interface BuiltInstance {
  device: VfioUserDevice;
  /** The `state` its type's `create` returned (undefined otherwise). */
  state: unknown;
  /**
   * Releases the instance once it is no longer served: the parent's own
   * `dispose` (if `create` returned one), then the device's shared memory.
   * Runs once; later calls resolve at once. Rejects with the parent's error
   * (the device is disposed all the same).
   */
  dispose(): Promise<void>;
}

/** What `create` produced, normalized. */
interface Created {
  device: VfioUserDevice;
  state: unknown;
  release: (() => MaybePromise<void>) | undefined;
}

/** One line of an error's message. */
function reasonOf(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.split('\n')[0] ?? '';
}

/** The errno an error carries (a VfioUserError's, or a Node system error's negated one), else EINVAL. */
function errnoOf(error: unknown): number {
  const errno = (error as { errno?: unknown } | null)?.errno;
  if (typeof errno !== 'number' || !Number.isInteger(errno)) return Errno.EINVAL;
  const n = Math.abs(errno); // Node's system errors carry -ENOENT etc.
  return n > 0 && n < 4096 ? n : Errno.EINVAL;
}

/** A device built by this or another copy of the library (a parent module may resolve `vfio-user` to its own). */
function isDevice(value: unknown): value is VfioUserDevice {
  if (value instanceof VfioUserDevice) return true;
  const v = value as Partial<VfioUserDevice> | null;
  return typeof v === 'object' && v !== null && typeof v.serve === 'function' && typeof v.dispose === 'function' && typeof v.definition === 'object';
}

function isDefinition(value: unknown): value is DeviceDefinition {
  const pci = (value as { pci?: unknown } | null)?.pci;
  return typeof value === 'object' && value !== null && !Array.isArray(value) && typeof pci === 'object' && pci !== null;
}

/** Checks every attribute before anything is created. @throws {VfioUserError} EINVAL naming the attribute. */
function checkAttrs(id: string, type: MdevType, attrs: readonly MdevAttr[]): { name: string; value: string; attribute: MdevAttribute }[] {
  const known = Object.keys(type.attributes ?? {});
  return attrs.map((attr, index) => {
    const entries = typeof attr === 'object' && attr !== null && !Array.isArray(attr) ? Object.entries(attr) : [];
    const [name, value] = entries[0] ?? [];
    if (entries.length !== 1 || name === undefined || typeof value !== 'string') {
      throw new VfioUserError(`${id}: attribute ${index} must be one name with a string value ({"name": "value"})`, { errno: Errno.EINVAL });
    }
    const attribute = Object.hasOwn(type.attributes ?? {}, name) ? type.attributes?.[name] : undefined;
    if (attribute === undefined) {
      const accepted = known.length === 0 ? 'it accepts no attributes' : `it accepts ${known.join(', ')}`;
      throw new VfioUserError(`${id}: attribute ${index} ${JSON.stringify(name)} is unknown (${accepted})`, { errno: Errno.EINVAL });
    }
    return { name, value, attribute };
  });
}

/** Calls `create` and normalizes its result. @throws {VfioUserError} its errno (else EINVAL). */
async function create(id: string, type: MdevType, context: MdevCreateContext): Promise<Created> {
  let made: unknown;
  try {
    made = await type.create({ ...context });
  } catch (error) {
    throw new VfioUserError(`${id}: creating instance ${context.uuid} failed: ${reasonOf(error)}`, { errno: errnoOf(error), cause: error });
  }
  if (isDevice(made)) return { device: made, state: undefined, release: undefined };
  if (isDefinition(made)) {
    try {
      return { device: createDevice(made), state: undefined, release: undefined };
    } catch (error) {
      throw new VfioUserError(`${id}: create returned an invalid device definition: ${reasonOf(error)}`, { errno: errnoOf(error), cause: error });
    }
  }
  const wrapped = made as { device?: unknown; dispose?: unknown; state?: unknown } | null;
  if (typeof wrapped === 'object' && wrapped !== null && isDevice(wrapped.device)) {
    const release = wrapped.dispose;
    if (release !== undefined && typeof release !== 'function') {
      wrapped.device.dispose();
      throw new VfioUserError(`${id}: create returned a dispose that is not a function`, { errno: Errno.EINVAL });
    }
    return { device: wrapped.device, state: wrapped.state, release: release === undefined ? undefined : () => (release as () => MaybePromise<void>).call(wrapped) };
  }
  throw new VfioUserError(`${id}: create returned neither a device, a device definition (with pci) nor { device, dispose?, state? }`, { errno: Errno.EINVAL });
}

/** A dispose that runs once: the parent's release, then the device's. */
function disposer(created: Created): () => Promise<void> {
  let done: Promise<void> | undefined;
  const run = async (): Promise<void> => {
    try {
      await created.release?.();
    } finally {
      created.device.dispose();
    }
  };
  return () => (done ??= run());
}

/**
 * Builds the device of an instance of `parent`'s type `typeName`, and applies
 * `attrs` to it in order, each with its type's `apply`. On any failure the
 * instance is disposed (rolled back) before the error is thrown.
 * @param context the instance's identity (uuid, parent, type, socket), passed to `create` and to each `apply`.
 * @throws {VfioUserError} ENOENT when the parent has no type `typeName`; EINVAL for a malformed or unknown
 *   attribute (checked before create runs), or what create returned not being a device; create's own errno
 *   (else EINVAL) when it throws; an `apply`'s errno (else EINVAL) when it throws, the message naming the
 *   attribute's index, name and value — in every case nothing is left created.
 */
export async function buildInstance(parent: MdevParent, typeName: string, context: MdevCreateContext, attrs: readonly MdevAttr[]): Promise<BuiltInstance> {
  const type = findType(parent, typeName);
  const id = `${parent.name}-${typeName}`;
  if (!type) throw new VfioUserError(`parent ${parent.name} has no type ${typeName} (types: ${parent.types.map((t) => t.name).join(', ')})`, { errno: Errno.ENOENT });
  const steps = checkAttrs(id, type, attrs);
  const created = await create(id, type, context);
  const dispose = disposer(created);
  const handle: MdevInstanceHandle = Object.freeze({ ...context, device: created.device, state: created.state });
  for (const [index, { name, value, attribute }] of steps.entries()) {
    try {
      await attribute.apply(handle, value);
    } catch (error) {
      const rollback = await dispose().then(
        () => '',
        (e: unknown) => `; removing the instance also failed: ${reasonOf(e)}`,
      );
      const shown = value.length > 64 ? `${value.slice(0, 64)}…` : value;
      throw new VfioUserError(`${id}: attribute ${index} ${name}=${JSON.stringify(shown)} refused: ${reasonOf(error)}${rollback}`, { errno: errnoOf(error), cause: error });
    }
  }
  return { device: created.device, state: created.state, dispose };
}
