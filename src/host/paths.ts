/**
 * Where a device host keeps its files ({@link HostPaths}): the run directory
 * (the control socket and one socket per instance) and the configuration
 * directory (definitions and callout scripts), chosen as mdevctl and systemd
 * services do: system-wide paths for root, the XDG directories otherwise.
 */
import { lstatSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { VfioUserError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import type { HostPaths } from './types.js';

/** The control socket's file name inside the run directory. */
export const CONTROL_SOCKET_NAME = 'control.sock';

/**
 * The default paths of a host running as `uid`:
 *
 * - **runDir**: `$VFIO_USER_RUN_DIR`; else `/run/vfio-user` for root; else
 *   `$XDG_RUNTIME_DIR/vfio-user`; else the private fallback
 *   `${TMPDIR:-/tmp}/vfio-user-<uid>` (created 0700 and checked to be ours by
 *   {@link ensureRunDir}, so another user cannot pre-create it for us).
 * - **configDir**: `$VFIO_USER_CONFIG_DIR`; else `/etc/vfio-user` for root;
 *   else `$XDG_CONFIG_HOME/vfio-user`; else `~/.config/vfio-user`.
 *
 * Empty variables count as unset. Nothing is created here.
 */
export function defaultPaths(env: NodeJS.ProcessEnv = process.env, uid: number = process.getuid?.() ?? 0): HostPaths {
  const set = (name: string): string | undefined => (env[name] ? env[name] : undefined);
  const runDir =
    set('VFIO_USER_RUN_DIR') ??
    (uid === 0 ? '/run/vfio-user' : undefined) ??
    (set('XDG_RUNTIME_DIR') === undefined ? undefined : join(set('XDG_RUNTIME_DIR') as string, 'vfio-user')) ??
    join(set('TMPDIR') ?? '/tmp', `vfio-user-${uid}`);
  const configDir =
    set('VFIO_USER_CONFIG_DIR') ??
    (uid === 0 ? '/etc/vfio-user' : undefined) ??
    join(set('XDG_CONFIG_HOME') ?? join(set('HOME') ?? homedir(), '.config'), 'vfio-user');
  return { runDir, configDir };
}

/** The control socket of a host whose run directory is `runDir`. */
export function controlSocketPath(runDir: string): string {
  return join(runDir, CONTROL_SOCKET_NAME);
}

/**
 * Creates the run directory (and its parents) with mode 0700 if it does not
 * exist, then checks it: a directory (not a symbolic link), owned by `uid`,
 * neither group- nor world-writable — otherwise someone else could replace
 * our sockets.
 * @throws {VfioUserError} EPERM when it is owned by another uid or group/world-writable;
 *   ENOTDIR when it is not a directory (a symbolic link included); EACCES and others from `mkdir`.
 */
export function ensureRunDir(runDir: string, uid: number = process.getuid?.() ?? 0): void {
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
  const st = lstatSync(runDir);
  if (!st.isDirectory()) throw new VfioUserError(`run dir ${runDir}: not a directory`, { errno: Errno.ENOTDIR });
  if (st.uid !== uid) throw new VfioUserError(`run dir ${runDir}: owned by uid ${st.uid}, not ${uid}; refusing to put sockets there`, { errno: Errno.EPERM });
  if ((st.mode & 0o022) !== 0) {
    throw new VfioUserError(`run dir ${runDir}: group- or world-writable (mode ${(st.mode & 0o777).toString(8)}); refusing to put sockets there`, { errno: Errno.EPERM });
  }
}
