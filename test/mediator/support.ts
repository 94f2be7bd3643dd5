/**
 * Helpers of the mediator's tests: an upstream device served on a temporary
 * socket with a mediator in front of it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VfioUserDevice } from '../../src/device/device.js';
import type { DeviceServer, ServeOptions } from '../../src/server/server.js';
import { Mediator } from '../../src/mediator/mediator.js';
import type { MediatorOptions } from '../../src/mediator/types.js';
import { silentLogger } from '../../src/log.js';

/** A device served upstream and a mediator listening in front of it. */
export interface MediatedDevice {
  dir: string;
  /** The device's own socket. */
  upstreamPath: string;
  /** The mediator's socket (what clients connect to). */
  path: string;
  server: DeviceServer;
  mediator: Mediator;
  close(): Promise<void>;
}

/** Serves `device` and puts a mediator in front of it. */
export async function mediate(
  device: VfioUserDevice,
  options: Partial<Omit<MediatorOptions, 'upstream' | 'listen'>> = {},
  serve: Omit<ServeOptions, 'path'> = {},
): Promise<MediatedDevice> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-mediator-'));
  const upstreamPath = join(dir, 'device.sock');
  const path = join(dir, 'mediator.sock');
  const server = device.serve({ path: upstreamPath, ...serve });
  const mediator = await Mediator.listen({ upstream: upstreamPath, listen: path, log: silentLogger(), ...options });
  return {
    dir,
    upstreamPath,
    path,
    server,
    mediator,
    async close() {
      await mediator.close();
      await server.close();
      device.dispose();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Resolves once `cond()` holds (polled), or rejects after `timeoutMs`. */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
