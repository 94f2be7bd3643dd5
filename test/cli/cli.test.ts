/**
 * The `vfio-user` binary as a whole: --version, --help on every command,
 * unknown commands and options, and connection failures — each failure one
 * line on stderr with exit status 1.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { runCli, stderrLines } from './support.js';

const PACKAGE = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
const COMMANDS = ['demo', 'serve', 'info', 'lspci', 'read', 'write', 'bench'];

describe('vfio-user CLI', () => {
  it('--version prints the package version', async () => {
    const r = await runCli(['--version']);
    assert.equal(r.code, 0);
    assert.equal(r.stdout.trim(), PACKAGE.version);
  });

  it('--help lists every command and the global options', async () => {
    const r = await runCli(['--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /Usage: vfio-user/);
    for (const c of COMMANDS) assert.match(r.stdout, new RegExp(`^  ${c}\\b`, 'm'), c);
    assert.match(r.stdout, /--trace/);
    assert.match(r.stdout, /--timeout <duration>/);
    assert.doesNotMatch(r.stdout, /demo-peer/);
  });

  it('every command has --help', async () => {
    const results = await Promise.all(COMMANDS.map((c) => runCli([c, '--help'])));
    results.forEach((r, i) => {
      assert.equal(r.code, 0, COMMANDS[i]);
      assert.match(r.stdout, new RegExp(`Usage: vfio-user ${COMMANDS[i]}`));
    });
    assert.match(results[COMMANDS.indexOf('read')]?.stdout ?? '', /--width <bytes>/);
    assert.match(results[COMMANDS.indexOf('bench')]?.stdout ?? '', /--depth <n>/);
    assert.match(results[COMMANDS.indexOf('lspci')]?.stdout ?? '', /--dump/);
  });

  it('an unknown command or option fails with a one-line reason and exit 1', async () => {
    for (const args of [['frobnicate'], ['info', '/x.sock', '--bogus'], ['read', '/x.sock'], ['info']]) {
      const r = await runCli(args);
      assert.equal(r.code, 1, args.join(' '));
      assert.equal(stderrLines(r).length, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /^vfio-user: /);
    }
    assert.match((await runCli(['frobnicate'])).stderr, /unknown command 'frobnicate'/);
  });

  it('a socket nobody serves: exit 1 and `connect PATH: no such file`', async () => {
    for (const command of [['info'], ['lspci'], ['read', '-', 'bar0', '0'], ['write', '-', 'bar0', '0', '1'], ['bench']]) {
      const args = [command[0] ?? '', '/nonexistent/vfio.sock', ...command.slice(2)];
      const r = await runCli(args);
      assert.equal(r.code, 1, args.join(' '));
      assert.deepEqual(stderrLines(r), ['vfio-user: connect /nonexistent/vfio.sock: no such file (is a server running? vfio-user serve DEVICE --socket PATH creates it)'], args.join(' '));
      assert.equal(r.stdout, '');
    }
  });

  it('a bad --timeout is refused before connecting', async () => {
    const r = await runCli(['--timeout', 'soon', 'info', '/nonexistent/vfio.sock']);
    assert.equal(r.code, 1);
    assert.deepEqual(stderrLines(r), ["vfio-user: option '--timeout <duration>' argument 'soon' is invalid. It is not a duration (e.g. 300ms, 5s, 1.5s, 2m; a plain number is milliseconds)."]);
  });
});
