/**
 * `vfio-user shell SOCKET [--file SCRIPT] [--keep-going] [--json]
 * [--assign-bars auto|always|never]`: one client session driven by commands,
 * one per line — interactively (a prompt, line editing and history) when
 * stdin is a terminal, else as a script from stdin or `--file`. The device
 * is not reset between commands, only when the shell exits (the session
 * closes: vfio-user semantics). The commands: `help` (shell-*.ts).
 *
 * A script stops at its first failing line (exit status 1, the line number on
 * stderr) unless `--keep-going`, which runs every line and still exits 1 if
 * one failed. `--json` prints one JSON object per command on stdout:
 * `{"line":N,"command":"read","ok":true,"result":{…}}` or `"ok":false,"error":"…"`.
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { CommanderError } from 'commander';
import { ConnectionClosedError } from '../../errors.js';
import { Errno } from '../../protocol/errno.js';
import { parseAssignBars, type AssignBarsMode } from '../bar-gate.js';
import { CliError, describeError, stdio, withClient, type GlobalOptions, type Output } from '../common.js';
import { DEVICE_COMMANDS } from '../shell-device.js';
import { IRQ_COMMANDS } from '../shell-irq.js';
import { MEMORY_COMMANDS } from '../shell-memory.js';
import { MISC_COMMANDS } from '../shell-misc.js';
import { ShellSession, type ShellTarget } from '../shell-session.js';
import type { ShellCommand, ShellContext, ShellResult } from '../shell-types.js';
import { splitWords } from '../shell-words.js';

/** Options of `shell`. */
export interface ShellOptions {
  /** Read the commands from this file instead of stdin. */
  file?: string;
  keepGoing?: boolean;
  json?: boolean;
  assignBars?: string;
}

/** How {@link runShellOnSession} reads and writes. */
export interface ShellIo {
  /** Lines come from here (default: stdin). */
  input?: NodeJS.ReadableStream;
  /** Script lines given directly (instead of `input`). */
  lines?: readonly string[];
  /** Name of the script in error lines (default `stdin`). */
  source?: string;
  out?: Output;
  /** A prompt, line editing and history (default: whether `input` is a terminal). */
  interactive?: boolean;
  /** Where an interactive shell echoes and prompts (default: stdout). */
  terminal?: NodeJS.WritableStream;
  json?: boolean;
  keepGoing?: boolean;
  assignBars?: AssignBarsMode;
  global?: GlobalOptions;
}

/** What a shell run did. */
export interface ShellOutcome {
  /** Commands run (blank lines and comments excluded). */
  commands: number;
  failures: number;
  /** The connection to the server was lost. */
  disconnected: boolean;
}

/** Every command of the shell, in `help` order. */
export const SHELL_COMMANDS: readonly ShellCommand[] = [...DEVICE_COMMANDS, ...MEMORY_COMMANDS, ...IRQ_COMMANDS, ...MISC_COMMANDS];

/** JSON on one line, bigints as numbers when safe, decimal strings otherwise. */
export function jsonLine(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v !== 'bigint') return v;
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
  });
}

/** Levenshtein distance, for "did you mean". */
function distance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min((row[j] ?? 0) + 1, (next[j - 1] ?? 0) + 1, (row[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length] ?? 0;
}

function findCommand(name: string): ShellCommand {
  const command = SHELL_COMMANDS.find((c) => c.name === name || c.aliases?.includes(name));
  if (command !== undefined) return command;
  const near = SHELL_COMMANDS.filter((c) => distance(c.name, name) <= Math.max(1, Math.floor(name.length / 3))).map((c) => c.name);
  throw new CliError(`unknown command '${name}'${near.length > 0 ? ` (did you mean ${near.join(' or ')}?)` : ''}; help lists the commands`, { errno: Errno.EINVAL });
}

/** Runs one command line's words. @throws the command's error, or a {@link CliError} EINVAL for bad arguments. */
async function execute(ctx: ShellContext, name: string, args: string[]): Promise<ShellResult> {
  const command = findCommand(name);
  let result: ShellResult | undefined;
  let help = '';
  const program = command.build(ctx, (r) => (result = r))
    .exitOverride()
    .configureOutput({ writeOut: (s) => void (help += s), writeErr: () => undefined, outputError: () => undefined });
  try {
    await program.parseAsync(args, { from: 'user' });
  } catch (error) {
    if (!(error instanceof CommanderError)) throw error;
    if (error.code === 'commander.helpDisplayed') return { value: { command: command.name, help }, lines: help.replace(/\n+$/, '').split('\n') };
    const text = error.message.replace(/^error: /, '').split('\n').map((l) => l.trim()).filter((l) => l !== '').join(' ');
    throw new CliError(`${command.name}: ${text}`, { errno: Errno.EINVAL, cause: error });
  }
  return result ?? { value: {}, lines: [] };
}

/** The lines to run: given, from a terminal (prompt, history) or from a stream. */
function lineSource(io: ShellIo, interactive: boolean, commands: readonly string[]): AsyncIterable<string> & { close?(): void; prompt?(): void } {
  if (io.lines !== undefined) {
    const lines = io.lines;
    return (async function* () {
      yield* lines;
    })();
  }
  const input = io.input ?? process.stdin;
  const rl = interactive
    ? createInterface({
        input,
        output: io.terminal ?? process.stdout,
        terminal: true,
        prompt: 'vfio-user> ',
        historySize: 1000,
        completer: (line: string) => [commands.filter((c) => c.startsWith(line)), line],
      })
    : createInterface({ input, crlfDelay: Infinity, terminal: false });
  // Node 24 throws on prompt()/close() once the input ended (ERR_USE_AFTER_CLOSE): track it.
  let closed = false;
  rl.on('close', () => (closed = true));
  if (interactive) rl.on('SIGINT', () => rl.close());
  return {
    [Symbol.asyncIterator]: () => rl[Symbol.asyncIterator](),
    close: () => {
      if (!closed) rl.close();
    },
    ...(interactive ? { prompt: () => void (closed || rl.prompt()) } : {}),
  };
}

/**
 * Runs the shell's commands on a session held by the caller: nothing is reset
 * or closed at the end except what the shell itself set up (its interrupts and
 * DMA mappings; and a migration destination it switched to). The caller keeps
 * (and closes) `target.client`.
 * @returns the counts; the first failing line ends a non-interactive run unless `keepGoing`.
 */
export async function runShellOnSession(target: ShellTarget, io: ShellIo = {}): Promise<ShellOutcome> {
  const out = io.out ?? stdio;
  const interactive = io.interactive ?? (io.lines === undefined && ((io.input ?? process.stdin) as NodeJS.ReadStream).isTTY === true);
  const note = (text: string): void => out.trace(`note: ${text}`);
  const session = new ShellSession(target, { ownsClient: false, assignBars: io.assignBars ?? 'auto', note });
  let quit = false;
  const ctx: ShellContext = { session, global: io.global ?? {}, out, quit: () => void (quit = true), json: io.json === true, commands: SHELL_COMMANDS };
  const source = lineSource(io, interactive, SHELL_COMMANDS.flatMap((c) => [c.name, ...(c.aliases ?? [])]));
  const outcome: ShellOutcome = { commands: 0, failures: 0, disconnected: false };
  let number = 0;
  try {
    source.prompt?.();
    for await (const line of source) {
      number++;
      const ok = await runLine(ctx, line, number, { out, interactive, json: io.json === true, source: io.source ?? 'stdin' }, outcome);
      if (quit || outcome.disconnected || (!ok && !interactive && io.keepGoing !== true)) break;
      source.prompt?.();
    }
  } finally {
    source.close?.();
    await session.release();
  }
  return outcome;
}

/** Whether `error` or one of its causes is a `type`. */
function causedBy(error: unknown, type: abstract new (...args: never[]) => Error): boolean {
  let e: unknown = error;
  for (let depth = 0; e instanceof Error && depth < 8; depth++) {
    const current: Error = e;
    if (current instanceof type) return true;
    e = (current as { cause?: unknown }).cause;
  }
  return false;
}

interface LineIo {
  out: Output;
  interactive: boolean;
  json: boolean;
  source: string;
}

/** Runs one line; reports its result or error. @returns false when it failed. */
async function runLine(ctx: ShellContext, line: string, number: number, io: LineIo, outcome: ShellOutcome): Promise<boolean> {
  let words: string[];
  let name = '';
  try {
    words = splitWords(line);
    if (words.length === 0) return true;
    name = words[0] as string;
    outcome.commands++;
    const args = name === 'echo' ? words.slice(1) : words.slice(1).filter((w) => w !== '--json');
    const json = io.json || (name !== 'echo' && words.includes('--json'));
    ctx.json = json;
    const result = await execute(ctx, name, args);
    if (json) io.out.line(jsonLine({ line: number, command: name, ok: true, result: result.value }));
    else result.lines.forEach((l) => io.out.line(l));
    return true;
  } catch (error) {
    outcome.failures++;
    if (causedBy(error, ConnectionClosedError)) outcome.disconnected = true;
    const message = describeError(error);
    if (io.json) io.out.line(jsonLine({ line: number, command: name, ok: false, error: message }));
    io.out.trace(io.interactive ? `error: ${message}` : `vfio-user: ${io.source}:${number}: ${message}`);
    return false;
  }
}

function readScript(file: string): string[] {
  try {
    return readFileSync(file, 'utf8').split(/\r?\n/);
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    throw new CliError(`--file ${file}: ${e.code ?? e.message}`, { cause: error });
  }
}

/** Runs `shell`: connects, runs the commands, closes (the device resets then). Exit status 1 if a command failed. */
export async function runShell(socket: string, options: ShellOptions, global: GlobalOptions, out: Output = stdio): Promise<void> {
  const assignBars = parseAssignBars(options.assignBars);
  const lines = options.file === undefined ? undefined : readScript(options.file);
  const io: ShellIo = { out, json: options.json === true, keepGoing: options.keepGoing === true, assignBars, global, ...(lines ? { lines, source: options.file } : {}) };
  const outcome = await withClient(socket, global, (client) => runShellOnSession({ socket, client }, io), { out });
  if (outcome.disconnected) throw new CliError(`${socket}: the server closed the connection`, { errno: Errno.ENOTCONN });
  if (outcome.failures > 0) process.exitCode = 1;
}
