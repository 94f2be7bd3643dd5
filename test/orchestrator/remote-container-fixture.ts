/**
 * Fixtures of the remote container-migration tests: the receiving host of a
 * container — the three sample devices of container-fixture.ts served here
 * (their servers' state changes logged), and a MigrationReceiver that prepares
 * a session with each offered device (by name) on one new guest RAM per offer
 * — and the checks that an abandoned migration left nothing behind there.
 */
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import type { VfioUserDevice } from '../../src/device/device.js';
import { createDmaEngineDevice } from '../../src/devices/dma-engine.js';
import { createGpioDevice } from '../../src/devices/gpio.js';
import { createMemoryDevice } from '../../src/devices/memory.js';
import type { MigrationController } from '../../src/migration/controller.js';
import { MigrationReceiver, type ReceiveOutcome, type ReceiverOptions } from '../../src/orchestrator/receiver.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import { serve, type Served } from '../devices/driver.js';
import { RemoteContainerDestination } from '../../src/orchestrator/remote-container.js';
import { hookController, openContainer, type ContainerHost, type Fault, type ServerEvent } from './container-fixture.js';

/** A prepared destination as the tests see it. */
export interface PreparedView {
  memory: GuestMemory;
  clients: VfioUserClient[];
  /** The names offered, in order. */
  names: string[];
  released: boolean;
}

/** The receiving host of a container. */
export interface ReceivingContainer {
  /** name → the served device (for its definition's `save()`). */
  devices: Map<string, VfioUserDevice>;
  served: Map<string, Served>;
  events: ServerEvent[];
  faults: Fault[];
  receiver: MigrationReceiver;
  url: string;
  outcomes: ReceiveOutcome[];
  /** Every destination prepared, in order. */
  prepared: PreparedView[];
  nextOutcome(): Promise<ReceiveOutcome>;
  close(): Promise<void>;
}

/** Options of {@link openReceivingContainer}. */
export interface ReceivingOptions {
  /** Every device's change into RUNNING_P2P takes this long (ms) inside its server: a slow arc, to see whether they overlap. */
  slowP2PMs?: number;
}

/** Serves mem, dma and gpio, and listens; `hooks`: extra receiver options (beforeCommit…). */
export async function openReceivingContainer(hooks: Partial<ReceiverOptions> = {}, options: ReceivingOptions = {}): Promise<ReceivingContainer> {
  const devices = new Map<string, VfioUserDevice>([['mem', createMemoryDevice({ size: 64 * 1024 }).device], ['dma', createDmaEngineDevice().device], ['gpio', createGpioDevice().device]]);
  const events: ServerEvent[] = [];
  const faults: Fault[] = [];
  const served = new Map<string, Served>();
  for (const [name, device] of devices) {
    served.set(name, serve(device));
    const controller = device.migration as MigrationController;
    const slow = options.slowP2PMs;
    if (slow !== undefined) {
      const setState = controller.setState.bind(controller);
      controller.setState = async (target: number) => {
        if (target === S.RUNNING_P2P) await new Promise((resolve) => setTimeout(resolve, slow));
        return setState(target);
      };
    }
    hookController('destination', name, controller, events, faults); // logs around the slowed change
  }
  const outcomes: ReceiveOutcome[] = [];
  const waiters: Array<(o: ReceiveOutcome) => void> = [];
  const prepared: PreparedView[] = [];
  const receiver = await MigrationReceiver.listen({
    ...hooks,
    port: 0,
    prepare: async (offer) => {
      const memory = GuestMemory.create(offer.memory.size);
      const view: PreparedView = { memory, clients: [], names: offer.devices.map((d) => d.name), released: false };
      prepared.push(view);
      const release = async (): Promise<void> => {
        view.released = true;
        for (const c of view.clients) c.close();
        memory.dispose();
        await new Promise((resolve) => setTimeout(resolve, 20)); // the servers see the sessions go
      };
      try {
        for (const { name } of offer.devices) {
          const path = served.get(name)?.path;
          if (path === undefined) throw Object.assign(new Error(`no device '${name}' here`), { errno: 22 });
          const client = await VfioUserClient.connect(path);
          view.clients.push(client);
          await memory.attach(client, { iova: offer.memory.iova, mode: 'fd' });
        }
      } catch (error) {
        await release();
        throw error;
      }
      return { side: { client: view.clients[0] as VfioUserClient, memory, iova: offer.memory.iova }, clients: view.clients, release };
    },
    onOutcome: (o) => {
      outcomes.push(o);
      waiters.shift()?.(o);
    },
  });
  return {
    devices, served, events, faults, receiver, url: `tcp://127.0.0.1:${receiver.port}`, outcomes, prepared,
    nextOutcome: () => new Promise((resolve) => waiters.push(resolve)),
    async close() {
      receiver.close(true);
      for (const p of prepared) {
        if (!p.released) {
          for (const c of p.clients) c.close();
          p.memory.dispose();
        }
      }
      for (const s of served.values()) await s.close();
    },
  };
}

/** Every device's saved state (its definition's `save()`), by name. */
export async function statesOf(devices: Map<string, VfioUserDevice>): Promise<Map<string, Buffer>> {
  const states = new Map<string, Buffer>();
  for (const [name, device] of devices) {
    const m = device.definition.migration;
    assert.ok(m, `${name} migrates`);
    states.set(name, Buffer.from(await m.save()));
  }
  return states;
}

/**
 * Nothing left behind on the receiver after an abandoned migration: the
 * outcome `abandoned`, the prepared side released, each device RUNNING with
 * its state as before the migration (reset), and free for the next client.
 */
export async function assertNothingLeft(rx: ReceivingContainer, outcome: ReceiveOutcome, before: Map<string, Buffer>): Promise<void> {
  assert.equal(outcome.outcome, 'abandoned', outcome.reason);
  assert.equal(rx.prepared.length, 1, 'one destination prepared');
  assert.equal(rx.prepared[0]?.released, true, 'the destination side was released');
  for (const [name, served] of rx.served) {
    const c = await VfioUserClient.connect(served.path, { connectTimeoutMs: 5000 });
    try {
      assert.equal(await c.migrationState(), S.RUNNING, `destination ${name} RUNNING`);
    } finally {
      c.close();
    }
  }
  // The reset discarded what was loaded: the DMA engine and the GPIO card hold their power-on state again (the
  // memory device keeps its RAM across a reset, as documented in src/devices/memory.ts: not compared).
  const after = await statesOf(rx.devices);
  for (const [name, state] of before) if (name !== 'mem') assert.ok(after.get(name)?.equals(state), `destination ${name} holds no migrated state`);
}

/** The source container (container-fixture.ts) and a receiving host, closed after `fn`. */
export async function withRemote(fn: (src: ContainerHost, rx: ReceivingContainer) => Promise<void>, hooks: Partial<ReceiverOptions> = {}, options: ReceivingOptions = {}): Promise<void> {
  const src = await openContainer('source');
  try {
    const rx = await openReceivingContainer(hooks, options);
    try {
      await fn(src, rx);
    } finally {
      await rx.close();
    }
  } finally {
    await src.close();
  }
}

/** A channel to `rx` offering the source container's devices. */
export const connectContainer = (src: ContainerHost, url: string): Promise<RemoteContainerDestination> =>
  RemoteContainerDestination.connect(url, { memory: { size: src.memory.size, iova: src.side.iova }, devices: src.side.devices.map((d) => d.name as string) });
