import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, DmaMapFlags, DmaUnmapFlags, HeaderFlags } from '../../src/protocol/constants.js';
import { decodeDmaReadRequest, decodeDmaUnmapReply, decodeDmaWriteRequest, encodeDmaAccess, encodeDmaMapRequest, encodeDmaUnmapRequest } from '../../src/protocol/dma.js';
import { mapFd, memfdCreate, native, unmap } from '../../src/native/addon.js';
import { StepClient } from '../support/step-client.js';
import { serveTestDevice } from '../support/server-fixture.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { wb } from '../support/wire-builder.js';

const RW = DmaMapFlags.READ | DmaMapFlags.WRITE;
const map = (addr: bigint, size: bigint, flags = RW, offset = 0n): Uint8Array => encodeDmaMapRequest({ argsz: 32, flags, offset, addr, size });
const unmapReq = (addr: bigint, size: bigint, flags = 0): Uint8Array => encodeDmaUnmapRequest({ argsz: 24, flags, addr, size });

describe('DMA_MAP / DMA_UNMAP', () => {
  it('maps a memfd: the device reads and writes guest memory that the client sees', async () => {
    await assertNoFdLeak(async () => {
      const served = serveTestDevice();
      const { client } = await StepClient.open(served.path);
      const fd = memfdCreate('guest', 0x20000);
      const guest = new Uint8Array(mapFd(fd, 0, 0x20000, true));
      guest.set([1, 2, 3, 4], 0x10000);
      await client.ok(Command.DMA_MAP, map(0x100000n, 0x20000n), [fd]);
      native.close(fd);
      assert.deepEqual([...(await served.device.dma.read(0x110000n, 4))], [1, 2, 3, 4]);
      await served.device.dma.write(0x100008n, Uint8Array.of(9, 8, 7));
      assert.deepEqual([...guest.subarray(8, 11)], [9, 8, 7]);
      const view = served.device.dma.view(0x100000n, 16);
      const r = await client.ok(Command.DMA_UNMAP, unmapReq(0x100000n, 0x20000n));
      assert.deepEqual(decodeDmaUnmapReply(r.payload), { argsz: 24, flags: 0, addr: 0x100000n, size: 0x20000n });
      assert.equal(view.length, 0, 'the device\'s view is detached by the unmap');
      await assert.rejects(served.device.dma.read(0x100000n, 1), (e: { errno?: number }) => e.errno === 14);
      unmap(guest.buffer as ArrayBuffer);
      client.close();
      await served.close();
    });
  });

  it('refuses overlaps (EINVAL), accepts an identical re-map, needs an exact unmap (ENOENT)', async () => {
    await assertNoFdLeak(async () => {
      const served = serveTestDevice();
      const { client } = await StepClient.open(served.path);
      const fd = memfdCreate('guest', 0x4000);
      await client.ok(Command.DMA_MAP, map(0x10000n, 0x4000n), [fd]);
      await client.ok(Command.DMA_MAP, map(0x10000n, 0x4000n), [fd]);
      await client.fails(Command.DMA_MAP, map(0x12000n, 0x4000n), 22, [fd]);
      await client.fails(Command.DMA_MAP, map(0x0n, 0x1000n, RW | 0x100), 22, [fd]);
      await client.fails(Command.DMA_MAP, map(0x0n, 0x1000n, RW | DmaMapFlags.MMAP), 22);
      await client.fails(Command.DMA_MAP, map(0x0n, 0x10000n), 22, [fd]); // beyond the memfd's size
      await client.fails(Command.DMA_MAP, map(0x0n, (8n << 40n) + 4096n), 28);
      await client.fails(Command.DMA_UNMAP, unmapReq(0x10000n, 0x1000n), 2);
      await client.fails(Command.DMA_UNMAP, wb().u32(24).u32(3).u64(0x10000n).u64(0x4000n).build(), 22);
      await client.fails(Command.DMA_UNMAP, unmapReq(0x10000n, 0x4000n, DmaUnmapFlags.ALL), 22);
      await client.ok(Command.DMA_UNMAP, unmapReq(0x10000n, 0x4000n));
      await client.fails(Command.DMA_UNMAP, unmapReq(0x10000n, 0x4000n), 2);
      native.close(fd);
      client.close();
      await served.close();
    });
  });

  it('unmaps everything with ALL', async () => {
    const served = serveTestDevice();
    const { client } = await StepClient.open(served.path);
    const fd = memfdCreate('guest', 0x4000);
    await client.ok(Command.DMA_MAP, map(0x10000n, 0x2000n), [fd]);
    await client.ok(Command.DMA_MAP, map(0x20000n, 0x2000n, RW, 0x2000n), [fd]);
    native.close(fd);
    assert.equal(served.device.dma.regions().length, 2);
    await client.ok(Command.DMA_UNMAP, unmapReq(0n, 0n, DmaUnmapFlags.ALL));
    assert.equal(served.device.dma.regions().length, 0);
    client.close();
    await served.close();
  });

  for (const twin of [false, true]) {
    it(`serves message-mode DMA through DMA_READ/DMA_WRITE on the ${twin ? 'twin' : 'main'} socket, chunked`, async () => {
      const served = serveTestDevice();
      const { client } = await StepClient.open(served.path, { maxMsgFds: 8, maxDataXferSize: 1024, twinSocket: { supported: twin } });
      const guest = new Uint8Array(0x4000);
      for (let i = 0; i < guest.length; i++) guest[i] = i & 0xff;
      client.onServerCommand = (m) => {
        if (m.header.cmd === Command.DMA_READ) {
          const a = decodeDmaReadRequest(m.payload);
          const at = Number(a.addr - 0x40000n);
          const out = new Uint8Array(16 + Number(a.count));
          out.set(encodeDmaAccess(a));
          out.set(guest.subarray(at, at + Number(a.count)), 16);
          return out;
        }
        const w = decodeDmaWriteRequest(m.payload);
        guest.set(w.data, Number(w.addr - 0x40000n));
        return encodeDmaAccess({ addr: w.addr, count: w.count });
      };
      await client.ok(Command.DMA_MAP, map(0x40000n, 0x4000n));
      const data = await served.device.dma.read(0x40100n, 3000);
      assert.deepEqual([...data.subarray(0, 4)], [0, 1, 2, 3]);
      assert.equal(data[2999], (0x100 + 2999) & 0xff);
      await served.device.dma.write(0x41000n, new Uint8Array(2500).fill(0xab));
      assert.equal(guest[0x1000 + 2499], 0xab);
      const sizes = client.serverCommands.map((m) => m.header.msgSize - 16 - 16);
      assert.ok(sizes.every((n) => n <= 1024), 'every chunk within max_data_xfer_size');
      assert.equal(client.serverCommands.length, 3 + 3);
      // the client's own requests keep working while DMA messages interleave
      await client.ok(Command.DMA_UNMAP, unmapReq(0x40000n, 0x4000n));
      client.close();
      await served.close();
    });
  }

  it('fails a device DMA cleanly when the client errors, and when it disconnects while the server waits', async () => {
    const served = serveTestDevice();
    const { client } = await StepClient.open(served.path);
    client.onServerCommand = () => ({ errno: 14 });
    await client.ok(Command.DMA_MAP, map(0x40000n, 0x4000n));
    await assert.rejects(served.device.dma.read(0x40000n, 8), (e: { errno?: number }) => e.errno === 14);
    client.onServerCommand = () => undefined; // never answers
    const pending = served.device.dma.read(0x40000n, 8);
    await new Promise((r) => setTimeout(r, 20));
    client.close();
    await assert.rejects(pending, (e: { errno?: number }) => e.errno === 107);
    await served.server.idle();
    const { client: next } = await StepClient.open(served.path);
    assert.equal(served.device.dma.regions().length, 0, 'the next client starts with no mappings');
    next.close();
    await served.close();
  });

  it('maps and unmaps with NO_REPLY', async () => {
    const served = serveTestDevice();
    const { client } = await StepClient.open(served.path);
    client.post(Command.DMA_MAP, map(0x40000n, 0x1000n), HeaderFlags.NO_REPLY);
    await client.ok(Command.DMA_UNMAP, unmapReq(0x40000n, 0x1000n));
    client.close();
    await served.close();
  });
});
