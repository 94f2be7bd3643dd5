/**
 * A container — three sample devices of one VM sharing one guest RAM
 * (container-fixture.ts) — migrated over TCP (loopback) to a receiver holding a
 * session per device on one guest RAM (remote-container-fixture.ts): one
 * channel, the device streams tagged by index (channel version 2). Guest
 * memory and every device's state must arrive; the receiving servers' logs
 * show every destination device reaching RUNNING_P2P before any runs. The
 * protocol's edges: an older receiver (channel version 1 only) refuses the
 * container clearly before preparing anything; a receiver without one of the
 * named devices refuses it; a one-device migration still speaks version 1.
 */
import assert from 'node:assert/strict';
import { createServer, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { RegionIndex } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { MigrationChannelError } from '../../src/orchestrator/channel-socket.js';
import { ChannelFrame, decodeMessage, encodeMessage, FrameDecoder, FrameEncoder } from '../../src/orchestrator/channel.js';
import { migrateContainer } from '../../src/orchestrator/migrate.js';
import { RemoteContainerDestination } from '../../src/orchestrator/remote-container.js';
import { RemoteDestination } from '../../src/orchestrator/remote.js';
import { clientOf, deviceStates, jobInput, jobOutput, postJobs, prepareSource, reachedBefore, show, S } from './container-fixture.js';
import { connectContainer, statesOf, withRemote } from './remote-container-fixture.js';

const BUDGET_MS = 2000;
const ALL = ['dma', 'gpio', 'mem'];

/** A listener that answers a hello as a receiver of channel version 1 only did (its exact refusal), and records what it got. */
async function versionOneReceiver(): Promise<{ url: string; hellos: unknown[]; close(): void }> {
  const hellos: unknown[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    const decoder = new FrameDecoder();
    const encoder = new FrameEncoder();
    socket.on('data', (chunk: Buffer) => {
      for (const frame of decoder.push(chunk)) {
        const { head } = decodeMessage(frame.payload) as { head: { op: string; args: { channelVersion: unknown } } };
        hellos.push(head.args);
        const payload = encodeMessage({ ok: false, errno: Errno.EPROTO, message: `hello: channel version ${String(head.args.channelVersion)} is not spoken here (1)` });
        socket.write(Buffer.concat([encoder.header(ChannelFrame.RESPONSE, frame.id, payload), ...payload]));
        socket.end();
      }
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const a = server.address();
  return {
    url: `tcp://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`,
    hellos,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

describe('container migration over TCP', () => {
  it('three devices and their shared guest RAM over one channel: memory and every state equal; every destination RUNNING_P2P before any runs; all committed as one', () =>
    withRemote(async (src, rx) => {
      await prepareSource(src);
      const destination = await connectContainer(src, rx.url);
      const outcome = rx.nextOutcome();
      let posted = false;
      try {
        const report = await migrateContainer({
          source: src.side, destination, downtimeBudgetMs: BUDGET_MS,
          onProgress: (p) => {
            if (!posted && p.step === 'dirty-pages') {
              posted = true;
              void postJobs(src, 4, 8); // the DMA engine writes guest RAM during pre-copy
            }
          },
        });
        assert.equal(report.outcome, 'migrated', report.reason);
        assert.equal(report.destination, rx.url);
        assert.equal(report.migrationId, destination.migrationId);
        const received = await outcome;
        assert.equal(received.outcome, 'committed');
        assert.deepEqual(received.devices.map((d) => d.name), ['mem', 'dma', 'gpio']);
        const prepared = rx.prepared[0];
        assert.ok(prepared && !prepared.released, 'the receiver keeps the committed destination');
        assert.deepEqual(prepared.names, ['mem', 'dma', 'gpio'], 'the offer named the devices in the source order');
        await src.dma.idle();
        for (let i = 0; i < 8; i++) assert.deepEqual(jobOutput(src, i), jobInput(i), `job ${i} done on the source`);
        assert.ok(Buffer.from(prepared.memory.read(0n, Number(src.memory.size))).equals(Buffer.from(src.memory.read(0n, Number(src.memory.size)))), 'guest memory equal');
        const [srcStates, dstStates] = [await deviceStates(src), await statesOf(rx.devices)];
        for (const name of ALL) assert.ok(dstStates.get(name)?.equals(srcStates.get(name) as Buffer), `${name} state equal`);
        for (const [i, name] of ['mem', 'dma', 'gpio'].entries()) {
          assert.equal(await clientOf(src, name).migrationState(), S.STOP, `source ${name} STOP`);
          assert.equal(await prepared.clients[i]?.migrationState(), S.RUNNING, `destination ${name} RUNNING`);
          // Each device's stream went to its own session: its byte count matches what the sender moved for it.
          const sent = report.devices[i];
          assert.equal(received.devices[i]?.deviceBytes, (sent?.bytes.precopy ?? 0n) + (sent?.bytes.stopCopy ?? 0n), `${name} device bytes`);
        }
        assert.equal(received.deviceBytes, report.bytes.precopyDevice + report.bytes.stopCopyDevice);
        assert.deepEqual(reachedBefore(src.events, ['RUNNING_P2P', 'PRE_COPY_P2P'], ['STOP', 'STOP_COPY']), ALL, `sources: ${show(src.events)}`);
        assert.deepEqual(reachedBefore(rx.events, ['RUNNING_P2P'], ['RUNNING']), ALL, `destinations: ${show(rx.events)}`);
        // The receiver ran the devices' (slow) changes into RUNNING_P2P side by side: all three began before the first ended.
        const p2p = rx.events.filter((e) => e.to === 'RUNNING_P2P' || (e.event === 'end' && e.from === 'STOP'));
        assert.deepEqual(p2p.slice(0, 3).map((e) => e.event), ['begin', 'begin', 'begin'], `destinations: ${show(p2p)}`);
        assert.equal(rx.receiver.outcomeOf(destination.migrationId).outcome, 'committed');
      } finally {
        destination.close();
      }
    }, {}, { slowP2PMs: 40 }));

  it('an older receiver (channel version 1) refuses a container before preparing anything: said plainly, EPROTO', async () => {
    const old = await versionOneReceiver();
    try {
      const offer = { memory: { size: 1n << 20n, iova: 0n }, devices: ['a', 'b'] };
      await assert.rejects(RemoteContainerDestination.connect(old.url, offer), (e: Error) =>
        e instanceof MigrationChannelError && e.errno === Errno.EPROTO && /takes one device per migration \(channel version 1\)/.test(e.message));
      assert.equal((old.hellos[0] as { channelVersion: number }).channelVersion, 2);
      // One named device still speaks version 1 (its name rides along, ignored by such a receiver).
      await assert.rejects(RemoteDestination.connect(old.url, { memory: offer.memory, devices: ['a'] }), /channel version 1 is not spoken here/);
      assert.deepEqual(old.hellos[1], { channelVersion: 1, memory: offer.memory, migrationId: (old.hellos[1] as { migrationId: string }).migrationId, features: ['zero-pages'], devices: [{ name: 'a' }] });
    } finally {
      old.close();
    }
  });

  it('a receiver without a named device refuses the offer (EINVAL) and releases what it prepared; the next offer is served', () =>
    withRemote(async (src, rx) => {
      const offer = { memory: { size: src.memory.size, iova: src.side.iova } };
      await assert.rejects(RemoteContainerDestination.connect(rx.url, { ...offer, devices: ['mem', 'nic'] }), (e: Error) =>
        e instanceof MigrationChannelError && e.errno === Errno.EINVAL && /no device 'nic' here/.test(e.message));
      assert.equal(rx.prepared[0]?.released, true);
      assert.equal(rx.outcomes[0]?.outcome, 'refused');
      await assert.rejects(RemoteContainerDestination.connect(rx.url, { ...offer, devices: ['mem', 'mem'] }), /given twice/);
      const again = await RemoteContainerDestination.connect(rx.url, { ...offer, devices: ['gpio', 'mem'] });
      try {
        assert.deepEqual(again.devices.map((d) => d.name), ['gpio', 'mem']);
        assert.equal((await again.devices[0]?.describe())?.pciIds, (await clientOf(src, 'gpio').regionRead(RegionIndex.CONFIG, 0n, 4).then((b) => Buffer.from(b).toString('hex'))));
        await assert.rejects(again.link.describe(2), /no device 2: this migration has 2/);
      } finally {
        await again.abandon();
      }
    }));
});
