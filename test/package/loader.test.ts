/**
 * The addon loader, as a consumer of the package meets it: a staged copy of
 * the package with nothing but node-gyp-build beside it (so these tests also
 * show that `import 'vfio-user'` needs no other dependency).
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { PREBUILD_NAME, placeAddon, repoAddonPath, runConsumer, stagePackage, type StagedPackage } from './stage.js';

const target = `${process.platform}-${process.arch}`;

/** Consumer code: imports `specifier` and, when that throws, prints the error's message alone and exits 3. */
function importOrMessage(specifier: string): string {
  return `try { await import('${specifier}'); } catch (e) { process.stderr.write(JSON.stringify(e.message)); process.exit(3); }`;
}

/** The message a consumer printed with {@link importOrMessage}: asserted to be a single line. */
function oneLineMessage(result: { code: number | null; stderr: string }): string {
  assert.equal(result.code, 3, result.stderr);
  const message = JSON.parse(result.stderr) as string;
  assert.ok(!message.includes('\n'), `not one line: ${message}`);
  assert.match(message, /^vfio-user: /);
  return message;
}
const staged: StagedPackage[] = [];

function stage(): StagedPackage {
  const s = stagePackage();
  staged.push(s);
  return s;
}

after(async () => {
  await Promise.all(staged.map((s) => rm(s.dir, { recursive: true, force: true })));
});

/** Consumer code: imports the library, opens a socket pair through the addon, prints where the addon came from. */
const USE_LIBRARY = `
import { createRequire } from 'node:module';
import { realpathSync } from 'node:fs';
const { socketPair, closeFd } = await import('vfio-user');
const [a, b] = socketPair();
closeFd(a); closeFd(b);
const require = createRequire(import.meta.url);
const root = realpathSync('node_modules/vfio-user');
console.log(JSON.stringify({ fds: [a, b], addon: require('node-gyp-build').path(root).slice(root.length + 1) }));
`;

describe('addon loader', () => {
  it('with no addon: one line naming the platform and the fix; the protocol codec still imports', async () => {
    const s = stage();
    const line = oneLineMessage(await runConsumer(s, importOrMessage('vfio-user')));
    assert.match(line, new RegExp(`no native addon for ${target} `));
    assert.match(line, /npm rebuild vfio-user/);

    const protocol = await runConsumer(
      s,
      `const p = await import('vfio-user/protocol');
       const bytes = new Uint8Array(16);
       p.encodeHeader({ msgId: 7, cmd: p.Command.VERSION, msgSize: 16, flags: 0, errorNo: 0 }, bytes);
       const h = p.decodeHeader(bytes);
       console.log(JSON.stringify({ msgId: h.msgId, cmd: p.commandName(h.cmd) }));`,
    );
    assert.equal(protocol.code, 0, protocol.stderr);
    assert.deepEqual(JSON.parse(protocol.stdout), { msgId: 7, cmd: 'VERSION' });
  });

  it(`finds a prebuild in prebuilds/${target}/ (no build/): the library works with node-gyp-build as its only dependency`, async () => {
    const s = stage();
    placeAddon(s, join('prebuilds', target), PREBUILD_NAME, repoAddonPath());
    const result = await runConsumer(s, USE_LIBRARY);
    assert.equal(result.code, 0, result.stderr);
    const out = JSON.parse(result.stdout) as { fds: number[]; addon: string };
    assert.equal(out.addon, join('prebuilds', target, PREBUILD_NAME));
    assert.ok(out.fds.every((fd) => Number.isInteger(fd) && fd > 2), result.stdout);
  });

  it('prefers build/Release (compiled at install because no prebuild loaded) and says so in one line when it does not load', async () => {
    const s = stage();
    placeAddon(s, join('prebuilds', target), PREBUILD_NAME, repoAddonPath());
    const broken = placeAddon(s, join('build', 'Release'), 'vfio_user_native.node', repoAddonPath());
    writeFileSync(broken, 'not an ELF file');
    const line = oneLineMessage(await runConsumer(s, importOrMessage('vfio-user')));
    assert.match(line, /build\/Release\/vfio_user_native\.node does not load \(/);
    assert.match(line, /npm rebuild vfio-user/);
  });

  it('loads a compiled build/Release alone (a source install)', async () => {
    const s = stage();
    placeAddon(s, join('build', 'Release'), 'vfio_user_native.node', repoAddonPath());
    const result = await runConsumer(s, USE_LIBRARY);
    assert.equal(result.code, 0, result.stderr);
    assert.equal((JSON.parse(result.stdout) as { addon: string }).addon, join('build', 'Release', 'vfio_user_native.node'));
  });
});
