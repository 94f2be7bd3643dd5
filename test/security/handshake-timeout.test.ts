/**
 * A client that connects and never sends VERSION (issue 11, finding 6) would
 * hold the device: every other client gets EBUSY. It is dropped after the
 * handshake timeout, and the next client is served.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { Command } from '../../src/protocol/constants.js';
import { encodeDeviceInfo } from '../../src/protocol/device.js';
import { StepClient } from '../support/step-client.js';
import { serveTestDevice } from '../support/server-fixture.js';

describe('hostile client: silent after connecting', () => {
  it('is dropped after the handshake timeout; the next client is served, not refused', async () => {
    const served = serveTestDevice(undefined, { handshakeTimeoutMs: 200, busyGraceMs: 50 });
    const silent = connect(served.path);
    const closed = new Promise<void>((resolve) => silent.once('close', () => resolve()));
    silent.on('error', () => undefined);
    await new Promise((r) => silent.once('connect', r));
    await closed; // the server hung up on it
    assert.equal(served.server.sessionCount, 1);
    const { client } = await StepClient.open(served.path);
    await client.ok(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }));
    client.close();
    await served.close();
  });

  it('keeps a client that negotiated in time, however long it then stays quiet', async () => {
    const served = serveTestDevice(undefined, { handshakeTimeoutMs: 100 });
    const { client } = await StepClient.open(served.path);
    await new Promise((r) => setTimeout(r, 300));
    await client.ok(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }));
    client.close();
    await served.close();
  });
});
