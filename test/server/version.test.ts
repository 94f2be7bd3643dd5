import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, HeaderFlags } from '../../src/protocol/constants.js';
import { decodeVersion, encodeVersion } from '../../src/protocol/version.js';
import { encodeDeviceInfo } from '../../src/protocol/device.js';
import { StepClient } from '../support/step-client.js';
import { serveTestDevice } from '../support/server-fixture.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { createEventFd, native } from '../../src/native/addon.js';
import { wb } from '../support/wire-builder.js';

const EINVAL = 22;

describe('VERSION', () => {
  it('negotiates 0.2 and advertises our capabilities', async () => {
    const served = serveTestDevice();
    const { client, version } = await StepClient.open(served.path, { maxMsgFds: 8, maxDataXferSize: 4096, maxDmaMaps: 1000, pgsizes: 4096n, writeMultiple: false });
    assert.equal(version.major, 0);
    assert.equal(version.minor, 2);
    assert.equal(version.capabilities?.maxDataXferSize, 1 << 20);
    assert.equal(version.capabilities?.maxMsgFds, 16);
    assert.equal(version.capabilities?.pgsizes, 4096n);
    assert.equal(version.capabilities?.writeMultiple, true);
    assert.equal(version.capabilities?.twinSocket, undefined);
    assert.deepEqual(served.server.session?.client?.maxDataXferSize, 4096);
    client.close();
    await served.close();
  });

  it('answers minor min(client, 2), and accepts a VERSION without JSON (from a server with the default limits)', async () => {
    const served = serveTestDevice(undefined, { limits: { maxDmaMaps: 65535 } });
    const client = await StepClient.connect(served.path);
    const r = await client.ok(Command.VERSION, encodeVersion({ major: 0, minor: 7 }));
    assert.equal(decodeVersion(r.payload).minor, 2);
    client.close();
    await served.close();
  });

  it('negotiates a twin socket: one fd in the reply, fd_index 0', async () => {
    await assertNoFdLeak(async () => {
      const served = serveTestDevice();
      const caps = { maxMsgFds: 8, maxDataXferSize: 1 << 20, maxDmaMaps: 65535, pgsizes: 4096n, twinSocket: { supported: true } };
      const { client, version } = await StepClient.open(served.path, caps);
      assert.deepEqual(version.capabilities?.twinSocket, { supported: true, fdIndex: 0 });
      assert.equal(client.replies[0]?.fds.length, 1);
      client.close();
      await served.close();
    });
  });

  it('does not create a twin socket when the client takes no fds', async () => {
    const served = serveTestDevice();
    const { client, version } = await StepClient.open(served.path, { maxMsgFds: 0, twinSocket: { supported: true } });
    assert.equal(version.capabilities?.twinSocket, undefined);
    client.close();
    await served.close();
  });

  for (const [name, payload, fds] of [
    ['major 1', encodeVersion({ major: 1, minor: 0 }), 0],
    ['JSON without NUL', wb().u16(0).u16(2).str('{}').build(), 0],
    ['max_msg_fds of the wrong type', wb().u16(0).u16(2).cstr('{"capabilities":{"max_msg_fds":true}}').build(), 0],
    ['an fd attached', encodeVersion({ major: 0, minor: 2 }), 1],
  ] as const) {
    it(`refuses ${name} with EINVAL and closes the session`, async () => {
      await assertNoFdLeak(async () => {
        const served = serveTestDevice();
        const client = await StepClient.connect(served.path);
        const efd = createEventFd();
        const r = await client.request(Command.VERSION, payload, fds ? [efd] : []);
        native.close(efd);
        assert.equal(r.flags, HeaderFlags.TYPE_REPLY | HeaderFlags.ERROR);
        assert.equal(r.errorNo, EINVAL);
        assert.equal(await client.closed, undefined);
        await served.server.idle();
        await served.close();
      });
    });
  }

  it('refuses a first message that is not VERSION, then closes', async () => {
    const served = serveTestDevice();
    const client = await StepClient.connect(served.path);
    await client.fails(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }), EINVAL);
    await client.closed;
    await served.close();
  });

  it('refuses a second VERSION with EINVAL and keeps the session', async () => {
    const served = serveTestDevice();
    const { client } = await StepClient.open(served.path);
    await client.fails(Command.VERSION, encodeVersion({ major: 0, minor: 2 }), EINVAL);
    await client.ok(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }));
    client.close();
    await served.close();
  });
});
