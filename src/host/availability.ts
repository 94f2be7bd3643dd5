/**
 * `available_instances` of a parent's types, from its resource model: every
 * type draws on the parent's shared resources (as vGPU profiles share one
 * GPU's memory), so creating an instance of one type lowers the availability
 * of every type that needs the same resource; `maxInstances` caps a type on
 * its own. Pure arithmetic on a validated parent (`parent-validate.ts`):
 * capacities and costs are non-negative integers and every type is bounded.
 */
import { VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import type { TypeInfo } from './api.js';
import { DEVICE_API, type MdevParent, type MdevType } from './types.js';

/** How much of each resource the active instances use, by resource name (type short name → count; never throws). */
export function resourceUsage(parent: MdevParent, active: ReadonlyMap<string, number>): Map<string, number> {
  const used = new Map<string, number>(Object.keys(parent.resources ?? {}).map((r) => [r, 0]));
  for (const type of parent.types) {
    const count = active.get(type.name) ?? 0;
    if (count === 0) continue;
    for (const [resource, amount] of Object.entries(type.cost ?? {})) used.set(resource, (used.get(resource) ?? 0) + count * amount);
  }
  return used;
}

/** How many more instances of `type` fit, given the resources `used` and `count` instances of it active. */
function availableFor(parent: MdevParent, type: MdevType, used: ReadonlyMap<string, number>, count: number): number {
  let available = type.maxInstances === undefined ? Number.POSITIVE_INFINITY : type.maxInstances - count;
  for (const [resource, amount] of Object.entries(type.cost ?? {})) {
    if (amount === 0) continue;
    const free = (parent.resources?.[resource] ?? 0) - (used.get(resource) ?? 0);
    available = Math.min(available, Math.floor(free / amount));
  }
  return Math.max(0, available);
}

/**
 * `available_instances` of each of `parent`'s types (by short name), with
 * `active` instances running (type short name → count; types absent count 0,
 * names that are not the parent's types are ignored). Never negative: a
 * parent whose running instances exceed its capacity (its module changed
 * between two host runs) reports 0 until enough of them stop.
 * @param parent a parent that passed validation (every type bounded).
 */
export function availableInstances(parent: MdevParent, active: ReadonlyMap<string, number>): Map<string, number> {
  const used = resourceUsage(parent, active);
  return new Map(parent.types.map((type) => [type.name, availableFor(parent, type, used, active.get(type.name) ?? 0)]));
}

/**
 * Refuses to create one more instance of `typeName` when none is available.
 * @throws {VfioUserError} ENOSPC naming the type, what limits it (a resource and what is left of it, or
 *   maxInstances) and the active instances; ENOENT when the parent has no such type.
 */
export function checkAvailable(parent: MdevParent, typeName: string, active: ReadonlyMap<string, number>): void {
  const type = parent.types.find((t) => t.name === typeName);
  if (!type) throw new VfioUserError(`parent ${parent.name} has no type ${typeName}`, { errno: Errno.ENOENT });
  const used = resourceUsage(parent, active);
  const count = active.get(typeName) ?? 0;
  if (availableFor(parent, type, used, count) > 0) return;
  const id = `${parent.name}-${typeName}`;
  if (type.maxInstances !== undefined && count >= type.maxInstances) {
    throw new VfioUserError(`${id}: no available instances (${count} active, at most ${type.maxInstances} of this type)`, { errno: Errno.ENOSPC });
  }
  const short = Object.entries(type.cost ?? {}).find(([resource, amount]) => amount > 0 && (parent.resources?.[resource] ?? 0) - (used.get(resource) ?? 0) < amount);
  const [resource, amount] = short ?? ['?', 0];
  const capacity = parent.resources?.[resource] ?? 0;
  const left = capacity - (used.get(resource) ?? 0);
  throw new VfioUserError(`${id}: no available instances (one needs ${amount} ${resource}; ${Math.max(0, left)} of ${capacity} left with the instances active)`, { errno: Errno.ENOSPC });
}

/**
 * What `types` reports for each of `parent`'s types, in declaration order:
 * id, name (the type's label, else its short name), description (empty when
 * none), device API, `available_instances` with `active` instances running,
 * and the attributes it accepts in declaration order. Never throws.
 */
export function typeInfos(parent: MdevParent, active: ReadonlyMap<string, number>): TypeInfo[] {
  const available = availableInstances(parent, active);
  return parent.types.map((type) => ({
    parent: parent.name,
    mdevType: `${parent.name}-${type.name}`,
    name: type.label ?? type.name,
    description: type.description ?? '',
    deviceApi: DEVICE_API,
    availableInstances: available.get(type.name) ?? 0,
    attributes: Object.entries(type.attributes ?? {}).map(([name, attribute]) => ({ name, description: attribute.description ?? '' })),
  }));
}
