/**
 * `vfio-user mdev <verb>` and `lsmdev`: mdevctl's command line (1.4, the Rust
 * one: its verbs, options, short flags, output and exit statuses) over a
 * device host's control socket, so a user's mdevctl habits and JSON files carry
 * over. Exit status: 0 success, 1 the operation failed (one line on stderr),
 * 2 a usage error (unknown or conflicting options, a bad UUID), as clap exits.
 *
 * Added: `--json` (the host's own shapes), `--control SOCKET` (or
 * `$VFIO_USER_CONTROL`), `list -vv` (state, socket, group, client, migration);
 * `stop` asks a connected client to release the instance (`--timeout`, default
 * 10 s, then forced; `--force` at once); `groups` lists the isolation groups. mdevctl's
 * `modify --live` is refused with one line: the host never changes a running
 * instance's attributes.
 */
import { Command, CommanderError, InvalidArgumentError as CommanderInvalidArgument, Option } from 'commander';
import { connectHost, type HostConnection } from '../../host/control-client.js';
import { controlSocketPath, defaultPaths } from '../../host/paths.js';
import { normalizeUuid } from '../../host/uuid.js';
import type { HostApi } from '../../host/api.js';
import { Errno } from '../../protocol/errno.js';
import { VERSION } from '../../version.js';
import { CliError, describeError, siteError } from '../common.js';
import { countOption, durationOption } from '../values.js';
import { countFlag } from './lspci.js';
import {
  mdevDefine, mdevGroups, mdevList, mdevModify, mdevStart, mdevStop, mdevTypes, mdevUndefine, stdoutOutput,
  type DefineOptions, type GroupsOptions, type ListOptions, type MdevOutput, type ModifyOptions, type StartOptions, type StopOptions, type TypesOptions, type UndefineOptions,
} from './mdev-verbs.js';

/** The environment variable naming the control socket (`--control` wins). */
export const CONTROL_ENV = 'VFIO_USER_CONTROL';

/** How the commands reach a host, and where they write: injectable for tests. */
export interface MdevDeps {
  /** Connects to the control socket (default: the control client's `connectHost`). */
  connect?: (socket: string) => Promise<Pick<HostConnection, 'close'> & HostApi>;
  /** Where results go (default stdout). */
  out?: MdevOutput;
}

/** `--control` and whatever else a verb's action reads from the `mdev` command. */
interface ControlOptions {
  control?: string;
}

/** The control socket of the host the commands talk to by default (paths.ts's run directory). */
function defaultControlSocket(): string {
  return controlSocketPath(defaultPaths().runDir);
}

function controlOption(): Option {
  return new Option('--control <socket>', "the host's control socket (default: control.sock in the host's default run dir: $VFIO_USER_RUN_DIR, /run/vfio-user for root, $XDG_RUNTIME_DIR/vfio-user, else ${TMPDIR:-/tmp}/vfio-user-<uid>)").env(CONTROL_ENV);
}

/** `-u` as mdevctl reads it (any case; hyphenated, simple, braced or URN), lower-case hyphenated. */
function uuidValue(text: string): string {
  try {
    return normalizeUuid(text);
  } catch {
    throw new CommanderInvalidArgument('It is not a UUID (8-4-4-4-12 hex digits).');
  }
}

const uuidOption = (description: string): Option => new Option('-u, --uuid <uuid>', description).argParser(uuidValue);
const json = (): Option => new Option('--json', "machine-readable output: the host's own JSON (state, socket, group, client, migration)");
const forceOption = (): Option => new Option('-f, --force', 'force command execution even if a callout script vetoes it (as mdevctl: only if you know what you are doing)');

/** clap's exit statuses: 0 for --help/--version, 2 for any usage error (commander would exit 1). */
function usageExit(error: CommanderError): never {
  process.exit(error.exitCode === 0 ? 0 : 2);
}

/** A usage error found after parsing (clap's "required unless" and groups): one line, exit 2. */
function usage(command: Command, message: string): never {
  command.error(message, { exitCode: 2, code: 'mdev.usage' });
}

/** Connects, runs one verb, closes; failures become one line starting with `site` (`mdev start: …`; none for `''`). */
async function run(deps: MdevDeps, control: string | undefined, site: string, body: (api: HostApi, out: MdevOutput) => Promise<void>): Promise<void> {
  const named = (error: unknown): Error => (site === '' ? new CliError(describeError(error), { cause: error }) : siteError(site, error));
  const connect = deps.connect ?? connectHost;
  const socket = control ?? defaultControlSocket();
  let conn;
  try {
    conn = await connect(socket);
  } catch (error) {
    throw named(error);
  }
  try {
    await body(conn, deps.out ?? stdoutOutput);
  } catch (error) {
    throw named(error);
  } finally {
    conn.close();
  }
}

/** The options of `list` (shared with `lsmdev`). */
function addListOptions(command: Command): Command {
  return command
    .option('-d, --defined', 'show defined devices')
    .addOption(new Option('--dumpjson', "output device list in mdevctl's JSON format").conflicts('json'))
    .option('-v, --verbose', "print additional information about the devices: -v their attributes (as mdevctl), -vv also each instance's state, socket, isolation group, connected client and migration state", countFlag, 0)
    .addOption(uuidOption('list devices matching the specified UUID'))
    .option('-p, --parent <parent>', 'list devices associated with the specified parent')
    .addOption(json());
}

const LIST_DESCRIPTION =
  'list mediated devices: running instances, or with -d the definitions; -u/-p filter. --dumpjson prints ' +
  "mdevctl's JSON (with -u and one match, the config-file object); -v adds attributes, -vv runtime state";

/** Help texts of {@link deviceVerb}'s command and options (mdevctl's, per verb). */
interface DeviceVerbHelp {
  description: string;
  uuid: string;
  parent: string;
  type: string;
  jsonfile: string;
}

/**
 * `define` and `start`: `-u`, `-p`, `-t`, `--jsonfile` (not with `-t`, nor with `-a` which
 * define adds), `-f`, `--json`; `-u` or `-p` required (clap's `required_unless_present`), exit 2.
 */
function deviceVerb(mdev: Command, verb: 'define' | 'start', help: DeviceVerbHelp): Command {
  return mdev
    .command(verb)
    .description(help.description)
    .addOption(uuidOption(help.uuid))
    .option('-p, --parent <parent>', help.parent)
    .option('-t, --type <type>', help.type)
    .addOption(new Option('--jsonfile <file>', help.jsonfile).conflicts(['type', 'auto']))
    .addOption(forceOption())
    .addOption(json())
    .hook('preAction', (command) => {
      const options = command.opts<{ uuid?: string; parent?: string }>();
      if (options.uuid === undefined && options.parent === undefined) usage(command, `${verb}: -u/--uuid or -p/--parent is required`);
    });
}

function addVerbs(mdev: Command, deps: MdevDeps): void {
  const control = (command: Command): string | undefined => command.optsWithGlobals<ControlOptions>().control;

  addListOptions(mdev.command('list').description(LIST_DESCRIPTION)).action((options: ListOptions, command: Command) =>
    run(deps, control(command), 'mdev list', (api, out) => mdevList(api, options, out)),
  );

  mdev
    .command('types')
    .description("list available mediated device types: each parent's types, available instances, device API, name and description")
    .option('-p, --parent <parent>', 'show supported types for the specified parent')
    .addOption(new Option('--dumpjson', "output mdev types list in mdevctl's JSON format").conflicts('json'))
    .addOption(json())
    .action((options: TypesOptions, command: Command) => run(deps, control(command), 'mdev types', (api, out) => mdevTypes(api, options, out)));

  deviceVerb(mdev, 'define', {
    description: "define a persistent mediated device: from -p and -t, from --jsonfile (mdevctl's config format), or a running instance's -u; prints the UUID when it generates one",
    uuid: 'assign UUID to the device (generated and printed if absent)',
    parent: 'specify the parent of the device',
    type: 'specify the mdev type of the device (<parent>-<name>)',
    jsonfile: 'specify device details in JSON format (mdevctl’s config file)',
  })
    .addOption(new Option('-a, --auto', 'automatically start device on parent availability (when the host starts)'))
    .action((options: DefineOptions, command: Command) => run(deps, control(command), 'mdev define', (api, out) => mdevDefine(api, options, out)));

  mdev
    .command('undefine')
    .description("undefine a persistent mediated device: without -p, every parent's definition of that UUID; a running instance keeps running")
    .addOption(uuidOption('UUID of the device to be undefined').makeOptionMandatory())
    .option('-p, --parent <parent>', 'parent of the device to be undefined')
    .addOption(forceOption())
    .addOption(json())
    .action((options: UndefineOptions, command: Command) => {
      return run(deps, control(command), 'mdev undefine', (api, out) => mdevUndefine(api, options, out));
    });

  addModify(mdev, deps, control);

  deviceVerb(mdev, 'start', {
    description: 'start a mediated device: a defined one (-u [-p]), or a transient one (-p with -t or --jsonfile; prints the UUID when it generates one)',
    uuid: 'UUID of the device to start',
    parent: 'parent of the device to start',
    type: 'mdev type of the device to start',
    jsonfile: 'details of the device to be started, in JSON format (mdevctl’s config file)',
  }).action((options: StartOptions, command: Command) => run(deps, control(command), 'mdev start', (api, out) => mdevStart(api, options, out)));

  mdev
    .command('stop')
    .description('stop a mediated device; a connected client is asked to release it (its REQ eventfd) and forced off after --timeout (default 10s), or at once with -f/--force')
    .addOption(uuidOption('UUID of the device to stop').makeOptionMandatory())
    .option('-f, --force', "close a connected client's session at once, and go on even if a callout script vetoes it")
    .addOption(durationOption('--timeout <duration>', 'how long a connected client is given to release the device before it is forced off (e.g. 5s, 500ms; default 10s)'))
    .addOption(json())
    .action((options: StopOptions, command: Command) => {
      const timeout = releaseTimeout(command, options);
      if (options.force && timeout !== undefined) usage(command, "stop: option '-f, --force' cannot be used with option '--timeout <duration>'");
      const request = { ...options, ...(timeout === undefined ? {} : { timeout }) };
      return run(deps, control(command), 'mdev stop', (api, out) => mdevStop(api, request, out));
    });

  mdev
    .command('groups')
    .description("list the isolation groups: each group's parent, whether it is viable (every member active), its owner (pid, uid) and its members (state, claimed for the owner)")
    .addOption(json())
    .action((options: GroupsOptions, command: Command) => run(deps, control(command), 'mdev groups', (api, out) => mdevGroups(api, options, out)));
}

/**
 * `stop --timeout`: its own option, or — under `vfio-user`, whose global `--timeout` (a per-request timeout the
 * mdev verbs do not use) takes that option wherever it appears — the global one when given on the command line.
 */
function releaseTimeout(command: Command, options: StopOptions): number | undefined {
  if (options.timeout !== undefined) return options.timeout;
  let root = command;
  while (root.parent) root = root.parent;
  if (root === command || root.getOptionValueSource('timeout') !== 'cli') return undefined;
  const value: unknown = root.opts().timeout;
  return typeof value === 'number' ? value : undefined;
}

/** The options of `modify` and clap's rules for them (a required group of one, requires, conflicts). */
function addModify(mdev: Command, deps: MdevDeps, control: (command: Command) => string | undefined): void {
  mdev
    .command('modify')
    .description('modify the definition of a mediated device (applied at its next start): one of -a, -m, --addattr NAME --value V, --delattr, --jsonfile; -t with them changes the type; -i places the attribute (default: the end)')
    .addOption(uuidOption('UUID of the mdev to modify').makeOptionMandatory())
    .option('-p, --parent <parent>', 'parent of the mdev to modify')
    .option('-t, --type <type>', 'modify the mdev type for this device')
    .option('--addattr <attr_name>', 'add a new attribute')
    .addOption(new Option('--delattr', 'delete an attribute (the last one, or the one at -i)'))
    .addOption(countOption('-i, --index <index>', 'index of the attribute to modify (0-based)', { min: 0, max: 2 ** 32 - 1 }))
    .addOption(new Option('--value <attr_value>', 'value for the attribute specified by --addattr').conflicts('delattr'))
    .addOption(new Option('-a, --auto', 'device will be started automatically').conflicts(['manual', 'addattr', 'delattr', 'jsonfile', 'index', 'value']))
    .addOption(new Option('-m, --manual', 'device must be started manually').conflicts(['addattr', 'delattr', 'jsonfile', 'index', 'value']))
    .addOption(new Option('-l, --live', "mdevctl's: modify the running device through a callout — not supported (refused)"))
    .addOption(new Option('-d, --defined', "mdevctl's: with --live, also the definition"))
    .addOption(new Option('--jsonfile <file>', 'replace the type, start mode and attributes with a JSON file (mdevctl’s config file)').conflicts(['type', 'index', 'value', 'addattr', 'delattr']))
    .addOption(forceOption())
    .addOption(json())
    .action((options: ModifyOptions & { live?: boolean }, command: Command) => {
      const group = [options.auto, options.manual, options.addattr !== undefined, options.delattr, options.jsonfile !== undefined];
      if (!group.some(Boolean)) usage(command, 'modify: one of -a/--auto, -m/--manual, --addattr, --delattr or --jsonfile is required');
      if (options.addattr !== undefined && options.value === undefined) usage(command, "modify: --addattr requires --value");
      if (options.value !== undefined && options.addattr === undefined) usage(command, 'modify: --value requires --addattr');
      if (options.live) {
        throw new CliError('mdev modify: -l/--live is not supported: a running instance keeps the attributes it was started with (stop and start it to apply the definition)', { errno: Errno.EINVAL });
      }
      return run(deps, control(command), 'mdev modify', (api, out) => mdevModify(api, options, out));
    });
}

/**
 * Adds `mdev` and its verbs to `program` (the `vfio-user` command line).
 * Usage errors under it exit 2, as mdevctl's; operation failures reject
 * (main.ts prints the line, exit 1) with the host's errno: ENOENT, EEXIST,
 * EINVAL, EBUSY, ENOSPC, ECANCELED, EPERM (see src/host/api.ts), ECONNREFUSED or
 * ENOENT when no host listens on the control socket.
 * @returns the `mdev` command.
 */
export function registerMdev(program: Command, deps: MdevDeps = {}): Command {
  const mdev = program
    .command('mdev')
    .description("manage the mediated devices of a device host (vfio-user host) with mdevctl's command line: list, types, define, undefine, start, stop, modify; and groups")
    .version(VERSION, '-V, --version', 'print the version')
    .addOption(controlOption())
    .exitOverride(usageExit);
  addVerbs(mdev, deps);
  return mdev;
}

/** Commander's multi-line errors as one line. */
function oneLine(text: string): string {
  return text.trim().split('\n').map((l) => l.trim()).filter((l) => l !== '').join(' ');
}

/**
 * The `lsmdev` program: `vfio-user mdev list` under mdevctl's other name,
 * with its options (`-d`, `--dumpjson`, `-v`, `-u`, `-p`, plus `--json` and
 * `--control`). Errors print `lsmdev: <line>`; exit 1, or 2 for a usage error.
 */
export function createLsmdev(deps: MdevDeps = {}): Command {
  const program = new Command()
    .name('lsmdev')
    .description(`${LIST_DESCRIPTION} (= vfio-user mdev list)`)
    .version(VERSION, '-V, --version', 'print the version')
    .configureOutput({ outputError: (text, write) => write(`lsmdev: ${oneLine(text.replace(/^error: /, ''))}\n`) })
    .exitOverride(usageExit)
    .addOption(controlOption());
  addListOptions(program).action((options: ListOptions & ControlOptions) => run(deps, options.control, '', (api, out) => mdevList(api, options, out)));
  return program;
}

/**
 * Runs `lsmdev` with `argv` (`process.argv`): one line on stderr and exit 1
 * when the listing fails (exit 0 when stdout's reader went away: EPIPE).
 */
export async function runLsmdev(argv: readonly string[], deps: MdevDeps = {}): Promise<void> {
  // `lsmdev | head -1`: a closed pipe ends the output, not the process with a stack trace.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    process.stderr.write(error.code === 'EPIPE' ? '' : `lsmdev: ${describeError(error)}\n`);
    process.exit(error.code === 'EPIPE' ? 0 : 1);
  });
  try {
    await createLsmdev(deps).parseAsync([...argv]);
  } catch (error) {
    process.stderr.write(`lsmdev: ${describeError(error)}\n`);
    process.exit(1);
  }
}
