/**
 * The contract between `vfio-user shell` and its commands: each command is a
 * commander program built for one line, whose action hands back a result —
 * a JSON value (`--json`: one object per command) and the lines a person reads.
 */
import type { Command } from 'commander';
import type { GlobalOptions, Output } from './common.js';
import type { ShellSession } from './shell-session.js';

/** What one command produced. */
export interface ShellResult {
  /** The `--json` form. */
  value: unknown;
  /** The human form. */
  lines: string[];
}

/** What a command may use. */
export interface ShellContext {
  session: ShellSession;
  global: GlobalOptions;
  /** Notes (stderr). */
  out: Output;
  /** Ends the shell after this command. */
  quit(): void;
  /** Whether this line's result is printed as JSON (a command may then skip its human form). */
  json: boolean;
  /** The commands, for `help`. */
  readonly commands: readonly ShellCommand[];
}

/** One command of the shell. */
export interface ShellCommand {
  name: string;
  /** Other names (`exit` for `quit`). */
  aliases?: readonly string[];
  /** One line for `help`. */
  summary: string;
  /** A fresh commander program for one line; its action calls `done` with the result. */
  build(ctx: ShellContext, done: (result: ShellResult) => void): Command;
}

/** A result with the same words for both forms. */
export function textResult(value: Record<string, unknown>, ...lines: string[]): ShellResult {
  return { value, lines };
}
