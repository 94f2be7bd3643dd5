/**
 * `vfio-user serve <gpio|memory|dma-engine> --socket PATH [--size BYTES]
 * [--allow-uid UID ...] [--max-msg-fds N]`: serves one of the sample devices until SIGINT or
 * SIGTERM, then closes the server (ending the session and removing the socket
 * file) and releases the device. Prints `serving <device> on <path>` once the
 * socket is listening.
 */
import { InvalidArgumentError } from '../../errors.js';
import { MAX_SERVER_MSG_FDS } from '../../server/server.js';
import type { VfioUserDevice } from '../../device/device.js';
import { createDmaEngineDevice } from '../../devices/dma-engine.js';
import { createGpioDevice } from '../../devices/gpio.js';
import { createMemoryDevice } from '../../devices/memory.js';

/** The devices `serve` knows. */
export const SERVE_DEVICES = ['gpio', 'memory', 'dma-engine'] as const;
/** One of {@link SERVE_DEVICES}. */
export type ServeDevice = (typeof SERVE_DEVICES)[number];

/** Options of {@link runServe} (as commander parses them). */
export interface ServeCommandOptions {
  socket: string;
  /** BAR0 size of the memory device: bytes, or with a K/M/G suffix (binary). */
  size?: string;
  /** Uids allowed to connect (default: anyone who can open the socket, which is 0600). */
  allowUid?: string[];
  /** `max_msg_fds` advertised to clients (default 16). */
  maxMsgFds?: string;
}

/** What {@link runServe} uses from its environment (tests inject their own). */
export interface ServeIo {
  /** Prints one line on stdout. */
  log(line: string): void;
  /** Resolves when the process is asked to stop (default: SIGINT or SIGTERM). */
  stopped(): Promise<string>;
}

const UNITS: Readonly<Record<string, number>> = { '': 1, k: 1 << 10, m: 1 << 20, g: 1 << 30 };

/**
 * Parses a byte count: digits with an optional K, M or G suffix (KiB, MiB, GiB).
 * @throws {InvalidArgumentError} EINVAL for anything else.
 */
export function parseSize(text: string): number {
  const match = /^(\d+)\s*([kmg]?)(i?b)?$/i.exec(text.trim());
  const value = match ? Number(match[1]) * (UNITS[(match[2] ?? '').toLowerCase()] ?? NaN) : NaN;
  if (!Number.isSafeInteger(value)) throw new InvalidArgumentError(`--size: '${text}' is not a byte count (e.g. 1048576, 64K, 1M)`);
  return value;
}

function parseMaxMsgFds(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > MAX_SERVER_MSG_FDS) {
    throw new InvalidArgumentError(`--max-msg-fds: '${text}' is not a count from 1 to ${MAX_SERVER_MSG_FDS}`);
  }
  return n;
}

function parseUids(texts: readonly string[] | undefined): number[] | undefined {
  if (texts === undefined) return undefined;
  return texts.map((t) => {
    const uid = Number(t);
    if (!/^\d+$/.test(t) || !Number.isSafeInteger(uid) || uid > 0xffff_ffff) throw new InvalidArgumentError(`--allow-uid: '${t}' is not a uid`);
    return uid;
  });
}

/**
 * Builds the device named `kind`.
 * @throws {InvalidArgumentError} EINVAL for an unknown device, or `--size` with a device other than memory.
 */
export function createServedDevice(kind: string, size: string | undefined): VfioUserDevice {
  if (size !== undefined && kind !== 'memory') throw new InvalidArgumentError(`--size applies to the memory device only, not ${kind}`);
  switch (kind) {
    case 'gpio':
      return createGpioDevice().device;
    case 'memory':
      return createMemoryDevice(size === undefined ? {} : { size: parseSize(size) }).device;
    case 'dma-engine':
      return createDmaEngineDevice().device;
    default:
      throw new InvalidArgumentError(`unknown device '${kind}' (expected one of ${SERVE_DEVICES.join(', ')})`);
  }
}

/** Resolves with the name of the first SIGINT or SIGTERM, then stops listening for them. */
function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (signal: string): void => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(signal);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

const defaultIo: ServeIo = {
  log: (line) => void process.stdout.write(`${line}\n`),
  stopped: untilSignal,
};

/**
 * Serves device `kind` on `options.socket` until stopped, then shuts down cleanly.
 * @throws {InvalidArgumentError} EINVAL for a bad device name, size, uid or fd count.
 * @throws {SystemError} EADDRINUSE when another server owns the socket path; EACCES, ENOENT from bind.
 */
export async function runServe(kind: string, options: ServeCommandOptions, io: ServeIo = defaultIo): Promise<void> {
  const allowedUids = parseUids(options.allowUid);
  const maxMsgFds = parseMaxMsgFds(options.maxMsgFds);
  const device = createServedDevice(kind, options.size);
  try {
    const stopped = io.stopped(); // listen for signals before announcing, so none is missed
    const server = device.serve({
      path: options.socket,
      ...(allowedUids ? { allowedUids } : {}),
      ...(maxMsgFds === undefined ? {} : { limits: { maxMsgFds } }),
    });
    io.log(`serving ${kind} on ${server.path}`);
    await stopped;
    await server.close();
  } finally {
    device.dispose();
  }
}
