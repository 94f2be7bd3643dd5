/**
 * `vfio-user mediate --upstream SOCK --listen SOCK [--plugin MODULE]...
 * [--record FILE [--record-memory BYTES] [--record-upstream]] [--fault SPEC]... [--fault-seed N] [--allow-uid UID]...
 * [--json] [-- ARGS...]`: a transparent vfio-user proxy in front of a device
 * (src/mediator/, docs/mediation.md) until SIGINT or SIGTERM, then closes
 * every session and removes its socket.
 *
 * Plugins load from ES modules (src/mediator/plugin-loader.ts; the arguments
 * after `--` go to each module's `createPlugin`). `--fault` rules
 * (docs/fault-injection.md) run first, before the plugins; `--record` writes
 * the client side of every session to FILE (docs/record-replay.md). Prints one
 * ready line on stdout once listening: `mediating <upstream> on <listen>
 * (plugins: …)`, or with `--json` one JSON object with the same facts. Events
 * are logged as JSON lines on stderr (level `warn` unless `VFIO_USER_LOG`
 * says otherwise).
 */
import { Option, type Command } from 'commander';
import { createJsonLogger, getDefaultLogger, type Logger } from '../../log.js';
import type { Mediator } from '../../mediator/mediator.js';
import type { Recorder, RecorderOptions } from '../../mediator/record.js';
import type { FaultPlugin } from '../../mediator/fault.js';
import type { MediatorPlugin } from '../../mediator/types.js';
import { untilSignal } from '../signals.js';
import { parseCount, parseSize } from '../values.js';

/**
 * Adds `mediate` to `program` (the CLI's command table calls this). The
 * mediator's modules load when the command runs, not at CLI start-up.
 */
export function registerMediate(program: Command): Command {
  return program
    .command('mediate')
    .description('a transparent vfio-user proxy in front of a device until SIGINT/SIGTERM: plugins interpose (--plugin), --record records sessions, --fault injects faults')
    .argument('[args...]', "after --: arguments for the plugin modules' createPlugin(args)")
    .requiredOption('--upstream <socket>', 'the device socket to mediate')
    .requiredOption('--listen <socket>', 'socket path to create for clients (removed on exit)')
    .option('--plugin <module...>', 'a plugin module exporting `plugin`, `createPlugin(args)` or a default of either (repeatable)')
    .option('--record <file>', 'record every session to FILE (replay it with `vfio-user replay FILE --to SOCK`)')
    .option('--record-memory <bytes>', 'with --record: capture the content of DMA memfds up to this size per fd (4K, 64M), so a replay recreates guest RAM')
    .option('--record-upstream', 'with --record: record the upstream side too')
    .option('--fault <spec...>', "inject faults: 'CMD[,CMD]|*:KIND[=V][:p=P][:after=N][:count=N][:on=request|reply][:state=MIGSTATE]', KIND delay=50ms|error=EIO|drop|corrupt[=N]|disconnect (repeatable; docs/fault-injection.md)")
    .option('--fault-seed <n>', 'PRNG seed of --fault (without it a random seed is chosen and printed)')
    .option('--allow-uid <uid...>', 'also accept clients running as these uids')
    .addOption(new Option('--json', 'the ready line as one JSON object'))
    .action(async (args: string[], options: MediateCommandOptions) => {
      await runMediate(options, undefined, args);
    });
}

/** Options of {@link runMediate} (as commander parses them). */
export interface MediateCommandOptions {
  upstream: string;
  listen: string;
  plugin?: string[];
  record?: string;
  /** `--record-memory 64M`: DMA memfd content captured up to this size per fd. */
  recordMemory?: string;
  recordUpstream?: boolean;
  fault?: string[];
  faultSeed?: string;
  allowUid?: string[];
  json?: boolean;
}

/** What {@link runMediate} uses from its environment (tests inject their own). */
export interface MediateIo {
  /** Prints one line on stdout. */
  log(line: string): void;
  /** Resolves when the process is asked to stop (default: SIGINT or SIGTERM). */
  stopped(): Promise<string>;
  /** Where the mediator logs (default: JSON lines on stderr, level warn unless VFIO_USER_LOG). */
  logger: Logger;
}

function defaultIo(): MediateIo {
  return {
    log: (line) => void process.stdout.write(`${line}\n`),
    stopped: untilSignal,
    logger: process.env.VFIO_USER_LOG ? getDefaultLogger() : createJsonLogger({ level: 'warn', name: 'vfio-user-mediate' }),
  };
}

/**
 * Mediates between `options.upstream` and clients on `options.listen` until stopped.
 * @param args - the arguments after `--`, for the plugin modules' factories.
 * @throws {InvalidArgumentError} EINVAL for a bad fault spec, seed or uid, a plugin module that exports no plugin;
 *   ENOENT for a plugin module not found (plugin-loader.ts).
 * @throws {SystemError} EADDRINUSE when someone serves the listen path; EACCES, ENOENT from bind;
 *   the file system's error when the record file cannot be created.
 */
export async function runMediate(options: MediateCommandOptions, io: MediateIo = defaultIo(), args: readonly string[] = []): Promise<void> {
  const stopped = io.stopped(); // listen for signals first: loading plugins takes a while
  const [{ Mediator }, { loadPlugins }, { createRecorder }] = await Promise.all([
    import('../../mediator/mediator.js'),
    import('../../mediator/plugin-loader.js'),
    import('../../mediator/record.js'),
  ]);
  const fault = await faultPlugin(options, io.logger);
  const plugins: MediatorPlugin[] = fault ? [fault] : [];
  for (const spec of options.plugin ?? []) plugins.push(...(await loadPlugins(spec, args)));
  const recorder: Recorder | undefined = options.record === undefined ? undefined : createRecorder(options.record, recorderOptions(options, io.logger));
  let mediator: Mediator;
  try {
    mediator = await Mediator.listen({
      upstream: options.upstream,
      listen: options.listen,
      plugins,
      taps: recorder ? [recorder] : [],
      log: io.logger,
      ...(options.allowUid ? { allowedUids: options.allowUid.map((u) => parseCount(u, '--allow-uid', { min: 0, max: 0xffff_ffff })) } : {}),
    });
  } catch (error) {
    await recorder?.close().catch(() => undefined);
    throw error;
  }
  const names = plugins.map((p) => p.name);
  if (options.json) {
    io.log(JSON.stringify({ ready: true, pid: process.pid, upstream: options.upstream, listen: mediator.path, plugins: names, record: options.record ?? null, faultSeed: fault?.seed ?? null }));
  } else {
    const extras = [names.length > 0 ? `plugins: ${names.join(', ')}` : '', options.record ? `recording to ${options.record}` : '', fault ? `fault seed ${fault.seed}` : ''].filter(Boolean);
    io.log(`mediating ${options.upstream} on ${mediator.path}${extras.length > 0 ? ` (${extras.join('; ')})` : ''}`);
  }
  const signal = await stopped;
  io.logger.info({ event: 'mediator-stopping', signal }, `${signal}: closing every session`);
  await mediator.close();
  if (fault) io.logger.info({ event: 'fault-stats', stats: fault.stats() }, 'faults injected');
  await recorder?.close();
}

function recorderOptions(options: MediateCommandOptions, log: Logger): RecorderOptions {
  const captureMemory = options.recordMemory === undefined ? undefined : parseSize(options.recordMemory, '--record-memory');
  return {
    upstreamPath: options.upstream,
    log,
    ...(captureMemory === undefined ? {} : { captureMemory }),
    ...(options.recordUpstream ? { upstream: true } : {}),
  };
}

async function faultPlugin(options: MediateCommandOptions, log: Logger): Promise<FaultPlugin | undefined> {
  const specs = options.fault ?? [];
  if (specs.length === 0) {
    if (options.faultSeed !== undefined) parseCount(options.faultSeed, '--fault-seed', { min: 0, max: 0xffff_ffff });
    return undefined;
  }
  const { createFaultPlugin, parseFaultSpec } = await import('../../mediator/fault.js');
  const rules = specs.map((s) => parseFaultSpec(s));
  const seed = options.faultSeed === undefined ? undefined : parseCount(options.faultSeed, '--fault-seed', { min: 0, max: 0xffff_ffff });
  return createFaultPlugin(rules, { log, ...(seed === undefined ? {} : { seed }) });
}
