/**
 * The receiver's side of the multi-device channel, spoken to frame by frame
 * (a raw ChannelSocket, not RemoteDestination, so malformed input can be
 * sent): the hello's devices checked before anything is prepared (version,
 * count, names), a prepare that returns the wrong number of sessions refused
 * and released, requests and DEVICE_DATA frames routed by device index — an
 * index past the devices refused (EINVAL for a request, a NOTICE EPROTO for a
 * frame, after which the migration is abandoned and every device reset).
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { ChannelFrame, decodeMessage, MAX_CHANNEL_DEVICES, type Frame } from '../../src/orchestrator/channel.js';
import { ChannelSocket, MigrationChannelError } from '../../src/orchestrator/channel-socket.js';
import { MigrationReceiver } from '../../src/orchestrator/receiver.js';
import { MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { openReceivingContainer } from './remote-container-fixture.js';

const MEMORY = { size: 1n << 20n, iova: 0x1_0000_0000n };

/** A raw channel to `port`; NOTICE frames collected. */
async function rawChannel(port: number): Promise<{ channel: ChannelSocket; notices: unknown[]; closed: Promise<void> }> {
  const socket = connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const notices: unknown[] = [];
  let closed!: () => void;
  const done = new Promise<void>((resolve) => (closed = resolve));
  const channel = new ChannelSocket(socket, {
    onFrame: (frame: Frame) => {
      if (frame.type === ChannelFrame.NOTICE) notices.push(decodeMessage(frame.payload).head);
    },
    onClose: () => closed(),
  });
  return { channel, notices, closed: done };
}

const refusedWith = (errno: number, re: RegExp) => (e: unknown): boolean =>
  e instanceof MigrationChannelError && e.errno === errno && re.test(e.message);

describe('receiver: the devices of a container migration', () => {
  it('checks the hello’s devices before preparing anything', async () => {
    const rx = await openReceivingContainer();
    try {
      const bad: Array<[Record<string, unknown>, number, RegExp]> = [
        [{ channelVersion: 3 }, Errno.EPROTO, /channel version 3 is not spoken here \(1, 2\)/],
        [{ channelVersion: 1, devices: [{ name: 'mem' }, { name: 'dma' }] }, Errno.EPROTO, /2 devices need channel version 2/],
        [{ channelVersion: 2 }, Errno.EINVAL, /devices: a list of 1 or more/],
        [{ channelVersion: 2, devices: [] }, Errno.EINVAL, /devices: a list of 1 or more/],
        [{ channelVersion: 2, devices: [{ name: 'mem' }, { name: 'mem' }] }, Errno.EINVAL, /'mem' is offered twice/],
        [{ channelVersion: 2, devices: [{ name: 'mem' }, { name: 'a/b' }] }, Errno.EINVAL, /device 1: 'a\/b' is not a device name/],
        [{ channelVersion: 2, devices: [{ name: 'mem' }, 7] }, Errno.EINVAL, /device 1: 'undefined' is not a device name/],
        [{ channelVersion: 2, devices: Array.from({ length: MAX_CHANNEL_DEVICES + 1 }, (_, i) => ({ name: `d${i}` })) }, Errno.EINVAL, /33 devices: at most 32/],
      ];
      for (const [args, errno, re] of bad) {
        const { channel } = await rawChannel(rx.receiver.port);
        await assert.rejects(channel.request('hello', { memory: MEMORY, ...args }), refusedWith(errno, re), JSON.stringify(args).slice(0, 80));
        channel.destroy();
      }
      assert.equal(rx.prepared.length, 0, 'nothing was prepared');
    } finally {
      await rx.close();
    }
  });

  it('refuses a prepare that returns another number of sessions than devices offered, and releases it', async () => {
    const rx = await openReceivingContainer();
    let released = 0;
    const receiver = await MigrationReceiver.listen({
      port: 0,
      prepare: async (offer) => {
        const memory = GuestMemory.create(offer.memory.size);
        const client = await VfioUserClient.connect(rx.served.get('gpio')?.path as string);
        return { side: { client, memory, iova: offer.memory.iova }, release: async () => void (released++, client.close(), memory.dispose()) };
      },
    });
    try {
      const { channel } = await rawChannel(receiver.port);
      await assert.rejects(channel.request('hello', { channelVersion: 2, memory: MEMORY, devices: [{ name: 'a' }, { name: 'b' }] }),
        refusedWith(Errno.EINVAL, /prepared 1 device session\(s\) for 2 device\(s\) offered/));
      channel.destroy();
      assert.equal(released, 1);
    } finally {
      receiver.close(true);
      await rx.close();
    }
  });

  it('routes requests and device data by index; an index past the devices: EINVAL for a request, a NOTICE (EPROTO) for a frame, then every device reset', async () => {
    const rx = await openReceivingContainer();
    try {
      const { channel, notices, closed } = await rawChannel(rx.receiver.port);
      const outcome = rx.nextOutcome();
      const hello = await channel.request('hello', { channelVersion: 2, memory: MEMORY, devices: [{ name: 'gpio' }, { name: 'dma' }] });
      const welcome = hello.result as { channelVersion: number; devices: Array<{ name: string; maxTransferSize: number }> };
      assert.equal(welcome.channelVersion, 2);
      assert.deepEqual(welcome.devices.map((d) => d.name), ['gpio', 'dma']);
      const [gpio, dma] = rx.prepared[0]?.clients ?? [];
      assert.ok(gpio && dma);
      const described = (await channel.request('describe', { device: 1 })).result as { pciIds: string };
      assert.equal(described.pciIds, Buffer.from(await dma.regionRead(RegionIndex.CONFIG, 0n, 4)).toString('hex'), 'device 1 is the DMA engine');
      await channel.request('set', { device: 1, state: S.RESUMING });
      assert.equal((await channel.request('state', { device: 1 })).result, S.RESUMING);
      assert.equal((await channel.request('state', { device: 0 })).result, S.RUNNING, 'device 0 untouched');
      assert.equal((await channel.request('state')).result, S.RUNNING, 'no index: device 0');
      for (const device of [2, -1, 0.5, '1']) {
        await assert.rejects(channel.request('state', { device }), refusedWith(Errno.EINVAL, /no device .* \(this migration has 2\)/), String(device));
      }
      await channel.send(ChannelFrame.DEVICE_DATA, 5, [new Uint8Array(16)]);
      await assert.rejects(channel.request('flush'), refusedWith(Errno.EPROTO, /device stream frame \d+: device 5: this migration has 2/));
      assert.deepEqual(notices.map((n) => (n as { errno: number; device?: number }).device), [5], 'the NOTICE names the device index');
      channel.end();
      await closed;
      const o = await outcome;
      assert.equal(o.outcome, 'abandoned');
      assert.deepEqual(o.devices.map((d) => [d.name, d.deviceBytes]), [['gpio', 0n], ['dma', 0n]]);
      assert.equal(rx.prepared[0]?.released, true);
      for (const name of ['gpio', 'dma']) {
        const c = await VfioUserClient.connect(rx.served.get(name)?.path as string);
        assert.equal(await c.migrationState(), S.RUNNING, `${name} reset to RUNNING`);
        c.close();
      }
    } finally {
      await rx.close();
    }
  });
});
