/**
 * The mediator's relay with no plugin, against our sample devices: every kind
 * of command and its reply, region fds mmapped through it, guest memory passed
 * as a memfd, interrupts through eventfds, DMA as messages on the main and the
 * twin socket, sessions coming and going without leaking fds.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fstatSync } from 'node:fs';
import { VfioUserClient } from '../../src/client/client.js';
import { MappedRegion } from '../../src/client/regions.js';
import { createGpioDevice } from '../../src/devices/gpio.js';
import { createMemoryDevice } from '../../src/devices/memory.js';
import { createDmaEngineDevice, DmaEngineControl, DmaEngineReg } from '../../src/devices/dma-engine.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, DescriptorStatus, decodeResult, encodeDescriptor } from '../../src/devices/dma-descriptor.js';
import { fnv1a32 } from '../../src/devices/fnv1a.js';
import { Command, DmaMapFlags, HeaderFlags } from '../../src/protocol/constants.js';
import { decodeDmaReadRequest, decodeDmaWriteRequest, encodeDmaAccess, encodeDmaAccessWithData, encodeDmaMapRequest } from '../../src/protocol/dma.js';
import { native } from '../../src/native/addon.js';
import type { MediatorTap } from '../../src/mediator/types.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { StepClient } from '../support/step-client.js';
import { closeAll, enableMsix, installEventFds, mapGuestMemory, pattern, RegionIndex, waitEventFd, write32, read32 } from '../devices/driver.js';
import { mediate, waitFor } from './support.js';

const BAR0 = RegionIndex.BAR0;
const BAR4 = RegionIndex.BAR4;
const GUEST_IOVA = 0x1_0000_0000n;
const MiB = 1 << 20;

describe('mediator relay', () => {
  it('relays every query of a client library session: device, regions, irqs, accesses, reset', () =>
    assertNoFdLeak(async () => {
      const m = await mediate(createGpioDevice().device);
      try {
        const direct = await querySession(m.upstreamPath);
        await m.server.idle();
        const mediated = await querySession(m.path);
        assert.deepEqual(mediated, direct);
        await waitFor(() => m.mediator.sessionCount === 0, 'the session to end');
      } finally {
        await m.close();
      }
    }));

  it('passes region fds through: a BAR mmapped through the mediator is the device memory', () =>
    assertNoFdLeak(async () => {
      const memory = createMemoryDevice({ size: 64 * 1024 });
      const m = await mediate(memory.device);
      try {
        const client = await VfioUserClient.connect(m.path);
        const region = await MappedRegion.open(client, 0);
        try {
          assert.ok(region.areas.length > 0, 'BAR0 mapped');
          const area = region.areas[0]!;
          const bytes = pattern(4096, 7);
          area.bytes.set(bytes, 0x100);
          // The same bytes read back through messages: the mapping is the device's memory, not a copy.
          assert.deepEqual(await client.regionRead(0, area.offset + 0x100n, 4096), bytes);
        } finally {
          region.close();
          await client.close();
        }
      } finally {
        await m.close();
      }
    }));

  it('passes a memfd of guest RAM and MSI-X eventfds through: the DMA engine copies and interrupts', () =>
    assertNoFdLeak(async () => {
      const engine = createDmaEngineDevice();
      const m = await mediate(engine.device);
      try {
        const { client } = await StepClient.open(m.path);
        const guest = await mapGuestMemory(client, GUEST_IOVA, 4 * MiB);
        const irq = await installEventFds(client, 2, 2); // MSI-X
        try {
          await enableMsix(client, 2, BAR4);
          await startRing(client, GUEST_IOVA, 8);
          const src = pattern(MiB + 3, 5);
          guest.bytes.set(src, 0x10000);
          guest.bytes.set(encodeDescriptor({ src: GUEST_IOVA + 0x10000n, dst: GUEST_IOVA + 0x200000n, length: src.length, flags: DescriptorFlags.COPY }), 0);
          await write32(client, BAR0, DmaEngineReg.TAIL, 1);
          assert.equal(await waitEventFd(irq[0]!, 10_000), 1n, 'completion interrupt through the passed eventfd');
          await engine.idle();
          assert.deepEqual(guest.bytes.subarray(0x200000, 0x200000 + src.length), src);
          assert.deepEqual(decodeResult(guest.bytes.subarray(0, DESCRIPTOR_SIZE)), { checksum: fnv1a32(src), status: DescriptorStatus.DONE });
          assert.equal(client.serverCommands.length, 0, 'DMA went through the memfd, not messages');
        } finally {
          closeAll(irq);
          client.close();
          guest.release();
        }
      } finally {
        await m.close();
      }
    }));

  for (const twin of [false, true]) {
    it(`relays the device's DMA_READ/DMA_WRITE to the client and its replies back (${twin ? 'twin socket' : 'main socket'})`, () =>
      assertNoFdLeak(async () => {
        const engine = createDmaEngineDevice();
        const channels: string[] = [];
        const tap: MediatorTap = {
          onMessage(e) {
            if (e.side === 'client' && e.direction === 'out' && (e.header.cmd === Command.DMA_READ || e.header.cmd === Command.DMA_WRITE)) channels.push(e.channel);
          },
        };
        const m = await mediate(engine.device, { taps: [tap] });
        try {
          const caps = twin ? { maxMsgFds: 8, twinSocket: { supported: true } } : { maxMsgFds: 8 };
          const { client, version } = await StepClient.open(m.path, caps);
          assert.equal(version.capabilities?.twinSocket?.supported === true, twin, 'twin socket granted as asked');
          const irq = await installEventFds(client, 2, 2);
          try {
            await messageModeCopy(client, engine);
            assert.ok(channels.length >= 3, `DMA requests relayed (${channels.length})`);
            assert.ok(channels.every((c) => c === (twin ? 'twin' : 'main')), `on the ${twin ? 'twin' : 'main'} socket: ${channels.join(',')}`);
          } finally {
            closeAll(irq);
            client.close();
          }
        } finally {
          await m.close();
        }
      }));
  }

  it('serves clients one after another; each session has its own upstream connection that closes with it', () =>
    assertNoFdLeak(async () => {
      const m = await mediate(createGpioDevice().device);
      const ended: string[] = [];
      m.mediator.onSession((s) => void s.ended.then((r) => ended.push(r)));
      try {
        for (let i = 0; i < 3; i++) {
          const client = await VfioUserClient.connect(m.path);
          assert.equal(m.mediator.sessionCount, 1);
          assert.ok((await client.deviceInfo()).numRegions > 0);
          await client.close();
          await waitFor(() => m.mediator.sessionCount === 0, 'the session to end');
          await m.server.idle();
        }
        assert.deepEqual(ended, ['client closed', 'client closed', 'client closed']);
      } finally {
        await m.close();
      }
    }));

  it('keeps pipelined requests in order and remaps ids: the client sees its own msg_ids', () =>
    assertNoFdLeak(async () => {
      const m = await mediate(createGpioDevice().device);
      try {
        const { client } = await StepClient.open(m.path);
        try {
          const request = new Uint8Array(16);
          request[0] = 16; // argsz
          const ids = Array.from({ length: 200 }, () => client.post(Command.DEVICE_GET_INFO, request));
          const replies = await Promise.all(ids.map((id) => client.replyTo(id)));
          assert.deepEqual(replies.map((r) => r.msgId), ids);
          assert.ok(replies.every((r) => (r.flags & HeaderFlags.ERROR) === 0));
          assert.deepEqual(client.replies.slice(-200).map((r) => r.msgId), ids, 'in order');
        } finally {
          client.close();
        }
      } finally {
        await m.close();
      }
    }));

  it('hands out the device\'s own region file: same st_dev/st_ino through the mediator as direct', () =>
    assertNoFdLeak(async () => {
      const memory = createMemoryDevice({ size: 64 * 1024 });
      const m = await mediate(memory.device);
      try {
        const direct = await regionFdIdentity(m.upstreamPath);
        await m.server.idle();
        const mediated = await regionFdIdentity(m.path);
        assert.deepEqual(mediated, direct);
      } finally {
        await m.close();
      }
    }));
});

/** What a client library learns from a device: everything read-only plus a register write/read and a reset. */
async function querySession(path: string): Promise<unknown> {
  const client = await VfioUserClient.connect(path);
  try {
    const info = await client.deviceInfo();
    const regions = [];
    for (let i = 0; i < info.numRegions; i++) {
      const r = await client.regionInfo(i);
      if (r.fd !== undefined) native.close(r.fd);
      regions.push(r.info);
    }
    const irqs = [];
    for (let i = 0; i < info.numIrqs; i++) irqs.push(await client.irqInfo(i));
    const config = await client.regionRead(RegionIndex.CONFIG, 0n, 64);
    await client.regionWrite(2, 0n, new Uint8Array([0x5a]));
    const bar2 = await client.regionRead(2, 0n, 1);
    await client.reset();
    const errors: number[] = [];
    await client.regionRead(99, 0n, 4).catch((e: { errno: number }) => errors.push(e.errno));
    return { info, regions, irqs, config, bar2, errors, server: client.server };
  } finally {
    await client.close();
  }
}

async function regionFdIdentity(path: string): Promise<{ dev: number; ino: number }> {
  const client = await VfioUserClient.connect(path);
  try {
    const { fd } = await client.regionInfo(0);
    assert.ok(fd !== undefined, 'BAR0 has an fd');
    try {
      const st = fstatSync(fd);
      return { dev: st.dev, ino: st.ino };
    } finally {
      native.close(fd);
    }
  } finally {
    await client.close();
  }
}

async function startRing(client: StepClient, base: bigint, size: number): Promise<void> {
  await write32(client, BAR0, DmaEngineReg.CONTROL, 0);
  await write32(client, BAR0, DmaEngineReg.RING_BASE_LO, Number(base & 0xffff_ffffn));
  await write32(client, BAR0, DmaEngineReg.RING_BASE_HI, Number(base >> 32n));
  await write32(client, BAR0, DmaEngineReg.RING_SIZE, size);
  await write32(client, BAR0, DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
}

/** A copy on guest memory the client serves by messages (DMA_MAP without fd). */
async function messageModeCopy(client: StepClient, engine: ReturnType<typeof createDmaEngineDevice>): Promise<void> {
  const remote = new Uint8Array(0x4000);
  const base = 0x2_0000_0000n;
  client.onServerCommand = (msg) => {
    if (msg.header.cmd === Command.DMA_READ) {
      const { addr, count } = decodeDmaReadRequest(msg.payload);
      const at = Number(addr - base);
      return encodeDmaAccessWithData({ addr, count, data: remote.slice(at, at + Number(count)) });
    }
    const { addr, count, data } = decodeDmaWriteRequest(msg.payload);
    remote.set(data, Number(addr - base));
    return encodeDmaAccess({ addr, count });
  };
  await client.ok(Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags: DmaMapFlags.READ | DmaMapFlags.WRITE, offset: 0n, addr: base, size: 0x4000n }));
  await startRing(client, base, 4);
  const src = pattern(3000, 4);
  remote.set(src, 0x1000);
  remote.set(encodeDescriptor({ src: base + 0x1000n, dst: base + 0x2000n, length: src.length, flags: DescriptorFlags.COPY }), 0);
  await write32(client, BAR0, DmaEngineReg.TAIL, 1);
  await waitFor(() => engine.engineState().completed === 1 && !engine.engineState().busy, 'the copy');
  await engine.idle();
  assert.deepEqual(remote.subarray(0x2000, 0x2000 + src.length), src);
  assert.deepEqual(decodeResult(remote.subarray(0, 32)), { checksum: fnv1a32(src), status: DescriptorStatus.DONE });
  assert.equal(await read32(client, BAR0, DmaEngineReg.COMPLETED), 1);
}
