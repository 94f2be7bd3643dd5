/**
 * Fixtures of the remote-migration tests: a source DMA engine with guest RAM
 * in this process, a receiving "host" (its own engine and a MigrationReceiver
 * preparing guest RAM per offer), the checks that a failed migration left the
 * source intact and the destination reset, and a corrupting TCP proxy.
 */
import { write32 as writeReg32 } from '../support/regs.js';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { setCommand } from '../../src/client/pci-config.js';
import { createDmaEngineDevice, DmaEngineControl, DmaEngineReg, type DmaEngineDevice } from '../../src/devices/dma-engine.js';
import { RemoteDestination } from '../../src/orchestrator/remote.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, decodeResult, encodeDescriptor } from '../../src/devices/dma-descriptor.js';
import { fnv1a32 } from '../../src/devices/fnv1a.js';
import { MigrationReceiver, type ReceiveOutcome, type ReceiverOptions } from '../../src/orchestrator/receiver.js';
import { MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import { PciCommand } from '../../src/pci/registers.js';
import { pattern, serve, type Served } from '../devices/driver.js';

export const IOVA = 0x1_0000_0000n;
const MiB = 1 << 20;
export const GUEST = 16 * MiB;
export const SRC = 1 * MiB;
export const DST = 8 * MiB;
export const LEN = 128 * 1024;
const RING = 64;

export interface Side {
  engine: DmaEngineDevice;
  served: Served;
  client: VfioUserClient;
  memory: GuestMemory;
  iova: bigint;
}

export async function openSource(size = GUEST): Promise<Side> {
  const engine = createDmaEngineDevice();
  const served = serve(engine.device);
  const client = await VfioUserClient.connect(served.path);
  const memory = GuestMemory.create(size);
  await memory.attach(client, { iova: IOVA, mode: 'fd' });
  return { engine, served, client, memory, iova: IOVA };
}

/** Two served engines with guest RAM (source programmed when `programSource`), closed after `fn`. */
export async function withLocalPair(fn: (src: Side, dst: Side) => Promise<void>, options: { size?: number; dstSize?: number; programSource?: boolean } = {}): Promise<void> {
  const sides: Side[] = [];
  try {
    sides.push(await openSource(options.size), await openSource(options.dstSize ?? options.size));
    if (options.programSource) await program(sides[0] as Side);
    await fn(sides[0] as Side, sides[1] as Side);
  } finally {
    for (const s of sides) {
      s.client.close();
      await s.served.close();
      s.memory.dispose();
    }
  }
}

export const write32 = (client: VfioUserClient, offset: number, value: number): Promise<void> => writeReg32(client, RegionIndex.BAR0, offset, value);

export async function program(side: Side): Promise<void> {
  await setCommand(side.client, PciCommand.MEMORY | PciCommand.MASTER);
  await write32(side.client, DmaEngineReg.RING_BASE_LO, Number(IOVA & 0xffff_ffffn));
  await write32(side.client, DmaEngineReg.RING_BASE_HI, Number(IOVA >> 32n));
  await write32(side.client, DmaEngineReg.RING_SIZE, RING);
  await write32(side.client, DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
}

/** Where copy jobs live in guest RAM: job i copies `len` seeded bytes from src + i·len to dst + i·len. */
export interface JobLayout {
  src: number;
  dst: number;
  len: number;
  seed: number;
}

/** Posts copy jobs `from … to-1` and rings the doorbell; @returns each job's data. */
export async function post(side: Side, from: number, to: number, layout: JobLayout = { src: SRC, dst: DST, len: LEN, seed: 300 }): Promise<Uint8Array[]> {
  const { src, dst, len, seed } = layout;
  const data: Uint8Array[] = [];
  for (let i = from; i < to; i++) {
    const bytes = pattern(len, seed + i);
    data.push(bytes);
    side.memory.write(BigInt(src + i * len), bytes);
    side.memory.write(BigInt(i * DESCRIPTOR_SIZE), encodeDescriptor({ src: IOVA + BigInt(src + i * len), dst: IOVA + BigInt(dst + i * len), length: len, flags: DescriptorFlags.COPY }));
  }
  await write32(side.client, DmaEngineReg.TAIL, to);
  return data;
}

/** The receiving host: its own engine, and a receiver that prepares guest memory for it on each offer. */
export interface Receiving {
  engine: DmaEngineDevice;
  served: Served;
  receiver: MigrationReceiver;
  url: string;
  outcomes: ReceiveOutcome[];
  /** The side prepared for the last offer (undefined before one). */
  last: { client: VfioUserClient; memory: GuestMemory; released: boolean } | undefined;
  nextOutcome(): Promise<ReceiveOutcome>;
  close(): Promise<void>;
}

/** `hooks`: extra receiver options (beforeCommit, afterCommit…). */
export async function openReceiving(hooks: Partial<ReceiverOptions> = {}): Promise<Receiving> {
  const engine = createDmaEngineDevice();
  const served = serve(engine.device);
  const outcomes: ReceiveOutcome[] = [];
  const waiters: Array<(o: ReceiveOutcome) => void> = [];
  const r: Partial<Receiving> = { engine, served, outcomes, last: undefined };
  r.receiver = await MigrationReceiver.listen({
    ...hooks,
    port: 0,
    prepare: async (offer) => {
      const client = await VfioUserClient.connect(served.path);
      const memory = GuestMemory.create(offer.memory.size);
      await memory.attach(client, { iova: offer.memory.iova, mode: 'fd' });
      const last = { client, memory, released: false };
      r.last = last;
      return {
        side: { client, memory, iova: offer.memory.iova },
        release: async () => {
          last.released = true;
          client.close();
          memory.dispose();
          await new Promise((resolve) => setTimeout(resolve, 20)); // the server sees the session go
        },
      };
    },
    onOutcome: (o) => {
      outcomes.push(o);
      waiters.shift()?.(o);
    },
  });
  r.url = `tcp://127.0.0.1:${r.receiver.port}`;
  r.nextOutcome = () => new Promise((resolve) => waiters.push(resolve));
  r.close = async () => {
    r.receiver?.close();
    if (r.last && !r.last.released) {
      r.last.client.close();
      r.last.memory.dispose();
    }
    await served.close();
  };
  return r as Receiving;
}

export async function withSetup(fn: (src: Side, rx: Receiving) => Promise<void>, hooks: Partial<ReceiverOptions> = {}): Promise<void> {
  const src = await openSource();
  const rx = await openReceiving(hooks);
  try {
    await fn(src, rx);
  } finally {
    src.client.close();
    await src.served.close();
    src.memory.dispose();
    await rx.close();
  }
}

export const saveState = async (engine: DmaEngineDevice): Promise<Uint8Array> => {
  const m = engine.device.definition.migration;
  assert.ok(m);
  return new Uint8Array(await m.save());
};

/** Source intact and working after a failed migration; destination reset and released. */
/** The source's memory and device state before a migration. */
export interface SourceSnapshot {
  memory: Uint8Array;
  state: Uint8Array;
}

/** A channel from `src` to a receiver at `url`. */
export const connectTo = (url: string, src: Side): Promise<RemoteDestination> => RemoteDestination.connect(url, { memory: { size: src.memory.size, iova: IOVA } });

/** A fault run's start: the source programmed and snapshotted, a channel to `url` (default the receiver), the receiver's next outcome. */
export async function prepareFaultRun(src: Side, rx: Receiving, url = rx.url): Promise<{ before: SourceSnapshot; destination: RemoteDestination; outcome: Promise<ReceiveOutcome> }> {
  await program(src);
  const before = { memory: src.memory.read(0n, GUEST), state: await saveState(src.engine) };
  const destination = await connectTo(url, src);
  return { before, destination, outcome: rx.nextOutcome() };
}

export async function assertSourceKeepsWorking(src: Side, rx: Receiving, outcome: ReceiveOutcome, before: SourceSnapshot): Promise<void> {
  const { memory: memoryBefore, state: stateBefore } = before;
  assert.equal(await src.client.migrationState(), S.RUNNING);
  assert.deepEqual(await saveState(src.engine), stateBefore, 'source device state');
  assert.ok(Buffer.from(src.memory.read(0n, GUEST)).equals(memoryBefore), 'source guest memory');
  assert.equal(outcome.outcome, 'abandoned');
  assert.equal(rx.last?.released, true, 'the destination side was released');
  // The receiving device was reset to RUNNING and serves the next client.
  const c = await VfioUserClient.connect(rx.served.path);
  try {
    assert.equal(await c.migrationState(), S.RUNNING);
  } finally {
    c.close();
  }
  const data = await post(src, 0, 2);
  await src.engine.idle();
  data.forEach((bytes, i) => assert.equal(decodeResult(src.memory.read(BigInt(i * DESCRIPTOR_SIZE), DESCRIPTOR_SIZE)).checksum, fnv1a32(bytes)));
}

/** A TCP proxy to `port` that flips one byte at stream offset `at` (sender → receiver). */
export async function corruptingProxy(port: number, at: number): Promise<{ port: number; close(): void }> {
  const { createServer } = await import('node:net');
  let seen = 0;
  const server = createServer((inbound) => {
    const outbound = connect({ host: '127.0.0.1', port });
    inbound.on('data', (chunk: Buffer) => {
      if (seen <= at && at < seen + chunk.length) chunk[at - seen] = (chunk[at - seen] ?? 0) ^ 0x40;
      seen += chunk.length;
      outbound.write(chunk);
    });
    outbound.on('data', (chunk: Buffer) => inbound.write(chunk));
    const end = (): void => {
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('close', end);
    outbound.on('close', end);
    inbound.on('error', end);
    outbound.on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const a = server.address();
  return { port: typeof a === 'object' && a ? a.port : 0, close: () => server.close() };
}
