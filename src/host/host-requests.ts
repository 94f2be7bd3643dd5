/**
 * Checks of the requests a device host receives (from its control socket, so
 * from any allowed process): every field's type, the UUID's syntax
 * (normalized to lower-case hyphenated), and the combinations that conflict.
 * Pure functions: they run before any side effect and throw EINVAL with one
 * line naming the field.
 */
import { InvalidArgumentError } from '../errors.js';
import { validateMdevConfig } from './mdev-config.js';
import { normalizeUuid } from './uuid.js';
import type { DefineRequest, ListRequest, ModifyRequest, StopRequest, UndefineRequest } from './api.js';
import type { MdevAttr, MdevConfig, StartMode } from './types.js';

function object(value: unknown): Record<string, unknown> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InvalidArgumentError('the request must be an object');
  return value as Record<string, unknown>;
}

function optionalString(r: Record<string, unknown>, key: string): string | undefined {
  const v = r[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || v === '') throw new InvalidArgumentError(`${key} must be a non-empty string`);
  return v;
}

function optionalBoolean(r: Record<string, unknown>, key: string): boolean | undefined {
  const v = r[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw new InvalidArgumentError(`${key} must be true or false`);
  return v;
}

function optionalUuid(r: Record<string, unknown>): string | undefined {
  const text = optionalString(r, 'uuid');
  return text === undefined ? undefined : normalizeUuid(text);
}

function requiredUuid(r: Record<string, unknown>): string {
  const uuid = optionalUuid(r);
  if (uuid === undefined) throw new InvalidArgumentError('a UUID is required');
  return uuid;
}

function optionalStart(r: Record<string, unknown>): StartMode | undefined {
  const v = r.start;
  if (v === undefined || v === null) return undefined;
  if (v !== 'auto' && v !== 'manual') throw new InvalidArgumentError(`start must be "auto" or "manual", not ${JSON.stringify(v)}`);
  return v;
}

function optionalAttrs(r: Record<string, unknown>, op: string): MdevAttr[] | undefined {
  if (r.attrs === undefined || r.attrs === null) return undefined;
  // The same checks as a definition file's attrs: single-key objects with string values.
  return validateMdevConfig({ mdev_type: 'x', start: 'manual', attrs: r.attrs }, `${op} request`).attrs;
}

function optionalConfig(r: Record<string, unknown>, op: string): MdevConfig | undefined {
  if (r.config === undefined || r.config === null) return undefined;
  return validateMdevConfig(r.config, `${op} request's config`);
}

function optionalIndex(value: unknown, what: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw new InvalidArgumentError(`${what} must be a non-negative integer`);
  return value;
}

/** A checked `define`/`start` request: a {@link DefineRequest} whose UUID is normalized, whose config and type/attrs are not both given. */
export type CheckedDefine = DefineRequest;

/**
 * Checks a {@link DefineRequest} (also a start request).
 * @throws {InvalidArgumentError} EINVAL: a field of the wrong type, a bad UUID, a bad config or attribute list,
 *   a config given beside mdevType, attrs or start, or a config without a parent.
 */
export function checkDefine(request: DefineRequest | undefined, op: 'define' | 'start'): CheckedDefine {
  const r = object(request);
  const checked: CheckedDefine = {};
  const uuid = optionalUuid(r);
  const parent = optionalString(r, 'parent');
  const mdevType = optionalString(r, 'mdevType');
  const start = optionalStart(r);
  const attrs = optionalAttrs(r, op);
  const config = optionalConfig(r, op);
  if (config !== undefined) {
    const beside = [mdevType === undefined ? '' : 'a type', attrs === undefined ? '' : 'attributes', start === undefined ? '' : 'a start mode'].filter((s) => s !== '');
    if (beside.length > 0) throw new InvalidArgumentError(`a JSON config conflicts with ${beside.join(' and ')} given beside it`);
    if (parent === undefined) throw new InvalidArgumentError('a parent is required with a JSON config');
  }
  if (uuid !== undefined) checked.uuid = uuid;
  if (parent !== undefined) checked.parent = parent;
  if (mdevType !== undefined) checked.mdevType = mdevType;
  if (start !== undefined) checked.start = start;
  if (attrs !== undefined) checked.attrs = attrs;
  if (config !== undefined) checked.config = config;
  if (optionalBoolean(r, 'force')) checked.force = true;
  return checked;
}

/** Checks a {@link ListRequest}. @throws {InvalidArgumentError} EINVAL for a field of the wrong type or a bad UUID. */
export function checkList(request: ListRequest | undefined): { defined: boolean; uuid?: string; parent?: string } {
  const r = object(request);
  const uuid = optionalUuid(r);
  const parent = optionalString(r, 'parent');
  return { defined: optionalBoolean(r, 'defined') ?? false, ...(uuid === undefined ? {} : { uuid }), ...(parent === undefined ? {} : { parent }) };
}

/** Checks a `types` request. @throws {InvalidArgumentError} EINVAL for a parent that is not a string. */
export function checkTypes(request: { parent?: string } | undefined): { parent?: string } {
  const parent = optionalString(object(request), 'parent');
  return parent === undefined ? {} : { parent };
}

/** The longest release timeout: what a Node timer can wait (2^31 - 1 ms). */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * Checks a {@link StopRequest}.
 * @throws {InvalidArgumentError} EINVAL: no or bad UUID, force not a boolean, timeoutMs not an integer of
 *   1 … 2^31 - 1, or given with force.
 */
export function checkStop(request: StopRequest | undefined): { uuid: string; force: boolean; timeoutMs?: number } {
  const r = object(request);
  const uuid = requiredUuid(r);
  const force = optionalBoolean(r, 'force') ?? false;
  const t = r.timeoutMs;
  if (t === undefined || t === null) return { uuid, force };
  if (typeof t !== 'number' || !Number.isSafeInteger(t) || t < 1 || t > MAX_TIMEOUT_MS) throw new InvalidArgumentError(`timeoutMs must be an integer from 1 to ${MAX_TIMEOUT_MS} (ms)`);
  if (force) throw new InvalidArgumentError('force stops at once: it conflicts with timeoutMs');
  return { uuid, force, timeoutMs: t };
}

/** Checks an {@link UndefineRequest}. @throws {InvalidArgumentError} EINVAL: no or bad UUID, bad parent. */
export function checkUndefine(request: UndefineRequest | undefined): { uuid: string; parent?: string; force: boolean } {
  const r = object(request);
  const uuid = requiredUuid(r);
  const parent = optionalString(r, 'parent');
  const force = optionalBoolean(r, 'force') ?? false;
  return parent === undefined ? { uuid, force } : { uuid, parent, force };
}

/** A checked `modify` request: a {@link ModifyRequest} whose every field was checked. */
export type CheckedModify = ModifyRequest;

/**
 * Checks a {@link ModifyRequest}.
 * @throws {InvalidArgumentError} EINVAL: no or bad UUID, fields of the wrong type, nothing to change, both addAttr
 *   and delAttr, a config beside other changes or without a parent.
 */
export function checkModify(request: ModifyRequest | undefined): CheckedModify {
  const r = object(request);
  const checked: CheckedModify = { uuid: requiredUuid(r) };
  const parent = optionalString(r, 'parent');
  const mdevType = optionalString(r, 'mdevType');
  const start = optionalStart(r);
  const config = optionalConfig(r, 'modify');
  if (parent !== undefined) checked.parent = parent;
  if (mdevType !== undefined) checked.mdevType = mdevType;
  if (start !== undefined) checked.start = start;
  if (optionalBoolean(r, 'force')) checked.force = true;
  if (r.addAttr !== undefined && r.addAttr !== null) {
    const add = object(r.addAttr);
    const name = optionalString(add, 'name');
    if (name === undefined || typeof add.value !== 'string') throw new InvalidArgumentError('addAttr needs a name and a string value');
    const index = optionalIndex(add.index, 'addAttr.index');
    checked.addAttr = index === undefined ? { name, value: add.value } : { name, value: add.value, index };
  }
  if (r.delAttr !== undefined && r.delAttr !== null) {
    const index = optionalIndex(object(r.delAttr).index, 'delAttr.index');
    checked.delAttr = index === undefined ? {} : { index };
  }
  if (checked.addAttr && checked.delAttr) throw new InvalidArgumentError('addAttr and delAttr cannot be combined');
  if (config !== undefined) {
    if (mdevType !== undefined || start !== undefined || checked.addAttr || checked.delAttr) throw new InvalidArgumentError('a JSON config replaces the whole definition; it conflicts with other changes');
    if (parent === undefined) throw new InvalidArgumentError('a parent is required with a JSON config');
    checked.config = config;
  }
  if (mdevType === undefined && start === undefined && !checked.addAttr && !checked.delAttr && config === undefined) {
    throw new InvalidArgumentError('nothing to change (a type, a start mode, addAttr, delAttr or a JSON config)');
  }
  return checked;
}
