/**
 * What `vfio-user mdev list` and `types` print: mdevctl's text and
 * `--dumpjson` (src/host/mdev-json.ts, byte for byte), and our `-vv` form,
 * mdevctl's `-v` lines of each device followed by its runtime state:
 *
 * ```text
 * 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 memory-pool memory-pool-64M manual (defined)
 *   Attrs:
 *     @{0}: {"fill":"0xff"}
 *   State: active
 *   Socket: /run/user/1000/vfio-user/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001.sock
 *   Group: memory-pool/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001
 *   Client: pid 4242, uid 1000, gid 1000, since 2026-12-07T15:30:00.000Z
 *   Migration: RUNNING
 * ```
 *
 * `Client: none` when nobody is connected; `Migration:` only for a device that
 * supports migration; `Restarts:` when its worker was restarted; `Failure:` for
 * a failed instance; a definition that is not running shows `State: inactive`.
 * `Group:` is the instance's isolation group (`mdev groups` shows them all).
 */
import type { DefinitionEntry, TypeInfo } from '../../host/api.js';
import { formatListRow, formatListText, listJson, rowsOfDefinitions, rowsOfInstances, sortRows, typesJson, formatTypesText, type ListRow } from '../../host/mdev-json.js';
import type { GroupView, InstanceStatus } from '../../host/types.js';
import { table } from '../common.js';

/** How `list` prints. */
export interface ListingOptions {
  /** 0: mdevctl's line; 1 (`-v`): its attributes too; 2 (`-vv`): our runtime state too. */
  verbose?: number;
  /** mdevctl's JSON instead of text (`verbose` is then ignored, as by mdevctl). */
  dumpjson?: boolean;
  /** The `-u` given: with one match, `--dumpjson` prints the bare config object. */
  uuid?: string;
}

/** What the host listed: running instances, and with `definitions` the `-d` listing (instances then only feed `-vv`). */
export interface Listing {
  instances: readonly InstanceStatus[];
  definitions?: readonly DefinitionEntry[];
}

/**
 * The `-vv` lines of one instance (two-space indent, each ending in a newline);
 * `  State: inactive\n` for none. Never throws.
 */
export function formatStatusLines(instance: InstanceStatus | undefined): string {
  if (instance === undefined) return '  State: inactive\n';
  const lines = [`State: ${instance.state}`, `Socket: ${instance.socket}`];
  if (instance.group !== undefined) lines.push(`Group: ${instance.group}`);
  const client = instance.client;
  lines.push(client === undefined ? 'Client: none' : `Client: pid ${client.pid}, uid ${client.uid}, gid ${client.gid}, since ${new Date(client.since).toISOString()}`);
  if (instance.migrationState !== undefined) lines.push(`Migration: ${instance.migrationState}`);
  if (instance.restarts > 0) lines.push(`Restarts: ${instance.restarts}`);
  if (instance.failure !== undefined) lines.push(`Failure: ${instance.failure}`);
  return lines.map((line) => `  ${line}\n`).join('');
}

/** The instance a row stands for (same parent and UUID), if it runs. */
function instanceOf(row: ListRow, instances: readonly InstanceStatus[]): InstanceStatus | undefined {
  return instances.find((i) => i.uuid === row.uuid && i.parent === row.parent);
}

/**
 * `list`'s output: mdevctl's text (`-v`: with attributes) or `--dumpjson`
 * (no trailing newline, `[]` when empty), or with `-vv` each device's text
 * followed by {@link formatStatusLines}. `''` when nothing matched (text).
 * @throws {InvalidArgumentError} EINVAL: an attribute the host reported is not a single-key object.
 */
export function formatListing(listing: Listing, options: ListingOptions): string {
  const rows = listing.definitions === undefined ? rowsOfInstances(listing.instances) : rowsOfDefinitions(listing.definitions);
  if (options.dumpjson) return listJson(rows, options.uuid === undefined ? {} : { uuid: options.uuid });
  const verbose = options.verbose ?? 0;
  if (verbose < 2) return formatListText(rows, { verbose: verbose === 1 });
  return sortRows(rows)
    .map((row) => formatListRow(row, true) + formatStatusLines(instanceOf(row, listing.instances)))
    .join('');
}

/** `types`' output: mdevctl's text or `--dumpjson` (no trailing newline). Never throws. */
export function formatTypeListing(types: readonly TypeInfo[], options: { dumpjson: boolean }): string {
  return options.dumpjson ? typesJson(types) : formatTypesText(types);
}

/**
 * `groups`' text: a table, one row per member (the group's columns on its first row only):
 *
 * ```text
 * GROUP              PARENT     VIABLE  OWNER                 MEMBER                                STATE     CLAIMED
 * gpio-bank/card=c1  gpio-bank  yes     pid 4242, uid 1000    0c0ffee0-0000-4000-8000-000000000001  active    yes
 *                                                             0c0ffee0-0000-4000-8000-000000000002  active    yes
 * ```
 *
 * `OWNER` is `-` for a group nobody owns. `''` when there is no group. Never throws.
 */
export function formatGroups(groups: readonly GroupView[]): string {
  if (groups.length === 0) return '';
  const rows: string[][] = [['GROUP', 'PARENT', 'VIABLE', 'OWNER', 'MEMBER', 'STATE', 'CLAIMED']];
  for (const g of groups) {
    const owner = g.owner === null ? '-' : `pid ${g.owner.pid}, uid ${g.owner.uid}`;
    g.members.forEach((m, i) => {
      const head = i === 0 ? [g.group, g.parent, g.viable ? 'yes' : 'no', owner] : ['', '', '', ''];
      rows.push([...head, m.uuid, m.state, m.claimed ? 'yes' : 'no']);
    });
  }
  return table(rows).map((line) => `${line}\n`).join('');
}
