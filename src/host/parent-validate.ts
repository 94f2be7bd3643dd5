/**
 * Checks that a value is a well-formed {@link MdevParent} before the host
 * uses it: every name, number and callback a parent module declares is
 * checked once, at load, so that nothing later (availability, creating an
 * instance, `types` output, definition paths) meets a surprise. Each problem
 * is one line naming the module, the type and the field.
 *
 * Rules (beyond the shapes of `types.ts`):
 * - parent name: `[A-Za-z0-9_.:-]`, 1–64 characters, not `.`, `..` or
 *   `scripts.d` (it names a directory under the config dir, beside `scripts.d`);
 * - type names: `[A-Za-z0-9_.:+-]`, 1–64 characters, unique in the parent;
 *   attribute and resource names: the same alphabet, 1–64 characters;
 * - resource capacities, costs and `maxInstances`: non-negative safe integers
 *   (express fractions in a smaller unit: bytes, not GiB);
 * - a cost names a declared resource, and one instance fits the capacity;
 * - a type is bounded: it has `maxInstances` or a positive cost (otherwise
 *   `available_instances` would be infinite);
 * - `create` and every attribute's `apply` are functions;
 * - `group` is `'instance'`, `'type'`, `'parent'` or `{ attr: NAME }` naming one of the type's attributes;
 * - no property outside the contract (a misspelt `maxInstance` is refused,
 *   not silently ignored).
 */
import { VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import type { MdevParent, MdevType } from './types.js';

/** Parent names: also a directory name under the config dir. */
const PARENT_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;
/** Type, attribute and resource names. */
const TYPE_NAME = /^[A-Za-z0-9_.:+-]{1,64}$/;
/** Parent names that would collide with the config dir's own entries or path syntax. */
const RESERVED_PARENT_NAMES = new Set(['.', '..', 'scripts.d']);

const PARENT_KEYS = new Set(['name', 'resources', 'types']);
const TYPE_KEYS = new Set(['name', 'label', 'description', 'cost', 'maxInstances', 'attributes', 'group', 'create']);
const GROUP_WORDS = new Set(['instance', 'type', 'parent']);
const ATTRIBUTE_KEYS = new Set(['description', 'apply']);

/** A refusal of the parent module `where`: one line, EINVAL. */
function invalid(where: string, message: string): VfioUserError {
  return new VfioUserError(`parent ${where}: ${message}`, { errno: Errno.EINVAL });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** `"text"` quoted and cut, for messages. */
function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 70 ? `${value.slice(0, 70)}…` : value);
  if (typeof value === 'function') return 'a function';
  if (value === null || value === undefined || typeof value !== 'object') return String(value);
  return Array.isArray(value) ? `an array of ${value.length}` : 'an object';
}

function checkKeys(where: string, context: string, value: Record<string, unknown>, allowed: ReadonlySet<string>): void {
  for (const key of Object.keys(value)) {
    if (!allowed.has(key)) throw invalid(where, `${context}has an unknown property ${show(key)} (expected ${[...allowed].join(', ')})`);
  }
}

function checkOptionalString(where: string, context: string, field: string, value: unknown): void {
  if (value !== undefined && typeof value !== 'string') throw invalid(where, `${context}${field} is ${show(value)}; expected a string`);
}

/** A non-negative safe integer. */
function checkCount(where: string, context: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw invalid(where, `${context}is ${show(value)}; expected a non-negative integer`);
  }
  return value;
}

/** Checks `resources` and returns them as a map (empty when absent). */
function checkResources(where: string, value: unknown): Map<string, number> {
  const resources = new Map<string, number>();
  if (value === undefined) return resources;
  if (!isRecord(value)) throw invalid(where, `resources is ${show(value)}; expected an object of resource name → capacity`);
  for (const [name, capacity] of Object.entries(value)) {
    if (!TYPE_NAME.test(name)) throw invalid(where, `resource name ${show(name)} must be 1–64 characters of [A-Za-z0-9_.:+-]`);
    resources.set(name, checkCount(where, `resource ${name}'s capacity `, capacity));
  }
  return resources;
}

function checkCost(where: string, context: string, value: unknown, resources: ReadonlyMap<string, number>): boolean {
  if (value === undefined) return false;
  if (!isRecord(value)) throw invalid(where, `${context}cost is ${show(value)}; expected an object of resource name → amount`);
  let positive = false;
  for (const [resource, amount] of Object.entries(value)) {
    const capacity = resources.get(resource);
    if (capacity === undefined) {
      const known = resources.size === 0 ? 'the parent declares no resources' : `resources: ${[...resources.keys()].join(', ')}`;
      throw invalid(where, `${context}cost names an unknown resource ${show(resource)} (${known})`);
    }
    const n = checkCount(where, `${context}cost of ${resource} `, amount);
    if (n > capacity) throw invalid(where, `${context}one instance costs ${n} ${resource} but the parent has ${capacity}: none could ever be created`);
    if (n > 0) positive = true;
  }
  return positive;
}

function checkAttributes(where: string, context: string, value: unknown): void {
  if (value === undefined) return;
  if (!isRecord(value)) throw invalid(where, `${context}attributes is ${show(value)}; expected an object of attribute name → { apply, description? }`);
  for (const [name, attribute] of Object.entries(value)) {
    const at = `${context}attribute ${show(name)} `;
    if (!TYPE_NAME.test(name)) throw invalid(where, `${context}attribute name ${show(name)} must be 1–64 characters of [A-Za-z0-9_.:+-]`);
    if (!isRecord(attribute)) throw invalid(where, `${at}is ${show(attribute)}; expected { apply(instance, value), description? }`);
    checkKeys(where, at, attribute, ATTRIBUTE_KEYS);
    if (typeof attribute.apply !== 'function') throw invalid(where, `${at}has no apply function (it is ${show(attribute.apply)})`);
    checkOptionalString(where, at, 'description', attribute.description);
  }
}

/** A type's `group` (types.ts `GroupSharing`): a word, or `{ attr }` naming one of the type's own attributes. */
function checkGroup(where: string, context: string, value: unknown, attributes: unknown): void {
  if (value === undefined) return;
  if (typeof value === 'string' && GROUP_WORDS.has(value)) return;
  const expected = `expected 'instance', 'type', 'parent' or { attr: NAME }`;
  if (!isRecord(value)) throw invalid(where, `${context}group is ${show(value)}; ${expected}`);
  checkKeys(where, `${context}group `, value, new Set(['attr']));
  const attr = value.attr;
  const names = isRecord(attributes) ? Object.keys(attributes) : [];
  if (typeof attr !== 'string' || !names.includes(attr)) {
    throw invalid(where, `${context}group.attr is ${show(attr)}; it must name one of the type's attributes (${names.length === 0 ? 'it has none' : names.join(', ')})`);
  }
}

function checkType(where: string, index: number, value: unknown, resources: ReadonlyMap<string, number>, seen: Set<string>): void {
  if (!isRecord(value)) throw invalid(where, `types[${index}] is ${show(value)}; expected an object with name and create`);
  const name = value.name;
  if (typeof name !== 'string' || !TYPE_NAME.test(name)) {
    throw invalid(where, `types[${index}] has name ${show(name)}; type names are 1–64 characters of [A-Za-z0-9_.:+-]`);
  }
  const context = `type ${show(name)} `;
  if (seen.has(name)) throw invalid(where, `${context}is declared twice`);
  seen.add(name);
  checkKeys(where, context, value, TYPE_KEYS);
  checkOptionalString(where, context, 'label', value.label);
  checkOptionalString(where, context, 'description', value.description);
  if (typeof value.create !== 'function') throw invalid(where, `${context}has no create function (it is ${show(value.create)})`);
  const costly = checkCost(where, context, value.cost, resources);
  const bounded = value.maxInstances !== undefined;
  if (bounded) checkCount(where, `${context}maxInstances `, value.maxInstances);
  if (!costly && !bounded) throw invalid(where, `${context}is unbounded: give it maxInstances or a positive cost in one of the parent's resources`);
  checkAttributes(where, context, value.attributes);
  checkGroup(where, context, value.group, value.attributes);
}

/**
 * Checks that `value` is a well-formed parent (module TSDoc lists the rules).
 * @param where names the module in messages (its spec).
 * @returns `value`, typed.
 * @throws {VfioUserError} EINVAL naming the first problem found.
 */
export function validateParent(value: unknown, where: string): MdevParent {
  if (!isRecord(value)) throw invalid(where, `is ${show(value)}; expected an object { name, resources?, types }`);
  checkKeys(where, '', value, PARENT_KEYS);
  const name = value.name;
  if (typeof name !== 'string' || !PARENT_NAME.test(name) || RESERVED_PARENT_NAMES.has(name)) {
    throw invalid(where, `name ${show(name)} must be 1–64 characters of [A-Za-z0-9_.:-], and not ., .. or scripts.d`);
  }
  const resources = checkResources(where, value.resources);
  if (!Array.isArray(value.types) || value.types.length === 0) throw invalid(where, `${name} offers no types (types is ${show(value.types)}); expected a non-empty array`);
  const seen = new Set<string>();
  const types: unknown[] = value.types;
  for (let index = 0; index < types.length; index++) checkType(where, index, types[index], resources, seen); // holes included
  return value as unknown as MdevParent;
}

/**
 * The type of `parent` named `name` (short name), if any.
 * @returns undefined when the parent has no such type.
 */
export function findType(parent: MdevParent, name: string): MdevType | undefined {
  return parent.types.find((t) => t.name === name);
}

/**
 * The short name of type id `mdevType` (`<parent>-<name>`) when it is one of `parent`'s types.
 * @returns undefined when the id is not `<parent.name>-…` or names no type of this parent.
 */
export function splitTypeId(parent: MdevParent, mdevType: string): string | undefined {
  const prefix = `${parent.name}-`;
  if (!mdevType.startsWith(prefix)) return undefined;
  const name = mdevType.slice(prefix.length);
  return findType(parent, name) ? name : undefined;
}

/** The type id `<parent>-<name>` of one of `parent`'s types. */
export function typeId(parent: MdevParent, name: string): string {
  return `${parent.name}-${name}`;
}
