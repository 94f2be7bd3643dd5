/**
 * The verbs of `vfio-user mdev` (and `lsmdev`), each a function of a
 * {@link HostApi} and the already-parsed options: what mdevctl 1.4's
 * `list`, `types`, `define`, `undefine`, `start`, `stop` and `modify` do,
 * asked of a device host instead of sysfs. Output is mdevctl's, byte for byte
 * (`--dumpjson`: its JSON without a trailing newline), unless `--json` asks for
 * the host's own shapes or `-vv` for the instances' runtime state.
 *
 * Checks mdevctl makes on the arguments alone (a `--jsonfile` needs a parent,
 * a transient start needs a type, …) are made here with mdevctl's words, before
 * the host is asked; every other failure is the host's one line and errno.
 */
import { readFileSync } from 'node:fs';
import type { DefineRequest, HostApi, ModifyRequest, StartRequest, StopResult } from '../../host/api.js';
import { parseMdevConfig } from '../../host/mdev-config.js';
import type { MdevConfig } from '../../host/types.js';
import { InvalidArgumentError, VfioUserError } from '../../errors.js';
import { Errno } from '../../protocol/errno.js';
import { CliError, describeError, toJson } from '../common.js';
import { formatGroups, formatListing, formatTypeListing, type ListingOptions } from './mdev-format.js';

/** Where the verbs write their results (stdout, or a test's buffer). */
export interface MdevOutput {
  /** Writes `text` as is (mdevctl's JSON has no trailing newline). */
  write(text: string): void;
}

/** stdout. */
export const stdoutOutput: MdevOutput = { write: (text) => void process.stdout.write(text) };

/** `--json`: the host's own shapes, one document; `-f/--force`: go on despite a vetoing pre-callout (mdevctl's). */
interface JsonOption {
  json?: boolean;
  force?: boolean;
}

/** Options of `list` (and `lsmdev`). */
export interface ListOptions extends JsonOption, ListingOptions {
  /** `-d`: definitions instead of running instances. */
  defined?: boolean;
  /** `--dumpjson`: mdevctl's JSON. */
  dumpjson?: boolean;
  uuid?: string;
  parent?: string;
}

/** Options of `types`. */
export interface TypesOptions extends JsonOption {
  parent?: string;
  dumpjson?: boolean;
}

/** Options of `define`. */
export interface DefineOptions extends JsonOption {
  uuid?: string;
  parent?: string;
  type?: string;
  auto?: boolean;
  jsonfile?: string;
}

/** Options of `undefine`. */
export interface UndefineOptions extends JsonOption {
  uuid: string;
  parent?: string;
}

/** Options of `start`. */
export interface StartOptions extends JsonOption {
  uuid?: string;
  parent?: string;
  type?: string;
  jsonfile?: string;
}

/** Options of `stop`. */
export interface StopOptions extends JsonOption {
  uuid: string;
  /** `--timeout`: how long a connected client is given to release the instance, ms. */
  timeout?: number;
}

/** Options of `groups`. */
export type GroupsOptions = JsonOption;

/** Options of `modify`. */
export interface ModifyOptions extends JsonOption {
  uuid: string;
  parent?: string;
  type?: string;
  auto?: boolean;
  manual?: boolean;
  addattr?: string;
  delattr?: boolean;
  index?: number;
  value?: string;
  jsonfile?: string;
}

/** A failure found in the arguments (mdevctl's words), EINVAL. */
function argumentError(message: string): CliError {
  return new CliError(message, { errno: Errno.EINVAL });
}

/**
 * Reads a `--jsonfile`: a definition in mdevctl's format, as mdevctl writes
 * them under `/etc/mdevctl.d/<parent>/<uuid>`.
 * @throws {CliError} the file's errno (ENOENT, EACCES, …) when it cannot be read;
 *   EINVAL when it is not a valid definition (the line names the file and the problem).
 */
export function readJsonFile(path: string): MdevConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'EIO';
    const errno = Object.hasOwn(Errno, code) ? Errno[code as keyof typeof Errno] : Errno.EIO;
    throw new CliError(`Unable to read file ${JSON.stringify(path)}: ${code}`, { errno, cause: error });
  }
  try {
    return parseMdevConfig(text, path);
  } catch (error) {
    if (error instanceof VfioUserError) throw new CliError(describeError(error), { cause: error });
    throw new InvalidArgumentError(`${path}: ${describeError(error)}`);
  }
}

/**
 * `list [-d] [-u UUID] [-p PARENT] [-v[v]] [--dumpjson | --json]`: running
 * instances (with `-d`, definitions), mdevctl's text or `--dumpjson`; `--json`
 * prints the host's `InstanceStatus[]` (with `-d`, `DefinitionEntry[]`);
 * `-vv` adds each instance's state, socket, group, client and migration state.
 * An empty result is not an error (nothing printed, or `[]`).
 * @throws {VfioUserError} what the host's `list` throws (EPERM, ENOTCONN, …).
 */
export async function mdevList(api: HostApi, options: ListOptions, out: MdevOutput = stdoutOutput): Promise<void> {
  const filter = { ...(options.uuid === undefined ? {} : { uuid: options.uuid }), ...(options.parent === undefined ? {} : { parent: options.parent }) };
  const listed = await api.list({ ...filter, ...(options.defined ? { defined: true } : {}) });
  if (options.json) {
    out.write(`${toJson(options.defined ? listed.definitions : listed.instances)}\n`);
    return;
  }
  // -d -vv shows the running state of defined instances: one more question to the host.
  const running = options.defined && (options.verbose ?? 0) >= 2 && !options.dumpjson ? (await api.list(filter)).instances : listed.instances;
  const listing = options.defined ? { definitions: listed.definitions, instances: running } : { instances: listed.instances };
  out.write(formatListing(listing, options));
}

/**
 * `types [-p PARENT] [--dumpjson | --json]`: every type of every parent (or
 * of one) with its available instances, mdevctl's text or JSON; `--json`
 * prints the host's `TypeInfo[]` (with the attributes each type accepts).
 * @throws {VfioUserError} what the host's `types` throws.
 */
export async function mdevTypes(api: HostApi, options: TypesOptions, out: MdevOutput = stdoutOutput): Promise<void> {
  const types = await api.types(options.parent === undefined ? {} : { parent: options.parent });
  out.write(options.json ? `${toJson(types)}\n` : formatTypeListing(types, { dumpjson: options.dumpjson === true }));
}

/**
 * What a verb prints of the host's `result`: all of it with `--json`; else, with `uuid`, the
 * instance's UUID when none was given (mdevctl prints the UUID it generated), else nothing.
 */
function report(out: MdevOutput, options: JsonOption & { uuid?: string }, result: object, uuid = false): void {
  if (options.json) out.write(`${toJson(result)}\n`);
  else if (uuid && options.uuid === undefined && 'uuid' in result) out.write(`${String(result.uuid)}\n`);
}

/** What define, start and modify name alike: `-f`, `-u`, `-p`, and a `--jsonfile`'s config (which needs `-p`: `noParent` says so). */
function named(options: JsonOption & { uuid?: string; parent?: string; jsonfile?: string }, noParent: string): DefineRequest {
  const request: DefineRequest = {
    ...(options.force ? { force: true } : {}),
    ...(options.uuid === undefined ? {} : { uuid: options.uuid }),
    ...(options.parent === undefined ? {} : { parent: options.parent }),
  };
  if (options.jsonfile === undefined) return request;
  const config = readJsonFile(options.jsonfile);
  if (options.parent === undefined) throw argumentError(noParent);
  return { ...request, config };
}

/** The request of `define` from its options (mdevctl's argument checks). */
function defineRequest(options: DefineOptions): DefineRequest {
  const request = named(options, `Parent device required to define device via ${JSON.stringify(options.jsonfile)}`);
  if (request.config !== undefined) return request;
  if (options.parent === undefined && options.type !== undefined) throw argumentError('No parent specified');
  if (options.uuid === undefined && options.type === undefined) throw argumentError('No type specified');
  if (options.type !== undefined) request.mdevType = options.type;
  request.start = options.auto ? 'auto' : 'manual';
  return request;
}

/**
 * `define [-u UUID] [-p PARENT] [-t TYPE] [-a] [--jsonfile FILE]`: writes a
 * definition (a running instance's UUID alone promotes it). Prints the UUID
 * when it was generated; `--json` prints the `DefinitionEntry`.
 * @throws {CliError} EINVAL for mdevctl's argument errors; the file's errno for an unreadable `--jsonfile`.
 * @throws {VfioUserError} the host's: EEXIST (already defined), ENOENT (unknown parent or type,
 *   UUID neither running nor given a type), EINVAL (bad attribute), ECANCELED (a pre-callout vetoed it).
 */
export async function mdevDefine(api: HostApi, options: DefineOptions, out: MdevOutput = stdoutOutput): Promise<void> {
  report(out, options, await api.define(defineRequest(options)), true);
}

/**
 * `undefine -u UUID [-p PARENT]`: removes the definition (without `-p`, every
 * parent's); a running instance keeps running. `--json` prints `{ removed }`.
 * @throws {VfioUserError} the host's: ENOENT ("No devices match the specified uuid"), ECANCELED.
 */
export async function mdevUndefine(api: HostApi, options: UndefineOptions, out: MdevOutput = stdoutOutput): Promise<void> {
  report(out, options, await api.undefine({ uuid: options.uuid, ...(options.parent === undefined ? {} : { parent: options.parent }), ...(options.force ? { force: true } : {}) }));
}

/** The request of `start` from its options (mdevctl's argument checks). */
function startRequest(options: StartOptions): StartRequest {
  const request = named(options, 'Parent device required to start device via json file');
  if (request.config !== undefined) return request;
  if (options.type !== undefined) request.mdevType = options.type;
  // Without a UUID nothing defined can be meant: a transient instance needs its type.
  if (options.uuid === undefined && options.type === undefined) throw argumentError('Device is insufficiently specified');
  return request;
}

/**
 * `start [-u UUID] [-p PARENT] [-t TYPE] [--jsonfile FILE]`: starts a defined
 * instance, or a transient one (parent + type or `--jsonfile`). Prints the UUID
 * when it was generated; `--json` prints the `InstanceStatus` (socket included).
 * @throws {CliError} EINVAL for mdevctl's argument errors; the file's errno for an unreadable `--jsonfile`.
 * @throws {VfioUserError} the host's: ENOENT (unknown UUID, parent or type), EEXIST (UUID running),
 *   ENOSPC (no available instances), EINVAL (an attribute refused: nothing is left), ECANCELED (vetoed).
 */
export async function mdevStart(api: HostApi, options: StartOptions, out: MdevOutput = stdoutOutput): Promise<void> {
  report(out, options, await api.start(startRequest(options)), true);
}

/** The line `stop` prints when a client was connected: how it went (nothing for an idle instance, as mdevctl). */
export function describeRelease(result: StopResult): string {
  const requests = `${result.requests} release request${result.requests === 1 ? '' : 's'}`;
  if (result.release === 'released') return `${result.uuid}: released by its client after ${requests} (${result.waitedMs} ms)\n`;
  if (result.release === 'forced') {
    return result.requests === 0 && result.waitedMs === 0
      ? `${result.uuid}: forced: its client's session was closed\n`
      : `${result.uuid}: forced: its client did not release it within ${result.waitedMs} ms (${requests}${result.delivered === false ? '; no REQ channel registered by the client' : ''})\n`;
  }
  return '';
}

/**
 * `stop -u UUID [-f | --timeout DURATION]`: stops a running instance. A
 * connected client is asked to release it (its REQ eventfd, repeated) and
 * given the timeout (default 10 s) to leave, then forced off; `--force` closes
 * its session at once. Prints one line when a client was connected (released
 * or forced, after how many requests); `--json` prints the `StopResult`.
 * @throws {VfioUserError} the host's: ENOENT (not running), EBUSY (another stop of it in progress), ECANCELED.
 */
export async function mdevStop(api: HostApi, options: StopOptions, out: MdevOutput = stdoutOutput): Promise<void> {
  const request = { uuid: options.uuid, ...(options.force ? { force: true } : {}), ...(options.timeout === undefined ? {} : { timeoutMs: options.timeout }) };
  const result = await api.stop(request);
  if (options.json) report(out, options, result);
  else out.write(describeRelease(result));
}

/**
 * `groups [--json]`: the host's isolation groups, a table (formatGroups) or
 * `--json` the `GroupView[]`.
 * @throws {VfioUserError} what the host's `groups` throws (EPERM, ENOTCONN, …).
 */
export async function mdevGroups(api: HostApi, options: GroupsOptions, out: MdevOutput = stdoutOutput): Promise<void> {
  const groups = await api.groups();
  out.write(options.json ? `${toJson(groups)}\n` : formatGroups(groups));
}

/** The request of `modify` from its options (mdevctl's argument checks). */
function modifyRequest(options: ModifyOptions): ModifyRequest {
  const { config, ...rest } = named(options, 'Parent device required to modify device via json file');
  const request: ModifyRequest = { ...rest, uuid: options.uuid };
  if (config !== undefined) return { ...request, config };
  if (options.type !== undefined) request.mdevType = options.type;
  if (options.auto && options.manual) throw argumentError("'auto' and 'manual' are mutually exclusive");
  if (options.auto) request.start = 'auto';
  if (options.manual) request.start = 'manual';
  const index = options.index === undefined ? {} : { index: options.index };
  if (options.addattr !== undefined) {
    if (options.value === undefined) throw argumentError('No attribute value provided');
    request.addAttr = { name: options.addattr, value: options.value, ...index };
  } else if (options.delattr) {
    request.delAttr = index;
  }
  return request;
}

/**
 * `modify -u UUID [-p PARENT] [-t TYPE] (-a | -m | --addattr NAME --value V | --delattr | --jsonfile FILE) [-i I]`:
 * changes a definition, applied at the instance's next start. `--json` prints the new `DefinitionEntry`.
 * @throws {CliError} EINVAL for mdevctl's argument errors; the file's errno for an unreadable `--jsonfile`.
 * @throws {VfioUserError} the host's: ENOENT (not defined), EINVAL (several parents without `-p`,
 *   index out of range, bad attribute or type), ECANCELED (vetoed).
 */
export async function mdevModify(api: HostApi, options: ModifyOptions, out: MdevOutput = stdoutOutput): Promise<void> {
  report(out, options, await api.modify(modifyRequest(options)));
}
