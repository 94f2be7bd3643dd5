/**
 * `--assign-bars auto|always|never` on read / write / bench / shell, against a
 * device that serves BARs only once assigned and decoding (as QEMU's x-remote
 * server) and against one of ours, which serves them regardless.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createDecodeGatedDevice, type DecodeGatedDevice } from '../support/decode-gated-device.js';
import { createRichDevice, MAIN, runCli, serve, stderrLines, type CliResult, type Served } from './support.js';

const NOTE = /^note: assigned BARs and enabled decoding as a VMM does: BAR0 0xc0010000 \(4K, new\), BAR1 io 0xc000 \(32, new\), BAR2 0xc0000000 \(64K, new\); command 0x0003$/;

function shell(args: readonly string[], input: string): Promise<CliResult> {
  const child = spawn(process.execPath, [MAIN, 'shell', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => void (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => void (stderr += d.toString()));
  child.stdin.end(input);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

describe('--assign-bars', () => {
  let gated: DecodeGatedDevice;
  let served: Served;
  let rich: Served;
  before(() => {
    gated = createDecodeGatedDevice();
    served = serve(gated.device);
    rich = serve(createRichDevice());
  });
  after(async () => {
    await served.close();
    await rich.close();
  });

  it('auto (the default): a refused BAR access sets the BARs up like a VMM and is retried once', async () => {
    const before = gated.refused;
    const r = await runCli(['read', served.path, 'bar2', '0x10', '--count', '2']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '0x0010: 00000000 00000000\n');
    assert.deepEqual(stderrLines(r).length, 1);
    assert.match(stderrLines(r)[0] ?? '', NOTE);
    assert.equal(gated.refused, before + 2, 'the first window (both reads) refused, then retried');
    const w = await runCli(['write', served.path, 'bar1', '4', '0xab', '--width', '1']);
    assert.equal(w.code, 0, w.stderr);
    assert.match(stderrLines(w)[0] ?? '', NOTE, 'each CLI call is a new session: the device was reset, BARs and all');
  });

  it('never: the access fails as the server refuses it; always: set up before the first access', async () => {
    const never = await runCli(['read', served.path, 'bar0', '0', '--assign-bars', 'never']);
    assert.equal(never.code, 1);
    assert.match(never.stderr, /^vfio-user: read bar0 0x0: .*EINVAL/);
    const refused = gated.refused;
    const always = await runCli(['read', served.path, 'bar0', '0', '--assign-bars', 'always']);
    assert.equal(always.code, 0, always.stderr);
    assert.match(stderrLines(always)[0] ?? '', NOTE);
    assert.equal(gated.refused, refused, 'nothing refused: the BARs were set up first');
    const bad = await runCli(['read', served.path, 'bar0', '0', '--assign-bars', 'sometimes']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /sometimes/);
  });

  it('auto does not set up BARs for an access beyond the BAR (that EINVAL is not about decoding)', async () => {
    const r = await runCli(['read', served.path, 'bar0', '0x1000']);
    assert.equal(r.code, 1);
    assert.doesNotMatch(r.stderr, /note:/);
  });

  it('auto never touches config space on a device that serves its BARs (ours): no config write in the trace', async () => {
    const auto = await runCli(['--trace', 'read', rich.path, 'bar0', '0']);
    assert.equal(auto.code, 0, auto.stderr);
    assert.doesNotMatch(auto.stderr, /REGION_WRITE #\d+ region=7/);
    const always = await runCli(['--trace', 'read', rich.path, 'bar0', '0', '--assign-bars', 'always']);
    assert.equal(always.code, 0, always.stderr);
    assert.match(always.stderr, /REGION_WRITE #\d+ region=7/);
  });

  it('bench sets the BARs up once, before measuring', async () => {
    const r = await runCli(['bench', served.path, '--region', 'bar2', '--count', '200', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(stderrLines(r)[0] ?? '', NOTE);
    const report = JSON.parse(r.stdout) as { rows: Array<{ requests: number }> };
    assert.equal(report.rows[0]?.requests, 200);
  });

  it('a shell sets the BARs up once for its whole session, and keeps what it wrote', async () => {
    const r = await shell([served.path], 'write bar2 0x10 0xbeef\nread bar2 0x10\nwrite bar1 0 0x7 --width 1\nread bar1 0 --width 1\nbars\n');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(stderrLines(r).length, 1);
    assert.match(stderrLines(r)[0] ?? '', NOTE);
    const lines = r.stdout.split('\n');
    assert.deepEqual(lines.slice(0, 4), ['wrote 0x0000beef to BAR2+0x10 (4 bytes)', '0x0000beef', 'wrote 0x07 to BAR1+0x0 (1 byte)', '0x07']);
    assert.match(r.stdout, /^BAR2 +mem64 +64K +0xc0000000$/m);
  });
});
