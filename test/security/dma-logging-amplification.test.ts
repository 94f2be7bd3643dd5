/**
 * Issue 11, finding 5: DMA_LOGGING_REPORT amplification. A 40-byte request
 * for an 8 TiB range at 4 KiB pages asked for a 256 MiB reply; six of them,
 * unread, took the server to 1.8 GiB (1.6 GiB after the client left). A
 * REPORT's bitmap must now fit the client's max_data_xfer_size: larger ones
 * are refused with E2BIG before anything is built (or cleared). The server
 * runs in a child process (an unbounded reply could take it down).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, DeviceFeature, DeviceFeatureFlags, DmaMapFlags, HeaderFlags } from '../../src/protocol/constants.js';
import { encodeDmaMapRequest } from '../../src/protocol/dma.js';
import { Errno } from '../../src/protocol/errno.js';
import { decodeDeviceFeature, decodeDmaLoggingReportReply, encodeDeviceFeature, encodeDmaLoggingControl, encodeDmaLoggingReport } from '../../src/protocol/feature.js';
import { memfdCreate, native } from '../../src/native/addon.js';
import { StepClient } from '../support/step-client.js';
import { serveInChild, type ServedChild } from '../support/served-child.js';

const { GET, SET } = DeviceFeatureFlags;
const IOVA = 0x1000_0000n;
const SIZE = 0x10_0000n;
const TIB8 = 8n << 40n;
const MiB = 1 << 20;
const MiBn = BigInt(MiB);

const report = (iova: bigint, length: bigint): Uint8Array =>
  encodeDeviceFeature({ argsz: 0xffff_ffff, flags: DeviceFeature.DMA_LOGGING_REPORT | GET, data: encodeDmaLoggingReport({ iova, length, pageSize: 4096n }) });

/** Connects, maps 1 MiB of memfd at IOVA and starts logging everything. */
async function loggingClient(server: ServedChild): Promise<StepClient> {
  const { client } = await StepClient.open(server.socket, { maxMsgFds: 8, maxDataXferSize: MiB });
  const fd = memfdCreate('guest', Number(SIZE));
  await client.ok(Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags: DmaMapFlags.READ | DmaMapFlags.WRITE, offset: 0n, addr: IOVA, size: SIZE }), [fd]);
  native.close(fd);
  await client.ok(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 24, flags: DeviceFeature.DMA_LOGGING_START | SET, data: encodeDmaLoggingControl({ pageSize: 4096n, ranges: [] }) }));
  return client;
}

/** The server alive, RSS within `slackMiB` of `rssBefore`, fds back to `fdsBefore`, and a fresh client served. */
async function assertHealthy(server: ServedChild, rssBefore: number, fdsBefore: number, slackMiB: number): Promise<void> {
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(server.alive(), 'the server process is alive');
  const rss = server.rssKiB();
  assert.ok(rss - rssBefore < slackMiB * 1024, `server RSS ${rssBefore} KiB → ${rss} KiB`);
  assert.ok(server.fdCount() <= fdsBefore, `server fds ${fdsBefore} → ${server.fdCount()}`);
  const { client } = await StepClient.open(server.socket);
  await client.ok(Command.DEVICE_GET_INFO, encodeDeviceFeature({ argsz: 16, flags: 0, data: new Uint8Array(8) }));
  client.close();
  await client.closed;
}

describe('security: DMA_LOGGING_REPORT amplification', () => {
  it('six 8 TiB REPORTs: E2BIG each, no reply built; RSS and fds bounded; a fresh client is served', { timeout: 30_000 }, async () => {
    const server = await serveInChild('memory');
    try {
      const rssBefore = server.rssKiB();
      const fdsBefore = server.fdCount();
      const client = await loggingClient(server);
      const ids = Array.from({ length: 6 }, () => client.post(Command.DEVICE_FEATURE, report(IOVA, TIB8)));
      for (const id of ids) {
        const r = await client.replyTo(id);
        assert.equal(r.flags & HeaderFlags.ERROR, HeaderFlags.ERROR, 'an 8 TiB REPORT is refused');
        assert.equal(r.errorNo, Errno.E2BIG);
        assert.ok(r.payload.length < 4096, `a small reply (${r.payload.length} bytes)`);
      }
      // The largest REPORT that fits one message is still answered: 4 GiB at 4 KiB pages = a 128 KiB bitmap.
      const big = await client.ok(Command.DEVICE_FEATURE, report(IOVA, 4n << 30n));
      assert.equal(decodeDmaLoggingReportReply(decodeDeviceFeature(big.payload).data).bitmap.length, 128 << 10);
      // The reply payload (8 + 24 + bitmap) may be the client's whole max_data_xfer_size, not a byte more.
      const largest = await client.ok(Command.DEVICE_FEATURE, report(IOVA, (32n << 30n) - MiBn));
      assert.equal(largest.payload.length, MiB);
      await client.fails(Command.DEVICE_FEATURE, report(IOVA, (32n << 30n) - MiBn + 256n * 4096n), Errno.E2BIG);
      client.close();
      await client.closed;
      await assertHealthy(server, rssBefore, fdsBefore, 48);
    } finally {
      await server.stop();
    }
  });

  it('six 8 TiB REPORTs sent and the client gone before any reply: nothing retained', { timeout: 30_000 }, async () => {
    const server = await serveInChild('memory');
    try {
      const rssBefore = server.rssKiB();
      const fdsBefore = server.fdCount();
      const client = await loggingClient(server);
      for (let i = 0; i < 6; i++) client.post(Command.DEVICE_FEATURE, report(IOVA, TIB8));
      client.close();
      await client.closed;
      await assertHealthy(server, rssBefore, fdsBefore, 48);
    } finally {
      await server.stop();
    }
  });
});
