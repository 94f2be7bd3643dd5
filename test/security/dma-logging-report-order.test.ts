/**
 * Issue 11, finding 4: a DMA_LOGGING_REPORT refused for its argsz must not
 * clear the dirty bits it would have reported. Before the fix the bitmap was
 * built (and the log cleared) and only then compared with argsz: the pages
 * dirtied before were missing from the next report, so a migration would
 * copy stale guest memory. The same holds for every other refusal of a
 * REPORT (here: a bitmap beyond the client's max_data_xfer_size).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, DeviceFeature, DeviceFeatureFlags, DmaMapFlags } from '../../src/protocol/constants.js';
import { encodeDmaMapRequest } from '../../src/protocol/dma.js';
import { Errno } from '../../src/protocol/errno.js';
import {
  decodeDeviceFeature,
  decodeDmaLoggingReportReply,
  encodeDeviceFeature,
  encodeDmaLoggingControl,
  encodeDmaLoggingReport,
} from '../../src/protocol/feature.js';
import { memfdCreate, native } from '../../src/native/addon.js';
import { StepClient } from '../support/step-client.js';
import { serveTestDevice } from '../support/server-fixture.js';
import { openFdCount } from '../support/fd-count.js';

const { GET, SET } = DeviceFeatureFlags;
const IOVA = 0x1000_0000n;
const SIZE = 0x40_0000n; // 4 MiB: 1024 pages, a 128-byte bitmap
const PAGE = 4096n;
const DIRTY = [0, 7, 8, 255, 1023];

const report = (argsz: number, length = SIZE): Uint8Array =>
  encodeDeviceFeature({ argsz, flags: DeviceFeature.DMA_LOGGING_REPORT | GET, data: encodeDmaLoggingReport({ iova: IOVA, length, pageSize: PAGE }) });

/** The page numbers set in a bitmap. */
function pagesOf(bitmap: Uint8Array): number[] {
  const out: number[] = [];
  bitmap.forEach((byte, i) => {
    for (let b = 0; b < 8; b++) if (byte & (1 << b)) out.push(i * 8 + b);
  });
  return out;
}

describe('security: a refused DMA_LOGGING_REPORT keeps the dirty bits', () => {
  it('argsz too small, then a bitmap beyond max_data_xfer_size: refused, and the next REPORT still has every page', async () => {
    const served = serveTestDevice();
    try {
      const fdsBefore = openFdCount();
      const rssBefore = process.memoryUsage().rss;
      const { client } = await StepClient.open(served.path, { maxMsgFds: 8, maxDataXferSize: 4096 });
      const fd = memfdCreate('guest', Number(SIZE));
      await client.ok(Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags: DmaMapFlags.READ | DmaMapFlags.WRITE, offset: 0n, addr: IOVA, size: SIZE }), [fd]);
      native.close(fd); // the server has its own copy
      await client.ok(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 24, flags: DeviceFeature.DMA_LOGGING_START | SET, data: encodeDmaLoggingControl({ pageSize: PAGE, ranges: [] }) }));
      for (const p of DIRTY) served.device.dma.writeSync(IOVA + BigInt(p) * PAGE, Uint8Array.of(0xa5));

      const needed = 8 + 24 + Number(SIZE / PAGE / 8n);
      await client.fails(Command.DEVICE_FEATURE, report(needed - 1), Errno.EINVAL);
      await client.fails(Command.DEVICE_FEATURE, report(8 + 24), Errno.EINVAL);
      // 2^30 bytes at 4 KiB = a 32 KiB bitmap: more than the 4 KiB this client accepts in one message.
      await client.fails(Command.DEVICE_FEATURE, report(0xffff_ffff, 1n << 30n), Errno.E2BIG);

      const ok = await client.ok(Command.DEVICE_FEATURE, report(needed));
      const reply = decodeDmaLoggingReportReply(decodeDeviceFeature(ok.payload).data);
      assert.deepEqual(pagesOf(reply.bitmap), DIRTY, 'every page dirtied before the refusals is reported');
      const again = decodeDmaLoggingReportReply(decodeDeviceFeature((await client.ok(Command.DEVICE_FEATURE, report(needed))).payload).data);
      assert.deepEqual(pagesOf(again.bitmap), [], 'a successful REPORT clears on read');
      client.close();
      await client.closed;

      const { client: fresh } = await StepClient.open(served.path);
      await fresh.ok(Command.DEVICE_GET_INFO, Uint8Array.of(16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
      fresh.close();
      await fresh.closed;
      await new Promise((r) => setTimeout(r, 50));
      assert.ok(openFdCount() <= fdsBefore, `fds ${fdsBefore} → ${openFdCount()}`);
      assert.ok(process.memoryUsage().rss - rssBefore < 64 << 20, 'RSS grew by less than 64 MiB');
    } finally {
      await served.close();
    }
  });
});
