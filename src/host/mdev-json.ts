/**
 * The outputs of `mdevctl list` and `mdevctl types`, byte for byte as mdevctl
 * 1.x prints them (`list_command`, `types_command`, `format_json` in its
 * src/main.rs, `MDev::to_text` / `to_json` and `MDevType::to_json` in
 * src/mdev.rs, checked against its testdata/list and testdata/types):
 *
 * - JSON is serde_json's `to_string_pretty` (two-space indent) with NO
 *   trailing newline; an empty result is `[]`.
 * - Parents are sorted in byte order (a BTreeMap), devices by UUID within a
 *   parent, types by type id within a parent.
 * - `list --dumpjson`: `[{"<parent>": [{"<uuid>": {config}}, …], …}]` (one
 *   object holding every parent); with `-u UUID` and exactly one match, just
 *   that device's config object (what a definition file holds).
 * - `list` text: `<uuid> <parent> <type> <auto|manual>` plus ` (defined)` for a
 *   running device that has a definition under its parent, or ` (active)` for a
 *   definition (`-d`) whose device runs; `-v` adds `  Attrs:` and
 *   `    @{i}: {"name":"value"}` lines when there are attributes.
 * - `types --dumpjson`: `[{"<parent>": [{"<type>": {available_instances,
 *   device_api, name?, description?}}]}]`, `name`/`description` only when not
 *   empty; text: the parent, then per type `  <type>`, `    Available
 *   instances: N`, `    Device API: …`, `    Name: …`, `    Description: …`
 *   (the last two only when not empty; a description's newlines become `, `).
 *
 * Where our host knows more than mdevctl: a running instance's attributes are
 * the ones it was started with (mdevctl only sees them through a callout, else
 * prints `"attrs": []`).
 */
import type { DefinitionEntry, TypeInfo } from './api.js';
import type { InstanceStatus, MdevConfig } from './types.js';
import { StartMode } from './types.js';
import { formatAttrsText } from './attrs.js';
import { mdevConfigJson } from './mdev-config.js';
import { compareBytes } from './definitions.js';

/** One device as `list` prints it (running or defined). */
export interface ListRow {
  uuid: string;
  parent: string;
  config: MdevConfig;
  /** ` (defined)` / ` (active)` suffix of the text line: `''` for none. */
  mark: '' | 'defined' | 'active';
}

/**
 * The rows of `list` (running instances): `start` from the instance's
 * definition (`manual` when it has none, as mdevctl), marked `defined` when a
 * definition exists. Every instance given is listed; which states to pass is the
 * caller's choice. Never throws.
 */
export function rowsOfInstances(instances: readonly InstanceStatus[]): ListRow[] {
  return instances.map((instance) => ({
    uuid: instance.uuid,
    parent: instance.parent,
    config: { mdev_type: instance.mdevType, start: instance.start ?? StartMode.MANUAL, attrs: [...instance.attrs] },
    mark: instance.defined ? 'defined' : '',
  }));
}

/** The rows of `list --defined`: marked `active` when the instance runs. Never throws. */
export function rowsOfDefinitions(definitions: readonly DefinitionEntry[]): ListRow[] {
  return definitions.map((entry) => ({
    uuid: entry.uuid,
    parent: entry.parent,
    config: entry.config,
    mark: entry.active ? 'active' : '',
  }));
}

/** Rows grouped by parent, parents and UUIDs in byte order (mdevctl's BTreeMap + sort by UUID). */
function groupByParent<T extends { parent: string }>(items: readonly T[], key: (item: T) => string): [string, T[]][] {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const group = groups.get(item.parent);
    if (group === undefined) groups.set(item.parent, [item]);
    else group.push(item);
  }
  const sorted = [...groups.entries()].sort(([a], [b]) => compareBytes(a, b));
  for (const [, group] of sorted) group.sort((a, b) => compareBytes(key(a), key(b)));
  return sorted;
}

/** `list`'s rows in output order: by parent, then UUID. Never throws. */
export function sortRows(rows: readonly ListRow[]): ListRow[] {
  return groupByParent(rows, (row) => row.uuid).flatMap(([, group]) => group);
}

/** One text line (plus `-v` attributes) of `list`. @throws {InvalidArgumentError} EINVAL: a malformed attribute. */
export function formatListRow(row: ListRow, verbose = false): string {
  const mark = row.mark === '' ? '' : ` (${row.mark})`;
  const line = `${row.uuid} ${row.parent} ${row.config.mdev_type} ${row.config.start}${mark}\n`;
  return verbose ? line + formatAttrsText(row.config.attrs) : line;
}

/**
 * `list [-v]` text, exactly mdevctl's: one line per device (each ending in a
 * newline), sorted by parent then UUID; `''` when there is none.
 *
 * @throws {InvalidArgumentError} EINVAL: an attribute is not a single-key object.
 */
export function formatListText(rows: readonly ListRow[], options: { verbose?: boolean } = {}): string {
  return sortRows(rows).map((row) => formatListRow(row, options.verbose === true)).join('');
}

/**
 * serde_json's pretty form of `[{"<parent>": [...], …}]` with parents in the
 * given order (a JS object would put integer-like keys such as `"10"` first).
 */
function prettyParents(groups: readonly [string, unknown[]][]): string {
  if (groups.length === 0) return '[]';
  const members = groups.map(([parent, items]) => `    ${JSON.stringify(parent)}: ${JSON.stringify(items, null, 2).replaceAll('\n', '\n    ')}`);
  return `[\n  {\n${members.join(',\n')}\n  }\n]`;
}

/**
 * `list [-d] [-u UUID] [-p PARENT] --dumpjson`, exactly mdevctl's (no trailing
 * newline). Pass `options.uuid` when the user gave `-u`: a single matching
 * device is then printed as its bare config object, ready to be saved as a
 * definition or given to `--jsonfile`; several (the same UUID defined under
 * several parents) keep the nested form.
 *
 * @throws {InvalidArgumentError} EINVAL: an attribute is not a single-key object.
 */
export function listJson(rows: readonly ListRow[], options: { uuid?: string } = {}): string {
  const groups = groupByParent(rows, (row) => row.uuid);
  const first = groups[0]?.[1][0];
  if (options.uuid !== undefined && rows.length === 1 && first !== undefined) {
    return JSON.stringify(mdevConfigJson(first.config), null, 2);
  }
  return prettyParents(groups.map(([parent, group]) => [parent, group.map((row) => ({ [row.uuid]: mdevConfigJson(row.config) }))]));
}

/** What `types` prints of a type: {@link TypeInfo}, with any `device_api` string. */
export type TypeRow = Pick<TypeInfo, 'parent' | 'mdevType' | 'name' | 'description' | 'availableInstances'> & { deviceApi: string };

/** A sysfs-like text value as mdevctl reads it: trimmed; a description's newlines become `, `. */
function cleanText(text: string, joinLines: boolean): string {
  const trimmed = text.trim();
  return joinLines ? trimmed.replaceAll('\n', ', ') : trimmed;
}

/** `types [-p PARENT] --dumpjson`, exactly mdevctl's (no trailing newline; `[]` for none). Never throws. */
export function typesJson(types: readonly TypeRow[]): string {
  const groups = groupByParent(types, (type) => type.mdevType);
  return prettyParents(groups.map(([parent, group]) => [parent, group.map((type) => {
    const info: Record<string, unknown> = { available_instances: type.availableInstances, device_api: type.deviceApi };
    const name = cleanText(type.name, false);
    const description = cleanText(type.description, true);
    if (name !== '') info['name'] = name;
    if (description !== '') info['description'] = description;
    return { [type.mdevType]: info };
  })]));
}

/** `types [-p PARENT]` text, exactly mdevctl's (every line ends in a newline; `''` for none). Never throws. */
export function formatTypesText(types: readonly TypeRow[]): string {
  let text = '';
  for (const [parent, group] of groupByParent(types, (type) => type.mdevType)) {
    text += `${parent}\n`;
    for (const type of group) {
      text += `  ${type.mdevType}\n    Available instances: ${type.availableInstances}\n    Device API: ${type.deviceApi}\n`;
      const name = cleanText(type.name, false);
      const description = cleanText(type.description, true);
      if (name !== '') text += `    Name: ${name}\n`;
      if (description !== '') text += `    Description: ${description}\n`;
    }
  }
  return text;
}
