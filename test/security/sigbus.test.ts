/**
 * Hostile clients that shrink a shared file under the server's mappings
 * (issue 11, finding 1), against `vfio-user serve` in a child process so that
 * a SIGBUS kills the server, not the test runner:
 * - the memory device's BAR0 fd, received through GET_REGION_INFO: the server
 *   sealed it, so the client's `ftruncate` fails with EPERM, and REGION_READ,
 *   REGION_WRITE, CHECKSUM and a STOP_COPY read all keep working;
 * - client memfds given with DMA_MAP, then one truncated (the data buffer to
 *   half, or the ring to nothing) before the DMA engine's doorbell: the access
 *   fails (descriptor ERROR with EFAULT, or the ring unreadable: HALTED), the
 *   server stays up, its fds come back down and it serves the next client.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, DeviceFeature, DeviceFeatureFlags, DmaMapFlags, HeaderFlags, MigrationState, RegionIndex } from '../../src/protocol/constants.js';
import { encodeDmaMapRequest, encodeDmaUnmapRequest } from '../../src/protocol/dma.js';
import { encodeRegionAccess, encodeRegionAccessWithData } from '../../src/protocol/region-access.js';
import { encodeRegionInfoRequest } from '../../src/protocol/region.js';
import { decodeMigDataReadReply, encodeMigDataReadRequest } from '../../src/protocol/migration-data.js';
import { DescriptorFlags, DescriptorStatus, encodeDescriptor } from '../../src/devices/dma-descriptor.js';
import { DmaEngineControl, DmaEngineReg, DmaEngineStatus } from '../../src/devices/dma-engine.js';
import { mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';
import { StepClient, type Reply } from '../support/step-client.js';
import { startCliServer, type ChildServer } from '../support/qemu/servers.js';
import { alive, eventually, fdCount } from '../support/process-stats.js';
import { wb } from '../support/wire-builder.js';

const EPERM = 1;
const EFAULT = 14;
const BAR0_SIZE = 1 << 20;
const PAGE = native.constants.PAGE_SIZE;
const DATA_SIZE = 0x10000;
const IOVA = 0x4000_0000n;

/** A request whose reply never comes because the server died fails instead of hanging the test. */
async function ask(client: StepClient, cmd: number, payload?: Uint8Array, fds?: number[]): Promise<Reply> {
  const closed = client.closed.then(() => {
    throw new Error(`the server closed the connection (command ${cmd}): did it die?`);
  });
  return Promise.race([client.request(cmd, payload, fds), closed]);
}

async function askOk(client: StepClient, cmd: number, payload?: Uint8Array, fds?: number[]): Promise<Reply> {
  const r = await ask(client, cmd, payload, fds);
  assert.equal(r.flags & HeaderFlags.ERROR, 0, `command ${cmd} failed with errno ${r.errorNo}`);
  return r;
}

const u32 = (v: number): Uint8Array => wb().u32(v).build();
const write32 = (client: StepClient, region: number, offset: number, value: number): Promise<Reply> =>
  askOk(client, Command.REGION_WRITE, encodeRegionAccessWithData({ region, offset: BigInt(offset), count: 4, data: u32(value) }));
async function read32(client: StepClient, region: number, offset: number): Promise<number> {
  const r = await askOk(client, Command.REGION_READ, encodeRegionAccess({ region, offset: BigInt(offset), count: 4 }));
  return new DataView(r.payload.buffer, r.payload.byteOffset + 16, 4).getUint32(0, true);
}
const setState = (client: StepClient, state: number): Promise<Reply> =>
  askOk(client, Command.DEVICE_FEATURE, wb().u32(16).u32(DeviceFeature.MIG_DEVICE_STATE | DeviceFeatureFlags.SET).u32(state).u32(0).build());

/**
 * Resolves once the child accepts connections: its socket file appears at
 * bind(), a moment before listen(), and a connect in between is refused.
 */
async function listening(server: ChildServer): Promise<ChildServer> {
  for (let i = 0; ; i++) {
    const refused = await new Promise<boolean>((resolve) => {
      const probe = connect(server.path);
      probe.once('connect', () => (probe.destroy(), resolve(false)));
      probe.once('error', () => resolve(true));
    });
    if (!refused) return server;
    if (i >= 250) throw new Error(`the server never listened: ${server.output()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The hostile client has left: the server is up, its fds are back near where they were, and it serves a new client. */
async function stillServing(server: ChildServer, fdsBefore: number): Promise<void> {
  const pid = server.child.pid as number;
  assert.ok(alive(pid), `the server died: ${server.output()}`);
  assert.ok(await eventually(() => fdCount(pid) <= fdsBefore + 2, 5000), `server fds ${fdCount(pid)}, ${fdsBefore} before`);
  const { client } = await StepClient.open(server.path);
  await askOk(client, Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 256, index: RegionIndex.CONFIG }));
  client.close();
  assert.ok(alive(pid));
}

describe('hostile client: shrinks the memory device\'s BAR0 fd', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-sigbus-'));
  let server: ChildServer;

  before(async () => {
    server = await listening(await startCliServer(dir, 'memory', ['--size', String(BAR0_SIZE)]));
  });

  after(async () => {
    await server.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  it('cannot: the fd is sealed (EPERM), and accesses, CHECKSUM and a STOP_COPY read still work', async () => {
    const pid = server.child.pid as number;
    const fdsBefore = fdCount(pid);
    const { client } = await StepClient.open(server.path);
    const info = await askOk(client, Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 256, index: RegionIndex.BAR0 }));
    assert.equal(info.fds.length, 1, 'BAR0 comes with its fd');
    const fd = info.fds[0]!;
    let shrink: unknown;
    let grow: unknown;
    try {
      native.ftruncate(fd, 0);
    } catch (error) {
      shrink = error;
    }
    try {
      native.ftruncate(fd, 2 * BAR0_SIZE);
    } catch (error) {
      grow = error;
    }
    // Whatever the truncation did, the server must survive every way of touching BAR0.
    await askOk(client, Command.REGION_WRITE, encodeRegionAccessWithData({ region: RegionIndex.BAR0, offset: 0x8_0000n, count: 4, data: Uint8Array.of(1, 2, 3, 4) }));
    const back = await askOk(client, Command.REGION_READ, encodeRegionAccess({ region: RegionIndex.BAR0, offset: 0x8_0000n, count: 4 }));
    assert.deepEqual([...back.payload.subarray(16)], [1, 2, 3, 4]);
    await write32(client, RegionIndex.BAR2, 0x14, 2); // COMMAND = CHECKSUM over all of BAR0
    assert.ok(await pollUntil(async () => ((await read32(client, RegionIndex.BAR2, 0x18)) & 0b101) === 0b001), 'CHECKSUM completed (DONE, not BUSY)');
    await setState(client, MigrationState.STOP);
    await setState(client, MigrationState.STOP_COPY);
    let streamed = 0;
    for (;;) {
      const r = await askOk(client, Command.MIG_DATA_READ, encodeMigDataReadRequest({ argsz: 8 + 0x10_0000, size: 0x10_0000 }));
      const size = decodeMigDataReadReply(r.payload).size;
      if (size === 0) break;
      streamed += size;
    }
    assert.ok(streamed >= BAR0_SIZE, `STOP_COPY streamed ${streamed} bytes, all of BAR0 at least`);
    await setState(client, MigrationState.STOP);
    await setState(client, MigrationState.RUNNING); // (a client that leaves a device stopped leaves it stopped)
    assert.equal((shrink as { errno?: number } | undefined)?.errno, EPERM, 'ftruncate to 0 refused by the seal');
    assert.equal((grow as { errno?: number } | undefined)?.errno, EPERM, 'ftruncate larger refused by the seal');
    assert.equal(native.fstat(fd).size, BAR0_SIZE);
    native.close(fd);
    client.close();
    await stillServing(server, fdsBefore);
  });
});

async function pollUntil(ok: () => Promise<boolean>, tries = 250): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    if (await ok()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

describe('hostile client: shrinks its DMA memfd and rings the DMA engine', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-sigbus-dma-'));
  let server: ChildServer;

  before(async () => {
    server = await listening(await startCliServer(dir, 'dma-engine'));
  });

  after(async () => {
    await server.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  /**
   * Maps two unsealed memfds: a one-descriptor ring at IOVA and a data buffer
   * after it (the descriptor checksums its second half). Truncates one of them
   * (`data` to half, or `ring` to nothing), rings the doorbell and waits for
   * the engine to finish or halt. Returns STATUS and the descriptor's status word.
   */
  async function run(shrink: 'data' | 'ring'): Promise<{ status: number; descriptor: number; fdsBefore: number }> {
    const pid = server.child.pid as number;
    const fdsBefore = fdCount(pid);
    const { client } = await StepClient.open(server.path);
    const dataIova = IOVA + BigInt(PAGE);
    const ring = memfdCreate('hostile-ring', PAGE); // unsealed: anyone holding them may shrink them
    const data = memfdCreate('hostile-data', DATA_SIZE);
    const mine = new Uint8Array(mapFd(ring, 0, PAGE, true));
    mine.set(encodeDescriptor({ src: dataIova + BigInt(DATA_SIZE / 2), dst: 0n, length: DATA_SIZE / 2, flags: DescriptorFlags.CHECKSUM_ONLY }), 0);
    const rw = DmaMapFlags.READ | DmaMapFlags.WRITE;
    await askOk(client, Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags: rw, offset: 0n, addr: IOVA, size: BigInt(PAGE) }), [ring]);
    await askOk(client, Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags: rw, offset: 0n, addr: dataIova, size: BigInt(DATA_SIZE) }), [data]);
    if (shrink === 'data') native.ftruncate(data, DATA_SIZE / 2);
    else native.ftruncate(ring, 0);
    await write32(client, RegionIndex.BAR0, DmaEngineReg.RING_BASE_LO, Number(IOVA & 0xffff_ffffn));
    await write32(client, RegionIndex.BAR0, DmaEngineReg.RING_BASE_HI, 0);
    await write32(client, RegionIndex.BAR0, DmaEngineReg.RING_SIZE, 4);
    await write32(client, RegionIndex.BAR0, DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
    await write32(client, RegionIndex.BAR0, DmaEngineReg.TAIL, 1); // the doorbell
    let status = 0;
    const settled = await pollUntil(async () => {
      const head = await read32(client, RegionIndex.BAR0, DmaEngineReg.HEAD); // before STATUS: a job may end in between
      status = await read32(client, RegionIndex.BAR0, DmaEngineReg.STATUS);
      return (status & DmaEngineStatus.BUSY) === 0 && (head === 1 || (status & DmaEngineStatus.HALTED) !== 0);
    });
    assert.ok(settled, `the engine neither finished nor halted (STATUS 0x${status.toString(16)})`);
    const descriptor = shrink === 'data' ? new DataView(mine.buffer).getUint32(0x1c, true) : 0;
    for (const [addr, size] of [[IOVA, PAGE], [dataIova, DATA_SIZE]] as const) {
      await askOk(client, Command.DMA_UNMAP, encodeDmaUnmapRequest({ argsz: 24, flags: 0, addr, size: BigInt(size) }));
    }
    unmap(mine.buffer as ArrayBuffer);
    native.close(ring);
    native.close(data);
    client.close();
    return { status, descriptor, fdsBefore };
  }

  it('data buffer truncated to half: the descriptor completes with ERROR (EFAULT), the server lives on', async () => {
    const { status, descriptor, fdsBefore } = await run('data');
    assert.equal(status & DmaEngineStatus.ERROR, DmaEngineStatus.ERROR, 'STATUS.ERROR');
    assert.equal(descriptor, DescriptorStatus.ERROR | (EFAULT << 16), 'descriptor status: ERROR, errno EFAULT');
    await stillServing(server, fdsBefore);
  });

  it('ring truncated to nothing: the ring cannot be read, the engine halts, the server lives on', async () => {
    const { status, fdsBefore } = await run('ring');
    assert.equal(status & DmaEngineStatus.HALTED, DmaEngineStatus.HALTED, 'STATUS.HALTED');
    await stillServing(server, fdsBefore);
  });
});
