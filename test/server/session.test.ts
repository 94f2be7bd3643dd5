import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, HeaderFlags } from '../../src/protocol/constants.js';
import { decodeRegionReadReply, encodeRegionAccess, encodeRegionAccessWithData } from '../../src/protocol/region-access.js';
import { encodeDeviceInfo } from '../../src/protocol/device.js';
import { native } from '../../src/native/addon.js';
import { ProtocolError } from '../../src/errors.js';
import { StepClient } from '../support/step-client.js';
import { serveTestDevice, testDeviceDefinition } from '../support/server-fixture.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { buildMessage } from '../support/wire-builder.js';

const getInfo = encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 });
const read = (offset: number, count = 4, region = 0): Uint8Array => encodeRegionAccess({ offset: BigInt(offset), region, count });
const write = (offset: number, data: number[], region = 0): Uint8Array =>
  encodeRegionAccessWithData({ offset: BigInt(offset), region, count: data.length, data: Uint8Array.from(data) });

describe('session', () => {
  it('pipelines: replies come back in request order, async callbacks included', async () => {
    const delays = [30, 0, 10, 0, 5];
    let call = 0;
    const store = new Uint8Array(64);
    const served = serveTestDevice(
      testDeviceDefinition({
        regions: {
          bar0: {
            size: 64,
            read: async (o, n) => {
              await new Promise((r) => setTimeout(r, delays[call++ % delays.length]));
              return store.slice(o, o + n);
            },
            write: (o, d) => void store.set(d, o),
          },
          bar4: { size: 0x2000 },
        },
      }),
    );
    const { client } = await StepClient.open(served.path);
    const ids: number[] = [];
    for (let i = 0; i < 16; i++) {
      ids.push(client.post(Command.REGION_WRITE, write(i * 4, [i, i, i, i])));
      ids.push(client.post(Command.REGION_READ, read(i * 4)));
    }
    const replies = await Promise.all(ids.map((id) => client.replyTo(id)));
    assert.deepEqual(client.replies.slice(1).map((r) => r.msgId), ids, 'replies arrive in request order');
    replies.filter((r) => r.cmd === Command.REGION_READ).forEach((r, i) => assert.deepEqual([...decodeRegionReadReply(r.payload)!.data], [i, i, i, i]));
    client.close();
    await served.close();
  });

  it('honours NO_REPLY on success and on failure', async () => {
    const served = serveTestDevice();
    const { client } = await StepClient.open(served.path);
    client.post(Command.REGION_WRITE, write(0, [7]), HeaderFlags.NO_REPLY);
    client.post(Command.REGION_READ, read(0, 4, 99), HeaderFlags.NO_REPLY); // fails: no region 99
    const r = await client.ok(Command.REGION_READ, read(0, 1));
    assert.deepEqual([...decodeRegionReadReply(r.payload)!.data], [7]);
    assert.equal(client.replies.length, 2, 'only VERSION and the last read were answered');
    client.close();
    await served.close();
  });

  it('turns a throwing device callback into EIO, or into the errno it carries, and carries on', async () => {
    const served = serveTestDevice(
      testDeviceDefinition({
        regions: {
          bar0: {
            size: 64,
            read: (o) => {
              if (o === 0) throw new Error('device bug');
              throw new ProtocolError('busy', { errno: 16 });
            },
            write: async () => Promise.reject(new TypeError('async device bug')),
          },
          bar4: { size: 0x2000 },
        },
      }),
    );
    const { client } = await StepClient.open(served.path);
    await client.fails(Command.REGION_READ, read(0), 5);
    await client.fails(Command.REGION_READ, read(8), 16);
    await client.fails(Command.REGION_WRITE, write(0, [1]), 5);
    await client.ok(Command.DEVICE_GET_INFO, getInfo);
    client.close();
    await served.close();
  });

  it('refuses a second client with EBUSY while the first is served', async () => {
    const served = serveTestDevice();
    const { client: first } = await StepClient.open(served.path);
    const second = await StepClient.connect(served.path);
    await second.fails(Command.VERSION, new Uint8Array(4), 16);
    await second.closed;
    await first.ok(Command.DEVICE_GET_INFO, getInfo);
    first.close();
    await served.server.idle();
    const { client: third } = await StepClient.open(served.path);
    await third.ok(Command.DEVICE_GET_INFO, getInfo);
    third.close();
    assert.equal(served.server.sessionCount, 2);
    await served.close();
  });

  it('refuses a peer whose uid is not allowed with EPERM', async () => {
    const served = serveTestDevice(testDeviceDefinition(), { allowedUids: [process.getuid!() + 1] });
    const client = await StepClient.connect(served.path);
    await client.fails(Command.VERSION, new Uint8Array(4), 1);
    await client.closed;
    assert.equal(served.server.sessionCount, 0);
    await served.close();
  });

  it('serves an allowed uid', async () => {
    const served = serveTestDevice(testDeviceDefinition(), { allowedUids: [process.getuid!()] });
    const { client } = await StepClient.open(served.path);
    await client.ok(Command.DEVICE_GET_INFO, getInfo);
    client.close();
    await served.close();
  });

  it('closes only the session whose stream broke, resets the device, and serves the next client', async () => {
    await assertNoFdLeak(async () => {
      const reasons: string[] = [];
      const served = serveTestDevice(testDeviceDefinition({ reset: (reason) => void reasons.push(reason) }));
      const { client } = await StepClient.open(served.path);
      const bad = buildMessage({ msgId: 9, cmd: Command.REGION_WRITE, flags: 0, msgSize: 0x7fff_ffff });
      native.sendmsg(client.transport.fd, [bad], null);
      const reply = await client.replyTo(9);
      assert.equal(reply.errorNo, 22);
      await client.closed;
      await served.server.idle();
      assert.deepEqual(reasons, ['lost-connection']);
      const { client: next } = await StepClient.open(served.path);
      await next.ok(Command.DEVICE_GET_INFO, getInfo);
      next.close();
      await served.close();
    });
  });

  it('survives a client vanishing mid-message', async () => {
    const served = serveTestDevice();
    const { client } = await StepClient.open(served.path);
    const msg = buildMessage({ msgId: 3, cmd: Command.REGION_WRITE, flags: 0 }, write(0, [1, 2, 3, 4]));
    native.sendmsg(client.transport.fd, [msg.subarray(0, 20)], null);
    client.close();
    await served.server.idle();
    const { client: next } = await StepClient.open(served.path);
    await next.ok(Command.DEVICE_GET_INFO, getInfo);
    next.close();
    await served.close();
  });

  it('rejects unknown commands and client-sent DMA_READ with EINVAL, and goes on', async () => {
    const served = serveTestDevice();
    const { client } = await StepClient.open(served.path);
    await client.fails(19, new Uint8Array(8), 22);
    await client.fails(14, new Uint8Array(8), 22);
    await client.fails(Command.DMA_READ, new Uint8Array(16), 22);
    await client.ok(Command.DEVICE_GET_INFO, getInfo);
    client.close();
    await served.close();
  });

  it('serves several devices from one process, each with its own client', async () => {
    const a = serveTestDevice(testDeviceDefinition({ name: 'a', pci: { vendorId: 0x1af4, deviceId: 0x1001, classCode: 0xff0000 } }));
    const b = serveTestDevice(testDeviceDefinition({ name: 'b', pci: { vendorId: 0x1af4, deviceId: 0x1002, classCode: 0xff0000 } }));
    try {
      const [{ client: ca }, { client: cb }] = await Promise.all([StepClient.open(a.path), StepClient.open(b.path)]);
      const ids = await Promise.all(
        [ca, cb].map(async (c) => {
          const r = await c.ok(Command.REGION_READ, encodeRegionAccess({ offset: 2n, region: 7, count: 2 }));
          return new DataView(decodeRegionReadReply(r.payload)!.data.buffer, decodeRegionReadReply(r.payload)!.data.byteOffset).getUint16(0, true);
        }),
      );
      assert.deepEqual(ids, [0x1001, 0x1002]);
      ca.close();
      cb.close();
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('cleans up after a client that leaves before VERSION, and during an async callback', async () => {
    await assertNoFdLeak(async () => {
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const resets: string[] = [];
      const served = serveTestDevice(
        testDeviceDefinition({
          reset: (reason) => void resets.push(reason),
          regions: {
            bar0: { size: 64, read: async (_o, n) => (await gate, new Uint8Array(n)) },
            bar4: { size: 0x2000 },
          },
        }),
      );
      try {
        const silent = await StepClient.connect(served.path);
        silent.close();
        await served.server.idle();
        const { client } = await StepClient.open(served.path);
        client.post(Command.REGION_READ, read(0));
        await new Promise((r) => setTimeout(r, 10));
        client.close();
        await new Promise((r) => setTimeout(r, 10));
        release(); // the callback finishes after its client is gone: the reply is dropped
        await served.server.idle();
        assert.deepEqual(resets, ['lost-connection', 'lost-connection']);
        const { client: next } = await StepClient.open(served.path);
        await next.ok(Command.DEVICE_GET_INFO, getInfo);
        next.close();
      } finally {
        await served.close();
      }
    });
  });
});
