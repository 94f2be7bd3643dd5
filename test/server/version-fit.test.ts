/**
 * The VERSION reply is never longer than the request (QEMU 10.2 receives it
 * into its request's buffer and fails the attach otherwise), max_msg_fds is
 * what QEMU accepts, and the migration extensions are advertised only to a
 * client that asks for them. QEMU is not told about write_multiple
 * (src/server/client-profile.ts).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, HeaderFlags, IrqIndex, IrqSetFlags } from '../../src/protocol/constants.js';
import { encodeIrqSet } from '../../src/protocol/irq.js';
import { createEventFd, native } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { decodeVersion, encodeVersion } from '../../src/protocol/version.js';
import { migrationExtensionRequest, migrationExtensionsOf } from '../../src/protocol/migration-extensions.js';
import { createGpioDevice } from '../../src/devices/gpio.js';
import { fitVersionReply } from '../../src/server/version-reply.js';
import { clientProfile } from '../../src/server/client-profile.js';
import { StepClient } from '../support/step-client.js';
import { serveTestDevice } from '../support/server-fixture.js';
import { qemuVersionRequest } from '../support/qemu-version.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';


/** Serves a migratable sample device (the GPIO card) on a fresh path. */
async function withGpio(body: (path: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-version-'));
  const gpio = createGpioDevice();
  const server = gpio.device.serve(join(dir, 's'));
  try {
    await body(server.path);
  } finally {
    await server.close();
    gpio.device.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('VERSION reply size', () => {
  it('answers QEMU 10.2\'s own request within its 214 bytes, with max_msg_fds ≤ 16 and no extension members', () =>
    withGpio(async (path) => {
      const client = await StepClient.connect(path);
      const request = qemuVersionRequest();
      assert.equal(16 + request.length, 214);
      const r = await client.request(Command.VERSION, request);
      assert.equal(r.flags & HeaderFlags.ERROR, 0);
      assert.ok(16 + r.payload.length <= 214, `reply of ${16 + r.payload.length} bytes`);
      const caps = decodeVersion(r.payload).capabilities;
      assert.ok(caps?.maxMsgFds !== undefined && caps.maxMsgFds <= 16);
      assert.deepEqual(caps?.migration, { pgsize: 4096 }, 'migratable, and nothing QEMU would call spurious');
      assert.equal(caps?.maxDataXferSize, 1 << 20);
      client.close();
    }));

  it('does not advertise write_multiple to QEMU (its 10.2 flag for it also forces every send through its iothread), does to others', () =>
    withGpio(async (path) => {
      const qemu = await StepClient.connect(path);
      const r = await qemu.ok(Command.VERSION, qemuVersionRequest());
      assert.equal(decodeVersion(r.payload).capabilities?.writeMultiple, undefined);
      qemu.close();
      await qemu.closed;
      const { client, version } = await StepClient.open(path, { maxMsgFds: 8 });
      assert.equal(version.capabilities?.writeMultiple, true);
      client.close();
    }));

  it('decides write_multiple by recognising QEMU, whatever DMA layout is forced', () => {
    const qemu = decodeVersion(qemuVersionRequest());
    assert.equal(clientProfile(qemu).writeMultiple, false);
    assert.equal(clientProfile(qemu, 'vfio-user').writeMultiple, false);
    assert.equal(clientProfile({ major: 0, minor: 2 }, 'qemu').writeMultiple, true);
    assert.equal(clientProfile({ major: 0, minor: 2 }).writeMultiple, true);
  });

  it('advertises the migration extensions to a client that names them in its own VERSION', () =>
    withGpio(async (path) => {
      const { client, version } = await StepClient.open(path, { maxMsgFds: 8, migration: { extra: migrationExtensionRequest() } });
      const ext = migrationExtensionsOf(version.capabilities);
      assert.deepEqual(Object.keys(ext).sort(), ['arcLatency', 'deadlineState', 'identity', 'precopyInfo']);
      client.close();
    }));

  it('advertises only the extensions asked for', () =>
    withGpio(async (path) => {
      const { client, version } = await StepClient.open(path, {
        maxMsgFds: 8,
        maxDataXferSize: 1 << 20,
        maxDmaMaps: 65535,
        migration: { extra: { 'x-precopy-info': {}, 'x-unknown': 1 } },
      });
      assert.deepEqual(migrationExtensionsOf(version.capabilities), { precopyInfo: 0x8000 });
      client.close();
    }));

  it('answers a VERSION without JSON with a reply without JSON (a server whose limits are all the defaults)', async () => {
    const served = serveTestDevice(undefined, { limits: { maxDmaMaps: 65535 } });
    const client = await StepClient.connect(served.path);
    const r = await client.ok(Command.VERSION, encodeVersion({ major: 0, minor: 2 }));
    assert.equal(r.payload.length, 4);
    // The client assumes the defaults (1 fd, 1 MiB): the server still accepts what it sends.
    client.close();
    await served.close();
  });

  it('refuses with E2BIG when a limit below the default cannot be stated in the room the request gives', async () => {
    const served = serveTestDevice(undefined, { limits: { maxDataXferSize: 4096 } });
    const client = await StepClient.connect(served.path);
    await client.fails(Command.VERSION, encodeVersion({ major: 0, minor: 2 }), 7);
    await client.closed;
    await served.close();
  });

  it('serves a bare VERSION: the default max_dma_maps (1024) is the last member given up (test/security/max-dma-maps: the 1025th map fails)', async () => {
    const served = serveTestDevice();
    const client = await StepClient.connect(served.path);
    const r = await client.ok(Command.VERSION, encodeVersion({ major: 0, minor: 2 }));
    assert.equal(r.payload.length, 4);
    client.close();
    await served.close();
  });

  it('refuses more than max_msg_fds fds in one message with EINVAL, closing them all', () =>
    assertNoFdLeak(async () => {
      const served = serveTestDevice(undefined, { limits: { maxMsgFds: 2 } });
      const { client, version } = await StepClient.open(served.path, { maxMsgFds: 8, maxDataXferSize: 1 << 20, maxDmaMaps: 65535, pgsizes: 4096n });
      assert.equal(version.capabilities?.maxMsgFds, 2);
      const fds = [createEventFd(), createEventFd(), createEventFd()];
      const setIrqs = (count: number): Uint8Array =>
        encodeIrqSet({ argsz: 20 + 4 * count, flags: IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, index: IrqIndex.MSIX, start: 0, count });
      await client.fails(Command.DEVICE_SET_IRQS, setIrqs(3), 22, fds);
      await client.ok(Command.DEVICE_SET_IRQS, setIrqs(2), fds.slice(0, 2));
      for (const fd of fds) native.close(fd);
      client.close();
      await served.close();
    }));
});

describe('fitVersionReply', () => {
  const full = { maxMsgFds: 16, maxDataXferSize: 1 << 20, maxDmaMaps: 65535, pgsizes: 4096n, writeMultiple: true, migration: { pgsize: 4096, extra: { 'x-a': { feature: 1 } } } };

  it('keeps everything when the request is long enough', () => {
    const fitted = fitVersionReply(0, 0, full, 1000);
    assert.deepEqual(fitted.omitted, []);
    assert.deepEqual(decodeVersion(fitted.payload).capabilities, full);
  });

  it('gives up members in order, the extensions first and migration last, and never exceeds the limit', () => {
    let previous = Infinity;
    const seen: string[][] = [];
    for (let limit = 200; limit >= 4; limit--) {
      const fitted = fitVersionReply(0, 0, full, limit);
      assert.ok(fitted.payload.length <= limit, `limit ${limit}: ${fitted.payload.length}`);
      assert.ok(fitted.omitted.length >= 0 && fitted.payload.length <= previous);
      previous = fitted.payload.length;
      seen.push(fitted.omitted);
    }
    assert.deepEqual(seen.at(-1), ['migration extensions', 'write_multiple', 'max_dma_maps', 'pgsizes', 'max_data_xfer_size', 'max_msg_fds', 'migration']);
    const below = fitVersionReply(0, 0, { ...full, maxDmaMaps: 1024 }, 4);
    assert.deepEqual(below.omitted.at(-1), 'max_dma_maps (below the default)');
    assert.equal(fitVersionReply(0, 0, full, 4).payload.length, 4);
  });

  it('never drops a limit below the default the client would assume, but max_dma_maps as a last resort', () => {
    assert.throws(() => fitVersionReply(0, 0, { maxMsgFds: 16, maxDataXferSize: 4096 }, 30), { errno: 7 });
    assert.deepEqual(fitVersionReply(0, 0, { maxDmaMaps: 10 }, 64).omitted, [], 'stated when it fits');
  });
});
