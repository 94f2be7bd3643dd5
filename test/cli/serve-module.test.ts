/**
 * `vfio-user serve ./my-device.js` (issue 12 point 2): a user's ES module —
 * by path or package name — whose default export (or `device` /
 * `createDevice`) is a device definition, a device, or a factory receiving
 * the arguments after `--`, served by the real binary until SIGTERM (socket
 * removed); and every way a module can be wrong, each one line on stderr
 * naming what was found and what was expected, exit 1.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { MAIN } from './support.js';
import { createProject, seededRegs, serveModule, type Project } from './user-device.js';

const PCI = "pci: { vendorId: 0x1af4, deviceId: 0x10f8, classCode: 0xff0000 }";
const BAR = "regions: { bar0: { size: 4096, read: (_o, n) => new Uint8Array(n).fill(0x5a), write: () => undefined } }";

/** Modules of each accepted shape, and of each mistake. */
const MODULES: Record<string, string> = {
  'async-factory.js': `export default async ({ args, socket }) => ({ name: 'args=' + args.join(',') + ';sock=' + socket.split('/').pop(), ${PCI}, ${BAR} });`,
  'instance.js': `import { createDevice } from 'vfio-user';\nexport const device = createDevice({ name: 'made', ${PCI}, ${BAR} });`,
  'named-factory.js': `export function createDevice() { return { name: 'named-factory', ${PCI}, ${BAR} }; }`,
  'number.js': 'export default 42;',
  'nothing.js': 'export const helper = 1;\nexport function other() {}',
  'klass.js': `export default class Card { constructor() { this.${PCI.replace(':', ' =')}; } }`,
  'throws.js': "export default () => { throw new Error('no license key for this card'); };",
  'returns-string.js': "export default () => 'a device';",
  'bad-definition.js': `export default { name: 'bad', ${PCI}, regions: { bar0: { size: 3000 } } };`,
  'syntax.js': 'export default {',
  'object.js': 'export default { name: 1, regions: {} };',
  'typed.ts': `const size: number = 4096;\nexport default { name: 'typed', ${PCI}, regions: { bar0: { size, read: (_o: number, n: number) => new Uint8Array(n), write: () => undefined } } };`,
  'short.js': `export default { name: 'short', ${PCI}, regions: { bar0: { size: 4096, read: () => new Uint8Array(2), write: () => undefined } } };`,
};

function run(args: string[], cwd: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, 'serve', ...args], { cwd, encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('vfio-user serve <module>', { concurrency: 4 }, () => {
  let project: Project;
  before(() => {
    project = createProject();
    for (const [name, text] of Object.entries(MODULES)) project.write(name, text);
    mkdirSync(join(project.dir, 'node_modules', 'my-card'));
    project.write('node_modules/my-card/package.json', JSON.stringify({ name: 'my-card', type: 'module', exports: { '.': './card.js' } }));
    project.write('node_modules/my-card/card.js', `export default { name: 'packaged', ${PCI}, ${BAR} };`);
  });
  after(() => project.remove());

  it('a factory gets the arguments after -- and the socket; SIGTERM exits 0 and removes the socket', async () => {
    const s = await serveModule(project, './dev.js', 'f.sock', ['--seed', '7']);
    assert.match(s.out(), /^serving scratch from \.\/dev\.js on .*\/f\.sock$/m);
    const client = await VfioUserClient.connect(s.socket);
    try {
      assert.equal(Buffer.from(await client.regionRead(0, 0n, 64)).toString('hex'), seededRegs(7));
    } finally {
      client.close();
    }
    const a = await serveModule(project, './async-factory.js', 'g.sock', ['x', '--y=2']);
    assert.match(a.out(), /^serving args=x,--y=2;sock=g\.sock from \.\/async-factory\.js on /m);
    assert.equal(await s.kill('SIGTERM'), 0);
    assert.equal(await a.kill('SIGINT'), 0);
    assert.equal(existsSync(s.socket), false, 'socket removed');
    assert.equal(existsSync(a.socket), false, 'socket removed');
  });

  it('a device instance, a named createDevice factory, a package name, a file: URL', async () => {
    const cases: Array<[string, RegExp, number]> = [
      ['./instance.js', /^serving made from \.\/instance\.js on /m, 0x5a],
      ['named-factory.js', /^serving named-factory from named-factory\.js on /m, 0x5a],
      ['my-card', /^serving packaged from my-card on /m, 0x5a],
      [`file://${join(project.dir, 'nomig.js')}`, /^serving plain from file:\/\/.*nomig\.js on /m, 0],
    ];
    for (const [i, [module, re, byte]] of cases.entries()) {
      const s = await serveModule(project, module, `shape${i}.sock`);
      try {
        assert.match(s.out(), re);
        const client = await VfioUserClient.connect(s.socket);
        const bar0 = await client.regionRead(0, 0n, 4).finally(() => client.close());
        assert.deepEqual([...bar0], [byte, byte, byte, byte], module);
      } finally {
        assert.equal(await s.kill(), 0);
      }
    }
  });

  it("a callback's mistake is shown on serve's stderr (warn by default), the client gets EINVAL", async () => {
    const s = await serveModule(project, './short.js', 'short.sock');
    try {
      const client = await VfioUserClient.connect(s.socket);
      await assert.rejects(client.regionRead(0, 0n, 4).finally(() => client.close()), { errno: 22 });
      await s.waitFor(/BAR0 read callback returned 2 bytes for a 4-byte read/, 'err');
    } finally {
      assert.equal(await s.kill(), 0);
    }
  });

  it('a .ts module: served where Node strips types, else one line saying how', async () => {
    const strips = Boolean((process.features as { typescript?: unknown }).typescript);
    if (strips) {
      const s = await serveModule(project, './typed.ts', 'typed.sock');
      assert.match(s.out(), /^serving typed from \.\/typed\.ts on /m);
      assert.equal(await s.kill(), 0);
      return;
    }
    const r = run(['./typed.ts', '--socket', join(project.dir, 'typed.sock')], project.dir);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^vfio-user: cannot load device module \.\/typed\.ts: Node v\d+\.\d+\.\d+ does not run TypeScript: compile it \(tsc\) and serve the \.js, or use a Node that strips types/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  });

  it('every mistake is one line naming the module, what was found and what is expected; exit 1, nothing served', () => {
    const cases: Array<[string[], RegExp]> = [
      [['./missing.js'], /^vfio-user: cannot load device module \.\/missing\.js: no such file \(.*missing\.js\); expected a sample device \(gpio, memory, dma-engine\), a module path or a package name$/],
      [['toaster'], /^vfio-user: cannot load device module toaster: no such file or package \(from .*\)/],
      [['./number.js'], /^vfio-user: \.\/number\.js: the default export is a number \(42\); expected a device definition \(an object with `pci`/],
      [['./nothing.js'], /^vfio-user: \.\/nothing\.js exports no device: expected a default export \(or an export named device or createDevice\) .*; it exports helper, other$/],
      [['./klass.js'], /the default export is a class \(Card\); expected/],
      [['./throws.js'], /^vfio-user: \.\/throws\.js: the device factory \(the default export\) threw: no license key for this card$/],
      [['./returns-string.js'], /the device factory \(the default export\) returned a string \("a device"\); expected a device definition/],
      [['./bad-definition.js'], /^vfio-user: \.\/bad-definition\.js: the default export is not a valid device definition: .*size 0xbb8 is not a power of two$/],
      [['./syntax.js'], /^vfio-user: cannot load device module \.\/syntax\.js: SyntaxError: /],
      [['./object.js'], /the default export is an object with keys name, regions but no `pci`/],
      [['./dev.js', '--size', '64K'], /--size applies to the memory device only, not \.\/dev\.js/],
      [['gpio', '--', 'extra'], /the sample device gpio takes no arguments after -- \(got extra\)/],
    ];
    for (const [[module, ...rest], re] of cases) {
      const socket = join(project.dir, 'never.sock');
      const r = run([module as string, '--socket', socket, ...rest], project.dir);
      assert.equal(r.status, 1, `${module}: ${r.stderr}`);
      assert.equal(r.stdout, '', module);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, `${module}: one line, got ${JSON.stringify(r.stderr)}`);
      assert.match(lines[0] ?? '', re);
      assert.equal(existsSync(socket), false, `${module}: nothing served`);
    }
  });
});
