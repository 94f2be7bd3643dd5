/**
 * Fixtures of the container-migration tests: a "VM" of three sample devices
 * — the memory device (`mem`, PRE_COPY + P2P), the DMA engine (`dma`, P2P,
 * DMA into guest RAM) and the GPIO card (`gpio`, P2P) — served in this
 * process, their sessions sharing one guest RAM at one IOVA. Every device's
 * migration controller is hooked on the server side: its state changes are
 * logged in order (begin and end), and a one-shot fault can fail a state
 * change or a data read in a chosen state.
 */
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import { Container } from '../../src/client/container.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { setCommand, writeConfig } from '../../src/client/pci-config.js';
import type { VfioUserDevice } from '../../src/device/device.js';
import type { DeviceDefinition } from '../../src/device/types.js';
import { createDmaEngineDevice, DmaEngineControl, DmaEngineReg, type DmaEngineDevice } from '../../src/devices/dma-engine.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, encodeDescriptor } from '../../src/devices/dma-descriptor.js';
import { createGpioDevice, GpioReg, type GpioDevice } from '../../src/devices/gpio.js';
import { createMemoryDevice, MemoryReg, type MemoryDevice } from '../../src/devices/memory.js';
import type { MigrationController } from '../../src/migration/controller.js';
import { stateName } from '../../src/migration/state-machine.js';
import { containerSide } from '../../src/orchestrator/container-side.js';
import type { ContainerSide } from '../../src/orchestrator/types.js';
import { MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import { PciCommand } from '../../src/pci/registers.js';
import { write32 } from '../support/regs.js';
import { serveTestDevice, testDeviceDefinition } from '../support/server-fixture.js';
import { pattern, serve, type Served } from '../devices/driver.js';

export const IOVA = 0x1_0000_0000n;
const KiB = 1024;
const MiB = 1024 * KiB;
/** The container's guest RAM (small: the tests stay fast). */
export const GUEST = 4 * MiB;
const MEM_BAR0 = 64 * KiB;
/** DMA jobs: descriptors at guest address 0, data copied from 1 MiB to 2 MiB. */
const DMA_SRC = 1 * MiB;
const DMA_DST = 2 * MiB;
const DMA_LEN = 32 * KiB;
const RING = 64;

/** One state change (or fault) a server saw, in the order the servers saw them. */
export interface ServerEvent {
  host: string;
  device: string;
  event: 'begin' | 'end' | 'fault';
  from: string;
  /** The requested state (`begin`, `fault`) or the state reached (`end`). */
  to: string;
}

/**
 * A one-shot fault: the next `op` on `device` in a state (and for a target)
 * `when` accepts throws — or, with `run`, runs (and awaits) it instead, then goes on.
 */
export interface Fault {
  device: string;
  op: 'set' | 'read';
  when(state: number, target: number | undefined): boolean;
  run?: () => void | Promise<void>;
}

/** A container of the three sample devices, on one side. */
export interface ContainerHost {
  name: string;
  mem: MemoryDevice;
  dma: DmaEngineDevice;
  gpio: GpioDevice;
  /** name → the served device (for its definition's `save()`). */
  devices: Map<string, VfioUserDevice>;
  side: ContainerSide;
  memory: GuestMemory;
  events: ServerEvent[];
  faults: Fault[];
  close(): Promise<void>;
}

/**
 * Logs a device's state changes into `events` and throws the first matching
 * fault of `faults` (consumed), from inside its migration controller.
 */
export function hookController(host: string, device: string, controller: MigrationController, events: ServerEvent[], faults: Fault[]): void {
  const fire = async (op: Fault['op'], target?: number): Promise<void> => {
    const i = faults.findIndex((f) => f.device === device && f.op === op && f.when(controller.state, target));
    if (i < 0) return;
    const [fault] = faults.splice(i, 1);
    if (fault?.run) return await fault.run();
    events.push({ host, device, event: 'fault', from: stateName(controller.state), to: target === undefined ? 'read' : stateName(target) });
    throw new Error(`injected: ${device} ${op} in ${stateName(controller.state)}${target === undefined ? '' : ` → ${stateName(target)}`}`);
  };
  const logged = async <T>(target: number, run: () => Promise<T>): Promise<T> => {
    const from = stateName(controller.state);
    await fire('set', target);
    events.push({ host, device, event: 'begin', from, to: stateName(target) });
    try {
      return await run();
    } finally {
      events.push({ host, device, event: 'end', from, to: stateName(controller.state) });
    }
  };
  const setState = controller.setState.bind(controller);
  const setStateWithDeadline = controller.setStateWithDeadline.bind(controller);
  const read = controller.read.bind(controller);
  Object.assign(controller, {
    setState: (target: number) => logged(target, () => setState(target)),
    setStateWithDeadline: (target: number, ...rest: [bigint]) => logged(target, () => setStateWithDeadline(target, ...rest)),
    read: async (max: number) => {
      await fire('read');
      return read(max);
    },
  });
}

async function connect(path: string, memory: GuestMemory | Container, closers: Array<() => Promise<void> | void>): Promise<VfioUserClient> {
  const client = await VfioUserClient.connect(path);
  closers.push(() => client.close());
  if (memory instanceof Container) await memory.attach(client);
  else await memory.attach(client, { iova: IOVA, mode: 'fd' });
  return client;
}

/**
 * Serves the three devices, connects a session to each, all sharing one
 * guest RAM: attached to each session, or with `viaContainer` mapped by a
 * client-library Container (the side is then `containerSide(container)`).
 */
export async function openContainer(name: string, options: { viaContainer?: boolean } = {}): Promise<ContainerHost> {
  const closers: Array<() => Promise<void> | void> = [];
  const memory = GuestMemory.create(GUEST);
  const events: ServerEvent[] = [];
  const faults: Fault[] = [];
  const mem = createMemoryDevice({ size: MEM_BAR0 });
  const dma = createDmaEngineDevice();
  const gpio = createGpioDevice();
  const devices = new Map<string, VfioUserDevice>([['mem', mem.device], ['dma', dma.device], ['gpio', gpio.device]]);
  const container = options.viaContainer ? new Container() : undefined;
  let side: ContainerSide = { memory, iova: IOVA, devices: [] };
  const list: Array<{ name: string; client: VfioUserClient }> = [];
  try {
    for (const [device, dev] of devices) {
      const served: Served = serve(dev);
      closers.unshift(() => served.close());
      hookController(name, device, dev.migration as MigrationController, events, faults);
      list.push({ name: device, client: await connect(served.path, container ?? memory, closers) });
    }
    if (container) {
      await container.map(memory, { iova: IOVA });
      closers.push(() => container.close().catch(() => undefined)); // detaching a stopped source may be refused: cleanup only
      side = containerSide(container, list.map((d) => d.name));
    } else side.devices = list;
  } catch (error) {
    for (const close of closers.reverse()) await close();
    memory.dispose();
    throw error;
  }
  const close = async (): Promise<void> => {
    for (const c of closers.reverse()) await c();
    memory.dispose();
  };
  return { name, mem, dma, gpio, devices, side, memory, events, faults, close };
}

/** The client of device `name`. */
export function clientOf(host: ContainerHost, name: string): VfioUserClient {
  const d = host.side.devices.find((x) => x.name === name);
  assert.ok(d, `device ${name}`);
  return d.client;
}

/**
 * Puts every source device in a non-default state: the memory device's BAR0
 * and fill registers, the GPIO card's outputs, the DMA engine's ring with
 * `jobs` copies done (DMA into the shared guest RAM); guest RAM patterned.
 */
export async function prepareSource(host: ContainerHost, jobs = 4): Promise<void> {
  host.memory.write(3n * BigInt(MiB), pattern(MiB, 11));
  const mem = clientOf(host, 'mem');
  await writeConfig(mem, 0x10, 4, 0xe000_000c);
  await writeConfig(mem, 0x18, 4, 0xfeb0_0000);
  await setCommand(mem, PciCommand.MEMORY);
  await mem.regionWrite(RegionIndex.BAR0, 4096n, pattern(20 * KiB, 7));
  await write32(mem, RegionIndex.BAR2, MemoryReg.FILL_PATTERN, 0x01020304);
  const gpio = clientOf(host, 'gpio');
  await writeConfig(gpio, 0x18, 4, 0xfeb1_0000);
  await setCommand(gpio, PciCommand.MEMORY);
  await write32(gpio, RegionIndex.BAR2, GpioReg.OUTPUT, 0xa5c3);
  await write32(gpio, RegionIndex.BAR2, GpioReg.IRQ_ENABLE, 0x0ff0);
  const dma = clientOf(host, 'dma');
  await setCommand(dma, PciCommand.MEMORY | PciCommand.MASTER);
  await write32(dma, RegionIndex.BAR0, DmaEngineReg.RING_BASE_LO, Number(IOVA & 0xffff_ffffn));
  await write32(dma, RegionIndex.BAR0, DmaEngineReg.RING_BASE_HI, Number(IOVA >> 32n));
  await write32(dma, RegionIndex.BAR0, DmaEngineReg.RING_SIZE, RING);
  await write32(dma, RegionIndex.BAR0, DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
  await postJobs(host, 0, jobs);
  await host.dma.idle();
}

/** Posts DMA copy jobs `from … to-1` (guest RAM → guest RAM) and rings the doorbell. */
export async function postJobs(host: ContainerHost, from: number, to: number): Promise<void> {
  for (let i = from; i < to; i++) {
    host.memory.write(BigInt(DMA_SRC + i * DMA_LEN), pattern(DMA_LEN, 500 + i));
    const descriptor = { src: IOVA + BigInt(DMA_SRC + i * DMA_LEN), dst: IOVA + BigInt(DMA_DST + i * DMA_LEN), length: DMA_LEN, flags: DescriptorFlags.COPY };
    host.memory.write(BigInt(i * DESCRIPTOR_SIZE), encodeDescriptor(descriptor));
  }
  await write32(clientOf(host, 'dma'), RegionIndex.BAR0, DmaEngineReg.TAIL, to);
}

/** Where the DMA engine copied job `i`'s data. */
export const jobOutput = (host: ContainerHost, i: number): Uint8Array => host.memory.read(BigInt(DMA_DST + i * DMA_LEN), DMA_LEN);
export const jobInput = (i: number): Uint8Array => pattern(DMA_LEN, 500 + i);

/** Every device's saved state (its definition's `save()`), by name. */
export async function deviceStates(host: ContainerHost): Promise<Map<string, Buffer>> {
  const states = new Map<string, Buffer>();
  for (const [name, device] of host.devices) {
    const m = device.definition.migration;
    assert.ok(m, `${name} migrates`);
    states.set(name, Buffer.from(await m.save()));
  }
  return states;
}

/** A snapshot of a container: its guest RAM and every device's state. */
export interface ContainerSnapshot {
  memory: Buffer;
  states: Map<string, Buffer>;
}

export async function snapshot(host: ContainerHost): Promise<ContainerSnapshot> {
  return { memory: Buffer.from(host.memory.read(0n, GUEST)), states: await deviceStates(host) };
}

/** Every source device RUNNING, guest RAM and device states as in `before`. */
export async function assertIntact(host: ContainerHost, before: ContainerSnapshot): Promise<void> {
  for (const { name, client } of host.side.devices) assert.equal(stateName(await client.migrationState()), 'RUNNING', `${host.name} ${name} RUNNING`);
  assert.ok(Buffer.from(host.memory.read(0n, GUEST)).equals(before.memory), `${host.name} guest memory intact`);
  for (const [name, state] of await deviceStates(host)) assert.ok(state.equals(before.states.get(name) as Buffer), `${host.name} ${name} state intact`);
}

/**
 * The devices that had reached one of `early` (their change's `end` logged)
 * before any device began a change to one of `late`, in `events`.
 */
export function reachedBefore(events: readonly ServerEvent[], early: readonly string[], late: readonly string[]): string[] {
  const firstLate = events.findIndex((e) => e.event === 'begin' && late.includes(e.to));
  assert.ok(firstLate >= 0, `a device went to ${late.join('/')}: ${show(events)}`);
  return [...new Set(events.slice(0, firstLate).filter((e) => e.event === 'end' && early.includes(e.to)).map((e) => e.device))].sort();
}

/** The events, one line. */
export const show = (events: readonly ServerEvent[]): string => events.map((e) => `${e.device}:${e.event}:${e.from}>${e.to}`).join(' ');

/** A register-file device that migrates without P2P (STOP_COPY only), served with a session on `memory`. */
export async function openPlainDevice(memory: GuestMemory): Promise<{ client: VfioUserClient; close(): Promise<void> }> {
  const regs = pattern(4096, 3);
  const definition: DeviceDefinition = testDeviceDefinition({
    migration: { deviceType: 'register-file', stateVersion: 1, save: () => regs.slice(), load: (_kind, payload) => void regs.set(payload) },
  });
  const served = serveTestDevice(definition);
  const client = await VfioUserClient.connect(served.path);
  await memory.attach(client, { iova: IOVA, mode: 'fd' });
  return {
    client,
    close: async () => {
      client.close();
      await served.close();
    },
  };
}

export { S };
