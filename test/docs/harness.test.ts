/**
 * The documentation harness itself: fence and directive parsing, grouping,
 * output matching, the waits inserted after backgrounded servers, and the
 * static checks — so a broken harness cannot pass every snippet silently.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkRunBy, checkShell, outputMatches } from './checks.js';
import { extractBlocks, groupBlocks, isRun, parseDirectives } from './extract.js';
import { withServerWaits } from './processes.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));

/** Blocks of a markdown text written as docs/x.md of a scratch repo. */
function blocksOf(markdown: string): ReturnType<typeof extractBlocks> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-harness-'));
  try {
    mkdirSync(join(dir, 'docs'));
    writeFileSync(join(dir, 'docs/x.md'), markdown);
    return extractBlocks(dir, 'docs/x.md');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('documentation harness', () => {
  it('finds fences with their language, directives and line; a longer fence holds shorter ones as text', () => {
    const blocks = blocksOf([
      'prose',
      '<!-- snippet: serve gpio /tmp/g.sock; timeout 5 -->',
      '',
      '```ts',
      'console.log(1);',
      '```',
      '````text',
      '```sh',
      'not a block',
      '```',
      '````',
      '```',
      'untagged',
      '```',
    ].join('\n'));
    assert.deepEqual(blocks.map((b) => [b.line, b.lang]), [[4, 'ts'], [7, 'text'], [12, '']]);
    assert.deepEqual(blocks[0]?.directives.serve, [['gpio', '/tmp/g.sock']]);
    assert.equal(blocks[0]?.directives.timeoutMs, 5000);
    assert.equal(blocks[0]?.code, 'console.log(1);\n');
    assert.match(blocks[1]?.code ?? '', /```sh\nnot a block\n```/);
    assert.deepEqual(blocks[0]?.problems, []);
    assert.match(blocks[2]?.problems.join() ?? '', /without a language/);
  });

  it('refuses unknown directives, wrong arities, and directives that do not fit the language', () => {
    const problems: string[] = [];
    parseDirectives('frobnicate; file; exit x; serve gpio', problems);
    assert.equal(problems.length, 4, problems.join('\n'));
    const [text] = blocksOf('<!-- snippet: background -->\n```text\nx\n```\n');
    assert.match(text?.problems.join() ?? '', /not run/);
    const [json] = blocksOf('<!-- snippet: output -->\n```json\n{}\n```\n');
    assert.match(json?.problems.join() ?? '', /output applies to a text block/);
    const [unclosed] = blocksOf('```sh\necho\n');
    assert.match(unclosed?.problems.join() ?? '', /never closed/);
  });

  it('a directive applies only to the fence right after it', () => {
    const [block] = blocksOf('<!-- snippet: check -->\nsome prose\n\n```sh\necho\n```\n');
    assert.equal(block?.directives.check, false);
    assert.equal(block && isRun(block), true);
  });

  it('groups a block with the blocks that continue it; run-by and check blocks are not run', () => {
    const blocks = blocksOf([
      '```sh', 'a', '```',
      '<!-- snippet: continue -->', '```ts', 'b', '```',
      '<!-- snippet: check -->', '```sh', 'c', '```',
      '<!-- snippet: continue -->', '```sh', 'd', '```',
      '```ts', 'e', '```',
    ].join('\n'));
    const groups = groupBlocks(blocks, 1);
    assert.deepEqual(groups.map((g) => g.blocks.map((b) => b.code.trim())), [['a', 'b', 'd'], ['e']]);
    assert.deepEqual(groups.map((g) => g.id), [1, 2]);
  });

  it('matches output line by line, with … inside a line and … as any lines', () => {
    assert.ok(outputMatches('a\nb\n', 'a  \nb\n\n'));
    assert.ok(!outputMatches('a\nb\n', 'a\nc\n'));
    assert.ok(!outputMatches('a\n', 'a\nb\n'), 'extra lines fail');
    assert.ok(outputMatches('took … ms\n', 'took 12.5 ms\n'));
    assert.ok(!outputMatches('took … ms\n', 'took 12.5 s\n'));
    assert.ok(outputMatches('…\nlast\n', 'x\ny\nlast\n'));
    assert.ok(outputMatches('…\nlast\n', 'last\n'));
    assert.ok(!outputMatches('…\nlast\n', 'last\nafter\n'));
    assert.ok(outputMatches('a (1+1)? [x]\n', 'a (1+1)? [x]\n'), 'regex characters are literal');
  });

  it('waits after a backgrounded serve or migrate-listen line, for that socket or port', () => {
    const script = withServerWaits('vfio-user serve gpio --socket /tmp/g.sock &\nvfio-user info /tmp/g.sock\nvfio-user migrate-listen --port 7777 --once &  # receiver\n');
    assert.deepEqual(script.split('\n'), [
      'vfio-user serve gpio --socket /tmp/g.sock &',
      "__snippet_wait_unix '/tmp/g.sock' $!",
      'vfio-user info /tmp/g.sock',
      'vfio-user migrate-listen --port 7777 --once &  # receiver',
      '__snippet_wait_tcp 7777 $!',
      '',
    ]);
    assert.equal(withServerWaits('vfio-user serve gpio --socket /tmp/g.sock\n'), 'vfio-user serve gpio --socket /tmp/g.sock\n', 'a foreground serve is left alone');
  });

  it('check: flags a missing npm script, subcommand, option, built file or environment variable', () => {
    assert.deepEqual(checkShell(REPO, 'npm ci && npm test\nnpm run bench -- --only server\nvfio-user info /x.sock --json\n'), []);
    const problems = checkShell(REPO, [
      'npm run no-such-script',
      'vfio-user no-such-command /x.sock',
      'vfio-user info /x.sock --no-such-option',
      'node --test dist/test/no-such-dir/*.test.js',
      `${['NO', 'SUCH', 'VARIABLE'].join('_')}=1 npm test`, // spelled apart: this file is in test/ too
    ].join('\n'));
    assert.equal(problems.length, 5, problems.join('\n'));
  });

  it('run-by: the named file must exist and name the document', () => {
    assert.deepEqual(checkRunBy(REPO, 'README.md', 'test/qemu/readme.test.ts'), []);
    assert.equal(checkRunBy(REPO, 'README.md', 'test/qemu/no-such.test.ts').length, 1);
    assert.equal(checkRunBy(REPO, 'docs/devices.md', 'test/qemu/readme.test.ts').length, 1);
  });
});
