/**
 * defaultPaths (src/host/paths.ts): the run and config directories for root
 * and for users, from the environment, in mdevctl/systemd's order; and
 * ensureRunDir's checks.
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { VfioUserError } from '../../src/errors.js';
import { controlSocketPath, defaultPaths, ensureRunDir } from '../../src/host/paths.js';

describe('defaultPaths', () => {
  it('root: /run/vfio-user and /etc/vfio-user, whatever XDG says', () => {
    assert.deepEqual(defaultPaths({ XDG_RUNTIME_DIR: '/run/user/0', XDG_CONFIG_HOME: '/root/.cfg', HOME: '/root' }, 0), { runDir: '/run/vfio-user', configDir: '/etc/vfio-user' });
  });

  it('a user: $XDG_RUNTIME_DIR/vfio-user and $XDG_CONFIG_HOME/vfio-user, else ~/.config/vfio-user', () => {
    assert.deepEqual(defaultPaths({ XDG_RUNTIME_DIR: '/run/user/1000', XDG_CONFIG_HOME: '/home/u/.cfg', HOME: '/home/u' }, 1000), { runDir: '/run/user/1000/vfio-user', configDir: '/home/u/.cfg/vfio-user' });
    assert.equal(defaultPaths({ XDG_RUNTIME_DIR: '/run/user/1000', HOME: '/home/u' }, 1000).configDir, '/home/u/.config/vfio-user');
  });

  it('a user without XDG_RUNTIME_DIR: a private directory per uid under $TMPDIR (empty variables count as unset)', () => {
    assert.equal(defaultPaths({ HOME: '/home/u' }, 1000).runDir, '/tmp/vfio-user-1000');
    assert.equal(defaultPaths({ XDG_RUNTIME_DIR: '', TMPDIR: '/var/tmp', HOME: '/home/u' }, 1001).runDir, '/var/tmp/vfio-user-1001');
  });

  it('$VFIO_USER_RUN_DIR and $VFIO_USER_CONFIG_DIR win, for root too', () => {
    const env = { VFIO_USER_RUN_DIR: '/srv/run', VFIO_USER_CONFIG_DIR: '/srv/cfg', XDG_RUNTIME_DIR: '/run/user/5' };
    assert.deepEqual(defaultPaths(env, 0), { runDir: '/srv/run', configDir: '/srv/cfg' });
    assert.deepEqual(defaultPaths(env, 5), { runDir: '/srv/run', configDir: '/srv/cfg' });
    assert.equal(controlSocketPath('/srv/run'), '/srv/run/control.sock');
  });
});

describe('ensureRunDir', () => {
  const uid = process.getuid?.() ?? 0;
  const root = mkdtempSync(join(tmpdir(), 'vfio-user-paths-'));

  it('creates a missing directory (and its parents) with mode 0700', () => {
    const dir = join(root, 'a', 'b');
    ensureRunDir(dir, uid);
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    ensureRunDir(dir, uid); // an existing one of ours is fine
  });

  it('refuses a group- or world-writable directory, one owned by another uid, a file and a symbolic link', () => {
    const open = join(root, 'open');
    mkdirSync(open);
    chmodSync(open, 0o777);
    assert.throws(() => ensureRunDir(open, uid), (e: VfioUserError) => e.code === 'EPERM' && /group- or world-writable \(mode 777\)/.test(e.message));
    const ours = join(root, 'ours');
    mkdirSync(ours, { mode: 0o700 });
    assert.throws(() => ensureRunDir(ours, uid + 1), (e: VfioUserError) => e.code === 'EPERM' && new RegExp(`owned by uid ${uid}, not ${uid + 1}`).test(e.message));
    const file = join(root, 'file');
    writeFileSync(file, '');
    assert.throws(() => ensureRunDir(file, uid), (e: NodeJS.ErrnoException) => e.code === 'EEXIST' || e.code === 'ENOTDIR');
    const link = join(root, 'link');
    symlinkSync(ours, link);
    assert.throws(() => ensureRunDir(link, uid), (e: VfioUserError) => e.code === 'ENOTDIR' && /not a directory/.test(e.message));
    rmSync(root, { recursive: true, force: true });
  });
});
