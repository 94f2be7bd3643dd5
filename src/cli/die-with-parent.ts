/**
 * First module the CLI evaluates (imported first by main.ts): a process started
 * by {@link startServer} (serve-child.ts) must not outlive its parent, nor
 * leave its temporary directory behind.
 *
 * - `VFIO_USER_PARENT_PID=<pid>`: ask the kernel for SIGTERM when the parent
 *   dies (prctl PR_SET_PDEATHSIG, through the addon), then check the parent
 *   is still `<pid>`: one that died before the prctl would never signal, so
 *   the process exits at once instead.
 * - `VFIO_USER_OWNED_DIR=<path>`: create that directory (mode 0700; it must not
 *   exist) only now, after the death signal is armed, and remove it when the
 *   process exits. SIGTERM (from the parent's death or its `stop()`) ends
 *   `serve` through its orderly shutdown, so the directory goes too (a second
 *   SIGTERM, or one before `serve` listens, exits at once, still removing
 *   it): at no moment does a directory exist that a dying parent could leave
 *   behind.
 * Both variables are removed from `process.env`, so grandchildren do not inherit them.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { native } from '../native/addon.js';

function dieWithParent(env: NodeJS.ProcessEnv): void {
  const parent = env.VFIO_USER_PARENT_PID;
  const dir = env.VFIO_USER_OWNED_DIR;
  delete env.VFIO_USER_PARENT_PID;
  delete env.VFIO_USER_OWNED_DIR;
  if (parent !== undefined) {
    const r = native.setParentDeathSignal(osConstants.signals.SIGTERM);
    if (r < 0 || String(process.ppid) !== parent) {
      process.stderr.write(`vfio-user: parent ${parent} is gone (or prctl failed: ${r}); exiting\n`);
      process.exit(1);
    }
  }
  if (dir !== undefined) {
    mkdirSync(dir, { mode: 0o700 });
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
    exitOnTermination();
  }
}

/**
 * SIGTERM's default action would end the process without 'exit' handlers (the
 * directory would stay): a SIGTERM nobody else handles, or a second one (the
 * parent's `stop()`, then its death), exits through `process.exit` instead.
 * The first one is left to `serve`'s orderly shutdown when it listens.
 */
function exitOnTermination(): void {
  let seen = 0;
  process.on('SIGTERM', () => {
    seen++;
    if (seen > 1 || process.listenerCount('SIGTERM') === 1) process.exit(128 + osConstants.signals.SIGTERM);
  });
}

dieWithParent(process.env);
