/**
 * Migration added by mediation: a ticker (a device of ours with no migration
 * support, DMA-writing into guest RAM and its own BAR the whole time) behind
 * a mediator running the migration plugin, on both sides; our orchestrator
 * live-migrates it with its guest memory, and the destination's memory,
 * registers and BAR memory equal the source's at the switch-over.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RemoteError } from '../../src/errors.js';
import { migrate, MigrationCompatibilityError } from '../../src/orchestrator/migrate.js';
import { closeFd } from '../../src/native/addon.js';
import { encodeRegionInfoRequest } from '../../src/protocol/region.js';
import { StepClient } from '../support/step-client.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../src/log.js';
import { Mediator } from '../../src/mediator/mediator.js';
import { createMigrationPlugin } from '../../src/mediator/migration/index.js';
import { MappedRegion } from '../../src/client/regions.js';
import { declaredMmaps } from '../../src/client/mmap-saving.js';
import { clientMmapsFeatureOf, savingLayoutOf } from '../../src/protocol/mmap-saving.js';
import { Command, DeviceFeature, DeviceFeatureFlags, MigrationFlags, MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import { encodeMigDeviceState } from '../../src/protocol/feature.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { waitFor } from './support.js';
import { BAR2_SIZE, RECORD, TICKER_SPEC, TickerReg, createTicker, openSide, readReg, startTicker, tickerRecord, type MediatedSide } from './migration-support.js';

const MiB = 1 << 20;
const GUEST = 16 * MiB;
const RING = 256 * 1024;
const SEED = 77;

async function withPair(fn: (src: MediatedSide, dst: MediatedSide) => Promise<void>): Promise<void> {
  const sides: MediatedSide[] = [];
  try {
    sides.push(await openSide(GUEST), await openSide(GUEST));
    await fn(sides[0] as MediatedSide, sides[1] as MediatedSide);
  } finally {
    for (const s of sides) await s.close();
  }
}

/** Every record the ticker wrote (the last `RING / RECORD` of them, by ring slot) is in `memory`. */
function assertRecords(side: MediatedSide, seq: number): void {
  const slots = RING / RECORD;
  for (let n = Math.max(0, seq - slots); n < seq; n++) {
    const at = BigInt((n * RECORD) % RING);
    assert.ok(Buffer.from(side.memory.read(at, RECORD)).equals(tickerRecord(n, SEED)), `record ${n}`);
  }
}

const REGS = [TickerReg.TARGET_LO, TickerReg.TARGET_HI, TickerReg.LENGTH, TickerReg.SEQ, TickerReg.SEED, TickerReg.STATUS];

describe('mediated migration', () => {
  it('advertises migration for a device that has none (STOP_COPY | PRE_COPY), answered by the mediator', async () => {
    await withPair(async (src) => {
      assert.equal(await src.client.migrationFlags(), MigrationFlags.STOP_COPY | MigrationFlags.PRE_COPY);
      assert.equal(await src.client.migrationState(), S.RUNNING);
      assert.ok((await src.client.migrationDataSize()) >= BigInt(BAR2_SIZE));
      // The upstream itself still has none: its own answer is unchanged.
      assert.equal(src.ticker.device.migration, undefined);
      // VERSION gained the extensions our client asked for; BAR2's region info the saving layout (none: all trapped).
      assert.equal(clientMmapsFeatureOf(src.client.serverAdvertised), 0x8005);
      const identity = await src.client.migrationIdentity();
      assert.equal(identity.deviceType, 'ticker');
      assert.equal(identity.pciDevice, 0x7e57);
      const { info, fd } = await src.client.regionInfo(RegionIndex.BAR2);
      if (fd !== undefined) closeFd(fd);
      assert.deepEqual(savingLayoutOf(info), []);
      assert.equal(savingLayoutOf((await src.client.regionInfo(RegionIndex.BAR0)).info), undefined, 'BAR0 is not mmappable: no layout');
    });
  });

  it('refuses a destination of another device type before anything changes (x-migration-identity)', async () => {
    const sides: MediatedSide[] = [];
    try {
      sides.push(await openSide(GUEST), await openSide(GUEST, { ...TICKER_SPEC, deviceType: 'not-a-ticker' }));
      const [src, dst] = sides as [MediatedSide, MediatedSide];
      await assert.rejects(migrate({ source: src, destination: dst, downtimeBudgetMs: 2000 }), (e: unknown) => e instanceof MigrationCompatibilityError && /device types differ/.test(e.message));
      assert.equal(await src.client.migrationState(), S.RUNNING);
    } finally {
      for (const s of sides) await s.close();
    }
  });

  it('live-migrates the running ticker with its guest memory: memory, registers, BAR memory and config equal at the switch-over', async (t) => {
    await withPair(async (src, dst) => {
      const bar2 = new Uint8Array(4096).map((_, i) => (i * 13 + 5) & 0xff);
      await src.client.regionWrite(RegionIndex.BAR2, 0x8000n, bar2); // the client's own BAR contents travel too
      await startTicker(src, RING, SEED);
      await waitFor(() => src.ticker.seq > 20, 'the ticker to write 20 records');
      dst.ticker.hold(true); // the destination must not move on before it is compared

      const report = await migrate({ source: src, destination: dst, downtimeBudgetMs: 2000, timeoutMs: 60_000 });
      t.diagnostic(`${report.outcome} in ${report.totalMs.toFixed(1)} ms, downtime ${report.downtimeMs.toFixed(2)} ms, ${report.iterations} iterations, device bytes ${report.bytes.precopyDevice}+${report.bytes.stopCopyDevice}`);
      assert.equal(report.outcome, 'migrated', report.reason);
      assert.equal(await src.client.migrationState(), S.STOP);
      assert.equal(await dst.client.migrationState(), S.RUNNING);
      await src.ticker.idle();
      const seq = src.ticker.seq;
      assert.ok(seq > 20, `${seq} records written on the source`);
      t.diagnostic(`${seq} records written on the source before the switch-over`);

      const [srcStats] = src.plugin.stats();
      assert.ok(srcStats && srcStats.steeredWrites > 0 && srcStats.steeredReads > 0, 'the source DMA was steered while logging');
      assert.equal(srcStats.steering, false, 'logging stopped: fds mapped back');

      for (const reg of REGS) assert.equal(await readReg(dst, reg), await readReg(src, reg), `register 0x${reg.toString(16)}`);
      assert.equal(await readReg(src, TickerReg.CONTROL), 0, 'the source stays quiesced');
      assert.equal(await readReg(dst, TickerReg.CONTROL), 1, 'the destination runs again');
      assert.equal((await readReg(dst, TickerReg.STATUS)) & 2, 0, 'no read-back mismatch');
      assert.ok(Buffer.from(dst.memory.read(0n, GUEST)).equals(src.memory.read(0n, GUEST)), 'guest memory byte for byte');
      assertRecords(src, seq);
      const srcBar = await src.client.regionRead(RegionIndex.BAR2, 0n, BAR2_SIZE);
      assert.ok(Buffer.from(await dst.client.regionRead(RegionIndex.BAR2, 0n, BAR2_SIZE)).equals(srcBar), 'BAR2 byte for byte');
      assert.ok(Buffer.from(srcBar.subarray(0x8000, 0x9000)).equals(bar2));
      const cmd = async (side: MediatedSide): Promise<Uint8Array> => side.client.regionRead(RegionIndex.CONFIG, 0n, 0x40);
      assert.deepEqual(await cmd(dst), await cmd(src), 'config header');

      dst.ticker.hold(false); // the destination carries on from where the source stopped
      await waitFor(() => dst.ticker.seq > seq + 10, 'the destination to write 10 more records');
      dst.ticker.hold(true);
      await dst.ticker.idle();
      assertRecords(dst, dst.ticker.seq);
    });
  });

  it('steers the upstream DMA through the mediator only while logging', async () => {
    await withPair(async (src) => {
      const upstreamModes = (): string[] => src.ticker.device.dma.regions().map((r) => r.mode);
      await startTicker(src, RING, SEED);
      await waitFor(() => src.ticker.seq > 5, 'records');
      assert.deepEqual(upstreamModes(), ['mmap']);
      assert.equal(src.plugin.stats()[0]?.steeredWrites, 0);

      const pageSize = await src.client.startDirtyLogging(4096n, [{ iova: src.iova, length: BigInt(GUEST) }]);
      assert.equal(pageSize, 4096n);
      assert.deepEqual(upstreamModes(), ['message'], 'presented to the upstream without its fd');
      const before = src.ticker.seq;
      await waitFor(() => (src.plugin.stats()[0]?.steeredWrites ?? 0) >= 5, 'steered writes');
      const bitmap = await src.client.dirtyReport(src.iova, BigInt(GUEST), 4096n);
      const slot = Math.floor(((before * RECORD) % RING) / 4096);
      assert.ok((bitmap[slot >> 3]! & (1 << (slot & 7))) !== 0, `the page of record ${before} is dirty`);
      assert.ok(bitmap.subarray(RING / 4096 / 8).every((b) => b === 0), 'nothing outside the ring');
      await assert.rejects(src.client.dirtyReport(src.iova, BigInt(GUEST), 2048n), (e: unknown) => e instanceof RemoteError && e.errno === 22);

      await src.client.stopDirtyLogging();
      assert.deepEqual(upstreamModes(), ['mmap'], 'the fd mapped back');
      const steered = src.plugin.stats()[0]?.steeredWrites;
      const now = src.ticker.seq;
      await waitFor(() => src.ticker.seq > now + 5, 'records after the switch back');
      assert.equal(src.plugin.stats()[0]?.steeredWrites, steered, 'no DMA message once the fd is back');
      await assert.rejects(src.client.dirtyReport(src.iova, BigInt(GUEST), 4096n), (e: unknown) => e instanceof RemoteError && e.errno === 22);
      await src.client.regionWrite(RegionIndex.BAR0, BigInt(TickerReg.CONTROL), new Uint8Array(4));
      await src.ticker.idle();
      assertRecords(src, src.ticker.seq);
    });
  });

  it('refuses the saving transition (EBUSY) while the client declares a mapping the saving layout traps, and allows it once dropped', async () => {
    await withPair(async (src) => {
      const clientMmaps = 0x8005;
      await src.client.regionInfo(RegionIndex.BAR2); // the plugin learns BAR2 is mmappable
      const declare = (mmaps: Array<{ offset: bigint; size: bigint }>): Promise<unknown> => {
        const data = new Uint8Array(24 * mmaps.length);
        const v = new DataView(data.buffer);
        mmaps.forEach((m, i) => {
          v.setUint32(i * 24, RegionIndex.BAR2, true);
          v.setBigUint64(i * 24 + 8, m.offset, true);
          v.setBigUint64(i * 24 + 16, m.size, true);
        });
        return src.client.deviceFeature(clientMmaps | DeviceFeatureFlags.SET, data);
      };
      const setState = (state: number): Promise<unknown> =>
        src.client.deviceFeature(DeviceFeature.MIG_DEVICE_STATE | DeviceFeatureFlags.SET, encodeMigDeviceState({ deviceState: state, dataFd: -1 }), 16);
      const ebusy = (e: unknown): boolean => e instanceof RemoteError && e.errno === 16;

      await declare([{ offset: 0n, size: BigInt(BAR2_SIZE) }]);
      await assert.rejects(setState(S.PRE_COPY), ebusy);
      await assert.rejects(setState(S.STOP_COPY), ebusy);
      assert.equal(await src.client.migrationState(), S.RUNNING, 'nothing changed');
      await declare([]);
      await setState(S.PRE_COPY);
      assert.equal(await src.client.migrationState(), S.PRE_COPY);
      await assert.rejects(declare([{ offset: 0n, size: 4096n }]), ebusy, 'no new conflicting mapping while saving');
      await src.client.regionWrite(RegionIndex.BAR2, 0x100n, new Uint8Array([1, 2, 3, 4]));
      await src.client.regionRead(RegionIndex.BAR2, 0x100n, 4);
      assert.equal(src.plugin.stats()[0]?.trappedAccesses, 2, 'trapped accesses cross the mediator');
      await setState(S.RUNNING);
      await src.client.regionWrite(RegionIndex.BAR2, 0x100n, new Uint8Array([1, 2, 3, 4]));
      assert.equal(src.plugin.stats()[0]?.trappedAccesses, 2, 'not trapped once running');
    });
  });

  it('leaves no fd behind: a session closed while its DMA is steered (kept fds, mirror mappings, region mappings)', async () => {
    await withPair(async (src) => {
      await src.client.migrationFlags(); // warm-up: the plugin's first use
    });
    await assertNoFdLeak(async () => {
      const side = await openSide(GUEST);
      try {
        await startTicker(side, RING, SEED);
        await side.client.migrationFlags();
        await side.client.startDirtyLogging(4096n, []);
        await waitFor(() => (side.plugin.stats()[0]?.steeredWrites ?? 0) > 3, 'steered writes');
      } finally {
        await side.close();
      }
      await waitFor(() => side.plugin.stats().length === 0, 'the plugin session to end');
    });
  });

  it('a client that maps BAR2 (our client library): its mapping is declared, moved to the message path for the saving states, and BAR2 arrives whole', async () => {
    await withPair(async (src, dst) => {
      const bar = await MappedRegion.open(src.client, RegionIndex.BAR2);
      try {
        assert.deepEqual(declaredMmaps(src.client), [{ region: RegionIndex.BAR2, offset: 0n, size: BigInt(BAR2_SIZE) }], 'declared to the mediator');
        assert.equal(src.plugin.stats()[0]?.declaredMmaps, 1);
        const direct = new Uint8Array(4096).fill(0x5a);
        assert.equal(bar.pathOf(0x4000n, 4096, 'write'), 'mmap');
        await bar.write(0x4000n, direct); // through the mapping: the mediator does not see it
        assert.equal(src.plugin.stats()[0]?.trappedAccesses, 0);
        let written = false;
        const report = await migrate({
          source: src,
          destination: dst,
          downtimeBudgetMs: 2000,
          onProgress: (p) => {
            if (p.phase !== 'precopy' || written) return;
            written = true; // while pre-copying: the area is trapped, the write crosses the mediator
            assert.notEqual(bar.pathOf(0x6000n, 4, 'write'), 'mmap');
            void bar.write(0x6000n, new Uint8Array([1, 2, 3, 4]));
          },
        });
        assert.equal(report.outcome, 'migrated', report.reason);
        assert.ok(written && (src.plugin.stats()[0]?.trappedAccesses ?? 0) >= 1, 'the pre-copy write was trapped');
        const moved = await dst.client.regionRead(RegionIndex.BAR2, 0n, BAR2_SIZE);
        assert.ok(Buffer.from(moved.subarray(0x4000, 0x5000)).equals(direct), 'the bytes written through the mapping');
        assert.deepEqual(moved.subarray(0x6000, 0x6004), new Uint8Array([1, 2, 3, 4]), 'the trapped write');
      } finally {
        bar.close();
      }
    });
  });

  it('with p2p: RUNNING_P2P quiesces the device (no DMA), RUNNING resumes it', async () => {
    const side = await openSide(GUEST, { ...TICKER_SPEC, p2p: true });
    try {
      assert.equal(await side.client.migrationFlags(), MigrationFlags.STOP_COPY | MigrationFlags.P2P | MigrationFlags.PRE_COPY);
      await startTicker(side, RING, SEED);
      await waitFor(() => side.ticker.seq > 5, 'records');
      await side.client.setMigrationState(S.RUNNING_P2P);
      await side.ticker.idle();
      const stopped = side.ticker.seq;
      assert.equal(await readReg(side, TickerReg.CONTROL), 0, 'quiesced');
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(side.ticker.seq, stopped, 'no DMA in RUNNING_P2P');
      await side.client.setMigrationState(S.RUNNING);
      assert.equal(await readReg(side, TickerReg.CONTROL), 1, 'running value written back');
      await waitFor(() => side.ticker.seq > stopped + 5, 'records after RUNNING');
    } finally {
      await side.close();
    }
  });

  it('stays transparent for a client that asks for nothing (as QEMU): VERSION and region info replies are the device\'s own', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-medmig-transparent-'));
    const ticker = createTicker();
    const upstream = join(dir, 'device.sock');
    const server = ticker.device.serve(upstream);
    const mediator = await Mediator.listen({ upstream, listen: join(dir, 'med.sock'), plugins: [createMigrationPlugin(TICKER_SPEC)], log: silentLogger() });
    const replies = async (path: string): Promise<unknown[]> => {
      const { client, version } = await StepClient.open(path, { maxMsgFds: 8 });
      try {
        const out: unknown[] = [version];
        for (const index of [RegionIndex.BAR0, RegionIndex.BAR2, RegionIndex.CONFIG]) {
          const r = await client.ok(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 256, index }));
          for (const fd of r.fds) closeFd(fd);
          out.push(r.payload);
        }
        return out;
      } finally {
        client.close();
        await waitFor(() => mediator.sessionCount === 0 && server.client === undefined, 'the session to end');
        await server.idle(); // the device is free for the next client
      }
    };
    try {
      const direct = await replies(upstream);
      assert.deepEqual(await replies(mediator.path), direct);
    } finally {
      await mediator.close();
      await server.close();
      ticker.device.dispose();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
