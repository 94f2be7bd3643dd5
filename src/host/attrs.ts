/**
 * Editing a definition's ordered attribute list as `mdevctl modify` does
 * (`MDev::add_attribute` / `delete_attribute` in mdevctl's src/mdev.rs):
 *
 * - `--addattr NAME --value V` appends; with `--index I` it inserts at I
 *   (0-based; I may equal the length, which appends). I > length is refused.
 * - `--delattr` without `--index` removes the LAST attribute (and succeeds on
 *   an empty list, changing nothing); with `--index I` it removes entry I
 *   (0-based), and I ≥ length is refused.
 * - A negative or non-integer index never reaches mdevctl (clap parses a
 *   `u32`: a usage error, exit 2); here it is EINVAL like any bad index.
 *
 * The functions never modify their input: they return a new array.
 */
import { InvalidArgumentError } from '../errors.js';
import type { MdevAttr } from './types.js';

/** Longest attribute name accepted (a sysfs file name's limit). */
export const MAX_ATTR_NAME = 255;

/**
 * Why `name` cannot name a sysfs entry (an attribute, a type), or undefined if
 * it can: it must be a non-empty string of at most {@link MAX_ATTR_NAME}
 * characters, without `/`, whitespace or control characters (which would also
 * garble `list`'s text), and not `.` or `..`. `what` starts the message
 * (`'an attribute name'`). Never throws.
 */
export function sysfsNameProblem(name: unknown, what: string): string | undefined {
  if (typeof name !== 'string') return `${what} must be a string`;
  if (name.length === 0) return `${what} must not be empty`;
  if (name.length > MAX_ATTR_NAME) return `${what} '${name.slice(0, 32)}…' is longer than ${MAX_ATTR_NAME} characters`;
  // eslint-disable-next-line no-control-regex
  if (/[\s/\u0000-\u001f\u007f]/.test(name) || name === '.' || name === '..') {
    return `${what} ${JSON.stringify(name)} is invalid (no '/', spaces or control characters)`;
  }
  return undefined;
}

/**
 * Why `name` cannot be an attribute name ({@link sysfsNameProblem}: mdevctl
 * writes it as a file name under the device), or undefined. Never throws.
 */
export function attrNameProblem(name: unknown): string | undefined {
  return sysfsNameProblem(name, 'an attribute name');
}

/**
 * The attribute's name and value (it is a single-key object).
 *
 * @throws {InvalidArgumentError} EINVAL: `attr` has no key or several.
 */
export function attrEntry(attr: MdevAttr): [string, string] {
  const entries = Object.entries(attr);
  const first = entries[0];
  if (entries.length !== 1 || first === undefined) {
    throw new InvalidArgumentError(`an attribute must be an object with exactly one name (got ${entries.length})`);
  }
  return first;
}

/** One line naming a bad index and the valid ones, as mdevctl's "Attribute index N is invalid" + hint. */
function badIndex(index: number, count: number, adding: boolean): InvalidArgumentError {
  const valid = adding ? `0-${count}` : count === 0 ? 'none: the definition has no attributes' : `0-${count - 1}`;
  return new InvalidArgumentError(`Attribute index ${index} is invalid (${count} attribute${count === 1 ? '' : 's'}; valid: ${valid})`);
}

function checkIndex(index: number, count: number, adding: boolean): void {
  if (!Number.isSafeInteger(index) || index < 0 || index > count || (!adding && index === count)) {
    throw badIndex(index, count, adding);
  }
}

/**
 * `modify --addattr NAME --value VALUE [--index INDEX]`: a copy of `attrs`
 * with `{NAME: VALUE}` appended, or inserted before entry `index` (0-based;
 * `index === attrs.length` appends). The same name may appear several times.
 *
 * @throws {InvalidArgumentError} EINVAL: `index` is negative, not an integer or
 *   greater than `attrs.length`; `name` is not a valid attribute name
 *   ({@link attrNameProblem}); `value` is not a string.
 */
export function addAttr(attrs: readonly MdevAttr[], name: string, value: string, index?: number): MdevAttr[] {
  const problem = attrNameProblem(name);
  if (problem !== undefined) throw new InvalidArgumentError(problem);
  if (typeof value !== 'string') throw new InvalidArgumentError(`the value of attribute '${name}' must be a string`);
  const added: MdevAttr = { [name]: value };
  if (index === undefined) return [...attrs, added];
  checkIndex(index, attrs.length, true);
  return [...attrs.slice(0, index), added, ...attrs.slice(index)];
}

/**
 * `modify --delattr [--index INDEX]`: a copy of `attrs` without entry `index`
 * (0-based), or without the last entry when `index` is undefined (an empty
 * list then stays empty, as mdevctl's `pop()` on an empty list succeeds).
 *
 * @throws {InvalidArgumentError} EINVAL: `index` is negative, not an integer,
 *   or not below `attrs.length`.
 */
export function delAttr(attrs: readonly MdevAttr[], index?: number): MdevAttr[] {
  if (index === undefined) return attrs.slice(0, Math.max(0, attrs.length - 1));
  checkIndex(index, attrs.length, false);
  return [...attrs.slice(0, index), ...attrs.slice(index + 1)];
}

/**
 * `list -v`'s attribute block, exactly mdevctl's `fmt_attrs`: nothing for no
 * attributes, else `  Attrs:\n` then `    @{I}: {"NAME":"VALUE"}\n` per
 * entry (name and value printed raw, not JSON-escaped, as mdevctl does).
 *
 * @throws {InvalidArgumentError} EINVAL: an entry is not a single-key object.
 */
export function formatAttrsText(attrs: readonly MdevAttr[]): string {
  if (attrs.length === 0) return '';
  const lines = attrs.map((attr, i) => {
    const [name, value] = attrEntry(attr);
    return `    @{${i}}: {"${name}":"${value}"}\n`;
  });
  return `  Attrs:\n${lines.join('')}`;
}
