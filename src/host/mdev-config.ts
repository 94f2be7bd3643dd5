/**
 * mdevctl's definition JSON (`/etc/mdevctl.d/<parent>/<uuid>`, `--jsonfile`,
 * `list -u UUID --dumpjson`), read and written as mdevctl 1.x does
 * (`MDev::load_from_json`, `add_attributes`, `to_json` in its src/mdev.rs):
 *
 * - Written with serde_json's `to_string_pretty`: keys `mdev_type`, `start`,
 *   `attrs` in that order, `attrs` always present (`[]` when empty), two-space
 *   indentation, and NO trailing newline. `JSON.stringify(…, null, 2)` writes
 *   the same bytes for these values (same string escapes).
 * - Read: `mdev_type` and `start` are required; `attrs` may be absent or
 *   `null` (no attributes); otherwise it must be an array of objects with
 *   exactly one key and a string value (mdevctl refuses `{"a": 5}`: "value must
 *   be of type str"). Other keys are ignored, as mdevctl ignores them.
 *
 * Where this is stricter than mdevctl (so a hand-edited mistake is reported
 * instead of silently changing meaning): `start` must be exactly `auto` or
 * `manual` (mdevctl treats anything but `"auto"`, even `"Auto"`, as manual);
 * `mdev_type` must be a string (mdevctl panics on a number) naming a sysfs
 * entry; attribute names must be valid sysfs names ({@link attrNameProblem}).
 */
import { InvalidArgumentError } from '../errors.js';
import { attrEntry, attrNameProblem, sysfsNameProblem } from './attrs.js';
import { StartMode, type MdevAttr, type MdevConfig } from './types.js';

/** Largest definition accepted, in bytes (mdevctl's are a few hundred). */
export const MAX_CONFIG_BYTES = 1 << 20;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)}`;
  if (typeof value === 'object') return 'an object';
  return `${typeof value} ${String(value)}`;
}

function parseAttr(value: unknown, index: number): MdevAttr {
  if (!isPlainObject(value)) {
    throw new Error(`attrs[${index}] is ${describe(value)}, not an object with one attribute ({"name": "value"})`);
  }
  const keys = Object.keys(value);
  if (keys.length !== 1) throw new Error(`attrs[${index}] has ${keys.length} keys; each attribute is an object with exactly one`);
  const name = keys[0] as string;
  const problem = attrNameProblem(name);
  if (problem !== undefined) throw new Error(`attrs[${index}]: ${problem}`);
  const attrValue = value[name];
  if (typeof attrValue !== 'string') {
    throw new Error(`attrs[${index}] "${name}": the value is ${describe(attrValue)}; it must be a string (write "${String(attrValue)}")`);
  }
  return { [name]: attrValue };
}

function parseAttrs(value: unknown): MdevAttr[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new Error(`"attrs" is ${describe(value)}, not an array`);
  return value.map((item, i) => parseAttr(item, i));
}

function configOf(value: unknown): MdevConfig {
  if (!isPlainObject(value)) throw new Error(`the definition is ${describe(value)}, not an object`);
  const type = value['mdev_type'];
  if (type === undefined || type === null) throw new Error('"mdev_type" is missing');
  const typeProblem = sysfsNameProblem(type, '"mdev_type"');
  if (typeProblem !== undefined) throw new Error(typeof type === 'string' ? typeProblem : `"mdev_type" is ${describe(type)}, not a string`);
  const start = value['start'];
  if (start === undefined || start === null) throw new Error('"start" is missing');
  if (start !== StartMode.AUTO && start !== StartMode.MANUAL) {
    throw new Error(`"start" is ${describe(start)}; it must be "auto" or "manual"`);
  }
  return { mdev_type: type as string, start, attrs: parseAttrs(value['attrs']) };
}

/**
 * Checks a parsed JSON value (from `JSON.parse`, a control-socket request…)
 * and returns it as a fresh {@link MdevConfig} holding only the three keys.
 *
 * @param where names the source in the message (a file path, `--jsonfile X`).
 * @throws {InvalidArgumentError} EINVAL, one line `<where>: <problem>`:
 *   not an object; `mdev_type` missing, not a string or not a valid name;
 *   `start` missing or not `auto`/`manual`; `attrs` not an array, or an entry
 *   not a single-key object with a string value or with an invalid name.
 */
export function validateMdevConfig(value: unknown, where: string): MdevConfig {
  try {
    return configOf(value);
  } catch (err) {
    throw new InvalidArgumentError(`${where}: ${(err as Error).message}`);
  }
}

/**
 * Parses a definition's text (a file's content, a `--jsonfile`), as mdevctl
 * reads it, with the stricter checks listed in the module comment.
 *
 * @param where names the source in the message.
 * @throws {InvalidArgumentError} EINVAL, one line `<where>: <problem>`: not
 *   JSON (the parser's message), larger than {@link MAX_CONFIG_BYTES}, or any
 *   problem {@link validateMdevConfig} reports.
 */
export function parseMdevConfig(text: string, where: string): MdevConfig {
  if (Buffer.byteLength(text) > MAX_CONFIG_BYTES) {
    throw new InvalidArgumentError(`${where}: larger than ${MAX_CONFIG_BYTES} bytes; not a definition`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    const reason = text.trim() === '' ? 'the file is empty' : `invalid JSON (${(err as Error).message})`;
    throw new InvalidArgumentError(`${where}: ${reason}`);
  }
  return validateMdevConfig(value, where);
}

/**
 * The JSON value mdevctl prints and stores for a config: `{mdev_type, start,
 * attrs}` in that key order, each attribute a fresh single-key object.
 *
 * @throws {InvalidArgumentError} EINVAL: an attribute is not a single-key object.
 */
export function mdevConfigJson(config: MdevConfig): { mdev_type: string; start: StartMode; attrs: MdevAttr[] } {
  return {
    mdev_type: config.mdev_type,
    start: config.start,
    attrs: config.attrs.map((attr) => {
      const [name, value] = attrEntry(attr);
      return { [name]: value };
    }),
  };
}

/**
 * A config as mdevctl writes it to its file and prints it for
 * `list -u UUID --dumpjson`: pretty JSON, two-space indent, no trailing newline.
 *
 * @throws {InvalidArgumentError} EINVAL: an attribute is not a single-key object.
 */
export function formatMdevConfig(config: MdevConfig): string {
  return JSON.stringify(mdevConfigJson(config), null, 2);
}
