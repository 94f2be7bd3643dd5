/**
 * Every fenced code block of README.md and docs/*.md, executed (the
 * convention: docs/snippets.md). ts blocks are type-checked together in one
 * TypeScript program against the package as installed (`'vfio-user'` resolves
 * to this checkout through node_modules) and run with node; sh blocks run with
 * bash and `vfio-user` on PATH; each group of blocks (a block and those that
 * `continue` it) gets its own temporary directory, which `/tmp/` in the code
 * is rewritten to, and its servers and background jobs are killed when the
 * group ends. `output` text blocks are compared with what the block before
 * printed; json blocks must parse; `run-by` and `check` blocks are verified
 * statically. A block in no language, or one nothing runs, fails.
 *
 * SNIPPETS_ONLY=README.md (or docs/x.md) limits the run to one document.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkRunBy, checkShell, outputMatches } from './checks.js';
import { compileAll } from './compile.js';
import { documents, extractBlocks, groupBlocks, isRun, type Block, type Group } from './extract.js';
import { finish, killGroup, onPath, outputOf, SHELL_PRELUDE, start, waitListening, waitOutput, withServerWaits, type Started } from './processes.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url)).replace(/\/$/, '');
const CLI = join(REPO, 'dist/src/cli/main.js');
const SERVE_READY_MS = 15_000;
/** Groups run at once (SNIPPETS_CONCURRENCY overrides). */
const CONCURRENCY = Number(process.env.SNIPPETS_CONCURRENCY) || Math.min(4, availableParallelism() + 1);

const only = process.env.SNIPPETS_ONLY;
const docs = documents(REPO).filter((d) => only === undefined || only === '' || d === only);
const root = mkdtempSync(join(tmpdir(), 'vfio-user-snippets-'));
const parsed = docs.map((doc) => ({ doc, blocks: extractBlocks(REPO, doc) }));
let nextId = 1;
const groups = new Map<string, Group[]>();
for (const { doc, blocks } of parsed) {
  const list = groupBlocks(blocks, nextId);
  nextId += list.length;
  groups.set(doc, list);
}
const dirOf = new Map<Block, string>();
const tsFileOf = new Map<Block, string>();
for (const list of groups.values()) {
  for (const g of list) for (const b of g.blocks) dirOf.set(b, join(root, `g${g.id}`));
}

const label = (b: Block): string => `${b.doc}:${b.line} ${b.lang || '(no language)'}`;
const slug = (b: Block): string => `${b.doc.replace(/[^A-Za-z0-9]+/g, '-').toLowerCase()}-L${b.line}`;
const intoDir = (text: string, dir: string): string => text.replaceAll('/tmp/', `${dir}/`);
const fromDir = (text: string, dir: string): string => text.replaceAll(`${dir}/`, '/tmp/').replaceAll(root, '/tmp');

/** The snippet root: a package.json (ESM), node_modules/vfio-user → this checkout, bin/ → the package's commands (package.json `bin`: vfio-user, lsmdev). */
function prepareRoot(): void {
  writeFileSync(join(root, 'package.json'), JSON.stringify({ name: 'vfio-user-snippets', private: true, type: 'module' }));
  mkdirSync(join(root, 'node_modules'));
  symlinkSync(REPO, join(root, 'node_modules/vfio-user'), 'dir');
  mkdirSync(join(root, 'bin'));
  const bins = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { bin: Record<string, string> }).bin;
  for (const [name, target] of Object.entries(bins)) {
    writeFileSync(join(root, 'bin', name), `#!/bin/sh\nexec '${process.execPath}' '${join(REPO, target)}' "$@"\n`);
    chmodSync(join(root, 'bin', name), 0o755);
  }
  for (const dir of new Set(dirOf.values())) mkdirSync(dir);
}

/** Writes every ts and `file` block into its group's directory; compiles the ts ones together. */
function writeAndCompile(): Map<string, string[]> {
  const ts: string[] = [];
  const where = new Map<string, Block>();
  for (const [block, dir] of dirOf) {
    // A ts block written as `file x.js` is type-checked as x.ts and emitted as x.js.
    const name = block.directives.file?.replace(/\.js$/, block.lang === 'ts' ? '.ts' : '.js') ?? `${slug(block)}.${block.lang}`;
    const path = join(dir, name);
    writeFileSync(path, intoDir(block.code, dir));
    if (block.lang === 'ts') {
      ts.push(path);
      tsFileOf.set(block, path);
      where.set(path, block);
    }
  }
  return compileAll(ts, root, REPO, (file, line, column) => {
    const block = where.get(file);
    return block ? `${block.doc}:${block.line + line}:${column}` : `${relative(root, file)}:${line}:${column}`;
  });
}

let diagnostics = new Map<string, string[]>();
before(() => {
  prepareRoot();
  diagnostics = writeAndCompile();
});
after(() => rmSync(root, { recursive: true, force: true }));

function env(): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { ...process.env, PATH: `${join(root, 'bin')}:${process.env.PATH ?? ''}` };
  delete e.NODE_TEST_CONTEXT;
  delete e.NODE_OPTIONS;
  return e;
}

/** What one group's blocks share: the processes to kill at its end, each run block's output. */
interface GroupState {
  processes: Started[];
  outputs: Map<Block, string>;
}

async function serve(args: string[], dir: string, state: GroupState): Promise<void> {
  const [kind, path, ...rest] = args.map((a) => intoDir(a, dir)) as [string, string, ...string[]];
  const p = start(process.execPath, [CLI, 'serve', kind, '--socket', path, ...rest], dir, env(), join(dir, `.serve-${state.processes.length}.out`));
  state.processes.push(p);
  await waitListening([path], p, SERVE_READY_MS);
}

function commandOf(block: Block, dir: string): [string, string[]] {
  if (block.lang === 'ts') {
    const problems = diagnostics.get(tsFileOf.get(block) ?? '') ?? ['not compiled'];
    assert.deepEqual(problems, [], `${label(block)} does not type-check:\n${problems.join('\n')}`);
    return [process.execPath, [(tsFileOf.get(block) as string).replace(/\.ts$/, '.js')]];
  }
  const script = join(dir, `${slug(block)}.run.sh`);
  writeFileSync(script, `${SHELL_PRELUDE}\n${withServerWaits(intoDir(block.code, dir))}\n`);
  return ['bash', [script]];
}

async function runBlock(block: Block, state: GroupState): Promise<void> {
  assert.deepEqual(block.problems, [], `${label(block)}: ${block.problems.join('; ')}`);
  const dir = dirOf.get(block) as string;
  const d = block.directives;
  for (const args of d.serve) await serve(args, dir, state);
  if (d.file !== undefined) {
    if (block.lang === 'ts') commandOf(block, dir); // type-checks
    return;
  }
  const [command, args] = commandOf(block, dir);
  const p = start(command, args, dir, env(), join(dir, `.${slug(block)}.out`));
  state.processes.push(p);
  if (d.background) {
    const sockets = [...new Set(block.code.match(/\/tmp\/[\w.\-/]+\.sock\b/g) ?? [])].map((s) => intoDir(s, dir));
    if (sockets.length > 0) await waitListening(sockets, p, d.timeoutMs);
    else await waitOutput(p, d.timeoutMs);
    state.outputs.set(block, fromDir(outputOf(p), dir));
    return;
  }
  const status = await finish(p, d.timeoutMs);
  const output = fromDir(outputOf(p), dir);
  state.outputs.set(block, output);
  assert.notEqual(status, 'timeout', `${label(block)} did not finish within ${d.timeoutMs / 1000} s; output:\n${output}`);
  assert.equal(status, d.exit, `${label(block)} exited with ${status}, expected ${d.exit}; output:\n${output}`);
}

/** The output blocks of each run block: a text block marked `output` belongs to the run block before it. */
function outputsByBlock(blocks: readonly Block[]): { of: Map<Block, Block[]>; orphans: Block[] } {
  const of = new Map<Block, Block[]>();
  const orphans: Block[] = [];
  let last: Block | undefined;
  for (const b of blocks) {
    if (isRun(b)) last = b;
    else if (b.lang === 'text' && b.directives.output) {
      if (last) of.set(last, [...(of.get(last) ?? []), b]);
      else orphans.push(b);
    }
  }
  return { of, orphans };
}

function staticTest(block: Block): void {
  const d = block.directives;
  if (d.runBy !== undefined) {
    it(`${label(block)} is run by ${d.runBy}`, () => {
      assert.deepEqual([...block.problems, ...checkRunBy(REPO, block.doc, d.runBy as string)], []);
    });
  } else if (d.check) {
    it(`${label(block)} names only what exists (check)`, () => {
      assert.deepEqual([...block.problems, ...checkShell(REPO, block.code)], []);
    });
  } else if (block.lang === 'json') {
    it(`${label(block)} parses`, () => {
      assert.deepEqual(block.problems, []);
      assert.doesNotThrow(() => JSON.parse(block.code));
    });
  } else if (block.problems.length > 0 && !dirOf.has(block)) {
    it(`${label(block)}`, () => assert.fail(`${label(block)}: ${block.problems.join('; ')}`));
  }
}

function groupTests(g: Group, outputs: Map<Block, Block[]>): void {
  const missing = g.blocks.flatMap((b) => b.directives.needs).filter((bin) => !onPath(bin));
  const first = g.blocks[0] as Block;
  describe(`${first.doc}:${first.line} (g${g.id}, ${g.blocks.length} block${g.blocks.length > 1 ? 's' : ''})`, { concurrency: 1, skip: missing.length > 0 ? `needs ${missing.join(', ')} on PATH` : false }, () => {
    const state: GroupState = { processes: [], outputs: new Map() };
    after(async () => {
      for (const p of state.processes.reverse()) await killGroup(p);
    });
    for (const block of g.blocks) {
      it(`${label(block)}${block.directives.file ? ` (file ${block.directives.file})` : ''}`, () => runBlock(block, state));
      for (const out of outputs.get(block) ?? []) {
        it(`${label(out)} is what ${label(block)} printed`, () => {
          const actual = state.outputs.get(block);
          assert.ok(actual !== undefined, `${label(block)} did not run`);
          assert.ok(outputMatches(out.code, actual), `${label(out)} does not match the output of ${label(block)}:\n--- expected\n${out.code}--- actual\n${actual}`);
        });
      }
    }
  });
}

// Groups share nothing (own directory, own servers, sockets only under it; TCP examples take a free port),
// so they run side by side: most of a block's time is spent waiting for processes to start.
describe(`code blocks of ${docs.join(', ')}`, { concurrency: CONCURRENCY }, () => {
  for (const { doc, blocks } of parsed) {
    const { of, orphans } = outputsByBlock(blocks);
    for (const block of blocks) staticTest(block);
    for (const o of orphans) it(`${label(o)} (output)`, () => assert.fail(`${label(o)}: an output block with no run block before it`));
    for (const g of groups.get(doc) ?? []) groupTests(g, of);
  }
});
