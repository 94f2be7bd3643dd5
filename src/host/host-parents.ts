/**
 * The parents a device host has loaded, and the lookups every operation
 * starts with: a parent by name, a type by id, the attribute names a type
 * accepts. Errors use mdevctl's wording where it has one.
 */
import { InvalidArgumentError, VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { attrEntry } from './attrs.js';
import { splitTypeId, type LoadedParent } from './parent-loader.js';
import type { MdevAttr } from './types.js';

/** A type resolved against the loaded parents. */
export interface ResolvedType {
  loaded: LoadedParent;
  /** The type's short name. */
  typeName: string;
}

/** The loaded parents, by name. */
export class ParentRegistry {
  readonly #byName = new Map<string, LoadedParent>();

  /** @throws {VfioUserError} EEXIST when two parents have the same name. */
  constructor(parents: readonly LoadedParent[]) {
    for (const loaded of parents) {
      const name = loaded.parent.name;
      const other = this.#byName.get(name);
      if (other) throw new VfioUserError(`two parents are named ${name}: ${other.moduleUrl} and ${loaded.moduleUrl}`, { errno: Errno.EEXIST });
      this.#byName.set(name, loaded);
    }
  }

  /** Every parent, in load order. */
  all(): LoadedParent[] {
    return [...this.#byName.values()];
  }

  /** The parent named `name`, if loaded. */
  find(name: string): LoadedParent | undefined {
    return this.#byName.get(name);
  }

  /**
   * The parent named `name`.
   * @throws {VfioUserError} ENOENT: "Unable to find parent device 'NAME'" (with a case-insensitive suggestion, as mdevctl).
   */
  get(name: string): LoadedParent {
    const loaded = this.#byName.get(name);
    if (loaded) return loaded;
    const near = [...this.#byName.keys()].find((n) => n.toLowerCase() === name.toLowerCase());
    const known = [...this.#byName.keys()];
    const hint = near ? `. Did you mean '${near}'?` : ` (parents: ${known.length === 0 ? 'none loaded' : known.join(', ')})`;
    throw new VfioUserError(`Unable to find parent device '${name}'${hint}`, { errno: Errno.ENOENT });
  }

  /**
   * Type id `mdevType` of parent `parentName`.
   * @throws {VfioUserError} ENOENT for an unknown parent or a type the parent does not offer.
   */
  resolve(parentName: string, mdevType: string): ResolvedType {
    const loaded = this.get(parentName);
    const typeName = splitTypeId(loaded.parent, mdevType);
    if (typeName === undefined) {
      const offered = loaded.parent.types.map((t) => `${loaded.parent.name}-${t.name}`).join(', ');
      throw new VfioUserError(`Parent ${parentName} does not support mdev type ${mdevType} (it offers ${offered})`, { errno: Errno.ENOENT });
    }
    return { loaded, typeName };
  }

  /**
   * Refuses attribute names the type does not accept (their values are checked when the instance is built).
   * @throws {InvalidArgumentError} EINVAL naming the attribute's index and name and the names accepted.
   */
  checkAttrNames(resolved: ResolvedType, attrs: readonly MdevAttr[]): void {
    const type = resolved.loaded.parent.types.find((t) => t.name === resolved.typeName);
    const accepted = Object.keys(type?.attributes ?? {});
    attrs.forEach((attr, index) => {
      const [name] = attrEntry(attr);
      if (!accepted.includes(name)) {
        const id = `${resolved.loaded.parent.name}-${resolved.typeName}`;
        throw new InvalidArgumentError(`attribute ${index} (${name}): not an attribute of ${id} (${accepted.length === 0 ? 'it accepts none' : `it accepts ${accepted.join(', ')}`})`);
      }
    });
  }
}
