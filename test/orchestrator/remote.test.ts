/**
 * Remote migration over the migration channel on loopback TCP, in one process:
 * a source DMA engine migrated while a batch runs to a {@link MigrationReceiver}
 * that applies it to its own engine; faults on the channel (link cut in
 * pre-copy, a corrupted frame, a device stream the destination refuses, the
 * receiver busy) — each leaves the source RUNNING with its state and memory
 * intact and the destination reset and released.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { setCommand } from '../../src/client/pci-config.js';
import { createDmaEngineDevice, DmaEngineControl, DmaEngineReg, type DmaEngineDevice } from '../../src/devices/dma-engine.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, DescriptorStatus, decodeResult, encodeDescriptor } from '../../src/devices/dma-descriptor.js';
import { fnv1a32 } from '../../src/devices/fnv1a.js';
import { migrate } from '../../src/orchestrator/migrate.js';
import { MigrationReceiver, type ReceiveOutcome } from '../../src/orchestrator/receiver.js';
import { RemoteDestination, parseChannelAddress } from '../../src/orchestrator/remote.js';
import { MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { PciCommand } from '../../src/pci/registers.js';
import { pattern, serve, type Served } from '../devices/driver.js';

const IOVA = 0x1_0000_0000n;
const MiB = 1 << 20;
const GUEST = 16 * MiB;
const SRC = 1 * MiB;
const DST = 8 * MiB;
const LEN = 128 * 1024;
const RING = 64;

interface Side {
  engine: DmaEngineDevice;
  served: Served;
  client: VfioUserClient;
  memory: GuestMemory;
  iova: bigint;
}

async function openSource(): Promise<Side> {
  const engine = createDmaEngineDevice();
  const served = serve(engine.device);
  const client = await VfioUserClient.connect(served.path);
  const memory = GuestMemory.create(GUEST);
  await memory.attach(client, { iova: IOVA, mode: 'fd' });
  return { engine, served, client, memory, iova: IOVA };
}

async function write32(client: VfioUserClient, offset: number, value: number): Promise<void> {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, value >>> 0, true);
  await client.regionWrite(RegionIndex.BAR0, BigInt(offset), b);
}

async function program(side: Side): Promise<void> {
  await setCommand(side.client, PciCommand.MEMORY | PciCommand.MASTER);
  await write32(side.client, DmaEngineReg.RING_BASE_LO, Number(IOVA & 0xffff_ffffn));
  await write32(side.client, DmaEngineReg.RING_BASE_HI, Number(IOVA >> 32n));
  await write32(side.client, DmaEngineReg.RING_SIZE, RING);
  await write32(side.client, DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
}

async function post(side: Side, from: number, to: number): Promise<Uint8Array[]> {
  const data: Uint8Array[] = [];
  for (let i = from; i < to; i++) {
    const bytes = pattern(LEN, 300 + i);
    data.push(bytes);
    side.memory.write(BigInt(SRC + i * LEN), bytes);
    side.memory.write(BigInt(i * DESCRIPTOR_SIZE), encodeDescriptor({ src: IOVA + BigInt(SRC + i * LEN), dst: IOVA + BigInt(DST + i * LEN), length: LEN, flags: DescriptorFlags.COPY }));
  }
  await write32(side.client, DmaEngineReg.TAIL, to);
  return data;
}

/** The receiving host: its own engine, and a receiver that prepares guest memory for it on each offer. */
interface Receiving {
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

async function openReceiving(): Promise<Receiving> {
  const engine = createDmaEngineDevice();
  const served = serve(engine.device);
  const outcomes: ReceiveOutcome[] = [];
  const waiters: Array<(o: ReceiveOutcome) => void> = [];
  const r: Partial<Receiving> = { engine, served, outcomes, last: undefined };
  r.receiver = await MigrationReceiver.listen({
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

async function withSetup(fn: (src: Side, rx: Receiving) => Promise<void>): Promise<void> {
  const src = await openSource();
  const rx = await openReceiving();
  try {
    await fn(src, rx);
  } finally {
    src.client.close();
    await src.served.close();
    src.memory.dispose();
    await rx.close();
  }
}

const saveState = async (engine: DmaEngineDevice): Promise<Uint8Array> => {
  const m = engine.device.definition.migration;
  assert.ok(m);
  return new Uint8Array(await m.save());
};

/** Source intact and working after a failed migration; destination reset and released. */
async function assertSourceKeepsWorking(src: Side, rx: Receiving, outcome: ReceiveOutcome, memoryBefore: Uint8Array, stateBefore: Uint8Array): Promise<void> {
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

describe('remote migration over TCP', () => {
  it('parses tcp://HOST:PORT and refuses anything else (EINVAL)', () => {
    assert.deepEqual(parseChannelAddress('tcp://127.0.0.1:7777'), { host: '127.0.0.1', port: 7777 });
    assert.deepEqual(parseChannelAddress('tcp://[::1]:9'), { host: '::1', port: 9 });
    for (const bad of ['127.0.0.1:7777', 'udp://h:1', 'tcp://h', 'tcp://h:0', 'tcp://h:70000', 'tcp://h:1/x', '']) {
      assert.throws(() => parseChannelAddress(bad), (e: unknown) => (e as { errno?: number }).errno === Errno.EINVAL, bad);
    }
  });

  it('migrates a working engine and its guest memory to the receiver; the destination finishes the batch', (t) =>
    withSetup(async (src, rx) => {
      await program(src);
      const data = await post(src, 0, 40);
      while (src.engine.engineState().completed < 2) await new Promise((resolve) => setImmediate(resolve));
      const destination = await RemoteDestination.connect(rx.url, { memory: { size: src.memory.size, iova: IOVA } });
      const outcome = rx.nextOutcome();
      const vm = Uint8Array.of(1, 2, 3, 4);
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 2000, vmState: () => vm });
      t.diagnostic(`downtime ${report.downtimeMs.toFixed(2)} ms, total ${report.totalMs.toFixed(1)} ms, ${report.iterations} iterations`);
      assert.equal(report.outcome, 'migrated', report.reason);
      assert.equal(report.destination, rx.url);
      const o = await outcome;
      assert.equal(o.outcome, 'committed');
      assert.deepEqual(o.vmState, vm);
      assert.equal(o.memoryBytes, report.bytes.precopyMemory + report.bytes.stopCopyMemory);
      assert.equal(o.deviceBytes, report.bytes.precopyDevice + report.bytes.stopCopyDevice);
      const dst = rx.last;
      assert.ok(dst);
      assert.equal(await dst.client.migrationState(), S.RUNNING);
      assert.equal(await src.client.migrationState(), S.STOP);
      // The stopped source's memory is the switch-over snapshot; the destination finishes what was left.
      const k = src.engine.engineState().completed;
      const snapshot = src.memory.read(0n, GUEST);
      await rx.engine.idle();
      assert.equal(rx.engine.engineState().completed, 40);
      data.forEach((bytes, i) => {
        assert.equal(decodeResult(dst.memory.read(BigInt(i * DESCRIPTOR_SIZE), DESCRIPTOR_SIZE)).status, DescriptorStatus.DONE, `job ${i}`);
        assert.ok(Buffer.from(dst.memory.read(BigInt(DST + i * LEN), LEN)).equals(bytes), `job ${i} bytes`);
      });
      // Outside what the unfinished jobs wrote (their descriptors and destinations), memory is the snapshot.
      const after = dst.memory.read(0n, GUEST);
      assert.ok(Buffer.from(after.subarray(SRC, DST)).equals(snapshot.subarray(SRC, DST)), 'job sources');
      assert.ok(Buffer.from(after.subarray(DST + 40 * LEN)).equals(snapshot.subarray(DST + 40 * LEN)), 'memory above the jobs');
      assert.ok(Buffer.from(after.subarray(0, k * DESCRIPTOR_SIZE)).equals(snapshot.subarray(0, k * DESCRIPTOR_SIZE)), 'finished descriptors');
      destination.close();
    }));

  it('a link cut in pre-copy: the source keeps running intact, the receiver resets and releases its side', () =>
    withSetup(async (src, rx) => {
      await program(src);
      const memoryBefore = src.memory.read(0n, GUEST);
      const stateBefore = await saveState(src.engine);
      const destination = await RemoteDestination.connect(rx.url, { memory: { size: src.memory.size, iova: IOVA } });
      const outcome = rx.nextOutcome();
      let cut = false;
      const report = await migrate({
        source: src,
        destination,
        downtimeBudgetMs: 0.001, // never converges: pre-copy goes on until the cut
        maxPrecopyIterations: 1000,
        onProgress: () => {
          if (cut) return;
          cut = true;
          destination.close(); // the link goes away in the middle of pre-copy
        },
      });
      assert.equal(report.outcome, 'failed');
      assert.equal(report.sourceRecovery, 'running');
      await assertSourceKeepsWorking(src, rx, await outcome, memoryBefore, stateBefore);
    }));

  it('a corrupted frame is detected by the checksum: the receiver drops the channel and resets; the source keeps running', () =>
    withSetup(async (src, rx) => {
      await program(src);
      const memoryBefore = src.memory.read(0n, GUEST);
      const stateBefore = await saveState(src.engine);
      // A proxy that flips one byte of the stream after the hello.
      const proxy = await corruptingProxy(rx.receiver.port, 200_000);
      try {
        const destination = await RemoteDestination.connect(`tcp://127.0.0.1:${proxy.port}`, { memory: { size: src.memory.size, iova: IOVA } });
        const outcome = rx.nextOutcome();
        const report = await migrate({ source: src, destination, downtimeBudgetMs: 2000 });
        assert.equal(report.outcome, 'failed');
        assert.equal(report.sourceRecovery, 'running');
        const o = await outcome;
        assert.match(o.reason ?? '', /checksum/);
        await assertSourceKeepsWorking(src, rx, o, memoryBefore, stateBefore);
      } finally {
        proxy.close();
      }
    }));

  it('a device stream the destination refuses comes back as a NOTICE and fails the migration; the source keeps running', () =>
    withSetup(async (src, rx) => {
      await program(src);
      const memoryBefore = src.memory.read(0n, GUEST);
      const stateBefore = await saveState(src.engine);
      const destination = await RemoteDestination.connect(rx.url, { memory: { size: src.memory.size, iova: IOVA } });
      const outcome = rx.nextOutcome();
      // Corrupt the device stream before it is framed (the channel's checksum is then intact).
      const write = destination.writeDeviceData.bind(destination);
      destination.writeDeviceData = (data) => write(Uint8Array.from(data, (b, i) => (i === 20 ? b ^ 0xff : b)));
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 2000 });
      assert.equal(report.outcome, 'failed');
      assert.match(report.reason ?? '', /device stream frame/);
      assert.equal(report.sourceRecovery, 'running');
      await assertSourceKeepsWorking(src, rx, await outcome, memoryBefore, stateBefore);
    }));

  it('a second sender while one migration is received gets EBUSY; guest memory out of range or oversized is refused', () =>
    withSetup(async (src, rx) => {
      const first = await RemoteDestination.connect(rx.url, { memory: { size: src.memory.size, iova: IOVA } });
      await assert.rejects(RemoteDestination.connect(rx.url, { memory: { size: src.memory.size, iova: IOVA } }), (e: unknown) => (e as { errno?: number }).errno === Errno.EBUSY);
      const outcome = rx.nextOutcome();
      // A page outside the receiver's guest memory: EFAULT via NOTICE, then every request fails with it.
      await first.writeMemory(BigInt(GUEST), new Uint8Array(4096));
      await assert.rejects(first.flush(), (e: unknown) => (e as { errno?: number }).errno === Errno.EFAULT);
      await first.abandon();
      assert.equal((await outcome).outcome, 'abandoned');
      await assert.rejects(RemoteDestination.connect(rx.url, { memory: { size: 1n << 40n, iova: IOVA } }), (e: unknown) => (e as { errno?: number }).errno === Errno.ENOMEM);
      await assert.rejects(RemoteDestination.connect(rx.url, { memory: { size: 4097n, iova: IOVA } }), (e: unknown) => (e as { errno?: number }).errno === Errno.EINVAL);
    }));
});

/** A TCP proxy to `port` that flips one byte at stream offset `at` (sender → receiver). */
async function corruptingProxy(port: number, at: number): Promise<{ port: number; close(): void }> {
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
