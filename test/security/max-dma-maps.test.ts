/**
 * Issue 11, finding 7: the server advertised max_dma_maps 65535 while its DMA
 * controller refused the 1025th map. What VERSION states is now what DMA_MAP
 * enforces (one limit, the server's), every advertised map is usable, the one
 * beyond is refused with EINVAL and nothing else changes; QEMU's own VERSION
 * request still gets a reply that fits and states the limit.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, DmaMapFlags, HeaderFlags } from '../../src/protocol/constants.js';
import { encodeDmaMapRequest, encodeDmaUnmapRequest } from '../../src/protocol/dma.js';
import { Errno } from '../../src/protocol/errno.js';
import { decodeVersion } from '../../src/protocol/version.js';
import { createDevice } from '../../src/device/device.js';
import { StepClient } from '../support/step-client.js';
import { serveInChild } from '../support/served-child.js';
import { qemuVersionRequest } from '../support/qemu-version.js';
import { testDeviceDefinition } from '../support/server-fixture.js';

const RW = DmaMapFlags.READ | DmaMapFlags.WRITE;
const map = (i: number): Uint8Array => encodeDmaMapRequest({ argsz: 32, flags: RW, offset: 0n, addr: BigInt(i) * 0x1000n, size: 0x1000n });

describe('security: max_dma_maps is what DMA_MAP enforces', () => {
  it('every advertised map is usable, the next is EINVAL; the server stays healthy and serves a fresh client', { timeout: 60_000 }, async () => {
    const server = await serveInChild('memory');
    try {
      const rssBefore = server.rssKiB();
      const fdsBefore = server.fdCount();
      const { client, version } = await StepClient.open(server.socket);
      const advertised = version.capabilities?.maxDmaMaps;
      assert.ok(advertised !== undefined && advertised >= 1 && advertised <= 65535, `advertised ${advertised}`);
      assert.ok(advertised <= 4096, `a limit the server can afford (${advertised}), not the spec's 65535`);
      const ids = Array.from({ length: advertised }, (_, i) => client.post(Command.DMA_MAP, map(i)));
      for (const id of ids) assert.equal((await client.replyTo(id)).flags & HeaderFlags.ERROR, 0, `DMA_MAP ${id} of ${advertised}`);
      await client.fails(Command.DMA_MAP, map(advertised), Errno.EINVAL);
      await client.ok(Command.DMA_MAP, map(0)); // an identical re-map at the limit is still accepted
      await client.ok(Command.DMA_UNMAP, encodeDmaUnmapRequest({ argsz: 24, flags: 0, addr: 0n, size: 0x1000n }));
      await client.ok(Command.DMA_MAP, map(advertised)); // room again after an unmap
      client.close();
      await client.closed;

      await new Promise((r) => setTimeout(r, 100));
      assert.ok(server.alive(), 'the server process is alive');
      assert.ok(server.rssKiB() - rssBefore < 48 * 1024, `server RSS ${rssBefore} KiB → ${server.rssKiB()} KiB`);
      assert.ok(server.fdCount() <= fdsBefore, `server fds ${fdsBefore} → ${server.fdCount()}`);
      const { client: fresh, version: again } = await StepClient.open(server.socket);
      assert.equal(again.capabilities?.maxDmaMaps, advertised);
      await fresh.ok(Command.DMA_MAP, map(0)); // the previous client's maps are gone
      fresh.close();
      await fresh.closed;
    } finally {
      await server.stop();
    }
  });

  it("QEMU 10.2's VERSION request (214 bytes) gets a reply that fits and states the enforced limit", { timeout: 30_000 }, async () => {
    const server = await serveInChild('gpio');
    try {
      const { client: first, version } = await StepClient.open(server.socket);
      first.close();
      await first.closed;
      const client = await StepClient.connect(server.socket);
      const request = qemuVersionRequest();
      const r = await client.ok(Command.VERSION, request);
      assert.ok(r.payload.length <= request.length, `reply ${r.payload.length} bytes for a ${request.length}-byte request`);
      const stated = decodeVersion(r.payload).capabilities?.maxDmaMaps;
      assert.ok(stated !== undefined && stated <= 65535, `QEMU 10.2 refuses a max_dma_maps above 65535 (got ${stated})`);
      assert.equal(stated, version.capabilities?.maxDmaMaps);
      client.close();
      await client.closed;
    } finally {
      await server.stop();
    }
  });

  it('a configured limit is the one advertised and enforced; beyond 65535 (QEMU: "too large") is refused', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-maps-'));
    const device = createDevice(testDeviceDefinition());
    try {
      assert.throws(() => device.serve({ path: join(dir, 'big.sock'), limits: { maxDmaMaps: 65536 } }), { errno: Errno.EINVAL });
      const served = device.serve({ path: join(dir, 's.sock'), limits: { maxDmaMaps: 3 } });
      const { client, version } = await StepClient.open(served.path);
      assert.equal(version.capabilities?.maxDmaMaps, 3);
      for (let i = 0; i < 3; i++) await client.ok(Command.DMA_MAP, map(i));
      await client.fails(Command.DMA_MAP, map(3), Errno.EINVAL);
      client.close();
      await client.closed;
      await served.close();
    } finally {
      device.dispose();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
