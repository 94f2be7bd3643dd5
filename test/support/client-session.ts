/** Shared set-up of the client command tests: a served test device and a connected client, with trace capture. */
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import type { ClientOptions, TraceEvent } from '../../src/client/core.js';
import { ConnectionClosedError, RemoteError } from '../../src/errors.js';
import type { DeviceDefinition } from '../../src/device/types.js';
import type { ServeOptions } from '../../src/server/server.js';
import { serveTestDevice, testDeviceDefinition, type ServedDevice } from './server-fixture.js';

export const Cmd = { VERSION: 1, DMA_MAP: 2, DMA_UNMAP: 3, GET_REGION_INFO: 5, GET_REGION_IO_FDS: 6, GET_IRQ_INFO: 7, SET_IRQS: 8, REGION_READ: 9, REGION_WRITE: 10, DMA_READ: 11, DMA_WRITE: 12, RESET: 13, WRITE_MULTI: 15, FEATURE: 16, MIG_READ: 17, MIG_WRITE: 18 } as const;
export const E = { EPERM: 1, ENOENT: 2, EACCES: 13, EFAULT: 14, EBUSY: 16, EINVAL: 22, ENOTSUP: 95, ENOTCONN: 107, ECONNREFUSED: 111 } as const;
export const R = 1, W = 2, MMAP = 4, CAPS = 8; // region info flags
export const DMA_RW = 3;
export const MSIX = 2;
export const EVENTFD_TRIGGER = 0x4 | 0x20;
export const NONE_TRIGGER = 0x1 | 0x20;

export interface Session {
  served: ServedDevice;
  client: VfioUserClient;
  trace: TraceEvent[];
}

export interface SessionOptions {
  def?: DeviceDefinition;
  serve?: Omit<ServeOptions, 'path'>;
  client?: ClientOptions;
}

/** Serves a device, connects a client recording its trace, runs `fn`, then closes both (even on failure). */
export async function session(fn: (s: Session) => Promise<void>, options: SessionOptions = {}): Promise<void> {
  const served = serveTestDevice(options.def ?? testDeviceDefinition(), options.serve ?? {});
  const trace: TraceEvent[] = [];
  let client: VfioUserClient | undefined;
  try {
    client = await VfioUserClient.connect(served.path, { ...options.client, trace: (e) => trace.push(e) });
    await fn({ served, client, trace });
  } finally {
    client?.close();
    await served.close();
  }
}

/** The commands the client sent for `cmd`, from its trace. */
export const sent = (trace: TraceEvent[], cmd: number): TraceEvent[] => trace.filter((e) => e.direction === 'send' && e.header.cmd === cmd);
export const u32 = (b: Uint8Array, at: number): number => new DataView(b.buffer, b.byteOffset).getUint32(at, true);

export function isRemote(errno: number, command: number): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof RemoteError, `expected RemoteError, got ${String(e)}`);
    assert.equal(e.errno, errno);
    assert.equal(e.command, command);
    return true;
  };
}

export const isClosed = (e: unknown): boolean => e instanceof ConnectionClosedError && e.errno === E.ENOTCONN;

export function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

