/**
 * The addon's SIGBUS guard: a mapping whose file shrinks under it reads zeros
 * past the new end instead of killing the process, and says so; a SIGBUS that
 * is not ours still kills (the default action is chained). Each case that could
 * die runs in a child process, so a broken guard fails the test, not the runner.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createSealedMemfd, mapFd, mappingFaulted, memfdCreate, native, sigbusFaults, unmap } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const PAGE = native.constants.PAGE_SIZE;
const ADDON = fileURLToPath(new URL('../../src/native/addon.js', import.meta.url));

/** Runs `body` (an ES module snippet with the addon's exports in scope) in a child node. */
function runChild(body: string): { status: number | null; signal: NodeJS.Signals | null; stdout: string } {
  const script = `import { mapFd, memfdCreate, native, sigbusFaults } from ${JSON.stringify(ADDON)};\n${body}`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, signal: r.signal, stdout: r.stdout };
}

describe('SIGBUS guard', () => {
  it('turns a read and a write past a shrunk file\'s end into zeros and marks only that mapping', async () => {
    await assertNoFdLeak(() => {
      const fd = memfdCreate('guard-shrunk', 4 * PAGE);
      const other = memfdCreate('guard-intact', PAGE);
      const mapping = mapFd(fd, 0, 4 * PAGE, true);
      const intact = mapFd(other, 0, PAGE, true);
      const bytes = new Uint8Array(mapping);
      bytes.fill(0xaa);
      const before = sigbusFaults();
      native.ftruncate(fd, PAGE);
      assert.equal(bytes[PAGE - 1], 0xaa, 'the page still in the file keeps its data');
      assert.equal(bytes[2 * PAGE], 0, 'a page past the end reads zeros');
      bytes[3 * PAGE] = 7; // a write past the end completes too (into a private zero page)
      assert.equal(sigbusFaults(), before + 2);
      assert.equal(mappingFaulted(mapping), true);
      assert.equal(mappingFaulted(intact), false);
      assert.equal(native.fstat(fd).size, PAGE, 'the file was not regrown by the repair');
      unmap(mapping);
      unmap(intact);
      assert.equal(mappingFaulted(mapping), false, 'an unmapped buffer reports nothing');
      assert.equal(mappingFaulted(new ArrayBuffer(8)), false, 'nor does a buffer that is not a mapping');
      native.close(fd);
      native.close(other);
    });
  });

  it('seals a server-made memfd so that no holder of the fd can resize it', async () => {
    await assertNoFdLeak(() => {
      const fd = createSealedMemfd('guard-sealed', 2 * PAGE);
      const { F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_SEAL } = native.constants;
      assert.equal(native.getSeals(fd) & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
      assert.throws(() => native.ftruncate(fd, 0), (e: { errno?: number }) => e.errno === 1, 'shrink: EPERM');
      assert.throws(() => native.ftruncate(fd, 4 * PAGE), (e: { errno?: number }) => e.errno === 1, 'grow: EPERM');
      assert.equal(native.fstat(fd).size, 2 * PAGE);
      native.close(fd);
    });
  });

  it('keeps a child process alive through a fault in a shrunk mapping', () => {
    const r = runChild(`
      const fd = memfdCreate('guard-child', 16 * 4096);
      const v = new Uint8Array(mapFd(fd, 0, 16 * 4096, true));
      native.ftruncate(fd, 0);
      let sum = 0;
      for (let i = 0; i < v.length; i += 4096) sum += v[i];
      console.log('alive', sum, sigbusFaults());`);
    assert.equal(r.signal, null, 'the child was not killed');
    assert.match(r.stdout, /^alive 0 16$/m);
  });

  it('leaves a SIGBUS that is not a fault in its mappings to the previous (default) action', () => {
    const r = runChild(`
      const fd = memfdCreate('guard-installed', 4096);
      mapFd(fd, 0, 4096, true); // installs the guard
      process.kill(process.pid, 'SIGBUS');
      setTimeout(() => console.log('survived'), 200);`);
    assert.equal(r.signal, 'SIGBUS');
    assert.doesNotMatch(r.stdout, /survived/);
  });
});
