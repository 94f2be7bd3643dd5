/**
 * `vfio-user replay FILE --to SOCK [--json] [--timing asap|recorded]
 * [--session N]`: replays a recording made by `vfio-user mediate --record FILE`
 * (its client side) against the device at SOCK and reports every reply that
 * differs from the recorded one (docs/record-replay.md). The global
 * `--timeout` bounds each awaited reply. Exit status: 0 no difference, 1
 * differences found, 2 a usage error or a failure to read the file or reach
 * the device (one line on stderr).
 */
import { Command, Option, type CommanderError } from 'commander';
import type { ReplayReport } from '../../mediator/replay.js';
import type { ReplayDifference } from '../../mediator/replay-compare.js';
import { describeError, parseTimeout, type GlobalOptions } from '../common.js';
import { countOption } from '../values.js';

/** Options of {@link runReplay} as commander parses them. */
export interface ReplayCommandOptions {
  to: string;
  json?: boolean;
  timing?: 'asap' | 'recorded';
  session?: number;
}

/** Where the command writes (tests inject their own). */
export interface ReplayIo {
  out(line: string): void;
  err(line: string): void;
}

const stdio: ReplayIo = {
  out: (line) => void process.stdout.write(`${line}\n`),
  err: (line) => void process.stderr.write(`${line}\n`),
};

/** Exit statuses of `vfio-user replay`. */
export const ReplayExit = { SAME: 0, DIFFERENT: 1, ERROR: 2 } as const;

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** One difference as two to four lines: what, then the hex context of both payloads. */
export function formatDifference(d: ReplayDifference): string[] {
  const where = d.index >= 0 ? ` #${d.index}` : '';
  const record = d.record >= 0 ? `, record ${d.record}` : '';
  const lines = [`session ${d.session}${where} ${d.command} (msgId ${d.msgId}${record}) ${d.kind}: ${d.summary}`];
  if (d.expectedHex !== undefined) lines.push(`  expected ${d.expectedHex}`, `  got      ${d.gotHex ?? ''}`);
  return lines;
}

/** The text report: a summary line, each difference, each note. */
export function formatReport(report: ReplayReport, to: string): string[] {
  const n = report.differences.length;
  const lines = [
    `replayed ${report.file} against ${to}: ${plural(report.sessions, 'session')}, ${plural(report.messages, 'message')}, ` +
      `${plural(report.replies, 'reply').replace('replys', 'replies')}, ${n + report.omitted === 0 ? 'no differences' : plural(n + report.omitted, 'difference')} (${report.durationMs} ms)`,
  ];
  for (const d of report.differences) lines.push(...formatDifference(d));
  if (report.omitted > 0) lines.push(`… and ${plural(report.omitted, 'more difference')} not listed`);
  for (const note of report.notes) lines.push(`note: ${note}`);
  return lines;
}

/**
 * Replays `file` against `options.to` and prints the report.
 * @returns the exit status ({@link ReplayExit}); failures are printed, never thrown.
 */
export async function runReplay(file: string, options: ReplayCommandOptions, global: GlobalOptions = {}, io: ReplayIo = stdio): Promise<number> {
  let report: ReplayReport;
  try {
    const { replay } = await import('../../mediator/replay.js'); // loaded when used: the CLI starts faster
    report = await replay(file, {
      to: options.to,
      timing: options.timing ?? 'asap',
      timeoutMs: parseTimeout(global.timeout),
      ...(options.session === undefined ? {} : { session: options.session }),
    });
  } catch (error) {
    io.err(`vfio-user replay: ${describeError(error)}`);
    return ReplayExit.ERROR;
  }
  if (options.json) io.out(JSON.stringify(report, null, 2));
  else for (const line of formatReport(report, options.to)) io.out(line);
  return report.differences.length + report.omitted === 0 ? ReplayExit.SAME : ReplayExit.DIFFERENT;
}

/** Usage errors exit 2 (commander would exit 1); --help exits 0. */
function usageExit(error: CommanderError): never {
  process.exit(error.exitCode === 0 ? 0 : ReplayExit.ERROR);
}

/** Adds `replay` to the program (main.ts). */
export function registerReplay(program: Command, io: ReplayIo = stdio): Command {
  return program
    .command('replay')
    .description('replay a recording (`vfio-user mediate --record FILE`) against a device and report every reply that differs; exit 0 none, 1 differences, 2 errors')
    .argument('<file>', 'the recording')
    .requiredOption('--to <socket>', "the device's socket")
    .addOption(new Option('--timing <mode>', 'asap: each command as soon as the recorded order allows; recorded: at its recorded time').choices(['asap', 'recorded']).default('asap'))
    .addOption(countOption('--session <n>', 'replay only this session of the recording (default: every session, in order)', { min: 1 }))
    .addOption(new Option('--json', 'the report as one JSON document'))
    .exitOverride(usageExit)
    .action(async (file: string, options: ReplayCommandOptions, command: Command) => {
      const global = (command.parent?.opts() ?? {}) as GlobalOptions;
      process.exitCode = await runReplay(file, options, global, io);
    });
}
