import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const PACKAGE = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('vfio-user CLI', () => {
  it('--version prints the package version', () => {
    const r = cli('--version');
    assert.equal(r.status, 0);
    assert.equal(r.stdout.trim(), PACKAGE.version);
  });

  it('--help lists the commands', () => {
    const r = cli('--help');
    assert.equal(r.status, 0);
    assert.match(r.stdout, /Usage: vfio-user/);
    assert.match(r.stdout, /demo/);
    assert.doesNotMatch(r.stdout, /demo-peer/);
  });

  it('an unknown command fails with a one-line reason and a non-zero exit', () => {
    const r = cli('frobnicate');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /unknown command 'frobnicate'/);
    assert.equal(r.stderr.trim().split('\n').length, 1);
  });

  it('demo runs two processes end to end and verifies the checksum', () => {
    const r = cli('demo');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /negotiated vfio-user 0\.2/);
    assert.match(r.stdout, /checksummed guest RAM through its own mapping \(fnv1a [0-9a-f]+\) and raised 1 interrupt/);
    assert.match(r.stdout, /10000 REGION_READ round trips/);
  });
});
