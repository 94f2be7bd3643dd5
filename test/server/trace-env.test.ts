/**
 * VFIO_USER_TRACE on a served device (a child `vfio-user serve`, since the
 * tags are read from the environment at start): each handled request of an
 * enabled tag is one debug JSON line on the server's stderr; other tags stay quiet.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAIN, runCli } from '../cli/support.js';

interface TraceLine {
  level: number;
  trace?: string;
  cmd?: string;
  msg?: string;
  errno?: number;
  request?: { region?: number; offset?: string; count?: number };
}

/** Serves the DMA engine with `env`, runs `clientRuns` against it, returns the server's JSON stderr lines. */
async function tracedServe(trace: string, clientRuns: (socket: string) => Promise<void>): Promise<TraceLine[]> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-trace-'));
  const socket = join(dir, 'dma.sock');
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => name !== 'VFIO_USER_LOG'));
  const server = spawn(process.execPath, [MAIN, 'serve', 'dma-engine', '--socket', socket], { env: { ...env, VFIO_USER_TRACE: trace }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  server.stderr.on('data', (d: Buffer) => void (stderr += d.toString()));
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('exit', (code) => reject(new Error(`serve exited ${code}: ${stderr}`)));
      server.stdout.once('data', () => resolve()); // its announcement: it listens
    });
    await clientRuns(socket);
  } finally {
    server.kill('SIGTERM');
    await new Promise((resolve) => server.once('close', resolve));
    rmSync(dir, { recursive: true, force: true });
  }
  return stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as TraceLine);
}

async function ok(args: string[]): Promise<void> {
  const r = await runCli([...args, '--assign-bars', 'never']);
  assert.equal(r.code, 0, r.stderr);
}

describe('VFIO_USER_TRACE', () => {
  it('pci: config space accesses are traced, BAR accesses are not', async () => {
    const lines = await tracedServe('pci', async (socket) => {
      await ok(['read', socket, 'config', '0']);
      await ok(['read', socket, 'bar0', '0']);
    });
    const traced = lines.filter((l) => l.trace !== undefined);
    assert.ok(traced.length >= 1, `pci records: ${JSON.stringify(lines)}`);
    assert.ok(traced.every((l) => l.trace === 'pci' && l.level === 20 && l.request?.region === 7), JSON.stringify(traced));
    assert.ok(traced.some((l) => l.cmd === 'REGION_READ' && l.request?.offset === '0x0' && l.request.count === 4 && l.msg?.endsWith(' ok')), JSON.stringify(traced));
  });

  it('protocol,session: every request, with its errno when it failed, and the session end', async () => {
    const lines = await tracedServe('protocol,session', async (socket) => {
      await ok(['read', socket, 'bar0', '0']);
      const r = await runCli(['read', socket, 'bar0', '0x1000', '--assign-bars', 'never']);
      assert.equal(r.code, 1);
    });
    const cmds = lines.filter((l) => l.trace?.includes('protocol')).map((l) => l.cmd);
    assert.ok(cmds.includes('VERSION') && cmds.includes('REGION_READ'), String(cmds));
    const failed = lines.find((l) => l.cmd === 'REGION_READ' && l.errno !== undefined);
    assert.equal(failed?.errno, 22, JSON.stringify(lines));
    assert.equal(failed?.request?.offset, '0x1000');
    assert.ok(lines.some((l) => l.trace === 'protocol,session' && l.cmd === 'VERSION'), 'VERSION carries both tags');
    assert.ok(lines.some((l) => l.trace === 'session' && l.msg === 'session closed'), 'session end');
  });
});
