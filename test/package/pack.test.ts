/**
 * The published package, end to end (optional, `VFIO_USER_PACK_TEST=1`, needs the npm registry and
 * about two minutes: `npm run test:pack`): `npm pack` (which builds prebuilds/ at prepack), then the
 * tarball installed into fresh projects with npm and with pnpm, on a PATH without a compiler, make,
 * python or node-gyp (npm adds its own node-gyp to scripts' PATH: it would find no compiler). The library, the protocol codec (import and require) and the CLI
 * must work from the prebuilt addon, nothing compiled.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { REPO_ROOT } from './stage.js';

const enabled = process.env.VFIO_USER_PACK_TEST === '1';
const skip = enabled ? false : 'set VFIO_USER_PACK_TEST=1 to pack and install the package (needs the npm registry, ~2 min)';
const PNPM = process.env.VFIO_USER_PACK_PNPM ?? 'pnpm@10';
/** Tools that would let an install compile the addon: none may be on the restricted PATH. */
const COMPILE_TOOLS = ['cc', 'gcc', 'c++', 'g++', 'clang', 'make', 'python3', 'python', 'node-gyp'];

interface PackEntry {
  filename: string;
  size: number;
  unpackedSize: number;
  entryCount: number;
  files: { path: string }[];
}

let work = '';
let tarball = '';
let packed: PackEntry | undefined;
/** A PATH holding a copy of node, npm, npx and pnpm, and nothing else. */
let bareEnv: NodeJS.ProcessEnv = {};

function run(command: string, args: readonly string[], cwd: string, env: NodeJS.ProcessEnv): SpawnSyncReturns<string> {
  return spawnSync(command, args, { cwd, env, encoding: 'utf8', maxBuffer: 64 << 20, timeout: 300_000 });
}

function ok(result: SpawnSyncReturns<string>, what: string): string {
  assert.equal(result.status, 0, `${what}: ${result.error?.message ?? ''}\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

/** What a machine without a build toolchain lacks: compilers, linkers, make, python, node-gyp. */
const TOOLCHAIN = /^(cc|c\+\+|c89|c99|cpp.*|gcc.*|g\+\+.*|clang.*|ld|ld\..*|as|make|gmake|python.*|node-gyp.*|.*-linux-gnu.*)$/;

/**
 * A PATH for a machine without a compiler: a copy of node (so its own directory holds no compiler),
 * npm, npx and pnpm, and links to the system's other commands (sh, sed, … which pnpm's shims use)
 * minus {@link TOOLCHAIN}.
 */
function makeBarePath(): string {
  const system = join(work, 'system');
  mkdirSync(system);
  for (const dir of ['/usr/local/bin', '/usr/bin', '/bin']) {
    for (const name of existsSync(dir) ? readdirSync(dir) : []) {
      if (!TOOLCHAIN.test(name) && name !== 'node' && !existsSync(join(system, name))) symlinkSync(join(dir, name), join(system, name));
    }
  }
  const bin = join(work, 'bin');
  mkdirSync(bin);
  copyFileSync(process.execPath, join(bin, 'node'));
  execFileSync('chmod', ['+x', join(bin, 'node')]);
  const npmCli = realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim());
  symlinkSync(npmCli, join(bin, 'npm'));
  symlinkSync(join(npmCli, '..', 'npx-cli.js'), join(bin, 'npx'));
  const tools = join(work, 'tools');
  ok(run('npm', ['install', '--no-save', '--no-package-lock', '--prefix', tools, PNPM], work, process.env), `npm install ${PNPM}`);
  symlinkSync(join(tools, 'node_modules', '.bin', 'pnpm'), join(bin, 'pnpm'));
  return [bin, system].join(delimiter);
}

/** A fresh consumer project. */
function project(name: string): string {
  const dir = join(work, name);
  mkdirSync(dir);
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name, private: true, type: 'module' }));
  return dir;
}

/** Runs the library, the protocol codec (ESM and CommonJS) and the CLI in an installed project. */
function checkInstalled(dir: string, cli: readonly string[]): void {
  const installed = realpathSync(join(dir, 'node_modules', 'vfio-user'));
  assert.equal(existsSync(join(installed, 'build')), false, 'the addon was compiled at install');
  const library = `const m = await import('vfio-user'); const [a, b] = m.socketPair(); m.closeFd(a); m.closeFd(b);
    const { createRequire } = await import('node:module');
    console.log(createRequire('${installed}/package.json')('node-gyp-build').path('${installed}'));`;
  const addon = ok(run('node', ['--input-type=module', '-e', library], dir, bareEnv), 'import vfio-user').trim();
  assert.match(addon, new RegExp(`/prebuilds/linux-${process.arch}/[^/]+\\.node$`));
  const protocol = `const p = require('vfio-user/protocol'); console.log(p.commandName(p.Command.DMA_MAP));`;
  assert.equal(ok(run('node', ['--input-type=commonjs', '-e', protocol], dir, bareEnv), 'require vfio-user/protocol').trim(), 'DMA_MAP');
  const version = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  assert.equal(ok(run(cli[0]!, [...cli.slice(1), 'vfio-user', '--version'], dir, bareEnv), 'vfio-user --version').trim(), version);
}

function timed<T>(t: TestContext, what: string, fn: () => T): T {
  const start = process.hrtime.bigint();
  const result = fn();
  t.diagnostic(`${what}: ${(Number(process.hrtime.bigint() - start) / 1e9).toFixed(1)} s`);
  return result;
}

describe('npm pack → install without a compiler', { skip, timeout: 900_000 }, () => {
  before(() => {
    work = mkdtempSync(join(tmpdir(), 'vfio-user-pack-'));
    const path = makeBarePath();
    // everything but PATH (CA certificates, HOME's npmrc) and npm's script variables; npm finds its global
    // config next to the node it runs on, so name the real one
    const globalconfig = execFileSync('npm', ['config', 'get', 'globalconfig'], { encoding: 'utf8' }).trim();
    bareEnv = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key)));
    Object.assign(bareEnv, { PATH: path, NPM_CONFIG_GLOBALCONFIG: globalconfig, npm_config_update_notifier: 'false' });
  });
  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('packs prebuilds for linux-x64 and linux-arm64, the licence, changelog and sources the maps name', (t) => {
    const out = timed(t, 'npm pack (tsc + prebuilds)', () =>
      ok(run('npm', ['pack', '--json', '--pack-destination', work], REPO_ROOT, process.env), 'npm pack'),
    );
    packed = (JSON.parse(out.slice(out.indexOf('['))) as PackEntry[])[0]!;
    tarball = join(work, packed.filename);
    t.diagnostic(`tarball ${packed.filename}: ${packed.size} bytes, ${packed.unpackedSize} unpacked, ${packed.entryCount} files`);
    const files = new Set(packed.files.map((f) => f.path));
    for (const path of ['LICENSE', 'CHANGELOG.md', 'README.md', 'binding.gyp', 'native/addon.c', 'dist/src/index.js', 'dist/src/protocol/index.js']) {
      assert.ok(files.has(path), `${path} missing from the tarball`);
    }
    for (const arch of ['x64', 'arm64']) {
      assert.ok(files.has(`prebuilds/linux-${arch}/vfio_user_native.napi.uv1.glibc.node`), `no linux-${arch} prebuild`);
    }
    assert.deepEqual([...files].filter((f) => /^(build|dist\/test|test|node_modules)\//.test(f)), []);
    for (const map of [...files].filter((f) => f.endsWith('.js.map'))) {
      const { sources } = JSON.parse(readFileSync(join(REPO_ROOT, map), 'utf8')) as { sources: string[] };
      for (const source of sources) {
        const resolved = join(map, '..', source);
        assert.ok(files.has(resolved), `${map} names ${resolved}, not in the tarball`);
      }
    }
  });

  it('the restricted PATH offers no compiler', () => {
    for (const tool of COMPILE_TOOLS) {
      for (const dir of (bareEnv.PATH ?? '').split(delimiter)) assert.equal(existsSync(join(dir, tool)), false, `${tool} in ${dir}`);
    }
  });

  it('installs with npm from the prebuilds: library, codec and CLI work', (t) => {
    assert.ok(tarball, 'no tarball');
    const dir = project('npm-consumer');
    timed(t, 'npm install <tarball>', () => ok(run('npm', ['install', tarball], dir, bareEnv), 'npm install'));
    checkInstalled(dir, ['npx', '--no-install']);
  });

  it('installs with pnpm (build scripts skipped) from the prebuilds: library, codec and CLI work', (t) => {
    assert.ok(tarball, 'no tarball');
    const dir = project('pnpm-consumer');
    timed(t, 'pnpm add <tarball>', () => ok(run('pnpm', ['add', tarball], dir, bareEnv), 'pnpm add'));
    checkInstalled(dir, ['pnpm', 'exec']);
  });
});
