/**
 * mdevctl-compatible callout and notifier scripts (mdevctl 1.4 `src/callouts.rs`).
 *
 * Scripts live in `<configDir>/scripts.d/callouts/` and `<configDir>/scripts.d/notifiers/`
 * (mdevctl: `/usr/lib/mdevctl/scripts.d/…`, formerly `/etc/mdevctl.d/scripts.d/…`). Only
 * regular executable files count; they are tried in byte order of their names. Each is run as
 *
 *     script -t MDEV_TYPE -e EVENT -a ACTION -s STATE -u UUID -p PARENT
 *
 * with, on stdin, the device's config as mdevctl's `to_json(false)` prints it: compact JSON
 * `{"mdev_type":…,"start":"auto"|"manual","attrs":[{…},…]}` (pre, post and live); nothing
 * (stdin closed at once) for notify and `get attributes`; the `{"provides":…}` document for
 * `get capabilities`.
 *
 * Which script handles a device: first the **versioned** one — every script is asked
 * `-e get -a capabilities` with `{"provides":{"version":2,"actions":[…],"events":[…]}}` on
 * stdin; the first whose exit code is not 2 and whose stdout parses as `{"supports":{"version":N,
 * "actions":[…],"events":[…]}}` is the only script used for this operation (whatever its exit
 * code), and an event or action it does not list fails the call. Without one, scripts are tried
 * in order: exit 2 means "not my type" (next script), a script killed by a signal or that cannot
 * be started is skipped, and the first other exit code decides: 0 accepts, anything else fails.
 * No script handling the type is fine (`outcome: 'none'`).
 *
 * The sequence of an operation (mdevctl's `Callout::invoke`; {@link invokeWithCallouts} does it):
 *
 * 1. find the versioned script (as above);
 * 2. `pre` callout, state `none`, config on stdin. A failure VETOES the operation (unless forced):
 *    the action and the post callout are skipped, notifiers still run (state `none`), and the
 *    caller fails with ECANCELED;
 * 3. the action itself (start, stop, define, undefine, modify);
 * 4. `post` callout, state `success` or `failure` (the action's outcome), same config on stdin;
 *    its failure is only logged;
 * 5. notifiers: every script in `notifiers/` with `-e notify -a ACTION -s STATE`, return codes
 *    ignored.
 *
 * mdevctl uses `get attributes` ({@link getAttributes}) in `list` (attributes of active devices)
 * and in `define` of a running device by UUID alone (inside the action, between pre and post).
 * `modify --live` runs a `live` callout (versioned scripts only) before the sequence above.
 *
 * Where this host differs from mdevctl, to stay safe against broken scripts: each script runs in
 * its own process group with a timeout (default 10 s) after which the group is killed with
 * SIGKILL — a failure for pre/post/live (a veto for pre), "skipped" when probing capabilities — and
 * `options.signal` (host shutdown) kills it the same way; a child still holding the script's
 * pipes after it exited is killed after `drainMs` (mdevctl would wait forever); output is kept up
 * to 64 KiB per stream (the rest read and discarded); non-UTF-8 output is decoded with replacement
 * characters (mdevctl panics on a non-UTF-8 capabilities answer); notifiers run up to 4 at a time
 * in name order (mdevctl: one at a time in directory order); scripts are found afresh for every
 * operation (mdevctl caches the versioned script per command, which is one operation).
 */
import { Errno } from '../protocol/errno.js';
import { VfioUserError } from '../errors.js';
import type { Logger } from '../log.js';
import { execScript, firstLine, listScripts, type ExecOptions, type ScriptRun } from './callouts-exec.js';
import {
  CalloutEvent,
  CalloutState,
  calloutArgs,
  calloutInput,
  calloutScripts,
  checkOptions,
  describeEnd,
  findVersionedScript,
  scriptDirs,
  scriptName,
  supportsEventAction,
  type CalloutOptions,
  type CalloutTarget,
  type OperationAction,
  type VersionedScript,
} from './callouts-core.js';

export * from './callouts-core.js';
export { DEFAULT_SCRIPT_TIMEOUT_MS, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_DRAIN_MS, type ExecOptions } from './callouts-exec.js';

/** One pre, post or live callout. */
export interface CalloutRequest extends CalloutTarget {
  event: 'pre' | 'post' | 'live';
  action: OperationAction;
  /** `none` for pre and live (the default); `success`/`failure` for post. */
  state?: CalloutState;
}

/** One notify round. */
export interface NotifyRequest extends CalloutTarget {
  action: OperationAction;
  /** `none` after a vetoed pre, else the action's outcome. */
  state: CalloutState;
}

/** What a pre, post or live callout gave. */
export interface CalloutResult {
  /** `accepted`: a script handled it (exit 0); `none`: no script handles this type; `failed`: see `reason`. */
  outcome: 'accepted' | 'none' | 'failed';
  /** A failed pre or live callout: the operation must not go on (unless forced). */
  vetoed: boolean;
  /** The deciding script's file name and path. */
  script?: string;
  path?: string;
  exitCode?: number | null;
  timedOut?: boolean;
  /** The first non-empty line of the deciding script's stderr. */
  stderrLine?: string;
  /** For `failed`: one line, `start vetoed by callout NAME (exit 1): <stderr line>` for a pre. */
  reason?: string;
}

/** What one notifier gave (its return code is otherwise ignored). */
export interface NotifierRun {
  script: string;
  exitCode: number | null;
  timedOut: boolean;
}

/** `start vetoed by callout NAME` (pre, live) or `start post callout NAME failed`. */
function failureHead(request: CalloutRequest, script: string): string {
  return request.event === 'post' ? `${request.action} post callout ${script} failed` : `${request.action} vetoed by callout ${script}`;
}

function failedResult(request: CalloutRequest, run: ScriptRun, options: ExecOptions): CalloutResult {
  const script = scriptName(run.path);
  const stderrLine = firstLine(run.stderr);
  const what = failureHead(request, script);
  return {
    outcome: 'failed',
    vetoed: request.event !== 'post',
    script,
    path: run.path,
    exitCode: run.exitCode,
    timedOut: run.timedOut,
    stderrLine,
    reason: `${what} (${describeEnd(run, options)})${stderrLine ? `: ${stderrLine}` : ''}`,
  };
}

function acceptedResult(run: ScriptRun): CalloutResult {
  return { outcome: 'accepted', vetoed: false, script: scriptName(run.path), path: run.path, exitCode: run.exitCode, timedOut: false, stderrLine: firstLine(run.stderr) };
}

function logStderr(logger: Logger | undefined, run: ScriptRun): void {
  if (run.stderr.length > 0) logger?.info({ script: run.path, stderr: new TextDecoder().decode(run.stderr), truncated: run.truncated }, 'callout script stderr');
}

/** Runs the versioned script for one callout (mdevctl: only it, and only for what it supports). */
async function runVersioned(request: CalloutRequest, script: VersionedScript, input: string, state: CalloutState, options: CalloutOptions): Promise<CalloutResult> {
  const unsupported = supportsEventAction(script, request.event, request.action);
  if (unsupported) {
    const name = scriptName(script.path);
    return { outcome: 'failed', vetoed: request.event !== 'post', script: name, path: script.path, reason: `${failureHead(request, name)}: ${unsupported}` };
  }
  const run = await execScript(script.path, calloutArgs(request, request.event, request.action, state), input, options);
  logStderr(options.logger, run);
  // mdevctl: exit 0 or a signal is success for the versioned script; a spawn failure, any other
  // exit code (2 included) and our timeout are failures.
  if (!run.spawnError && !run.timedOut && (run.exitCode === 0 || run.signal !== null)) return acceptedResult(run);
  return failedResult(request, run, options);
}

/**
 * Runs the pre, post or live callout of one operation, as mdevctl does (see the module
 * comment). Script failures never reject: a pre/live failure comes back `vetoed` (the caller
 * turns it into ECANCELED, e.g. with {@link vetoError}); a post failure is only reported. A
 * script past its timeout (or killed by `options.signal`) counts as a failure. No scripts
 * directory, or no script for the type: `outcome: 'none'`. A live callout without a versioned
 * script fails, as in mdevctl.
 * @throws VfioUserError EINVAL for bad options (only).
 */
export async function runCallouts(request: CalloutRequest, options: CalloutOptions = {}): Promise<CalloutResult> {
  const state = request.state ?? CalloutState.NONE;
  const input = calloutInput(request.config);
  const logger = options.logger;
  checkOptions(options);
  const versioned = options.versioned !== undefined ? options.versioned : await findVersionedScript(request, options);
  if (versioned) return runVersioned(request, versioned, input, state, options);
  if (request.event === CalloutEvent.LIVE) {
    // mdevctl: live modify is only supported through a versioned script.
    return { outcome: 'failed', vetoed: true, reason: `${request.action} vetoed: no callout script with version support found that supports live modify` };
  }
  for (const path of await calloutScripts(request, options)) {
    const run = await execScript(path, calloutArgs(request, request.event, request.action, state), input, options);
    if (run.spawnError) {
      logger?.debug({ script: path, code: run.spawnError.code }, 'callout script could not run, skipped');
      continue;
    }
    if (run.timedOut || run.aborted) {
      logStderr(logger, run);
      return failedResult(request, run, options);
    }
    if (run.signal !== null) {
      logger?.warn({ script: path, signal: run.signal }, 'callout script was terminated by a signal, skipped');
      continue;
    }
    if (run.exitCode === 2) {
      logger?.debug({ script: path, mdevType: request.config.mdev_type }, 'callout script does not handle this type');
      continue;
    }
    logStderr(logger, run);
    return run.exitCode === 0 ? acceptedResult(run) : failedResult(request, run, options);
  }
  return { outcome: 'none', vetoed: false };
}

/**
 * The error an operation fails with when its pre (or live) callout vetoed it: ECANCELED, the
 * result's one-line reason (`start vetoed by callout NAME (exit 1): <stderr line>`).
 */
export function vetoError(result: CalloutResult): VfioUserError {
  return new VfioUserError(result.reason ?? 'vetoed by a callout', { errno: Errno.ECANCELED });
}

/**
 * Runs every notifier (`-e notify -a ACTION -s STATE`, stdin closed) — all of them, whatever
 * their return codes, at most `notifierConcurrency` at a time, each bounded by the timeout.
 * Resolves with what each gave (for logs and tests), in name order.
 * @throws VfioUserError EINVAL for bad options (only).
 */
export async function runNotifiers(request: NotifyRequest, options: CalloutOptions = {}): Promise<NotifierRun[]> {
  checkOptions(options);
  const dirs = options.notifierDirs ?? [scriptDirs(request.configDir).notifiers];
  const execOptions = { ...options, timeoutMs: options.notifierTimeoutMs ?? options.timeoutMs };
  const scripts = (await Promise.all(dirs.map((d) => listScripts(d, options.logger)))).flat();
  const args = calloutArgs(request, CalloutEvent.NOTIFY, request.action, request.state);
  const results: NotifierRun[] = new Array<NotifierRun>(scripts.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < scripts.length) {
      const index = next++;
      const path = scripts[index] as string;
      const run = await execScript(path, args, undefined, execOptions);
      if (run.exitCode !== 0) options.logger?.debug({ script: path, exitCode: run.exitCode, signal: run.signal, timedOut: run.timedOut, code: run.spawnError?.code }, 'notifier script failed (ignored)');
      results[index] = { script: scriptName(path), exitCode: run.exitCode, timedOut: run.timedOut };
    }
  };
  const width = Math.max(1, Math.min(options.notifierConcurrency ?? 4, scripts.length));
  await Promise.all(Array.from({ length: width }, worker));
  return results;
}

/** Options of {@link invokeWithCallouts}. */
export interface InvokeOptions extends CalloutOptions {
  /** mdevctl's `--force`: a vetoing pre callout is logged at warn and the action goes on. */
  force?: boolean;
}

/**
 * One operation wrapped as mdevctl's `Callout::invoke` does: versioned-script probe, pre callout
 * (a veto → notifiers with state `none`, then rejects with ECANCELED, the action not run), the
 * action, post callout with its outcome, notifiers. Resolves with the action's result or rejects
 * with the action's own error (after post and notify ran).
 * @throws VfioUserError ECANCELED (the pre callout vetoed: `start vetoed by callout NAME (exit 1):
 *   <stderr line>`), EINVAL (bad options); otherwise whatever `action` threw.
 */
export async function invokeWithCallouts<T>(target: CalloutTarget & { action: OperationAction }, action: (versioned: VersionedScript | null) => Promise<T>, options: InvokeOptions = {}): Promise<T> {
  checkOptions(options);
  const versioned = options.versioned !== undefined ? options.versioned : await findVersionedScript(target, options);
  const scoped = { ...options, versioned };
  const pre = await runCallouts({ ...target, event: CalloutEvent.PRE, state: CalloutState.NONE }, scoped);
  if (pre.vetoed) {
    if (!options.force) {
      await runNotifiers({ ...target, state: CalloutState.NONE }, scoped);
      throw vetoError(pre);
    }
    options.logger?.warn({ uuid: target.uuid, reason: pre.reason }, `forcing ${target.action} despite callout failure`);
  }
  let state: CalloutState = CalloutState.SUCCESS;
  let result: T | undefined;
  let failure: unknown;
  try {
    result = await action(versioned);
  } catch (e) {
    state = CalloutState.FAILURE;
    failure = e;
  }
  const post = await runCallouts({ ...target, event: CalloutEvent.POST, state }, scoped);
  if (post.outcome === 'failed') options.logger?.warn({ uuid: target.uuid, reason: post.reason }, 'post callout failed');
  await runNotifiers({ ...target, state }, scoped);
  if (state === CalloutState.FAILURE) throw failure;
  return result as T;
}
