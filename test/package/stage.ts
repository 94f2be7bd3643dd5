/**
 * Stages a copy of the compiled package as a consumer's dependency
 * (`<dir>/node_modules/vfio-user`), with nothing but node-gyp-build beside it,
 * and runs consumer code against it in a child process.
 */
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (this file is `dist/test/package/stage.js` once compiled). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** The prebuild file name the loader looks for on this machine. */
export const PREBUILD_NAME = 'vfio_user_native.napi.uv1.glibc.node';

/** The addon the repository itself loads (build/Release after `npm ci`). */
export function repoAddonPath(): string {
  const require = createRequire(join(REPO_ROOT, 'package.json'));
  return (require('node-gyp-build') as { path(dir: string): string }).path(REPO_ROOT);
}

/** A staged consumer project. */
export interface StagedPackage {
  /** The consumer's directory (cwd of the child processes). */
  dir: string;
  /** `<dir>/node_modules/vfio-user`. */
  packageDir: string;
}

/**
 * Copies package.json and dist/src (JavaScript only) into a fresh temp
 * project's node_modules/vfio-user, links node-gyp-build next to it; no addon.
 */
export function stagePackage(): StagedPackage {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-stage-'));
  const packageDir = join(dir, 'node_modules', 'vfio-user');
  mkdirSync(packageDir, { recursive: true });
  cpSync(join(REPO_ROOT, 'package.json'), join(packageDir, 'package.json'));
  cpSync(join(REPO_ROOT, 'dist', 'src'), join(packageDir, 'dist', 'src'), {
    recursive: true,
    filter: (source) => !source.endsWith('.map') && !source.endsWith('.d.ts'),
  });
  const require = createRequire(join(REPO_ROOT, 'package.json'));
  const nodeGypBuild = dirname(require.resolve('node-gyp-build/package.json'));
  symlinkSync(nodeGypBuild, join(dir, 'node_modules', 'node-gyp-build'));
  writeFileSync(join(dir, 'package.json'), '{ "type": "module", "private": true }\n');
  return { dir, packageDir };
}

/** Puts `source` (an addon) where a file of that name in `relativeDir` of the package is looked for. */
export function placeAddon(staged: StagedPackage, relativeDir: string, name: string, source: string): string {
  const target = join(staged.packageDir, relativeDir, name);
  mkdirSync(dirname(target), { recursive: true });
  cpSync(source, target);
  return target;
}

/** What a consumer script printed and how it ended. */
export interface ConsumerResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs ES module source `code` with node in the staged project's directory. */
export function runConsumer(staged: StagedPackage, code: string, env: NodeJS.ProcessEnv = {}): Promise<ConsumerResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], {
      cwd: staged.dir,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
