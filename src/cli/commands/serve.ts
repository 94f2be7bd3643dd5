/**
 * `vfio-user serve <device> --socket PATH [--size BYTES] [--allow-uid UID ...]
 * [--max-msg-fds N] [-- ARGS...]`: serves a sample device (`gpio`, `memory`,
 * `dma-engine`) or a device of your own — an ES module exporting a device
 * definition, a device or a factory (device-module.ts), which receives ARGS —
 * until SIGINT or SIGTERM, then closes the server (ending the session and
 * removing the socket file) and releases the device. Prints `serving <device>
 * on <path>` once the socket is listening. Device-author mistakes the library
 * logs at warn (a callback returning short data, …) are shown on stderr unless
 * `VFIO_USER_LOG` is set.
 */
import { untilSignal } from '../signals.js';
import { parseCount } from '../values.js';
import { loadDevice } from '../device-module.js';

export { BUILTIN_DEVICES as SERVE_DEVICES } from '../device-module.js';

/** Options of {@link runServe} (as commander parses them: sizes and counts already numbers). */
export interface ServeCommandOptions {
  socket: string;
  /** BAR0 size of the memory device, bytes (`--size 64K`). */
  size?: number;
  /** Uids allowed to connect (default: anyone who can open the socket, which is 0600). */
  allowUid?: string[];
  /** `max_msg_fds` advertised to clients (default 16). */
  maxMsgFds?: number;
}

/** What {@link runServe} uses from its environment (tests inject their own). */
export interface ServeIo {
  /** Prints one line on stdout. */
  log(line: string): void;
  /** Resolves when the process is asked to stop (default: SIGINT or SIGTERM). */
  stopped(): Promise<string>;
}

function parseUids(texts: readonly string[] | undefined): number[] | undefined {
  if (texts === undefined) return undefined;
  return texts.map((t) => parseCount(t, '--allow-uid', { min: 0, max: 0xffff_ffff }));
}

const defaultIo: ServeIo = {
  log: (line) => void process.stdout.write(`${line}\n`),
  stopped: untilSignal,
};

/**
 * Serves `spec` (a sample device's name or a device module) on `options.socket` until stopped, then shuts down cleanly.
 * @param args - the arguments after `--`, for a module's factory.
 * @throws {InvalidArgumentError} EINVAL for a bad uid.
 * @throws {CliError} ENOENT for a module not found; EINVAL for a bad export or definition; a factory's errno (device-module.ts).
 * @throws {SystemError} EADDRINUSE when another server owns the socket path; EACCES, ENOENT from bind.
 */
export async function runServe(spec: string, options: ServeCommandOptions, io: ServeIo = defaultIo, args: readonly string[] = []): Promise<void> {
  const allowedUids = parseUids(options.allowUid);
  const maxMsgFds = options.maxMsgFds;
  const size = options.size;
  const stopped = io.stopped(); // listen for signals first: a slow module or factory must not leave SIGTERM to its default action
  // A device author's mistakes (a callback returning short data, …) are logged at warn: shown here unless VFIO_USER_LOG says otherwise.
  if (!process.env.VFIO_USER_LOG && !process.env.VFIO_USER_TRACE) process.env.VFIO_USER_LOG = 'warn';
  const { device, label } = await loadDevice(spec, { args, socket: options.socket, ...(size === undefined ? {} : { size }) });
  try {
    const server = device.serve({
      path: options.socket,
      ...(allowedUids ? { allowedUids } : {}),
      ...(maxMsgFds === undefined ? {} : { limits: { maxMsgFds } }),
    });
    io.log(`serving ${label} on ${server.path}`);
    await stopped;
    await server.close();
  } finally {
    device.dispose();
  }
}
