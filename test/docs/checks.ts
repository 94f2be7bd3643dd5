/**
 * The checks of blocks the harness does not run: `output` text compared with
 * what the previous block printed, `run-by` (the named test exists and reads
 * the document), `check` (what a shell block names exists: npm scripts, CLI
 * subcommands and options, built files, environment variables), and json.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** Trailing spaces and trailing blank lines dropped. */
function lines(text: string): string[] {
  const out = text.replace(/\r/g, '').split('\n').map((l) => l.replace(/\s+$/, ''));
  while (out.length > 0 && out[out.length - 1] === '') out.pop();
  return out;
}

function lineMatches(pattern: string, line: string): boolean {
  const parts = pattern.split('…').map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  return new RegExp(`^${parts.join('.*')}$`).test(line);
}

/**
 * Whether `actual` matches the `expected` output block: line for line,
 * trailing spaces ignored; `…` in a line matches any characters, a line that
 * is only `…` any number of lines.
 */
export function outputMatches(expected: string, actual: string): boolean {
  const want = lines(expected);
  const got = lines(actual);
  const memo = new Map<string, boolean>();
  const match = (i: number, j: number): boolean => {
    const key = `${i},${j}`;
    const known = memo.get(key);
    if (known !== undefined) return known;
    let result: boolean;
    if (i === want.length) result = j === got.length;
    else if (want[i] === '…') result = match(i + 1, j) || (j < got.length && match(i, j + 1));
    else result = j < got.length && lineMatches(want[i] as string, got[j] as string) && match(i + 1, j + 1);
    memo.set(key, result);
    return result;
  };
  return match(0, 0);
}

/** Problems with `run-by FILE` for a block of `doc`: FILE must exist and name the document. */
export function checkRunBy(root: string, doc: string, file: string): string[] {
  const path = join(root, file);
  if (!existsSync(path) || !statSync(path).isFile()) return [`run-by ${file}: no such file`];
  const text = readFileSync(path, 'utf8');
  return text.includes(basename(doc)) ? [] : [`run-by ${file}: that file never names ${basename(doc)}, so it cannot run this block`];
}

/** Source text of src/ and test/ (for environment variable names), read once. */
let sources: string | undefined;
function sourceText(root: string): string {
  if (sources !== undefined) return sources;
  const parts: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (/\.(ts|c|sh)$/.test(entry.name)) parts.push(readFileSync(path, 'utf8'));
    }
  };
  for (const dir of ['src', 'test', 'bench']) if (existsSync(join(root, dir))) walk(join(root, dir));
  sources = parts.join('\n');
  return sources;
}

/** Subcommands of the CLI and the options each takes (from `--help`), read once per command. */
const helpCache = new Map<string, string>();
function help(root: string, args: string[]): string {
  const key = args.join(' ');
  const cached = helpCache.get(key);
  if (cached !== undefined) return cached;
  let text: string;
  try {
    text = execFileSync(process.execPath, [join(root, 'dist/src/cli/main.js'), ...args, '--help'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch {
    text = '';
  }
  helpCache.set(key, text);
  return text;
}

function subcommands(root: string): Set<string> {
  const text = help(root, []);
  const after = (text.split(/^Commands:\s*$/m)[1] ?? '').split(/\n\s*\n/)[0] ?? '';
  return new Set([...after.matchAll(/^ {2}([a-z][\w-]*)/gm)].map((m) => m[1] as string));
}

/** Whether a `dist/…` path or glob (`*` in its last segment) names an existing file. */
function distExists(root: string, path: string): boolean {
  if (!path.includes('*')) return existsSync(join(root, path));
  const dir = join(root, dirname(path));
  if (dirname(path).includes('*') || !existsSync(dir)) return false;
  const re = new RegExp(`^${basename(path).split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
  return readdirSync(dir).some((f) => re.test(f));
}

/** The block's shell commands: continuation lines joined, comments dropped. */
function commands(code: string): string[] {
  return code.replace(/\\\n/g, ' ').split('\n').map((l) => l.replace(/(^|\s)#.*$/, '').trim()).filter((l) => l !== '');
}

/** Problems with a `check` sh block (what it names must exist). */
export function checkShell(root: string, code: string): string[] {
  const problems: string[] = [];
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts?: Record<string, string> };
  const scripts = pkg.scripts ?? {};
  const known = subcommands(root);
  for (const command of commands(code)) {
    for (const m of command.matchAll(/\bnpm\s+(run(?:-script)?\s+(\S+)|start|test|ci|install)\b/g)) {
      const script = m[2] ?? m[1] as string;
      if (!['ci', 'install'].includes(script) && !(script in scripts)) problems.push(`npm script '${script}' is not in package.json`);
    }
    for (const m of command.matchAll(/(?:^|[\s;&|(])(?:npx\s+)?(?:vfio-user|node\s+dist\/src\/cli\/main\.js)\s+(?:--trace\s+)?([a-z][\w-]*)([^;&|]*)/g)) {
      const sub = m[1] as string;
      if (!known.has(sub)) {
        problems.push(`vfio-user ${sub}: no such subcommand (vfio-user --help lists ${[...known].join(', ')})`);
        continue;
      }
      const options = help(root, [sub]) + help(root, []);
      for (const opt of (m[2] ?? '').matchAll(/(?:^|[\s[])(--[a-z][\w-]*)/g)) {
        if (!options.includes(opt[1] as string)) problems.push(`vfio-user ${sub}: no option ${opt[1]} in its --help`);
      }
    }
    for (const m of command.matchAll(/(?:^|\s)(dist\/\S+)/g)) {
      if (!distExists(root, m[1] as string)) problems.push(`${m[1]}: no such built file`);
    }
    for (const m of command.matchAll(/(?:^|\s)([A-Z][A-Z0-9_]{2,})=/g)) {
      if (!sourceText(root).includes(m[1] as string)) problems.push(`environment variable ${m[1]} is read nowhere in src/, test/ or bench/`);
    }
  }
  return problems;
}
