/**
 * Loading parents: the built-in ones by name and by their module URL (as a
 * worker does), user modules (default export, export `parent`, the example
 * under examples/), and every way a module can fail to be a parent — each one
 * line with ENOENT or EINVAL.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { BUILTIN_PARENTS, loadParent, splitTypeId, typeId } from '../../src/host/parent-loader.js';
import { VfioUserError } from '../../src/errors.js';

const FIXTURES = fileURLToPath(new URL('./fixtures/parents/', import.meta.url));
const EXAMPLE = fileURLToPath(new URL('../../examples/my-parent.js', import.meta.url));

/** Asserts that `promise` rejects with a one-line VfioUserError of errno `code` whose message matches `pattern`. */
async function refused(promise: Promise<unknown>, code: string, pattern: RegExp): Promise<VfioUserError> {
  const error = await promise.then(
    () => assert.fail('expected a refusal'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof VfioUserError, `a VfioUserError, got ${String(error)}`);
  assert.equal(error.code, code, error.message);
  assert.match(error.message, pattern);
  assert.doesNotMatch(error.message, /\n/, 'one line');
  return error;
}

function withTempFile<T>(name: string, content: string, fn: (dir: string, file: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-parent-'));
  const file = join(dir, name);
  writeFileSync(file, content);
  return fn(dir, file).finally(() => rmSync(dir, { recursive: true, force: true }));
}

describe('loadParent: built-in parents', () => {
  it('loads each built-in by name, as a built-in whose module URL is a file', async () => {
    assert.deepEqual(Object.keys(BUILTIN_PARENTS).sort(), ['gpio-bank', 'memory-pool']);
    for (const [name, url] of Object.entries(BUILTIN_PARENTS)) {
      const loaded = await loadParent(name);
      assert.equal(loaded.parent.name, name);
      assert.equal(loaded.builtin, true);
      assert.equal(loaded.moduleUrl, url);
      assert.match(loaded.moduleUrl, /^file:\/\/.*\/host\/parents\/[a-z-]+\.js$/);
    }
  });

  it('loads a built-in from its module URL (what a worker imports) as the same parent', async () => {
    const byName = await loadParent('memory-pool');
    const byUrl = await loadParent(byName.moduleUrl, { cwd: tmpdir() });
    assert.equal(byUrl.builtin, true);
    assert.equal(byUrl.parent, byName.parent, 'the module is imported once');
  });

  it('offers memory-pool-64M and memory-pool-256M drawing on 1 GiB, and gpio-bank-16/-4 on 64 lines', async () => {
    const pool = (await loadParent('memory-pool')).parent;
    assert.deepEqual(pool.resources, { memory: 1 << 30 });
    assert.deepEqual(pool.types.map((t) => [typeId(pool, t.name), t.cost]), [
      ['memory-pool-64M', { memory: 64 << 20 }],
      ['memory-pool-256M', { memory: 256 << 20 }],
    ]);
    assert.deepEqual(Object.keys(pool.types[0]?.attributes ?? {}), ['fill', 'write']);
    const bank = (await loadParent('gpio-bank')).parent;
    assert.deepEqual(bank.types.map((t) => [typeId(bank, t.name), t.cost, t.maxInstances]), [
      ['gpio-bank-16', { lines: 16 }, undefined],
      ['gpio-bank-4', { lines: 4 }, 8],
    ]);
  });

  it('splits a type id into the short name only for this parent and its types', async () => {
    const pool = (await loadParent('memory-pool')).parent;
    assert.equal(splitTypeId(pool, 'memory-pool-256M'), '256M');
    assert.equal(splitTypeId(pool, 'memory-pool-128M'), undefined);
    assert.equal(splitTypeId(pool, 'gpio-bank-16'), undefined);
    assert.equal(splitTypeId(pool, 'memory-pool'), undefined);
  });
});

describe('loadParent: user modules', () => {
  it('takes the default export of a module given by a path relative to cwd', async () => {
    const loaded = await loadParent('./default-export.js', { cwd: FIXTURES });
    assert.equal(loaded.parent.name, 'fixture-default');
    assert.equal(loaded.builtin, false);
    assert.equal(loaded.moduleUrl, pathToFileURL(join(FIXTURES, 'default-export.js')).href);
  });

  it('takes the export named parent when there is no default export', async () => {
    const loaded = await loadParent(join(FIXTURES, 'named-export.js'));
    assert.equal(loaded.parent.name, 'fixture-named');
    assert.equal(loaded.parent.types[0]?.maxInstances, 2);
  });

  it('accepts every character names may hold', async () => {
    const loaded = await loadParent(join(FIXTURES, 'odd-names.js'));
    assert.equal(typeId(loaded.parent, 'a+b'), 'x:y.z_0-9-a+b');
  });

  it('loads the example parent of examples/', async () => {
    const loaded = await loadParent(EXAMPLE);
    assert.equal(loaded.parent.name, 'counters');
    assert.deepEqual(loaded.parent.resources, { slots: 4 });
  });

  it('loads a package installed in cwd’s node_modules, by its file URL', async () => {
    const source = "export default { name: 'pkg-parent', types: [{ name: 't', maxInstances: 1, create: () => undefined }] };\n";
    await withTempFile('package.json', '{"type": "module"}\n', async (dir) => {
      const pkg = join(dir, 'node_modules', 'acme-parent');
      mkdirSync(pkg, { recursive: true });
      writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name: 'acme-parent', type: 'module', main: 'main.js' }));
      writeFileSync(join(pkg, 'main.js'), source);
      const loaded = await loadParent('acme-parent', { cwd: dir });
      assert.equal(loaded.parent.name, 'pkg-parent');
      assert.equal(loaded.moduleUrl, pathToFileURL(join(realpathSync(pkg), 'main.js')).href);
      await refused(loadParent('acme-parent', { cwd: tmpdir() }), 'ENOENT', /no such file or package/);
    });
  });

  it('refuses a module exporting no parent, naming what it exports (EINVAL)', async () => {
    await refused(loadParent(join(FIXTURES, 'no-parent.js')), 'EINVAL', /exports no parent.*it exports (notAParent, helper|helper, notAParent)$/);
  });

  it('refuses a module that throws at import, with its message (EINVAL)', async () => {
    await refused(loadParent(join(FIXTURES, 'throws-at-import.js')), 'EINVAL', /cannot load parent .*throws-at-import\.js: Error: fixture refuses to load/);
  });

  it('validates the parent a module exports (EINVAL naming the module)', async () => {
    await refused(loadParent('./unknown-resource.js', { cwd: FIXTURES }), 'EINVAL', /^parent \.\/unknown-resource\.js: type "x" cost names an unknown resource "vram" \(resources: memory\)$/);
  });

  it('refuses a parent whose properties throw when read (EINVAL)', async () => {
    await refused(loadParent('./throwing-getter.js', { cwd: FIXTURES }), 'EINVAL', /^parent \.\/throwing-getter\.js: reading it threw: types are not ready$/);
  });

  it('refuses a module with a syntax error (EINVAL)', async () => {
    await withTempFile('broken.mjs', 'export default {', async (_dir, file) => {
      await refused(loadParent(file), 'EINVAL', /cannot load parent .*broken\.mjs: SyntaxError/);
    });
  });

  it('refuses a file that does not exist, a package that does not exist and a file: URL to nothing (ENOENT)', async () => {
    await refused(loadParent('./missing-parent.js', { cwd: FIXTURES }), 'ENOENT', /no such file \(.*missing-parent\.js\); expected a built-in parent \(memory-pool, gpio-bank\)/);
    await refused(loadParent('no-such-parent-package-xyz', { cwd: tmpdir() }), 'ENOENT', /cannot load parent no-such-parent-package-xyz: no such file or package/);
    await refused(loadParent(pathToFileURL(join(FIXTURES, 'missing.js')).href), 'ENOENT', /no such file or package/);
  });

  it('loads a TypeScript parent only on a Node that strips types, and otherwise says so (EINVAL)', async () => {
    const source = "export const parent = { name: 'ts-parent', types: [{ name: 't', maxInstances: 1, create: () => undefined }] };\n";
    await withTempFile('p.ts', source, async (dir) => {
      const strips = Boolean((process.features as { typescript?: unknown }).typescript);
      if (strips) assert.equal((await loadParent('./p.ts', { cwd: dir })).parent.name, 'ts-parent');
      else await refused(loadParent('./p.ts', { cwd: dir }), 'EINVAL', /does not run TypeScript: compile it \(tsc\)/);
    });
  });

  it('recognizes a built-in loaded by its file path as built-in', async () => {
    const url = BUILTIN_PARENTS['gpio-bank'] ?? assert.fail('gpio-bank is built in');
    const loaded = await loadParent(fileURLToPath(url));
    assert.equal(loaded.builtin, true);
    assert.equal(loaded.parent.name, 'gpio-bank');
  });
});
