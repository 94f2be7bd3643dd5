/**
 * DefinitionStore: mdevctl's layout and file format (checked against files
 * from mdevctl's own test data, test/host/fixtures/mdevctl/), atomic writes,
 * and bad entries reported and skipped.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import {
  chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DefinitionStore, formatMdevConfig, parseMdevConfig, SCRIPTS_DIR } from '../../src/host/definitions.js';
import type { MdevConfig } from '../../src/host/types.js';

const FIXTURES = fileURLToPath(new URL('../../../test/host/fixtures/mdevctl/', import.meta.url));
const STORE_MODULE = fileURLToPath(new URL('../../src/host/definitions.js', import.meta.url));
const fixture = (path: string): string => readFileSync(join(FIXTURES, path), 'utf8');

const U1 = '4a0a190f-dcf3-4def-9342-c48768f0c940';
const U2 = '9f579710-6ffc-4201-987a-4ffa0fb1f3a5';
const P1 = '0000:00:02.0';
const P2 = '0000:00:03.0';

const dirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-defs-'));
  dirs.push(dir);
  return dir;
}
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** A config dir laid out as mdevctl's list tests lay theirs out. */
function mdevctlLayout(): string {
  const dir = tempDir();
  mkdirSync(join(dir, P1));
  mkdirSync(join(dir, P2));
  writeFileSync(join(dir, P1, U1), fixture('list/device2.json'));
  writeFileSync(join(dir, P2, U2), fixture('list/device1.json'));
  writeFileSync(join(dir, P1, U2), fixture('list/device1.json'));
  return dir;
}

describe('DefinitionStore: mdevctl layout and format', () => {
  it('loads a directory laid out by mdevctl, sorted by parent then UUID', () => {
    const store = new DefinitionStore(mdevctlLayout());
    const { definitions, problems } = store.load();
    assert.deepEqual(problems, []);
    assert.deepEqual(definitions.map((d) => `${d.parent}/${d.uuid}`), [`${P1}/${U1}`, `${P1}/${U2}`, `${P2}/${U2}`]);
    assert.deepEqual(definitions[0]?.config, { mdev_type: 'i915-GVTg_V5_8', start: 'auto', attrs: [] });
    const device1 = definitions[1]?.config;
    assert.equal(device1?.mdev_type, 'vfio_ap-passthrough');
    assert.equal(device1?.start, 'manual');
    assert.deepEqual(device1?.attrs.slice(0, 3), [{ assign_adapter: '5' }, { assign_adapter: '6' }, { assign_domain: '0xab' }]);
    assert.equal(device1?.attrs.length, 6);
  });

  it('reads and writes back as mdevctl does (load-json .in → .out)', () => {
    const files = readdirSync(join(FIXTURES, 'load-json')).filter((f) => f.endsWith('.in'));
    assert.equal(files.length, 3);
    for (const file of files) {
      const config = parseMdevConfig(fixture(`load-json/${file}`), file);
      assert.equal(formatMdevConfig(config), fixture(`load-json/${file.replace(/\.in$/, '.out')}`), file);
    }
  });

  it('writes the bytes mdevctl define writes (no trailing newline), 0644 in a 0755 parent dir whatever the umask', () => {
    const dir = join(tempDir(), 'mdevctl.d');
    const store = new DefinitionStore(dir);
    const config = parseMdevConfig(fixture('define/defined.json'), 'defined.json');
    const old = process.umask(0o077);
    let path: string;
    try {
      path = store.write(P2, '976D8CC2-4BFC-43B9-B9F9-F4AF2DE91AB9', config);
    } finally {
      process.umask(old);
    }
    assert.equal(path, join(dir, P2, '976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9'));
    assert.equal(readFileSync(path, 'utf8'), fixture('define/jsonfile.expected'));
    assert.equal(statSync(path).mode & 0o777, 0o644);
    assert.equal(statSync(join(dir, P2)).mode & 0o777, 0o755);
    assert.deepEqual(readdirSync(join(dir, P2)), ['976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9']);
    const auto: MdevConfig = { mdev_type: 'i915-GVTg_V5_4', start: 'auto', attrs: [] };
    store.write(P2, '976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9', auto);
    assert.equal(readFileSync(path, 'utf8'), fixture('define/uuid-auto.expected'));
    assert.deepEqual(store.read(P2, '976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9'), auto);
  });

  it('reads, removes and finds the parents of a UUID defined under several parents', () => {
    const store = new DefinitionStore(mdevctlLayout());
    assert.deepEqual(store.parentsOf(U2), [P1, P2]);
    assert.deepEqual(store.parentsOf(U2.toUpperCase()), [P1, P2]);
    assert.deepEqual(store.parentsOf(U1), [P1]);
    assert.deepEqual(store.parentsOf('00000000-0000-0000-0000-000000000000'), []);
    assert.equal(store.read(P2, U1), undefined);
    assert.equal(store.read(P1, U1)?.start, 'auto');
    assert.equal(store.remove(P1, U2), true);
    assert.equal(store.remove(P1, U2), false);
    assert.deepEqual(store.parentsOf(U2), [P2]);
    assert.ok(existsSync(join(store.configDir, P1)), 'the parent directory stays, as mdevctl leaves it');
    assert.deepEqual(store.load().definitions.map((d) => `${d.parent}/${d.uuid}`), [`${P1}/${U1}`, `${P2}/${U2}`]);
  });

  it('a missing config directory holds no definitions (no problem, no error)', () => {
    const store = new DefinitionStore(join(tempDir(), 'absent'));
    assert.deepEqual(store.load(), { definitions: [], problems: [] });
    assert.deepEqual(store.parentsOf(U1), []);
    assert.equal(store.read(P1, U1), undefined);
    assert.equal(store.remove(P1, U1), false);
  });

  it('reads what mdevctl accepts: attrs absent or null, unknown keys ignored, any whitespace', () => {
    assert.deepEqual(parseMdevConfig('{"mdev_type":"t-a","start":"auto"}', 'f'), { mdev_type: 't-a', start: 'auto', attrs: [] });
    assert.deepEqual(parseMdevConfig('{"start":"manual","attrs":null,"mdev_type":"t-a"}\n', 'f'), { mdev_type: 't-a', start: 'manual', attrs: [] });
    const withExtra = parseMdevConfig('{ "comment": 1, "mdev_type": "t-a", "start": "auto", "attrs": [ {"a": ""}, {"a": "2"} ] }', 'f');
    assert.deepEqual(withExtra, { mdev_type: 't-a', start: 'auto', attrs: [{ a: '' }, { a: '2' }] });
    assert.equal(formatMdevConfig(withExtra), '{\n  "mdev_type": "t-a",\n  "start": "auto",\n  "attrs": [\n    {\n      "a": ""\n    },\n    {\n      "a": "2"\n    }\n  ]\n}');
    assert.throws(() => parseMdevConfig('{"mdev_type":"t-a","start":"auto","attrs":[{"a":true}]}', 'my.json'),
      { code: 'EINVAL', message: 'my.json: attrs[0] "a": the value is boolean true; it must be a string (write "true")' });
    assert.throws(() => parseMdevConfig('{"mdev_type":"t a","start":"auto"}', 'my.json'), { code: 'EINVAL', message: /^my\.json: "mdev_type" "t a" is invalid/ });
    assert.throws(() => parseMdevConfig('{"mdev_type":7,"start":"auto"}', 'my.json'), { code: 'EINVAL', message: 'my.json: "mdev_type" is number 7, not a string' });
    assert.throws(() => parseMdevConfig('x'.repeat((1 << 20) + 1), 'big'), { code: 'EINVAL', message: 'big: larger than 1048576 bytes; not a definition' });
  });

  it('refuses bad parents, UUIDs and configs with EINVAL before touching the disk', () => {
    const dir = tempDir();
    const store = new DefinitionStore(dir);
    const good: MdevConfig = { mdev_type: 't-a', start: 'manual', attrs: [] };
    for (const parent of ['../etc', '', '.', '..', 'a/b', SCRIPTS_DIR, 'x'.repeat(65), 'has space']) {
      assert.throws(() => store.write(parent, U1, good), { code: 'EINVAL' }, parent);
      assert.throws(() => store.read(parent, U1), { code: 'EINVAL' }, parent);
      assert.throws(() => store.remove(parent, U1), { code: 'EINVAL' }, parent);
    }
    for (const uuid of ['', 'not-a-uuid', `${U1}0`, '../../etc/passwd']) {
      assert.throws(() => store.write(P1, uuid, good), { code: 'EINVAL' }, uuid);
      assert.throws(() => store.parentsOf(uuid), { code: 'EINVAL' }, uuid);
    }
    const bad = [
      { ...good, start: 'Auto' },
      { ...good, mdev_type: '' },
      { ...good, mdev_type: 5 },
      { ...good, attrs: [{ a: 1 }] },
      { ...good, attrs: [{ a: '1', b: '2' }] },
      { ...good, attrs: 'a=1' },
    ];
    for (const config of bad) {
      assert.throws(() => store.write(P1, U1, config as unknown as MdevConfig), { code: 'EINVAL' }, JSON.stringify(config));
    }
    assert.deepEqual(readdirSync(dir), []);
  });
});

describe('DefinitionStore.load: bad entries are reported and skipped', () => {
  it('reports each bad entry once, with its path and reason, and still loads the good ones', () => {
    const dir = mdevctlLayout();
    const p = (...parts: string[]): string => join(dir, ...parts);
    const bad: Record<string, string> = {
      '11111111-1111-1111-1111-111111111111': '{"mdev_type": "x", "start": "manual", "attrs": [',
      '22222222-2222-2222-2222-222222222222': '',
      '33333333-3333-3333-3333-333333333333': '{"mdev_type": "x", "start": "Auto"}',
      '44444444-4444-4444-4444-444444444444': '{"mdev_type": "x", "start": "auto", "attrs": {"a": "1"}}',
      '55555555-5555-5555-5555-555555555555': '{"mdev_type": "x", "start": "auto", "attrs": [{"a": "1", "b": "2"}]}',
      '66666666-6666-6666-6666-666666666666': '{"mdev_type": "x", "start": "auto", "attrs": [{"a": 1}]}',
      '77777777-7777-7777-7777-777777777777': '{"start": "auto"}',
      '88888888-8888-8888-8888-888888888888': '[]',
    };
    for (const [name, text] of Object.entries(bad)) writeFileSync(p(P1, name), text);
    writeFileSync(p(P1, '99999999-9999-9999-9999-999999999999'), Buffer.from('{"mdev_type": "x\xff", "start": "auto"}', 'latin1'));
    writeFileSync(p(P1, 'notes.txt'), '{}');
    writeFileSync(p(P1, 'AAAAAAAA-AAAA-AAAA-AAAA-AAAAAAAAAAAA'), fixture('list/device2.json'));
    mkdirSync(p(P1, 'bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb'));
    symlinkSync(p('nowhere'), p(P1, 'cccccccc-cccc-cccc-cccc-cccccccccccc'));
    execFileSync('mkfifo', [p(P1, 'dddddddd-dddd-dddd-dddd-dddddddddddd')]);
    writeFileSync(p('eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee'), fixture('list/device2.json'));
    symlinkSync(p('nowhere'), p('dangling'));
    mkdirSync(p('bad parent'));
    writeFileSync(p('bad parent', U1), fixture('list/device2.json'));
    mkdirSync(p(SCRIPTS_DIR, 'callouts'), { recursive: true });
    mkdirSync(p(SCRIPTS_DIR, 'notifiers'));
    writeFileSync(p(SCRIPTS_DIR, 'callouts', 'ffffffff-ffff-ffff-ffff-ffffffffffff'), fixture('list/device2.json'));
    writeFileSync(p(SCRIPTS_DIR, '12121212-1212-1212-1212-121212121212'), fixture('list/device2.json'));

    const { definitions, problems } = new DefinitionStore(dir).load();
    assert.deepEqual(definitions.map((d) => `${d.parent}/${d.uuid}`), [`${P1}/${U1}`, `${P1}/${U2}`, `${P2}/${U2}`]);
    const reasons = new Map(problems.map((problem) => [problem.file, problem.reason]));
    assert.equal(reasons.size, problems.length, 'one problem per entry');
    const expect: [string, RegExp][] = [
      [p(P1, '11111111-1111-1111-1111-111111111111'), /^invalid JSON \(.+\); skipped$/],
      [p(P1, '22222222-2222-2222-2222-222222222222'), /^the file is empty; skipped$/],
      [p(P1, '33333333-3333-3333-3333-333333333333'), /^"start" is the string "Auto"; it must be "auto" or "manual"; skipped$/],
      [p(P1, '44444444-4444-4444-4444-444444444444'), /^"attrs" is an object, not an array; skipped$/],
      [p(P1, '55555555-5555-5555-5555-555555555555'), /^attrs\[0\] has 2 keys/],
      [p(P1, '66666666-6666-6666-6666-666666666666'), /^attrs\[0\] "a": the value is number 1; it must be a string/],
      [p(P1, '77777777-7777-7777-7777-777777777777'), /^"mdev_type" is missing; skipped$/],
      [p(P1, '88888888-8888-8888-8888-888888888888'), /^the definition is an array, not an object; skipped$/],
      [p(P1, '99999999-9999-9999-9999-999999999999'), /^not UTF-8 text, not a definition; skipped$/],
      [p(P1, 'notes.txt'), /^file name is not a lower-case UUID \(8-4-4-4-12\); skipped$/],
      [p(P1, 'AAAAAAAA-AAAA-AAAA-AAAA-AAAAAAAAAAAA'), /rename it to aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa; skipped$/],
      [p(P1, 'bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb'), /^a directory where a definition file belongs; skipped$/],
      [p(P1, 'cccccccc-cccc-cccc-cccc-cccccccccccc'), /^cannot follow the link: ENOENT; skipped$/],
      [p('dangling'), /^cannot follow the link: ENOENT; skipped$/],
      [p(P1, 'dddddddd-dddd-dddd-dddd-dddddddddddd'), /^not a regular file, not a definition; skipped$/],
      [p('eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee'), /^not a directory: definitions go in <config-dir>\/<parent>\/<uuid>$/],
      [p('bad parent'), /^invalid parent name "bad parent"/],
      [p(SCRIPTS_DIR, '12121212-1212-1212-1212-121212121212'), /^a file in scripts\.d\/ .*never a definition/],
    ];
    for (const [file, reason] of expect) assert.match(reasons.get(file) ?? '(no problem reported)', reason, file);
    assert.equal(problems.length, expect.length, JSON.stringify(problems, null, 1));
  });

  it('logs each problem at warn', () => {
    const dir = tempDir();
    mkdirSync(join(dir, P1));
    writeFileSync(join(dir, P1, U1), '{');
    const warnings: unknown[] = [];
    const logger = {
      error() {}, info() {}, debug() {},
      warn(obj: object, msg?: string) { warnings.push({ ...obj, msg }); },
      child() { return logger; },
    };
    const { problems } = new DefinitionStore(dir, logger).load();
    assert.equal(problems.length, 1);
    assert.deepEqual(warnings, [{ event: 'definition-skipped', file: join(dir, P1, U1), reason: problems[0]?.reason, msg: 'definition skipped' }]);
  });

  it('reports an unreadable file (EACCES)', { skip: process.getuid?.() === 0 ? 'root reads every file' : false }, () => {
    const dir = mdevctlLayout();
    chmodSync(join(dir, P1, U1), 0);
    const { definitions, problems } = new DefinitionStore(dir).load();
    assert.equal(definitions.length, 2);
    assert.deepEqual(problems, [{ file: join(dir, P1, U1), reason: `cannot read ${join(dir, P1, U1)}: EACCES; skipped` }]);
  });

  it('read() throws what load() reports: EINVAL for a bad file', () => {
    const dir = tempDir();
    mkdirSync(join(dir, P1));
    writeFileSync(join(dir, P1, U1), '{"mdev_type": "x", "start": "sometimes"}');
    assert.throws(() => new DefinitionStore(dir).read(P1, U1), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'EINVAL');
      assert.equal(err.message, `${join(dir, P1, U1)}: "start" is the string "sometimes"; it must be "auto" or "manual"`);
      return true;
    });
  });
});

describe('DefinitionStore.write is atomic', () => {
  const config = (n: number): MdevConfig => ({
    mdev_type: `t-${n}`,
    start: n % 2 === 0 ? 'auto' : 'manual',
    attrs: Array.from({ length: 2000 }, (_, i) => ({ [`attr${i}`]: `${n}`.repeat(20) })),
  });

  it('a temp file left by a dead writer is ignored by load and removed; a live writer\'s is left alone', () => {
    const dir = mdevctlLayout();
    const dead = join(dir, P1, `.${U1}.tmp-999999999-0badf00d`);
    const live = join(dir, P1, `.${U1}.tmp-${process.ppid}-0badf00d`);
    writeFileSync(dead, '{"mdev_type": "half');
    const zero = join(dir, P2, `.${U2}.tmp-0-0badf00d`);
    writeFileSync(zero, '{"mdev_type": "half');
    writeFileSync(live, '{"mdev_type": "half');
    const { definitions, problems } = new DefinitionStore(dir).load();
    assert.deepEqual(problems, []);
    assert.equal(definitions.length, 3);
    assert.equal(existsSync(dead), false);
    assert.equal(existsSync(zero), false, 'pid 0 is nobody (kill(0, 0) would signal our own group)');
    assert.equal(existsSync(live), true);
  });

  it('a failed write leaves no temp file and keeps the previous state (EISDIR where the file goes)', () => {
    const dir = tempDir();
    const store = new DefinitionStore(dir);
    mkdirSync(join(dir, P1, U1, 'inside'), { recursive: true });
    assert.throws(() => store.write(P1, U1, config(1)), (err: Error & { code?: string }) => {
      // EISDIR travels as itself (src/protocol/errno.ts), the system's code in the message too
      assert.equal(err.code, 'EISDIR');
      assert.equal(err.message, `cannot write ${join(dir, P1, U1)}: EISDIR`);
      return true;
    });
    assert.deepEqual(readdirSync(join(dir, P1)), [U1]);
    writeFileSync(join(dir, 'file'), '');
    assert.throws(() => store.write('file', U1, config(1)), { code: 'EEXIST' });
  });

  it('a writer killed at any moment leaves the old definition or the new one, never a half file', async () => {
    const dir = tempDir();
    const store = new DefinitionStore(dir);
    store.write(P1, U1, config(0));
    const script = `
      import { DefinitionStore } from ${JSON.stringify(STORE_MODULE)};
      const store = new DefinitionStore(${JSON.stringify(dir)});
      const config = ${config.toString()};
      for (let n = 1; ; n++) { store.write(${JSON.stringify(P1)}, ${JSON.stringify(U1)}, config(n)); if (n === 3) process.stdout.write('writing\\n'); }
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.once('data', () => resolve());
      child.once('exit', (code) => reject(new Error(`writer exited early (${code})`)));
    });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
    const { definitions, problems } = store.load();
    assert.deepEqual(problems, []);
    assert.equal(definitions.length, 1);
    const loaded = definitions[0]?.config;
    const n = Number(loaded?.mdev_type.slice(2));
    assert.ok(n >= 3, `a complete later definition (${loaded?.mdev_type})`);
    assert.deepEqual(loaded, config(n));
    assert.deepEqual(readdirSync(join(dir, P1)), [U1], 'the dead writer\'s temp file was removed');
  });
});
