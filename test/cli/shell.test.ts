/** `vfio-user shell`: one session over many commands, scripts (stdin, --file), errors with line numbers, --json. */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createDmaEngineDevice, DMA_ENGINE_ID, DmaEngineReg } from '../../src/devices/dma-engine.js';
import { DescriptorStatus } from '../../src/devices/dma-descriptor.js';
import { MAIN, runCli, serve, type CliResult, type Served } from './support.js';

/** Runs `node main.js ...args` with `input` on stdin (a pipe: a script, not a terminal). */
function runWithInput(args: readonly string[], input: string, timeoutMs = 30_000): Promise<CliResult> {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => void (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => void (stderr += d.toString()));
  child.stdin.on('error', () => undefined); // the shell may stop reading at a failing line
  child.stdin.end(input);
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

const hex8 = (n: number): string => `0x${n.toString(16).padStart(8, '0')}`;

describe('vfio-user shell', () => {
  let dma: Served;
  before(() => {
    dma = serve(createDmaEngineDevice().device);
  });
  after(async () => {
    await dma.close();
  });

  it('keeps one session: a write is still there for the next command, and undone only when the shell exits', async () => {
    const r = await runWithInput(['shell', dma.path], `read bar0 0\nwrite bar0 ${DmaEngineReg.RING_SIZE} 16\nread bar0 ${DmaEngineReg.RING_SIZE}\n`);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.split('\n'), [hex8(DMA_ENGINE_ID), `wrote 0x00000010 to BAR0+0x14 (4 bytes)`, '0x00000010', '']);
    assert.equal(r.stderr, '');
    const later = await runCli(['read', dma.path, 'bar0', String(DmaEngineReg.RING_SIZE)]);
    assert.equal(later.stdout, '0x00000000\n', 'the device was reset when the shell closed its session');
  });

  it('drives a DMA copy: guest RAM, descriptor, doorbell, MSI-X wait, result in guest RAM', async () => {
    const script = [
      'dma-map 1M 0x100000',
      'mem-fill 0x101000 64 0x5a',
      'mem-write 0x100000 0x101000 --width 8 # src',
      'mem-write 0x100008 0x102000 --width 8 # dst',
      'mem-write 0x100010 64',
      'mem-write 0x100014 1',
      'irq-enable msix',
      `write bar0 ${DmaEngineReg.RING_BASE_LO} 0x100000`,
      `write bar0 ${DmaEngineReg.RING_SIZE} 16`,
      `write bar0 ${DmaEngineReg.CONTROL} 1`,
      `write bar0 ${DmaEngineReg.TAIL} 1`,
      'irq-wait msix 0 --timeout 10s',
      `read bar0 ${DmaEngineReg.COMPLETED}`,
      'mem-read 0x10001c',
      'mem-dump 0x102000 64',
    ].join('\n');
    const r = await runWithInput(['shell', dma.path, '--json'], script);
    assert.equal(r.code, 0, r.stderr);
    const results = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { line: number; command: string; ok: boolean; result: Record<string, unknown> });
    assert.equal(results.length, 15);
    assert.deepEqual(results.map((x) => x.line), Array.from({ length: 15 }, (_, i) => i + 1));
    assert.ok(results.every((x) => x.ok));
    assert.equal(results[11]?.result.signals, 1);
    assert.deepEqual(results[12]?.result.values, ['0x00000001']);
    assert.deepEqual(results[13]?.result.values, [hex8(DescriptorStatus.DONE)]);
    assert.equal(results[14]?.result.data, '5a'.repeat(64));
  });

  it('a script stops at its first failing line: exit 1, the line number on stderr, later lines not run', async () => {
    const r = await runWithInput(['shell', dma.path], 'echo one\n\n# a comment\nread bar0 0x1000\necho two\n');
    assert.equal(r.code, 1);
    assert.equal(r.stdout, 'one\n');
    assert.match(r.stderr, /^vfio-user: stdin:4: read bar0 0x1000: /);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  });

  it('--keep-going runs every line and still exits 1; --json reports failures as objects', async () => {
    const r = await runWithInput(['shell', dma.path, '--keep-going', '--json'], 'reed bar0 0\nread bar0\necho "two  words" \'and more\'\nread bar0 0 --cont 2\n');
    assert.equal(r.code, 1);
    const results = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { line: number; ok: boolean; error?: string; result?: { text: string } });
    assert.deepEqual(results.map((x) => [x.line, x.ok]), [[1, false], [2, false], [3, true], [4, false]]);
    assert.match(results[3]?.error ?? '', /^read: unknown option '--cont' \(Did you mean --count\?\)$/);
    assert.match(results[0]?.error ?? '', /unknown command 'reed' \(did you mean read\?\)/);
    assert.match(results[1]?.error ?? '', /read: missing required argument 'offset'/);
    assert.equal(results[2]?.result?.text, 'two  words and more');
    assert.deepEqual(r.stderr.trim().split('\n').map((l) => /^vfio-user: stdin:\d+: /.exec(l)?.[0]), ['vfio-user: stdin:1: ', 'vfio-user: stdin:2: ', 'vfio-user: stdin:4: ']);
  });

  it('--file runs a script and names it in errors; quit ends it early', async () => {
    const file = join(dma.dir, 'script.vfu');
    writeFileSync(file, `read bar0 0\nwrite bar9 0 0\n`);
    const r = await runCli(['shell', dma.path, '--file', file]);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, `${hex8(DMA_ENGINE_ID)}\n`);
    assert.match(r.stderr, new RegExp(`^vfio-user: ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: REGION: 'bar9' is not a region`));
    writeFileSync(file, 'echo before\nquit\necho after\n');
    const q = await runCli(['shell', dma.path, '--file', file]);
    assert.equal(q.code, 0, q.stderr);
    assert.equal(q.stdout, 'before\n');
    const missing = await runCli(['shell', dma.path, '--file', join(dma.dir, 'nope.vfu')]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^vfio-user: --file .*nope\.vfu: ENOENT$/m);
  });

  it('dma-map, mem-*, dma-unmap and their errors; migration state get/set; reset', async () => {
    const script = [
      'dma-map 8K 0x10000',
      'dma-map 4K 0x11000',
      'mem-write 0x11ffc 0x01020304',
      'mem-read 0x11ffc --width 1 --count 4',
      'mem-read 0x12000',
      'dma-unmap 0x10000',
      'mem-read 0x10000',
      'dma-list',
      'mig-state',
      'mig-state stop',
      'mig-state running',
      `write bar0 ${DmaEngineReg.RING_SIZE} 8`,
      'reset',
      `read bar0 ${DmaEngineReg.RING_SIZE}`,
    ].join('\n');
    const r = await runWithInput(['shell', dma.path, '--keep-going', '--json'], script);
    const results = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { ok: boolean; error?: string; result?: Record<string, unknown> });
    assert.deepEqual(results.map((x) => x.ok), [true, false, true, true, false, true, false, true, true, true, true, true, true, true]);
    assert.match(results[1]?.error ?? '', /overlaps a mapping/);
    assert.equal(results[3]?.result?.data, '04030201');
    assert.match(results[4]?.error ?? '', /0x12000\+4 is not inside one DMA mapping/);
    assert.match(results[6]?.error ?? '', /0x10000\+4 is not inside one DMA mapping/);
    assert.deepEqual(results[7]?.result?.mappings, []);
    assert.deepEqual([8, 9, 10].map((i) => results[i]?.result?.state), ['RUNNING', 'STOP', 'RUNNING']);
    assert.deepEqual(results[13]?.result?.values, ['0x00000000'], 'reset cleared the register written before it');
    assert.equal(r.code, 1);
  });

  it('help lists every command, and COMMAND --help shows its options', async () => {
    const r = await runWithInput(['shell', dma.path], 'help\nhelp mem-dump\nirq-wait --help\n');
    assert.equal(r.code, 0, r.stderr);
    for (const name of ['info', 'read', 'write', 'dma-map', 'mem-dump', 'irq-wait', 'reset', 'mig-state', 'migrate', 'sleep', 'quit']) {
      assert.match(r.stdout, new RegExp(`^${name} `, 'm'), name);
    }
    assert.match(r.stdout, /^Usage: mem-dump \[options\] <iova> \[length\]$/m);
    assert.match(r.stdout, /^Usage: irq-wait \[options\] <index> \[vector\]$/m);
    assert.match(r.stdout, /--timeout <duration>/);
  });

  it('migrate SOCKET moves the device and its guest RAM, then drives the destination', async () => {
    const source = serve(createDmaEngineDevice().device); // its own: a migrated-away source stays STOPPED
    const destination = serve(createDmaEngineDevice().device);
    try {
      const script = ['dma-map 2M 0x100000', 'mem-fill 0x100000 4K 0x77', `write bar0 ${DmaEngineReg.RING_SIZE} 16`, `migrate ${destination.path} --downtime 10s`, 'info', `read bar0 ${DmaEngineReg.RING_SIZE}`, 'mem-read 0x100ffc', 'dma-list'].join('\n');
      const r = await runWithInput(['shell', source.path, '--json'], script, 60_000);
      assert.equal(r.code, 0, r.stderr);
      const results = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { result: Record<string, unknown> });
      assert.equal(results[3]?.result.outcome, 'migrated');
      assert.equal(results[3]?.result.switched, true);
      assert.equal(results[4]?.result.socket, destination.path);
      assert.deepEqual(results[5]?.result.values, ['0x00000010'], 'the register state moved with the device');
      assert.deepEqual(results[6]?.result.values, ['0x77777777'], 'guest RAM moved with it');
      assert.deepEqual((results[7]?.result.mappings as Array<{ iova: number; size: number }>).map((m) => [m.iova, m.size]), [[0x100000, 2 << 20]]);
    } finally {
      await destination.close();
      await source.close();
    }
  });

  it('info and lspci run on the session (as the CLI commands); --json for one line only', async () => {
    const r = await runWithInput(['shell', dma.path], 'info\nlspci\nlspci --json\n');
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.match(lines[0] ?? '', new RegExp(`^socket +${dma.path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`));
    const title = lines.find((l) => l.startsWith('00:00.0 '));
    assert.match(title ?? '', /1234:5a02/);
    const json = JSON.parse(lines[lines.length - 1] ?? '') as { line: number; command: string; result: unknown };
    assert.equal(json.line, 3);
    assert.equal(json.command, 'lspci');
    assert.match(JSON.stringify(json.result), /23042/, 'the device id 0x5a02');
  });

  it('a shell on a socket nobody serves fails before reading anything', async () => {
    const r = await runWithInput(['shell', join(dma.dir, 'absent.sock')], 'echo never\n');
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^vfio-user: connect .*absent\.sock: /);
  });
});
