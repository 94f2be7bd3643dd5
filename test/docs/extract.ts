/**
 * Fenced code blocks of the documentation and their `<!-- snippet: … -->`
 * directives (the convention is docs/snippets.md). Parsing follows CommonMark
 * where the docs need it: fences of three or more backticks or tildes,
 * indented at most three spaces, closed by a fence of the same character at
 * least as long; anything inside a fence is content (so a fence inside a
 * four-backtick block is text, not a block).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Fence languages the harness knows. */
export const LANGUAGES = ['ts', 'sh', 'text', 'json'] as const;
export type Language = (typeof LANGUAGES)[number];

/** The setup a block's directives ask for. */
export interface Directives {
  serve: string[][];
  continue: boolean;
  background: boolean;
  file: string | undefined;
  output: boolean;
  exit: number;
  timeoutMs: number;
  needs: string[];
  runBy: string | undefined;
  check: boolean;
}

/** One fenced block. */
export interface Block {
  /** Repo-relative document path, e.g. `README.md`, `docs/devices.md`. */
  doc: string;
  /** 1-based line of the opening fence. */
  line: number;
  /** The fence's language word, '' when none. */
  lang: string;
  code: string;
  directives: Directives;
  /** What is wrong with the block or its directives (each fails the block). */
  problems: string[];
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*(.*)$/;
const DIRECTIVE = /^\s*<!--\s*snippet:(.*?)-->\s*$/;
const DEFAULT_TIMEOUT_MS = 30_000;

/** The documents whose blocks are tests: README.md and docs/*.md, repo-relative, sorted. */
export function documents(root: string): string[] {
  const docs = readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`);
  return ['README.md', ...docs];
}

function defaults(): Directives {
  return { serve: [], continue: false, background: false, file: undefined, output: false, exit: 0, timeoutMs: DEFAULT_TIMEOUT_MS, needs: [], runBy: undefined, check: false };
}

/** Parses the text after `snippet:`; problems are pushed, never thrown. */
export function parseDirectives(text: string, problems: string[]): Directives {
  const d = defaults();
  for (const part of text.split(';').map((p) => p.trim()).filter((p) => p !== '')) {
    const [kind, ...args] = part.split(/\s+/) as [string, ...string[]];
    const arity = (n: number): boolean => {
      if (args.length === n) return true;
      problems.push(`directive '${part}': '${kind}' takes ${n} argument(s)`);
      return false;
    };
    const count = (what: string): number | undefined => {
      const value = Number(args[0]);
      if (arity(1) && Number.isInteger(value) && value >= 0) return value;
      problems.push(`directive '${part}': ${what} must be a non-negative integer`);
      return undefined;
    };
    switch (kind) {
      case 'serve':
        if (args.length >= 2) d.serve.push(args);
        else problems.push(`directive '${part}': serve takes KIND PATH [ARG…]`);
        break;
      case 'continue': if (arity(0)) d.continue = true; break;
      case 'background': if (arity(0)) d.background = true; break;
      case 'output': if (arity(0)) d.output = true; break;
      case 'check': if (arity(0)) d.check = true; break;
      case 'file': if (arity(1)) d.file = args[0]; break;
      case 'needs': if (arity(1)) d.needs.push(args[0] as string); break;
      case 'run-by': if (arity(1)) d.runBy = args[0]; break;
      case 'exit': d.exit = count('the exit status') ?? 0; break;
      case 'timeout': d.timeoutMs = (count('the timeout') ?? 30) * 1000; break;
      default: problems.push(`unknown directive '${kind}' (see docs/snippets.md)`);
    }
  }
  return d;
}

/** Checks that the directives fit the block's language. */
function validate(block: Block): void {
  const { directives: d, lang, problems } = block;
  if (!(LANGUAGES as readonly string[]).includes(lang)) {
    problems.push(lang === '' ? 'a fence without a language: use ts, sh, text or json (docs/snippets.md)' : `unknown fence language '${lang}': use ts, sh, text or json`);
  }
  const runs = lang === 'ts' || lang === 'sh';
  const modes = [d.runBy !== undefined, d.check, d.file !== undefined, d.background].filter(Boolean).length;
  if (modes > 1) problems.push('at most one of run-by, check, file, background');
  if (!runs && (d.serve.length > 0 || d.continue || d.background || d.file !== undefined || d.check || d.exit !== 0 || d.needs.length > 0)) {
    problems.push(`a ${lang || 'plain'} block is not run: only output or run-by apply`);
  }
  if (d.output && lang !== 'text') problems.push('output applies to a text block');
  if (d.check && lang !== 'sh') problems.push('check applies to a sh block');
}

/** Every fenced block of `doc` (repo-relative), with its directives. */
export function extractBlocks(root: string, doc: string): Block[] {
  const lines = readFileSync(join(root, doc), 'utf8').split('\n');
  const blocks: Block[] = [];
  let pending: { line: number; text: string } | undefined;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string;
    const directive = DIRECTIVE.exec(line);
    if (directive) {
      pending = { line: i + 1, text: directive[1] ?? '' };
      continue;
    }
    const open = FENCE.exec(line);
    if (!open) {
      if (line.trim() !== '') pending = undefined;
      continue;
    }
    const fence = open[1] as string;
    const [lang = '', ...rest] = (open[2] ?? '').trim().split(/\s+/);
    const body: string[] = [];
    let j = i + 1;
    const closes = (l: string): boolean => new RegExp(`^ {0,3}${fence[0] === '`' ? '`' : '~'}{${fence.length},}\\s*$`).test(l);
    while (j < lines.length && !closes(lines[j] as string)) body.push(lines[j++] as string);
    const problems: string[] = [];
    if (j >= lines.length) problems.push('the fence is never closed');
    if (rest.length > 0) problems.push(`words after the language ('${rest.join(' ')}'): put directives in <!-- snippet: … -->`);
    const block: Block = { doc, line: i + 1, lang, code: body.join('\n') + '\n', directives: parseDirectives(pending?.text ?? '', problems), problems };
    validate(block);
    blocks.push(block);
    pending = undefined;
    i = j;
  }
  return blocks;
}

/** Whether the harness runs the block itself (rather than a file, a check, another suite, or not at all). */
export function isRun(block: Block): boolean {
  const d = block.directives;
  return (block.lang === 'ts' || block.lang === 'sh') && d.runBy === undefined && !d.check && d.file === undefined;
}

/** Blocks run (or written) together in one directory: a block and those that `continue` it. */
export interface Group {
  id: number;
  blocks: Block[];
}

/** Groups the ts/sh blocks of one document; text and json blocks are not in groups. */
export function groupBlocks(blocks: readonly Block[], firstId: number): Group[] {
  const groups: Group[] = [];
  for (const block of blocks) {
    if (block.lang !== 'ts' && block.lang !== 'sh') continue;
    if (block.directives.runBy !== undefined || block.directives.check) continue;
    const last = groups[groups.length - 1];
    if (block.directives.continue) {
      if (last) last.blocks.push(block);
      else block.problems.push('continue: no earlier ts or sh block in this document');
      if (last) continue;
    }
    groups.push({ id: firstId + groups.length, blocks: [block] });
  }
  return groups;
}
