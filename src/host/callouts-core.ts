/**
 * The vocabulary shared by the callout modules (events, actions, states, the device a script is
 * told about, its argument vector and stdin) and mdevctl's two `get` queries: the capabilities
 * probe that picks a **versioned** script ({@link findVersionedScript}) and `get attributes`
 * ({@link getAttributes}). See src/host/callouts.ts for the whole protocol.
 */
import { Errno } from '../protocol/errno.js';
import { VfioUserError } from '../errors.js';
import type { Logger } from '../log.js';
import type { MdevAttr, MdevConfig } from './types.js';
import { DEFAULT_SCRIPT_TIMEOUT_MS, execScript, firstLine, listScripts, type ExecOptions, type ScriptRun } from './callouts-exec.js';

/** mdevctl's events (`-e`). */
export const CalloutEvent = { PRE: 'pre', POST: 'post', LIVE: 'live', NOTIFY: 'notify', GET: 'get' } as const;
/** One of {@link CalloutEvent}. */
export type CalloutEvent = (typeof CalloutEvent)[keyof typeof CalloutEvent];

/** mdevctl's actions (`-a`). */
export const CalloutAction = {
  START: 'start',
  STOP: 'stop',
  DEFINE: 'define',
  UNDEFINE: 'undefine',
  MODIFY: 'modify',
  ATTRIBUTES: 'attributes',
  CAPABILITIES: 'capabilities',
} as const;
/** One of {@link CalloutAction}. */
export type CalloutAction = (typeof CalloutAction)[keyof typeof CalloutAction];
/** The actions an operation is (the others are `get` queries). */
export type OperationAction = 'start' | 'stop' | 'define' | 'undefine' | 'modify';

/** mdevctl's states (`-s`): `none` before the action, then its outcome. */
export const CalloutState = { NONE: 'none', SUCCESS: 'success', FAILURE: 'failure' } as const;
/** One of {@link CalloutState}. */
export type CalloutState = (typeof CalloutState)[keyof typeof CalloutState];

/** The device a script is told about. */
export interface CalloutTarget {
  /** The host's config directory; scripts are under `<configDir>/scripts.d/`. */
  configDir: string;
  /** Lower-case UUID (`-u`). */
  uuid: string;
  /** Parent name (`-p`). */
  parent: string;
  /**
   * The device's config: `-t` is its `mdev_type`; pre/post/live get it on stdin. mdevctl sends,
   * for start/define/undefine/modify, the definition (or the transient device) as it will be;
   * for stop, the device as sysfs shows it: `{"mdev_type":T,"start":"manual","attrs":[]}`.
   */
  config: MdevConfig;
}

/** Options of every call here. */
export interface CalloutOptions extends ExecOptions {
  logger?: Logger;
  /**
   * The versioned script found for this operation ({@link findVersionedScript}), or null for
   * none; probed again when undefined. Pass it to share one probe between pre, post and get.
   */
  versioned?: VersionedScript | null;
  /** Callout directories, tried in order (default `[<configDir>/scripts.d/callouts]`). */
  calloutDirs?: readonly string[];
  /** Notifier directories (default `[<configDir>/scripts.d/notifiers]`). */
  notifierDirs?: readonly string[];
  /** Notifiers run at once, at most (default 4). */
  notifierConcurrency?: number;
  /** Each notifier's timeout (default: `timeoutMs`). */
  notifierTimeoutMs?: number;
}

/** `<configDir>/scripts.d/callouts` and `…/notifiers`. */
export function scriptDirs(configDir: string): { callouts: string; notifiers: string } {
  return { callouts: `${configDir}/scripts.d/callouts`, notifiers: `${configDir}/scripts.d/notifiers` };
}

/** mdevctl's argument vector. */
export function calloutArgs(target: CalloutTarget, event: CalloutEvent, action: CalloutAction, state: CalloutState): string[] {
  return ['-t', target.config.mdev_type, '-e', event, '-a', action, '-s', state, '-u', target.uuid, '-p', target.parent];
}

/** The stdin of pre/post/live: compact JSON with mdevctl's key order. */
export function calloutInput(config: MdevConfig): string {
  return JSON.stringify({ mdev_type: config.mdev_type, start: config.start, attrs: config.attrs });
}

/** The callout scripts of `target`, in the order they are tried. */
export async function calloutScripts(target: CalloutTarget, options: CalloutOptions = {}): Promise<string[]> {
  const dirs = options.calloutDirs ?? [scriptDirs(target.configDir).callouts];
  const lists = await Promise.all(dirs.map((d) => listScripts(d, options.logger)));
  return lists.flat();
}

/** The file name of a script path. */
export function scriptName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** How a script run ended, for messages: `exit 1`, `killed by SIGSEGV`, `timed out after 10000 ms`. */
export function describeEnd(run: ScriptRun, options: ExecOptions): string {
  if (run.timedOut) return `timed out after ${options.timeoutMs ?? DEFAULT_SCRIPT_TIMEOUT_MS} ms`;
  if (run.aborted) return 'aborted';
  if (run.spawnError) return `could not run: ${run.spawnError.code ?? run.spawnError.message}`;
  if (run.signal) return `killed by ${run.signal}`;
  return `exit ${run.exitCode}`;
}

/** What a versioned script declared in its `{"supports": …}` answer. */
export interface VersionedScript {
  path: string;
  version: number;
  /** Action names it handles (names mdevctl does not know are kept, as its `unknown`). */
  actions: string[];
  /** Event names it handles. */
  events: string[];
}

/** What mdevctl 1.4 offers in `{"provides": …}` (its `CalloutVersion::V_2`). */
export const PROVIDED_VERSION = {
  version: 2,
  actions: ['start', 'stop', 'define', 'undefine', 'modify', 'attributes', 'capabilities'],
  events: ['pre', 'post', 'notify', 'get', 'live'],
} as const;

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === 'string');
}

/**
 * Parses a script's answer to `get capabilities` as mdevctl's serde does: a JSON object whose
 * `supports` holds `version` (a non-negative integer), `actions` and `events` (arrays of strings);
 * other keys are ignored, trailing NUL bytes trimmed. Undefined when it is not such an answer.
 */
export function parseSupports(stdout: Buffer): Omit<VersionedScript, 'path'> | undefined {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(stdout).replace(/\0+$/, '');
  } catch {
    return undefined;
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return undefined;
  const supports = (doc as { supports?: unknown }).supports;
  if (typeof supports !== 'object' || supports === null) return undefined;
  const { version, actions, events } = supports as { version?: unknown; actions?: unknown; events?: unknown };
  if (typeof version !== 'number' || !Number.isInteger(version) || version < 0 || version > 0xffff_ffff) return undefined;
  if (!isStringArray(actions) || !isStringArray(events)) return undefined;
  return { version, actions: [...actions], events: [...events] };
}

/**
 * Why `script` cannot be used for `event`/`action` (one line), or undefined if it can.
 */
export function supportsEventAction(script: VersionedScript, event: string, action: string): string | undefined {
  if (!script.actions.includes(action)) return `does not support action '${action}'`;
  if (!script.events.includes(event)) return `does not support event '${event}'`;
  return undefined;
}

/**
 * Finds the versioned script for `target`'s type, as mdevctl's `find_versioned_script`: every
 * callout script in order gets `-e get -a capabilities -s none` and `{"provides":…}` on stdin;
 * the first that does not exit 2 (nor dies by a signal, nor times out, nor fails to start) and
 * prints a valid `{"supports":…}` is it — whatever its exit code. Null when none is.
 * @throws VfioUserError EINVAL for bad options (nothing else: script failures only skip the script).
 */
export async function findVersionedScript(target: CalloutTarget, options: CalloutOptions = {}): Promise<VersionedScript | null> {
  checkOptions(options);
  const input = JSON.stringify({ provides: PROVIDED_VERSION });
  const args = calloutArgs(target, CalloutEvent.GET, CalloutAction.CAPABILITIES, CalloutState.NONE);
  for (const path of await calloutScripts(target, options)) {
    const run = await execScript(path, args, input, options);
    if (run.spawnError || run.timedOut || run.aborted || run.signal !== null || run.exitCode === 2) {
      options.logger?.debug({ script: path, end: describeEnd(run, options) }, 'capabilities probe: skipped');
      continue;
    }
    const supports = parseSupports(run.stdout);
    if (!supports) continue;
    options.logger?.debug({ script: path, supports }, 'versioned callout script');
    return { path, ...supports };
  }
  return null;
}

function invalid(message: string): VfioUserError {
  return new VfioUserError(message, { errno: Errno.EINVAL });
}

const POSITIVE_OPTIONS = ['timeoutMs', 'notifierTimeoutMs', 'maxOutputBytes', 'notifierConcurrency'] as const;

/**
 * Checks the numeric options: timeouts, output bound and concurrency positive integers, `drainMs` a
 * non-negative integer (when given).
 * @throws VfioUserError EINVAL naming the option.
 */
export function checkOptions(options: CalloutOptions): void {
  for (const name of POSITIVE_OPTIONS) {
    const value = options[name];
    if (value !== undefined && (!Number.isSafeInteger(value) || value <= 0)) throw invalid(`callout option ${name} must be a positive integer, not ${value}`);
  }
  const drain = options.drainMs;
  if (drain !== undefined && (!Number.isSafeInteger(drain) || drain < 0)) throw invalid(`callout option drainMs must be a non-negative integer, not ${drain}`);
}

/**
 * Parses the stdout of `get attributes` as mdevctl does: empty → undefined (no attributes
 * reported); `[{}]` → []; else a JSON array of single-key objects with string values (trailing
 * NULs and surrounding white space ignored), or JSON null (→ undefined).
 * @throws VfioUserError EINVAL naming `script` when the output is not such an array.
 */
export function parseAttributesOutput(stdout: Buffer, script: string): MdevAttr[] | undefined {
  const text = new TextDecoder('utf-8', { fatal: false }).decode(stdout).replace(/\0+$/, '').trim();
  if (text === '') return undefined;
  if (text === '[{}]') return [];
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw invalid(`invalid JSON received from callout script ${script}`);
  }
  if (doc === null) return undefined;
  if (!Array.isArray(doc)) throw invalid(`callout script ${script}: attributes field is not an array`);
  return doc.map((item: unknown, index) => {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) throw invalid(`callout script ${script}: attribute ${index} is not an object`);
    const entries = Object.entries(item as Record<string, unknown>);
    if (entries.length !== 1) throw invalid(`callout script ${script}: attribute ${index} must have exactly one field`);
    const [name, value] = entries[0] as [string, unknown];
    if (typeof value !== 'string') throw invalid(`callout script ${script}: attribute ${index} (${name}) must be a string`);
    return { [name]: value };
  });
}

function attributesFailure(run: ScriptRun, options: ExecOptions): VfioUserError {
  const line = firstLine(run.stderr);
  const errno = run.timedOut ? Errno.ETIMEDOUT : run.aborted ? Errno.ECANCELED : Errno.EIO;
  return new VfioUserError(`get attributes: callout ${scriptName(run.path)} failed (${describeEnd(run, options)})${line ? `: ${line}` : ''}`, { errno });
}

/**
 * mdevctl's `get attributes`: the device's current attributes as the script handling its type
 * reports them on stdout (`-e get -a attributes -s none`, stdin closed). mdevctl uses it in
 * `list` (errors ignored there) and in `define` of a running device by UUID (errors fail the define).
 * Resolves undefined when no script handles the type (or it printed nothing).
 * @throws VfioUserError ENOTSUP (the versioned script does not support `get attributes`),
 *   EIO (the script failed: exit code not 0, killed by a signal, could not start),
 *   ETIMEDOUT (killed at the timeout), ECANCELED (`options.signal` aborted),
 *   EINVAL (its output is not an attribute array, or bad options).
 */
export async function getAttributes(target: CalloutTarget, options: CalloutOptions = {}): Promise<MdevAttr[] | undefined> {
  checkOptions(options);
  const versioned = options.versioned !== undefined ? options.versioned : await findVersionedScript(target, options);
  const args = calloutArgs(target, CalloutEvent.GET, CalloutAction.ATTRIBUTES, CalloutState.NONE);
  if (versioned) {
    const unsupported = supportsEventAction(versioned, CalloutEvent.GET, CalloutAction.ATTRIBUTES);
    if (unsupported) throw new VfioUserError(`get attributes: callout ${scriptName(versioned.path)} ${unsupported}`, { errno: Errno.ENOTSUP });
    const run = await execScript(versioned.path, args, undefined, options);
    if (run.exitCode !== 0) throw attributesFailure(run, options);
    return parseAttributesOutput(run.stdout, scriptName(run.path));
  }
  for (const path of await calloutScripts(target, options)) {
    const run = await execScript(path, args, undefined, options);
    if (run.timedOut || run.aborted) throw attributesFailure(run, options);
    if (run.spawnError || run.signal !== null || run.exitCode === 2) continue;
    if (run.exitCode !== 0) throw attributesFailure(run, options);
    return parseAttributesOutput(run.stdout, scriptName(path));
  }
  return undefined;
}
