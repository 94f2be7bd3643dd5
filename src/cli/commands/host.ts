/**
 * `vfio-user host [--parent SPEC]... [--no-builtin-parents] [--run-dir D]
 * [--config-dir D] [--allow-uid UID]... [--watchdog 5s] [--memory-limit 256M]
 * [--callout-timeout 10s] [--no-autostart] [--json]`: runs a device host
 * (src/host/host.ts) until SIGINT or SIGTERM, then shuts it down cleanly
 * (clients disconnected, devices reset, sockets removed) and exits 0.
 *
 * Prints one ready line on stdout once the control socket listens and the
 * `auto` definitions were started: `host ready: control <path>, N parents,
 * M instances` (with `--json`, one JSON object with the same facts). Events
 * are logged as JSON lines on stderr (level `info` unless `VFIO_USER_LOG`
 * says otherwise).
 */
import { untilSignal } from '../signals.js';
import { resolve } from 'node:path';
import { createJsonLogger, getDefaultLogger, type Logger } from '../../log.js';
import { DeviceHost, type DeviceHostOptions } from '../../host/host.js';
import { defaultPaths } from '../../host/paths.js';
import { parseCount } from '../values.js';

const MiB = 1 << 20;
/** Smallest `--memory-limit` (a worker needs some heap to build a device). */
export const MIN_MEMORY_LIMIT = 16 * MiB;

/** Options of {@link runHost} (as commander parses them: sizes and durations already numbers). */
export interface HostCommandOptions {
  /** Parent modules to load (repeatable). */
  parent?: string[];
  /** `--no-builtin-parents` sets it false. */
  builtinParents?: boolean;
  runDir?: string;
  configDir?: string;
  allowUid?: string[];
  /** Cell watchdog, ms. */
  watchdog?: number;
  /** Cell heap cap, bytes. */
  memoryLimit?: number;
  /** Callout script timeout, ms. */
  calloutTimeout?: number;
  /** `--no-autostart` sets it false. */
  autostart?: boolean;
  json?: boolean;
}

/** What {@link runHost} uses from its environment (tests inject their own). */
export interface HostIo {
  /** Prints one line on stdout. */
  log(line: string): void;
  /** Resolves when the process is asked to stop (default: SIGINT or SIGTERM). */
  stopped(): Promise<string>;
  /** Where events are logged. */
  logger: Logger;
}

function defaultIo(): HostIo {
  return {
    log: (line) => void process.stdout.write(`${line}\n`),
    stopped: untilSignal,
    logger: process.env.VFIO_USER_LOG || process.env.VFIO_USER_TRACE ? getDefaultLogger() : createJsonLogger({ level: 'info', name: 'vfio-user-host' }),
  };
}

/** The host's options from the command line's. @throws {InvalidArgumentError} EINVAL for a bad uid. */
export function hostOptions(options: HostCommandOptions, env: NodeJS.ProcessEnv = process.env): DeviceHostOptions {
  const defaults = defaultPaths(env);
  const allowedUids = (options.allowUid ?? []).map((t) => parseCount(t, '--allow-uid', { min: 0, max: 0xffff_ffff }));
  const cell: NonNullable<DeviceHostOptions['cell']> = {};
  if (options.watchdog !== undefined) cell.watchdogMs = options.watchdog;
  if (options.memoryLimit !== undefined) cell.memoryLimitMb = Math.max(1, Math.floor(options.memoryLimit / MiB));
  return {
    paths: { runDir: resolve(options.runDir ?? defaults.runDir), configDir: resolve(options.configDir ?? defaults.configDir) }, // absolute: sockets are reported by path
    parents: options.parent ?? [],
    builtinParents: options.builtinParents ?? true,
    allowedUids,
    cell,
    autostart: options.autostart ?? true,
    ...(options.calloutTimeout === undefined ? {} : { calloutTimeoutMs: options.calloutTimeout }),
  };
}

/**
 * Runs a device host until stopped, then shuts it down.
 * @throws {VfioUserError} what {@link DeviceHost.start} throws: EPERM run directory not ours; EADDRINUSE another host
 *   runs there; ENOENT/EINVAL a parent that does not load; EEXIST two parents with one name; EINVAL bad options.
 */
export async function runHost(options: HostCommandOptions, io: HostIo = defaultIo()): Promise<void> {
  const stopped = io.stopped(); // listen for signals first: loading parents and starting instances takes a while
  const startUp = new AbortController();
  void stopped.then(() => startUp.abort()); // a signal during start-up: no further auto definition is started
  const hostOpts = { ...hostOptions(options), logger: io.logger, signal: startUp.signal };
  const host = await DeviceHost.start(hostOpts);
  const parents = host.parents.map((p) => p.parent.name);
  if (options.json) {
    io.log(JSON.stringify({ ready: true, pid: process.pid, control: host.controlSocket, runDir: host.paths.runDir, configDir: host.paths.configDir, parents, instances: host.instanceCount }));
  } else {
    io.log(`host ready: control ${host.controlSocket}, ${parents.length} parents, ${host.instanceCount} instances`);
  }
  const signal = await stopped;
  io.logger.info({ event: 'host-stopping', signal }, `${signal}: stopping every instance`);
  await host.close();
}
