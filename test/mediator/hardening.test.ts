/**
 * The mediator is never the weak point. Its listening side holds what a
 * server must (bounded memory and fds under clients that never read, junk
 * headers, fds on bad messages, a client that never sends VERSION, a client
 * that dies mid-request), its upstream side what a client must (an upstream
 * that dies or goes silent: error replies and a clean close, never a hang),
 * and pending requests are bounded.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import { createGpioDevice } from '../../src/devices/gpio.js';
import { createMemoryDevice } from '../../src/devices/memory.js';
import { Mediator } from '../../src/mediator/mediator.js';
import { Command, HeaderFlags, RegionIndex } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { encodeDeviceInfo } from '../../src/protocol/device.js';
import { encodeMessage } from '../../src/protocol/header.js';
import { encodeRegionAccess, encodeRegionAccessWithData } from '../../src/protocol/region-access.js';
import { encodeRegionInfoRequest } from '../../src/protocol/region.js';
import { encodeVersion, VERSION_REQUEST_PAD } from '../../src/protocol/version.js';
import { createEventFd, memfdCreate, native } from '../../src/native/addon.js';
import { silentLogger } from '../../src/log.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { FakeServer, versionPayload } from '../support/fake-server.js';
import { alive, eventually, fdCount, rssBytes } from '../support/process-stats.js';
import { startCliServer, type ChildServer } from '../support/qemu/servers.js';
import { StepClient } from '../support/step-client.js';
import { buildMessage } from '../support/wire-builder.js';
import { mediate, startMediatorChild, waitFor, type MediatorChild } from './support.js';

const MiB = 1024 * 1024;
const INFO = encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 });
const read1 = encodeRegionAccess({ region: 2, offset: 0n, count: 1 });

/** A raw client that negotiates, then writes and never reads a byte. */
async function deafClient(path: string): Promise<Socket> {
  const socket = connect(path);
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.pause();
  const caps = { maxMsgFds: 8, maxDataXferSize: MiB, maxDmaMaps: 65535, pgsizes: 4096n };
  socket.write(buildMessage({ msgId: 0, cmd: Command.VERSION, flags: 0 }, encodeVersion({ major: 0, minor: 2, capabilities: caps }, VERSION_REQUEST_PAD)));
  return socket;
}

function flood(socket: Socket, count: number, cmd: number, payload: Uint8Array): void {
  socket.write(Buffer.concat(Array.from({ length: count }, (_, i) => buildMessage({ msgId: (i + 1) & 0xffff, cmd, flags: 0 }, payload))));
}

/** A mediator in front of a fake upstream (test/support/fake-server.ts) in this process. */
async function withFake(limits: Parameters<typeof Mediator.listen>[0]['limits'], fn: (fake: FakeServer, path: string, mediator: Mediator) => Promise<void>): Promise<void> {
  await assertNoFdLeak(async () => {
    const fake = FakeServer.start({ responder: () => undefined }); // answers VERSION only; the test answers the rest
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-mediator-'));
    const path = join(dir, 'm.sock');
    const mediator = await Mediator.listen({ upstream: fake.path, listen: path, log: silentLogger(), ...(limits ? { limits } : {}) });
    try {
      await fn(fake, path, mediator);
    } finally {
      await mediator.close();
      await fake.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

describe('mediator hardening: clients that never read (mediator and device in child processes)', { timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-mediator-security-'));
  let server: ChildServer;
  let mediator: MediatorChild;
  let pid: number;

  before(async () => {
    server = await startCliServer(dir, 'memory', ['--size', '64M']);
    mediator = await startMediatorChild(server.path, join(dir, 'm.sock'));
    pid = mediator.child.pid as number;
  });

  after(async () => {
    await mediator.stop();
    await server.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  async function servesNextClient(socket: Socket): Promise<void> {
    socket.destroy();
    const { client } = await StepClient.open(mediator.path);
    await client.ok(Command.DEVICE_GET_INFO, INFO);
    client.close();
  }

  it("512 unread 1 MiB REGION_READ replies: the mediator's RSS stays bounded, the next client is served", async (t) => {
    const before = rssBytes(pid);
    const socket = await deafClient(mediator.path);
    flood(socket, 512, Command.REGION_READ, encodeRegionAccess({ offset: 0n, region: RegionIndex.BAR0, count: MiB }));
    await new Promise((r) => setTimeout(r, 1500));
    const grown = rssBytes(pid) - before;
    t.diagnostic(`mediator RSS ${(before / MiB).toFixed(1)} → ${((before + grown) / MiB).toFixed(1)} MiB under 512 MiB of unread replies`);
    assert.ok(alive(pid), mediator.output());
    assert.ok(grown < 96 * MiB, `mediator RSS grew by ${(grown / MiB).toFixed(1)} MiB`);
    await servesNextClient(socket);
  });

  it("30,000 unread fd-carrying GET_REGION_INFO replies: the mediator's fds stay bounded", async (t) => {
    const before = fdCount(pid);
    const socket = await deafClient(mediator.path);
    flood(socket, 30_000, Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 64, index: RegionIndex.BAR0 }));
    await new Promise((r) => setTimeout(r, 1500));
    assert.ok(alive(pid), mediator.output());
    const held = fdCount(pid) - before;
    t.diagnostic(`mediator fds ${before} → ${before + held} under 30000 unread fd-carrying replies`);
    assert.ok(held < 300, `mediator holds ${held} more fds`);
    await servesNextClient(socket);
    assert.ok(await eventually(() => fdCount(pid) <= before + 2, 5000), `fds after: ${fdCount(pid)} vs ${before}`);
  });

  it('an upstream SIGKILLed under a live session: the client gets errors and a close, never a hang', async () => {
    const local = mkdtempSync(join(tmpdir(), 'vfio-user-mediator-kill-'));
    const upstream = await startCliServer(local, 'gpio');
    const child = await startMediatorChild(upstream.path, join(local, 'm.sock'));
    try {
      const client = await VfioUserClient.connect(child.path);
      assert.ok((await client.deviceInfo()).numRegions > 0);
      await upstream.kill();
      await assert.rejects(client.deviceInfo(), (e: unknown) => (e as { errno?: number }).errno === Errno.ENOTCONN);
      await client.close();
      assert.ok(alive(child.child.pid as number), child.output());
    } finally {
      await child.stop();
      await upstream.kill();
      rmSync(local, { recursive: true, force: true });
    }
  });
});

describe('mediator hardening: an upstream that stops reading (mediator in a child process)', { timeout: 120_000 }, () => {
  it("200 MiB of REGION_WRITEs to a device that reads nothing: the mediator stops reading the client, its RSS stays bounded", async (t) => {
    const fake = FakeServer.start({
      onVersion: (m, conn) => {
        conn.reply(m, versionPayload());
        conn.transport.pause(); // never reads again: the mediator's writes pile up towards it
      },
    });
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-mediator-bp-'));
    const child = await startMediatorChild(fake.path, join(dir, 'm.sock'));
    const pid = child.child.pid as number;
    try {
      const before = rssBytes(pid);
      const socket = await deafClient(child.path);
      const write = encodeMessage({ msgId: 1, cmd: Command.REGION_WRITE }, encodeRegionAccessWithData({ region: 0, offset: 0n, count: MiB, data: new Uint8Array(MiB) }));
      for (let i = 0; i < 200; i++) socket.write(write); // one buffer, written 200 times (the ids need not differ)
      await new Promise((r) => setTimeout(r, 2000));
      const grown = rssBytes(pid) - before;
      t.diagnostic(`mediator RSS ${(before / MiB).toFixed(1)} → ${((before + grown) / MiB).toFixed(1)} MiB with 200 MiB of writes towards a device that reads nothing`);
      assert.ok(alive(pid), child.output());
      assert.ok(grown < 48 * MiB, `mediator RSS grew by ${(grown / MiB).toFixed(1)} MiB`);
      socket.destroy();
    } finally {
      await child.stop();
      await fake.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('mediator hardening: listening side', () => {
  it('answers a message of invalid type with EINVAL and goes on; closes fds that came with it or with a stray reply', () =>
    assertNoFdLeak(async () => {
      const m = await mediate(createGpioDevice().device);
      try {
        const { client } = await StepClient.open(m.path);
        const efd = createEventFd();
        const mem = memfdCreate('stray', 4096);
        try {
          const bad = await client.request(Command.DEVICE_GET_INFO, INFO, [efd], 0x3); // type bits 3: neither command nor reply
          assert.equal(bad.flags & HeaderFlags.ERROR, HeaderFlags.ERROR);
          assert.equal(bad.errorNo, Errno.EINVAL);
          client.transport.send({ msgId: 4242, cmd: Command.DMA_READ, flags: HeaderFlags.TYPE_REPLY }, new Uint8Array(16), [mem]);
          await client.ok(Command.DEVICE_GET_INFO, INFO);
          assert.equal(m.mediator.sessionCount, 1, 'the session goes on');
        } finally {
          native.close(efd);
          native.close(mem);
          client.close();
        }
      } finally {
        await m.close();
      }
    }));

  for (const [what, size] of [['msg_size smaller than the header', 8], ['msg_size over the limit', 64 * MiB]] as const) {
    it(`answers ${what} with EINVAL, then closes the session; the next client is served`, () =>
      assertNoFdLeak(async () => {
        const m = await mediate(createGpioDevice().device);
        try {
          const { client } = await StepClient.open(m.path);
          const header = new Uint8Array(16);
          const v = new DataView(header.buffer);
          v.setUint16(0, 77, true);
          v.setUint16(2, Command.DEVICE_GET_INFO, true);
          v.setUint32(4, size, true);
          native.send(client.transport.fd, header, 0, 16);
          const reply = await client.replyTo(77);
          assert.equal(reply.errorNo, Errno.EINVAL);
          assert.equal(await client.closed, undefined);
          await waitFor(() => m.mediator.sessionCount === 0, 'the session to end');
          await m.server.idle();
          const next = await StepClient.open(m.path);
          await next.client.ok(Command.DEVICE_GET_INFO, INFO);
          next.client.close();
        } finally {
          await m.close();
        }
      }));
  }

  it('drops a client that never sends VERSION after the handshake timeout; the next client is served', () =>
    assertNoFdLeak(async () => {
      const m = await mediate(createGpioDevice().device, { limits: { handshakeTimeoutMs: 200 } });
      try {
        const silent = connect(m.path);
        silent.on('error', () => undefined);
        const closed = new Promise<void>((resolve) => silent.once('close', () => resolve()));
        await closed;
        await waitFor(() => m.mediator.sessionCount === 0, 'the session to end');
        await m.server.idle();
        const { client } = await StepClient.open(m.path);
        await new Promise((r) => setTimeout(r, 300)); // negotiated: no timeout any more
        await client.ok(Command.DEVICE_GET_INFO, INFO);
        client.close();
      } finally {
        await m.close();
      }
    }));

  it('a client that dies mid-request ends its upstream session: the device serves the next client', () =>
    assertNoFdLeak(async () => {
      const memory = createMemoryDevice({ size: 4 * MiB });
      const m = await mediate(memory.device);
      try {
        const { client } = await StepClient.open(m.path);
        for (let i = 0; i < 8; i++) client.post(Command.REGION_READ, encodeRegionAccess({ region: 0, offset: 0n, count: MiB }));
        client.close();
        await waitFor(() => m.mediator.sessionCount === 0, 'the session to end');
        await m.server.idle();
        const direct = await VfioUserClient.connect(m.upstreamPath); // the device itself is free again
        await direct.close();
        await m.server.idle();
        const next = await VfioUserClient.connect(m.path);
        assert.equal((await next.regionRead(0, 0n, 4)).length, 4);
        await next.close();
      } finally {
        await m.close();
      }
    }));

  it('refuses clients beyond maxSessions and any client when the upstream cannot be reached', async () => {
    await withFake({ maxSessions: 1 }, async (_fake, path, mediator) => {
      const { client } = await StepClient.open(path);
      const second = await StepClient.connect(path);
      assert.equal(await second.closed, undefined, 'the second client is closed');
      assert.equal(mediator.sessionCount, 1);
      client.close();
    });
    await assertNoFdLeak(async () => {
      const dir = mkdtempSync(join(tmpdir(), 'vfio-user-mediator-'));
      const mediator = await Mediator.listen({ upstream: join(dir, 'nobody.sock'), listen: join(dir, 'm.sock'), log: silentLogger() });
      const ended: Promise<string>[] = [];
      mediator.onSession((s) => void ended.push(s.ended));
      try {
        const client = await StepClient.connect(join(dir, 'm.sock'));
        assert.equal(await client.closed, undefined);
        assert.deepEqual(await Promise.all(ended), ['upstream unreachable']);
      } finally {
        await mediator.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});

describe('mediator hardening: upstream side', () => {
  it('the upstream dies with commands in flight: each gets ENOTCONN, then the client is closed', () =>
    withFake(undefined, async (fake, path) => {
      const { client } = await StepClient.open(path);
      const ids = [1, 2, 3].map(() => client.post(Command.REGION_READ, read1));
      const conn = await fake.connection();
      await conn.request(3);
      conn.close();
      const replies = await Promise.all(ids.map((id) => client.replyTo(id)));
      assert.deepEqual(replies.map((r) => [r.msgId, r.flags & HeaderFlags.ERROR, r.errorNo]), ids.map((id) => [id, HeaderFlags.ERROR, Errno.ENOTCONN]));
      assert.equal(await client.closed, undefined, 'then a clean close');
    }));

  it('a silent upstream: the client gets ETIMEDOUT after upstreamTimeoutMs, the late reply is dropped, the session goes on', () =>
    withFake({ upstreamTimeoutMs: 200 }, async (fake, path) => {
      const { client } = await StepClient.open(path);
      const late = await client.request(Command.REGION_READ, read1);
      assert.equal(late.errorNo, Errno.ETIMEDOUT);
      const conn = await fake.connection();
      const request = await conn.request(1);
      conn.reply(request, new Uint8Array(17)); // the late reply
      fake.responder = (m, c) => c.reply(m, INFO);
      const before = client.replies.length;
      await client.ok(Command.DEVICE_GET_INFO, INFO);
      assert.equal(client.replies.length, before + 1, 'the late reply never reached the client');
      client.close();
    }));

  it('bounds pending requests: the client is not read beyond maxPendingRequests until replies come', () =>
    withFake({ maxPendingRequests: 8 }, async (fake, path) => {
      const { client } = await StepClient.open(path);
      const ids = Array.from({ length: 40 }, () => client.post(Command.REGION_READ, read1));
      const conn = await fake.connection();
      await conn.request(8);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(conn.requests.length, 1 + 8, 'VERSION + 8 forwarded, the rest waits in the client socket');
      fake.responder = (m, c) => c.reply(m, new Uint8Array(17));
      for (const r of conn.requests.slice(1)) conn.reply(r, new Uint8Array(17));
      const replies = await Promise.all(ids.map((id) => client.replyTo(id)));
      assert.ok(replies.every((r) => (r.flags & HeaderFlags.ERROR) === 0));
      assert.deepEqual(client.replies.slice(-40).map((r) => r.msgId), ids, 'in order');
      client.close();
    }));
});
