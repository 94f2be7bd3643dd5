/**
 * The fault tests' fixture: our GPIO card served on a temporary socket, a
 * Mediator in front of it running the fault plugin, and clients of the
 * mediator; everything closed afterwards, even on failure.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import type { ClientOptions } from '../../src/client/core.js';
import { createGpioDevice, type GpioDevice, type GpioOptions } from '../../src/devices/gpio.js';
import { Mediator } from '../../src/mediator/mediator.js';
import { createFaultPlugin, parseFaultSpec, type FaultPlugin } from '../../src/mediator/fault.js';
import type { MediatorLimits } from '../../src/mediator/types.js';
import type { DeviceServer } from '../../src/server/server.js';

/** BAR2 (the GPIO card's registers) and its 32-bit OUTPUT register. */
export const BAR2 = 2;
export const OUTPUT = 0x10n;

/** What a fault test gets. */
export interface FaultRig {
  gpio: GpioDevice;
  /** The device's own socket (bypassing the mediator). */
  devicePath: string;
  /** The mediator's socket. */
  path: string;
  mediator: Mediator;
  faults: FaultPlugin;
  /** Connects a client to the mediator (closed by the rig). */
  connect(options?: ClientOptions): Promise<VfioUserClient>;
  /** Output values the device reported, in order (the card's onOutputChange). */
  outputs: number[];
  /** Closes the rig's clients and resolves once neither the mediator nor the device has a session left (the card takes one client at a time). */
  idle(): Promise<void>;
}

/** Options of {@link withFaults}. */
export interface RigOptions {
  seed?: number;
  limits?: Partial<MediatorLimits>;
  gpio?: GpioOptions;
}

/** Serves a GPIO card behind a mediator faulting with `specs`, runs `fn`, closes everything. */
export async function withFaults(specs: readonly string[], fn: (rig: FaultRig) => Promise<void>, o: RigOptions = {}): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-fault-'));
  const outputs: number[] = [];
  const gpio = createGpioDevice({ ...o.gpio, onOutputChange: (v) => void outputs.push(v) });
  const devicePath = join(dir, 'gpio.sock');
  const path = join(dir, 'mediator.sock');
  const clients: VfioUserClient[] = [];
  let server: DeviceServer | undefined;
  let mediator: Mediator | undefined;
  try {
    server = gpio.device.serve({ path: devicePath });
    const faults = createFaultPlugin(specs.map(parseFaultSpec), { seed: o.seed ?? 1 });
    mediator = await Mediator.listen({ upstream: devicePath, listen: path, plugins: [faults], ...(o.limits ? { limits: o.limits } : {}) });
    const connect = async (options: ClientOptions = {}): Promise<VfioUserClient> => {
      const c = await VfioUserClient.connect(path, options);
      clients.push(c);
      return c;
    };
    const m = mediator;
    const s = server;
    const idle = async (): Promise<void> => {
      for (const c of clients) c.close();
      await waitFor(() => m.sessionCount === 0 && s.session === undefined, 'the mediator and the device to be idle');
    };
    await fn({ gpio, devicePath, path, mediator, faults, connect, outputs, idle });
  } finally {
    for (const c of clients) c.close();
    await mediator?.close();
    await server?.close();
    gpio.device.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Reads the 32-bit OUTPUT register through `client`. */
export async function readOutput(client: VfioUserClient): Promise<number> {
  const data = await client.regionRead(BAR2, OUTPUT, 4);
  return new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
}

/** Writes the 32-bit OUTPUT register through `client`. */
export function writeOutput(client: VfioUserClient, value: number): Promise<void> {
  const data = new Uint8Array(4);
  new DataView(data.buffer).setUint32(0, value, true);
  return client.regionWrite(BAR2, OUTPUT, data);
}

/** Resolves once `cond()` holds (polling), failing after `ms`. */
export async function waitFor(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
