/**
 * The definition operations of a device host (`define`, `undefine`,
 * `modify`) and the choice `start` makes between a definition and a
 * transient instance. Each validates the whole request first (parent, type,
 * attribute names, existing definitions), then runs the change inside
 * mdevctl's callout sequence (pre → change → post → notifiers): a vetoing
 * pre-callout fails it with ECANCELED and nothing is written.
 */
import { existsSync } from 'node:fs';
import { InvalidArgumentError, VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import type { Logger } from '../log.js';
import type { DefinitionEntry } from './api.js';
import { addAttr, delAttr } from './attrs.js';
import { invokeWithCallouts, type InvokeOptions, type OperationAction } from './callouts.js';
import type { DefinitionStore } from './definitions.js';
import type { InstanceManager } from './host-instances.js';
import type { ParentRegistry, ResolvedType } from './host-parents.js';
import type { CheckedDefine, CheckedModify } from './host-requests.js';
import { StartMode, type MdevConfig } from './types.js';
import { newUuid } from './uuid.js';

/** What the operations work with (the host's parts). */
export interface HostParts {
  configDir: string;
  store: DefinitionStore;
  parents: ParentRegistry;
  instances: InstanceManager;
  logger: Logger;
  /** Options for every callout sequence (logger, shutdown signal, timeout). */
  calloutOptions(): InvokeOptions;
}

/**
 * Runs `run` inside mdevctl's callout sequence for `action` on (parent, uuid) with `config` on the scripts' stdin;
 * a veto is logged (`callout-vetoed`); with `force` (mdevctl's `--force`) a veto is logged at warn and `run` goes on.
 * @throws {VfioUserError} ECANCELED when a pre-callout vetoes (`run` not called); whatever `run` throws.
 */
export async function withCallouts<T>(parts: HostParts, target: { uuid: string; parent: string; config: MdevConfig; action: OperationAction; force?: boolean }, run: () => Promise<T>): Promise<T> {
  const { force, ...rest } = target;
  try {
    return await invokeWithCallouts({ configDir: parts.configDir, ...rest }, run, { ...parts.calloutOptions(), force: force ?? false });
  } catch (error) {
    if (error instanceof VfioUserError && error.errno === Errno.ECANCELED) {
      parts.logger.warn({ event: 'callout-vetoed', uuid: target.uuid, parent: target.parent, action: target.action, reason: error.message }, 'callout vetoed');
    }
    throw error;
  }
}

/** Whether (parent, uuid) has a definition file (a corrupt one counts). */
export function isDefined(parts: HostParts, parent: string, uuid: string): boolean {
  return existsSync(parts.store.pathOf(parent, uuid));
}

/** The parents `uuid` is defined under, only `parent` when given. */
function definedParents(parts: HostParts, uuid: string, parent: string | undefined): string[] {
  if (parent !== undefined) return isDefined(parts, parent, uuid) ? [parent] : [];
  return parts.store.parentsOf(uuid);
}

function resolveConfig(parts: HostParts, parent: string, config: MdevConfig): ResolvedType {
  const resolved = parts.parents.resolve(parent, config.mdev_type);
  parts.parents.checkAttrNames(resolved, config.attrs);
  return resolved;
}

/**
 * `define`: writes `<configDir>/<parent>/<uuid>` (atomically). From a parent and type (+ start, attrs), a JSON
 * config, or a running instance's UUID alone (its parent, type and attributes).
 * @throws {VfioUserError} ENOENT unknown parent or type; EINVAL no parent / no type given, a bad attribute name;
 *   EEXIST already defined under that parent; ECANCELED a pre-callout vetoed it; the store's errno (EACCES, ENOSPC, EIO).
 */
export async function defineOp(parts: HostParts, request: CheckedDefine): Promise<DefinitionEntry> {
  const uuid = request.uuid ?? newUuid();
  const running = parts.instances.get(uuid);
  let parent: string;
  let config: MdevConfig;
  if (request.config !== undefined) {
    parent = request.parent as string;
    config = request.config;
  } else {
    const p = request.parent ?? running?.loaded.parent.name;
    if (p === undefined) throw new InvalidArgumentError(`no parent specified (and no instance ${uuid} is running)`);
    parent = p;
    const same = running !== undefined && running.loaded.parent.name === parent ? running : undefined;
    const mdevType = request.mdevType ?? (same ? parts.instances.mdevType(same) : undefined);
    if (mdevType === undefined) throw new InvalidArgumentError(`no type specified (and no instance ${uuid} of ${parent} is running)`);
    const attrs = request.attrs ?? (same && mdevType === parts.instances.mdevType(same) ? [...same.attrs] : []);
    config = { mdev_type: mdevType, start: request.start ?? StartMode.MANUAL, attrs };
  }
  resolveConfig(parts, parent, config);
  if (isDefined(parts, parent, uuid)) throw new VfioUserError(`Device ${uuid} on ${parent} already defined`, { errno: Errno.EEXIST });
  await withCallouts(parts, { uuid, parent, config, action: 'define', force: request.force ?? false }, async () => void parts.store.write(parent, uuid, config));
  parts.logger.info({ event: 'definition-defined', uuid, parent, mdevType: config.mdev_type, start: config.start }, 'definition written');
  return { uuid, parent, config, active: running?.loaded.parent.name === parent };
}

/** The stored config of (parent, uuid), or what callouts are told of a file that no longer parses. */
function readForCallouts(parts: HostParts, parent: string, uuid: string): MdevConfig {
  try {
    return parts.store.read(parent, uuid) ?? { mdev_type: '', start: StartMode.MANUAL, attrs: [] };
  } catch {
    return { mdev_type: '', start: StartMode.MANUAL, attrs: [] };
  }
}

/**
 * `undefine`: removes the definition of `uuid` under `parent`, or under every parent (as mdevctl); a running
 * instance is left running. As mdevctl, every parent's definition is tried even when one fails (logged); then
 * any failure fails the whole call, the others staying removed.
 * @throws {VfioUserError} ENOENT nothing defined; ECANCELED a pre-callout vetoed (one of them); the store's errno.
 */
export async function undefineOp(parts: HostParts, request: { uuid: string; parent?: string; force?: boolean }): Promise<{ removed: DefinitionEntry[] }> {
  const { uuid } = request;
  const parents = definedParents(parts, uuid, request.parent);
  if (parents.length === 0) {
    throw new VfioUserError(request.parent === undefined ? `No devices match the specified uuid ${uuid}` : `${request.parent}/${uuid} is not defined`, { errno: Errno.ENOENT });
  }
  const removed: DefinitionEntry[] = [];
  const failures: VfioUserError[] = [];
  for (const parent of parents) {
    const config = readForCallouts(parts, parent, uuid);
    try {
      await withCallouts(parts, { uuid, parent, config, action: 'undefine', force: request.force ?? false }, async () => void parts.store.remove(parent, uuid));
    } catch (error) {
      const failure = error instanceof VfioUserError ? error : new VfioUserError(String((error as Error).message), { errno: Errno.EIO });
      parts.logger.warn({ event: 'definition-undefine-failed', uuid, parent, reason: failure.message }, `Undefine of ${uuid} on parent ${parent} failed`);
      failures.push(failure);
      continue;
    }
    parts.logger.info({ event: 'definition-removed', uuid, parent }, 'definition removed');
    removed.push({ uuid, parent, config, active: parts.instances.get(uuid)?.loaded.parent.name === parent });
  }
  const first = failures[0];
  if (first === undefined) return { removed };
  if (parents.length === 1) throw first;
  const gone = removed.length === 0 ? 'none removed' : `removed from ${removed.map((d) => d.parent).join(', ')}`;
  throw new VfioUserError(`Undefine failed (${gone}): ${first.message}`, { errno: first.errno ?? Errno.EIO });
}

/** The definition `modify` produces from `old`. @throws {InvalidArgumentError} EINVAL for a bad attribute index. */
function modified(old: MdevConfig | undefined, request: CheckedModify): MdevConfig {
  if (request.config !== undefined) return request.config;
  const base = old as MdevConfig;
  let attrs = base.attrs;
  if (request.addAttr) attrs = addAttr(attrs, request.addAttr.name, request.addAttr.value, request.addAttr.index);
  if (request.delAttr) attrs = delAttr(attrs, request.delAttr.index);
  return { mdev_type: request.mdevType ?? base.mdev_type, start: request.start ?? base.start, attrs };
}

/**
 * `modify`: changes a definition (the running instance, if any, is untouched; the change applies at its next start).
 * @throws {VfioUserError} ENOENT not defined, or an unknown parent/type in the result; EINVAL defined under several
 *   parents and none given, a bad attribute name or index, a corrupt definition (unless a JSON config replaces it);
 *   ECANCELED a pre-callout vetoed; the store's errno.
 */
export async function modifyOp(parts: HostParts, request: CheckedModify): Promise<DefinitionEntry> {
  const { uuid } = request;
  const parents = definedParents(parts, uuid, request.parent);
  if (parents.length === 0) {
    throw new VfioUserError(request.parent === undefined ? `Mediated device ${uuid} is not defined` : `${request.parent}/${uuid} is not defined`, { errno: Errno.ENOENT });
  }
  if (parents.length > 1) throw new InvalidArgumentError(`Multiple definitions found for ${uuid} (${parents.join(', ')}), specify a parent`);
  const parent = parents[0] as string;
  const old = request.config === undefined ? parts.store.read(parent, uuid) : undefined;
  const config = modified(old, request);
  if (request.config !== undefined || request.mdevType !== undefined || request.addAttr !== undefined) resolveConfig(parts, parent, config);
  await withCallouts(parts, { uuid, parent, config, action: 'modify', force: request.force ?? false }, async () => void parts.store.write(parent, uuid, config));
  parts.logger.info({ event: 'definition-modified', uuid, parent, mdevType: config.mdev_type, start: config.start }, 'definition modified');
  return { uuid, parent, config, active: parts.instances.get(uuid)?.loaded.parent.name === parent };
}

/** What a `start` will run. */
export interface StartPlan {
  uuid: string;
  parent: string;
  config: MdevConfig;
  resolved: ResolvedType;
  /** Whether it is a definition's start (else a transient instance). */
  fromDefinition: boolean;
}

/** The definition `start` names by UUID (+ parent), when it names one and no type or attributes. */
function definitionPlan(parts: HostParts, request: CheckedDefine, uuid: string): StartPlan | undefined {
  const parents = definedParents(parts, uuid, request.parent);
  if (request.mdevType === undefined && request.attrs === undefined) {
    if (parents.length > 1) throw new InvalidArgumentError(`Multiple definitions found for device ${uuid} (${parents.join(', ')}). Please specify a parent.`);
    const parent = parents[0];
    if (parent === undefined) {
      const what = request.parent === undefined ? uuid : `${request.parent}/${uuid}`;
      throw new VfioUserError(`${what} is not defined (give a parent and a type to start a transient instance)`, { errno: Errno.ENOENT });
    }
    const config = parts.store.read(parent, uuid) as MdevConfig;
    return { uuid, parent, config, resolved: resolveConfig(parts, parent, config), fromDefinition: true };
  }
  if (request.parent === undefined) throw new InvalidArgumentError("a type needs a parent (can't provide type without parent)");
  if (parents.length === 0) return undefined;
  const config = parts.store.read(request.parent, uuid) as MdevConfig;
  if (request.mdevType !== undefined && request.mdevType !== config.mdev_type) {
    throw new InvalidArgumentError(`Device ${uuid} already exists on parent ${request.parent} with type ${config.mdev_type}`);
  }
  if (request.attrs !== undefined) throw new InvalidArgumentError(`${uuid} is defined on ${request.parent}; its attributes come from the definition (change them with modify)`);
  return { uuid, parent: request.parent, config, resolved: resolveConfig(parts, request.parent, config), fromDefinition: true };
}

/**
 * What `start` runs: the definition of a UUID given alone (or with its parent, or a type equal to the definition's),
 * else a transient instance from a parent and a type (+ attributes) or a JSON config, its UUID generated when absent.
 * Nothing is started here.
 * @throws {VfioUserError} ENOENT not defined, unknown parent or type; EINVAL several definitions and no parent, a
 *   type conflicting with the definition, a type without parent, no type, a start mode, a bad attribute name;
 *   EEXIST a JSON config for a UUID defined on that parent.
 */
export function planStart(parts: HostParts, request: CheckedDefine): StartPlan {
  if (request.start !== undefined) throw new InvalidArgumentError('a start mode (auto/manual) belongs to a definition (define or modify)');
  const uuid = request.uuid ?? newUuid();
  if (request.config === undefined && request.uuid !== undefined) {
    const plan = definitionPlan(parts, request, uuid);
    if (plan) return plan;
  }
  if (request.parent === undefined) throw new InvalidArgumentError('Device is insufficiently specified (give a UUID that is defined, or a parent and a type)');
  if (request.config !== undefined && isDefined(parts, request.parent, uuid)) {
    throw new VfioUserError(`${uuid} is defined on ${request.parent}; start it by UUID alone`, { errno: Errno.EEXIST });
  }
  const mdevType = request.config?.mdev_type ?? request.mdevType;
  if (mdevType === undefined) throw new InvalidArgumentError('no type specified (Device is insufficiently specified)');
  const config: MdevConfig = request.config ?? { mdev_type: mdevType, start: StartMode.MANUAL, attrs: request.attrs ?? [] };
  return { uuid, parent: request.parent, config, resolved: resolveConfig(parts, request.parent, config), fromDefinition: false };
}
