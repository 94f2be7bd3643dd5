/**
 * `vfio-user mdev` error paths end to end, against one real `vfio-user host`:
 * each failure is one line on stderr with exit 1 (2 for a usage error, as
 * mdevctl's clap parser) and leaves nothing behind — unknown parent, type or
 * UUID, a UUID in use, an attribute refused (rolled back: no instance, no
 * socket, availability unchanged), beyond the memory pool's capacity, a
 * pre-callout's veto, no host at all.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { inParallel, startHost, type HostUnderTest } from './mdev-support.js';
import type { CliResult } from './support.js';

const VETOED = '7e7e7e7e-0000-4000-8000-000000000001';
const U1 = '7e7e7e7e-0000-4000-8000-000000000002';

/** A pre-callout that vetoes every action on {@link VETOED} and does not handle other UUIDs (exit 2). */
const VETO_SCRIPT = `#!/bin/sh
while getopts t:e:a:s:u:p: o; do case $o in e) event=$OPTARG;; u) uuid=$OPTARG;; *) ;; esac; done
cat > /dev/null
[ "$uuid" = "${VETOED}" ] || exit 2
[ "$event" = pre ] && { echo "test policy: $uuid may not be used" >&2; exit 1; }
exit 0
`;

/** Exit `code`, nothing on stdout, one line on stderr matching `line`. */
function fails(r: CliResult, line: RegExp, what: string, code = 1): void {
  assert.equal(r.code, code, `${what}: exit status (stderr: ${r.stderr})`);
  assert.equal(r.stdout, '', `${what}: stdout`);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `${what}: one line, got ${JSON.stringify(lines)}`);
  assert.match(lines[0] ?? '', line, what);
}

describe('vfio-user mdev error paths end to end', () => {
  let host: HostUnderTest;
  before(async () => {
    host = await startHost((configDir) => {
      const callouts = join(configDir, 'scripts.d', 'callouts');
      mkdirSync(callouts, { recursive: true });
      writeFileSync(join(callouts, 'veto.sh'), VETO_SCRIPT);
      chmodSync(join(callouts, 'veto.sh'), 0o755);
    });
  });
  after(async () => {
    await host?.close();
  });

  /** The available instances of each memory-pool type, from `types -p memory-pool --json`. */
  async function available(): Promise<Record<string, number>> {
    const r = await host.mdev('types', '-p', 'memory-pool', '--json');
    assert.equal(r.code, 0, r.stderr);
    return Object.fromEntries((JSON.parse(r.stdout) as Array<{ mdevType: string; availableInstances: number }>).map((t) => [t.mdevType, t.availableInstances]));
  }

  /** Nothing running, no instance socket left in the run directory. */
  async function nothingLeft(what: string): Promise<void> {
    assert.equal((await host.mdev('list')).stdout, '', `${what}: nothing running`);
    assert.deepEqual(readdirSync(host.runDir).filter((f) => f !== 'control.sock'), [], `${what}: no socket left`);
  }

  it('usage errors exit 2 before anything is asked (as clap)', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['list', '-u', 'not-a-uuid'], /^vfio-user: option '-u, --uuid <uuid>' argument 'not-a-uuid' is invalid/],
      [['list', '--dumpjson', '--json'], /cannot be used with/],
      [['stop'], /required option '-u, --uuid <uuid>' not specified/],
      [['stop', '-u', U1, '-f', '--timeout', '1s'], /option '-f, --force' cannot be used with option '--timeout <duration>'/],
      [['undefine'], /required option/],
      [['define', '-t', 'memory-pool-64M'], /-u\/--uuid or -p\/--parent is required/],
      [['start'], /-u\/--uuid or -p\/--parent is required/],
      [['start', '-p', 'memory-pool', '-t', 'memory-pool-64M', '--jsonfile', 'x.json'], /'--jsonfile <file>' cannot be used with option '-t, --type <type>'/],
      [['define', '-p', 'memory-pool', '-a', '--jsonfile', 'x.json'], /cannot be used with/],
      [['modify', '-u', U1], /one of -a\/--auto, -m\/--manual, --addattr, --delattr or --jsonfile is required/],
      [['modify', '-u', U1, '-a', '-m'], /'-a, --auto' cannot be used with option '-m, --manual'/],
      [['modify', '-u', U1, '--addattr', 'fill'], /--addattr requires --value/],
      [['modify', '-u', U1, '--delattr', '--value', 'x'], /cannot be used with/],
      [['modify', '-u', U1, '--delattr', '-i', '-1'], /'-i, --index <index>' argument '-1' is invalid/],
      [['list', '--bogus'], /unknown option '--bogus'/],
      [['frobnicate'], /unknown command 'frobnicate'/],
    ];
    // Independent runs, side by side (each is a node process).
    const results = await inParallel([...cases.map(([args]) => () => host.mdev(...args)), () => host.lsmdev('--bogus')]);
    cases.forEach(([args, line], i) => fails(results[i] as CliResult, line, args.join(' '), 2));
    fails(results[cases.length] as CliResult, /^lsmdev: unknown option '--bogus'/, 'lsmdev --bogus', 2);
  });

  it('no host on the control socket: one line, exit 1', async () => {
    const [mdev, lsmdev] = await Promise.all([host.mdev('list', '--control', join(host.dir, 'none.sock')), host.lsmdev('--control', join(host.dir, 'none.sock'))]);
    fails(mdev, /^vfio-user: mdev list: no vfio-user host at .*none\.sock/, 'no host');
    fails(lsmdev, /^lsmdev: no vfio-user host at /, 'lsmdev, no host');
  });

  it("modify --live is refused with one line (the host never changes a running instance's attributes)", async () => {
    fails(await host.mdev('modify', '-u', U1, '-p', 'memory-pool', '-l', '--jsonfile', 'x.json'), /^vfio-user: mdev modify: -l\/--live is not supported/, 'modify --live');
  });

  it('unknown parent, type or UUID: exit 1, nothing created', async () => {
    const cases: Array<[string[], RegExp, string]> = [
      [['start', '-p', 'no-such-parent', '-t', 'no-such-parent-x'], /^vfio-user: mdev start: .*no-such-parent/, 'unknown parent'],
      [['start', '-p', 'memory-pool', '-t', 'memory-pool-1G'], /^vfio-user: mdev start: .*memory-pool-1G/, 'unknown type'],
      [['stop', '-u', U1], /^vfio-user: mdev stop: .*7e7e7e7e-0000-4000-8000-000000000002/, 'stop unknown'],
      [['undefine', '-u', U1], /^vfio-user: mdev undefine: /, 'undefine unknown'],
      [['modify', '-u', U1, '-a'], /^vfio-user: mdev modify: /, 'modify unknown'],
      [['start', '-u', U1], /^vfio-user: mdev start: /, 'start of an undefined UUID without a type'],
      [['define', '-u', U1], /^vfio-user: mdev define: /, 'define -u of a UUID not running'],
      [['define', '-u', U1, '-p', 'no-such-parent', '-t', 'no-such-parent-x'], /^vfio-user: mdev define: .*no-such-parent/, 'define, unknown parent'],
      [['define', '-u', U1, '-p', 'memory-pool', '-t', 'memory-pool-1G'], /^vfio-user: mdev define: .*memory-pool-1G/, 'define, unknown type'],
      [['start', '-p', 'memory-pool', '--jsonfile', join(host.dir, 'missing.json')], /^vfio-user: mdev start: Unable to read file ".*missing\.json": ENOENT$/, 'missing --jsonfile'],
    ];
    const results = await inParallel(cases.map(([args]) => () => host.mdev(...args)));
    cases.forEach(([, line, what], i) => fails(results[i] as CliResult, line, what));
    await nothingLeft('unknown names');
    assert.equal((await host.mdev('list', '-d')).stdout, '', 'nothing defined');
  });

  it('a UUID in use: a second start or define is refused', async () => {
    assert.equal((await host.mdev('start', '-u', U1, '-p', 'memory-pool', '-t', 'memory-pool-64M')).code, 0);
    fails(await host.mdev('start', '-u', U1, '-p', 'memory-pool', '-t', 'memory-pool-64M'), /^vfio-user: mdev start: .*7e7e7e7e-0000-4000-8000-000000000002/, 'started twice');
    assert.equal((await host.mdev('define', '-u', U1, '-p', 'memory-pool', '-t', 'memory-pool-64M')).code, 0);
    fails(await host.mdev('define', '-u', U1, '-p', 'memory-pool', '-t', 'memory-pool-64M'), /^vfio-user: mdev define: .*7e7e7e7e-0000-4000-8000-000000000002/, 'defined twice');
    assert.equal((await host.mdev('stop', '-u', U1)).code, 0);
    assert.equal((await host.mdev('undefine', '-u', U1)).code, 0);
    await nothingLeft('after the UUID tests');
  });

  it('an attribute refused: the instance is rolled back, nothing left, availability unchanged', async () => {
    const before = await available();
    const file = join(host.dir, 'bad-attr.json');
    writeFileSync(file, JSON.stringify({ mdev_type: 'memory-pool-64M', start: 'manual', attrs: [{ write: '0x0:cafe' }, { fill: 'zz' }] }, null, 2));
    fails(await host.mdev('start', '-u', U1, '-p', 'memory-pool', '--jsonfile', file), /^vfio-user: mdev start: .*fill/, 'bad fill');
    fails(await host.mdev('start', '-u', U1, '-p', 'memory-pool', '-t', 'memory-pool-64M', '--jsonfile', file), /cannot be used with/, 'jsonfile with -t', 2);
    await nothingLeft('after the refused attribute');
    assert.deepEqual(await available(), before);
    // An attribute the type does not have: refused by modify; in a hand-edited definition, refused at start.
    assert.equal((await host.mdev('define', '-u', U1, '-p', 'memory-pool', '-t', 'memory-pool-64M')).code, 0);
    fails(await host.mdev('modify', '-u', U1, '--addattr', 'no_such_attr', '--value', '1'), /^vfio-user: mdev modify: .*no_such_attr/, 'modify, unknown attribute');
    writeFileSync(join(host.configDir, 'memory-pool', U1), JSON.stringify({ mdev_type: 'memory-pool-64M', start: 'manual', attrs: [{ write: '0x0:cafe' }, { no_such_attr: '1' }] }, null, 2));
    fails(await host.mdev('start', '-u', U1), /^vfio-user: mdev start: .*no_such_attr/, 'start, unknown attribute');
    await nothingLeft('after the unknown attribute');
    assert.deepEqual(await available(), before);
    assert.equal((await host.mdev('undefine', '-u', U1)).code, 0);
  });

  it("beyond the pool's capacity: refused for both types; freed capacity comes back", async () => {
    assert.deepEqual(await available(), { 'memory-pool-256M': 4, 'memory-pool-64M': 16 });
    const started: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await host.mdev('start', '-p', 'memory-pool', '-t', 'memory-pool-256M');
      assert.equal(r.code, 0, r.stderr);
      started.push(r.stdout.trim());
    }
    assert.deepEqual(await available(), { 'memory-pool-256M': 1, 'memory-pool-64M': 4 }, '3 × 256M leave 256M');
    for (let i = 0; i < 4; i++) {
      const r = await host.mdev('start', '-p', 'memory-pool', '-t', 'memory-pool-64M');
      assert.equal(r.code, 0, r.stderr);
      started.push(r.stdout.trim());
    }
    assert.deepEqual(await available(), { 'memory-pool-256M': 0, 'memory-pool-64M': 0 });
    fails(await host.mdev('start', '-p', 'memory-pool', '-t', 'memory-pool-64M'), /^vfio-user: mdev start: .*memory-pool-64M/, 'no 64M left');
    fails(await host.mdev('start', '-p', 'memory-pool', '-t', 'memory-pool-256M'), /^vfio-user: mdev start: .*memory-pool-256M/, 'no 256M left');
    assert.equal((await host.mdev('list')).stdout.split('\n').filter((l) => l !== '').length, 7, 'the refused ones left nothing');
    for (const r of await inParallel(started.map((uuid) => () => host.mdev('stop', '-u', uuid)))) assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await available(), { 'memory-pool-256M': 4, 'memory-pool-64M': 16 });
    await nothingLeft('after the capacity test');
  });

  it("a pre-callout's veto: start and define refused, nothing created; -f/--force goes on (mdevctl)", async () => {
    fails(await host.mdev('start', '-u', VETOED, '-p', 'memory-pool', '-t', 'memory-pool-64M'), /^vfio-user: mdev start: .*may not be used|^vfio-user: mdev start: .*veto/, 'vetoed start');
    fails(await host.mdev('define', '-u', VETOED, '-p', 'memory-pool', '-t', 'memory-pool-64M'), /^vfio-user: mdev define: /, 'vetoed define');
    await nothingLeft('after the veto');
    assert.equal((await host.mdev('list', '-d')).stdout, '', 'nothing defined');
    const r = await host.mdev('start', '-u', U1, '-p', 'memory-pool', '-t', 'memory-pool-64M');
    assert.equal(r.code, 0, `another UUID is not vetoed: ${r.stderr}`);
    const stopped = await host.mdev('stop', '-u', U1);
    assert.equal(stopped.code, 0, `stop: ${stopped.stderr}`);
    const forced = await host.mdev('start', '-u', VETOED, '-p', 'memory-pool', '-t', 'memory-pool-64M', '--force');
    assert.equal(forced.code, 0, `start --force despite the veto: ${forced.stderr}`);
    assert.equal((await host.mdev('list')).stdout, `${VETOED} memory-pool memory-pool-64M manual\n`);
    fails(await host.mdev('stop', '-u', VETOED), /^vfio-user: mdev stop: /, 'vetoed stop');
    const forcedStop = await host.mdev('stop', '-u', VETOED, '-f');
    assert.equal(forcedStop.code, 0, `stop -f despite the veto: ${forcedStop.stderr}`);
    await nothingLeft('after the forced ones');
  });
});
