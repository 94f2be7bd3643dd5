/**
 * Shared by the callout tests: a temp config dir with `scripts.d/{callouts,notifiers}`, tiny
 * `#!/bin/sh` fixtures written at test time, and a log each recording script appends one line
 * to: `NAME ARGS|STDIN`.
 */
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from '../../src/log.js';
import type { CalloutTarget } from '../../src/host/callouts.js';

/** A temp config dir with its script directories and a log file. */
export interface ScriptEnv {
  configDir: string;
  log: string;
  /** Writes `scripts.d/<kind>/<name>` with `body` after a recording line unless `record` is false (mode 0755 unless given). */
  script(kind: 'callouts' | 'notifiers', name: string, body: string, mode?: number, record?: boolean): string;
  /** A path in the config dir (for pid files). */
  file(name: string): string;
  /** The log's lines (empty before any script ran). */
  lines(): string[];
  /** The log's lines for one event (`-e EVENT`). */
  linesOf(event: string): string[];
  dispose(): void;
}

/** Creates a {@link ScriptEnv}; `dirs: false` leaves the scripts.d directories absent. */
export function scriptEnv(dirs = true): ScriptEnv {
  const configDir = mkdtempSync(join(tmpdir(), 'vfio-user-callouts-'));
  const log = join(configDir, 'calls.log');
  if (dirs) {
    mkdirSync(join(configDir, 'scripts.d', 'callouts'), { recursive: true });
    mkdirSync(join(configDir, 'scripts.d', 'notifiers'), { recursive: true });
  }
  const lines = (): string[] => {
    try {
      return readFileSync(log, 'utf8').split('\n').filter((l) => l !== '');
    } catch {
      return [];
    }
  };
  return {
    configDir,
    log,
    script(kind, name, body, mode = 0o755, record = true) {
      const path = join(configDir, 'scripts.d', kind, name);
      const line = record ? `in=$(cat)\nprintf '%s %s|%s\\n' "$(basename "$0")" "$*" "$in" >> '${log}'\n` : '';
      writeFileSync(path, `#!/bin/sh\n${line}${body}\n`);
      chmodSync(path, mode);
      return path;
    },
    file: (name) => join(configDir, name),
    lines,
    linesOf: (event) => lines().filter((l) => l.includes(` -e ${event} `)),
    dispose: () => rmSync(configDir, { recursive: true, force: true }),
  };
}

/** A target under `env` (type `pool-small` of parent `pool`). */
export function target(env: ScriptEnv, attrs: { [name: string]: string }[] = [{ size: '64M' }]): CalloutTarget {
  return { configDir: env.configDir, uuid: '976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9', parent: 'pool', config: { mdev_type: 'pool-small', start: 'manual', attrs } };
}

/** One log record. */
export interface LogRecord {
  level: string;
  fields: Record<string, unknown>;
  msg: string;
}

/** A logger keeping every record. */
export function recordingLogger(records: LogRecord[]): Logger {
  const at = (level: string) => (fields: object, msg?: string) => void records.push({ level, fields: fields as Record<string, unknown>, msg: msg ?? '' });
  const logger: Logger = { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug'), child: () => logger };
  return logger;
}

/** A `supports` answer to `get capabilities` (printed by a versioned fixture). */
export function supportsJson(actions: string[], events: string[]): string {
  return JSON.stringify({ supports: { version: 2, actions, events } });
}

/** Whether process `pid` is gone (or a zombie) within `withinMs` (polled). */
export async function processGone(pid: number, withinMs = 3000): Promise<boolean> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      return true;
    }
    // Field 3 (after the parenthesised command name) is the state; Z = zombie, X = dead.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Reads a pid a fixture wrote (waits for it: the file may be written just before the script is killed). */
export async function readPid(path: string, withinMs = 3000): Promise<number> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    try {
      const pid = Number.parseInt(readFileSync(path, 'utf8'), 10);
      if (pid > 0) return pid;
    } catch {
      // not written yet
    }
    if (Date.now() > deadline) throw new Error(`no pid in ${path}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
