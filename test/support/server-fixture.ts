/** A device served on a temporary socket, for server tests. */
import { VfioUserClient } from '../../src/client/client.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDevice, type VfioUserDevice } from '../../src/device/device.js';
import type { DeviceDefinition } from '../../src/device/types.js';
import type { DeviceServer, ServeOptions } from '../../src/server/server.js';

/** A small device with a callback BAR0, a shared BAR2, MSI-X in BAR4 and every IRQ index. */
export function testDeviceDefinition(overrides: Partial<DeviceDefinition> = {}): DeviceDefinition {
  const bar0 = new Uint8Array(4096);
  return {
    name: 'test-device',
    pci: { vendorId: 0x1af4, deviceId: 0x10f0, classCode: 0xff0000, revision: 1 },
    regions: {
      bar0: { size: 4096, read: (o, n) => bar0.slice(o, o + n), write: (o, d) => void bar0.set(d, o) },
      bar2: { size: 0x10000, type: 'mem64', prefetchable: true, shared: true },
      bar4: { size: 0x2000 },
    },
    irqs: { intx: true, msi: 4, msix: 8, err: true, req: true },
    msix: { bar: 4, tableOffset: 0, pbaOffset: 0x1000 },
    ...overrides,
  };
}

/** A served device and its cleanup. */
export interface ServedDevice {
  device: VfioUserDevice;
  server: DeviceServer;
  path: string;
  dir: string;
  close(): Promise<void>;
}

/** Creates `definition` (default: {@link testDeviceDefinition}) and serves it on a fresh socket path. */
export function serveTestDevice(definition: DeviceDefinition = testDeviceDefinition(), options: Omit<ServeOptions, 'path'> = {}): ServedDevice {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-server-'));
  const path = join(dir, 'device.sock');
  const device = createDevice(definition);
  const server = device.serve({ path, ...options });
  return {
    device,
    server,
    path,
    dir,
    async close() {
      await server.close();
      device.dispose();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Serves `definition`, connects a client, runs `fn`, then closes both. */
export async function withServedClient(definition: DeviceDefinition, fn: (client: VfioUserClient, served: ServedDevice) => Promise<void>): Promise<void> {
  const served = serveTestDevice(definition);
  const client = await VfioUserClient.connect(served.path);
  try {
    await fn(client, served);
  } finally {
    client.close();
    await served.close();
  }
}
