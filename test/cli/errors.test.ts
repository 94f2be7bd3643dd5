/**
 * Errors that name their cause (issue 12 point 5): each bad invocation of the
 * real binary, in a child process, prints its one-line cause on stderr and
 * exits 1 — and the good forms of the same values are accepted.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDmaEngineDevice } from '../../src/devices/dma-engine.js';
import { createRichDevice, runCli, serve, stderrLines, type CliResult, type Served } from './support.js';

const CONNECT_HINT = 'no such file (is a server running? vfio-user serve DEVICE --socket PATH creates it)';

/** Exit 1, nothing on stdout, exactly `line` on stderr. */
function failsWith(r: CliResult, line: string | RegExp, what: string): void {
  assert.equal(r.code, 1, `${what}: exit status (stderr: ${r.stderr})`);
  assert.equal(r.stdout, '', `${what}: stdout`);
  const lines = stderrLines(r);
  assert.equal(lines.length, 1, `${what}: one line, got ${JSON.stringify(lines)}`);
  if (typeof line === 'string') assert.equal(lines[0], line, what);
  else assert.match(lines[0] ?? '', line, what);
}

/** A UNIX socket file nobody listens on: its server was killed before it could remove it. */
function staleSocket(path: string): void {
  const script = `require('node:net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`;
  spawnSync(process.execPath, ['-e', script]);
  assert.ok(existsSync(path), 'the killed server left its socket file');
}

describe('errors that name the cause', () => {
  let dir: string;
  let dma: Served;
  let rich: Served;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-user-errors-'));
    dma = serve(createDmaEngineDevice().device);
    rich = serve(createRichDevice());
  });
  after(async () => {
    await dma.close();
    await rich.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('info on something that is not a server socket says what it is', async () => {
    const file = join(dir, 'file');
    writeFileSync(file, 'not a socket');
    const directory = join(dir, 'directory');
    mkdirSync(directory);
    const fifo = join(dir, 'fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
    const stale = join(dir, 'stale.sock');
    staleSocket(stale);
    const cases: Array<[string, string]> = [
      [file, 'not a socket (a regular file)'],
      [directory, 'not a socket (a directory)'],
      [fifo, 'not a socket (a FIFO)'],
      [join(dir, 'missing.sock'), CONNECT_HINT],
      [join(file, 'under-a-file.sock'), 'no such file (a component of the path is not a directory)'],
      [stale, 'ECONNREFUSED 111: nothing listens on this socket (a stale file left by a server that exited?)'],
    ];
    for (const [path, cause] of cases) failsWith(await runCli(['info', path]), `vfio-user: connect ${path}: ${cause}`, path);
  });

  it('migrate-listen refuses a --socket that does not exist, at once', async () => {
    const missing = join(dir, 'nonexistent.sock');
    failsWith(await runCli(['migrate-listen', '--socket', missing]), new RegExp(`^vfio-user: migrate-listen: --socket ${missing}: no such file`), 'migrate-listen');
    const file = join(dir, 'regular');
    writeFileSync(file, '');
    failsWith(await runCli(['migrate-listen', '--socket', file]), `vfio-user: migrate-listen: --socket ${file}: not a socket (a regular file)`, 'migrate-listen file');
  });

  it('a region the device does not implement, or an access beyond its end, is named', async () => {
    failsWith(await runCli(['read', dma.path, 'bar1', '0']), 'vfio-user: read bar1 0x0: BAR1 is not implemented by this device', 'read bar1');
    failsWith(await runCli(['write', dma.path, 'bar3', '0', '1']), 'vfio-user: write bar3 0x0: BAR3 is not implemented by this device', 'write bar3');
    failsWith(await runCli(['read', dma.path, 'bar0', '0x1000']), 'vfio-user: read bar0 0x1000: BAR0 is 4K: 0x1000+4 is beyond its end', 'read beyond');
    failsWith(await runCli(['write', rich.path, 'rom', '0', '1']), 'vfio-user: write rom 0x0: ROM is not writable', 'write rom');
    failsWith(await runCli(['read', dma.path, '42', '0']), /^vfio-user: read (region42|REGION42|42) 0x0: this device has no region 42 \(it has \d+\)$/i, 'read region 42');
    failsWith(await runCli(['bench', dma.path, '--region', 'bar1']), 'vfio-user: bench: BAR1 is not implemented by this device', 'bench bar1');
  });

  it("commander's suggestion stays on the one line", async () => {
    failsWith(await runCli(['info', dma.path, '--jsn']), "vfio-user: unknown option '--jsn' (Did you mean --json?)", '--jsn');
    failsWith(await runCli(['lspic', dma.path]), "vfio-user: unknown command 'lspic' (Did you mean lspci?)", 'lspic');
  });

  it('every subcommand lists the global --trace and --timeout in its help', async () => {
    const top = await runCli(['--help']);
    const section = top.stdout.split(/^Commands:$/m)[1]?.split(/\n\n/)[0] ?? '';
    const commands = [...section.matchAll(/^ {2}([a-z][a-z-]*)\b/gm)].map((m) => m[1] ?? '').filter((c) => c !== 'help');
    assert.ok(commands.length >= 8, `commands found in --help: ${commands.join(' ')}`);
    const results = await Promise.all(commands.map((c) => runCli([c, '--help'])));
    results.forEach((r, i) => {
      assert.equal(r.code, 0, commands[i]);
      assert.match(r.stdout, /Global Options:[\s\S]*--trace[\s\S]*--timeout <duration>/, `${commands[i]} --help`);
    });
  });

  it('sizes and durations: one syntax everywhere, bad values refused in one line', async () => {
    const bench = await runCli(['bench', dma.path, '--size', '4K', '--large-size', '64KiB', '--count', '200', '--json']);
    assert.equal(bench.code, 0, bench.stderr);
    assert.ok((JSON.parse(bench.stdout) as { rows: Array<{ size: number }> }).rows.some((row) => row.size === 4096), bench.stdout);
    const timed = await runCli(['--timeout', '5s', 'read', dma.path, 'bar0', '0']);
    assert.equal(timed.code, 0, timed.stderr);
    failsWith(await runCli(['bench', dma.path, '--size', '4X']), "vfio-user: --size: '4X' is not a size (bytes with an optional K, M, G or T suffix, K = 1024: 4096, 4K, 64KiB, 1M)", '--size 4X');
    failsWith(await runCli(['bench', dma.path, '--size', '2M']), 'vfio-user: --size: must be at most 1M', '--size 2M');
    failsWith(
      await runCli(['--timeout', '5 parsecs', 'info', dma.path]),
      "vfio-user: option '--timeout <duration>' argument '5 parsecs' is invalid. It is not a duration (e.g. 300ms, 5s, 1.5s, 2m; a plain number is milliseconds).",
      '--timeout',
    );
    failsWith(await runCli(['read', dma.path, 'bar0', '0', '--count', '0']), 'vfio-user: --count: must be at least 1', '--count 0');
  });

  it("a device callback returning short data is logged at warn by `serve` (its default level when VFIO_USER_LOG is unset)", async () => {
    const module = join(dir, 'short-device.mjs');
    const definition = `export default { name: 'short-dev', pci: { vendorId: 0x1234, deviceId: 0x5678, classCode: 0xff0000 }, regions: { bar0: { size: 4096, read: () => new Uint8Array(2) } } };\n`;
    writeFileSync(module, definition);
    const socket = join(dir, 'short.sock');
    const server = spawn(process.execPath, [join(import.meta.dirname, '../../src/cli/main.js'), 'serve', module, '--socket', socket], {
      env: Object.fromEntries(Object.entries(process.env).filter(([name]) => name !== 'VFIO_USER_LOG' && name !== 'VFIO_USER_TRACE')),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    server.stderr.on('data', (d: Buffer) => void (stderr += d.toString()));
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('exit', (code) => reject(new Error(`serve exited ${code}: ${stderr}`)));
        server.stdout.on('data', () => resolve()); // "serving … on SOCKET" once it listens
      });
      // --assign-bars never: only the refused read, no BAR set-up attempt around it.
      failsWith(await runCli(['read', socket, 'bar0', '0', '--assign-bars', 'never']), /^vfio-user: read bar0 0x0: .*EINVAL/, 'short read');
      await runCli(['read', socket, 'bar0', '0x10', '--assign-bars', 'never']);
    } finally {
      server.kill('SIGTERM');
      await new Promise((resolve) => server.once('close', resolve));
    }
    const warns = stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { level: number; device?: string; region?: string; msg?: string });
    assert.equal(warns.length, 1, `one warn line, later ones at debug: ${stderr}`);
    assert.equal(warns[0]?.level, 40);
    assert.equal(warns[0]?.device, 'short-dev');
    assert.equal(warns[0]?.region, 'BAR0');
    assert.match(warns[0]?.msg ?? '', /^BAR0 read callback returned 2 bytes for a 4-byte read at 0x0/);
  });
});
