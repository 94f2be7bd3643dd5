/**
 * Fixtures of the mediated-migration tests: a "ticker" — a device of ours
 * with NO migration support that keeps DMA-writing records into guest RAM
 * and its own shared BAR while enabled — served upstream behind a mediator
 * running the migration plugin, with a client and guest memory attached.
 *
 * Ticker BAR0 (32-bit registers): 0x00 CONTROL (bit 0 ENABLE), 0x04 STATUS
 * (bit 0 BUSY, RO; bit 1 MISMATCH: a read-back differed), 0x08/0x0c TARGET
 * (IOVA), 0x10 LENGTH (bytes of the ring, a multiple of 64), 0x14 SEQ, 0x18
 * SEED. While ENABLE: record `seq` (64 bytes: seq, seed, 56 pattern bytes) is
 * DMA-written at TARGET + (seq·64 mod LENGTH), read back (DMA read) and
 * compared, SEQ is stored in BAR2 at (seq·4 mod 64 KiB), then SEQ advances.
 * BAR2: 64 KiB of shared memory (mmappable).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { createDevice, type VfioUserDevice } from '../../src/device/device.js';
import { silentLogger } from '../../src/log.js';
import { Mediator } from '../../src/mediator/mediator.js';
import { createMigrationPlugin, type MediatedMigrationSpec, type MigrationPlugin } from '../../src/mediator/migration/index.js';
import { RegionIndex } from '../../src/protocol/constants.js';
import type { DeviceServer } from '../../src/server/server.js';

export const TickerReg = { CONTROL: 0x00, STATUS: 0x04, TARGET_LO: 0x08, TARGET_HI: 0x0c, LENGTH: 0x10, SEQ: 0x14, SEED: 0x18 } as const;
export const RECORD = 64;
export const BAR2_SIZE = 64 * 1024;
export const IOVA = 0x1_0000_0000n;

/** The ticker's migration spec: its registers, and how to stop it. */
export const TICKER_SPEC: MediatedMigrationSpec = {
  deviceType: 'ticker',
  registers: [
    { region: 0, offset: TickerReg.TARGET_LO, size: 8, name: 'TARGET' },
    { region: 0, offset: TickerReg.LENGTH, size: 4, name: 'LENGTH' },
    { region: 0, offset: TickerReg.SEQ, size: 4, name: 'SEQ' },
    { region: 0, offset: TickerReg.SEED, size: 4, name: 'SEED' },
    { region: 0, offset: TickerReg.CONTROL, size: 4, name: 'CONTROL' },
  ],
  quiesce: { control: { region: 0, offset: TickerReg.CONTROL, size: 4 }, runMask: 1, idle: { register: { region: 0, offset: TickerReg.STATUS, size: 4 }, mask: 1, value: 0 } },
};

/** The 64-byte record `seq` of a ticker seeded `seed`. */
export function tickerRecord(seq: number, seed: number): Uint8Array {
  const out = new Uint8Array(RECORD);
  const v = new DataView(out.buffer);
  v.setUint32(0, seq, true);
  v.setUint32(4, seed, true);
  for (let i = 8; i < RECORD; i++) out[i] = (seq * 31 + seed * 7 + i) & 0xff;
  return out;
}

/** A ticker and the knobs a test turns. */
export interface Ticker {
  device: VfioUserDevice;
  /** Records written so far (the SEQ register). */
  readonly seq: number;
  /** Hold the DMA loop (the registers still say ENABLE): a destination's state can be compared before it moves on. */
  hold(on: boolean): void;
  /** Resolves when the loop is not running. */
  idle(): Promise<void>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A ticker device (no `migration` member: not migratable by itself). */
export function createTicker(): Ticker {
  const regs = new DataView(new ArrayBuffer(0x20));
  let held = false;
  let loop: Promise<void> | undefined;
  const u32 = (o: number): number => regs.getUint32(o, true);
  const set = (o: number, v: number): void => regs.setUint32(o, v >>> 0, true);
  const running = (): boolean => (u32(TickerReg.CONTROL) & 1) !== 0 && !held && device.connected;
  const kick = (): void => {
    if (loop || !running()) return;
    loop = run().finally(() => {
      loop = undefined;
    });
  };
  async function run(): Promise<void> {
    while (running()) {
      set(TickerReg.STATUS, u32(TickerReg.STATUS) | 1);
      try {
        const seq = u32(TickerReg.SEQ);
        const length = u32(TickerReg.LENGTH) || RECORD;
        const target = regs.getBigUint64(TickerReg.TARGET_LO, true) + BigInt((seq * RECORD) % length);
        const record = tickerRecord(seq, u32(TickerReg.SEED));
        await device.dma.write(target, record);
        const back = await device.dma.read(target, RECORD);
        if (!Buffer.from(back).equals(record)) set(TickerReg.STATUS, u32(TickerReg.STATUS) | 2);
        new DataView(device.regionMemory(RegionIndex.BAR2).buffer, device.regionMemory(RegionIndex.BAR2).byteOffset).setUint32((seq * 4) % BAR2_SIZE, seq, true);
        set(TickerReg.SEQ, seq + 1);
      } catch {
        set(TickerReg.CONTROL, 0); // the memory went away: stop
      } finally {
        set(TickerReg.STATUS, u32(TickerReg.STATUS) & ~1);
      }
      await sleep(1);
    }
  }
  const device = createDevice({
    name: 'ticker',
    logger: silentLogger(),
    pci: { vendorId: 0x1234, deviceId: 0x7e57, classCode: 0xff0000 },
    regions: {
      bar0: {
        size: 4096,
        read: (offset, length) => {
          const out = new Uint8Array(length);
          for (let i = 0; i < length; i++) out[i] = offset + i < regs.byteLength ? regs.getUint8(offset + i) : 0;
          return out;
        },
        write: (offset, data) => {
          for (let i = 0; i < data.length; i++) {
            const at = offset + i;
            if (at < regs.byteLength && (at < TickerReg.STATUS || at >= TickerReg.STATUS + 4)) regs.setUint8(at, data[i] as number);
          }
          kick();
        },
      },
      bar2: { size: BAR2_SIZE, shared: true },
    },
    reset: () => {
      new Uint8Array(regs.buffer).fill(0);
    },
  });
  return {
    device,
    get seq() {
      return u32(TickerReg.SEQ);
    },
    hold(on) {
      held = on;
      if (!on) kick();
    },
    async idle() {
      while (loop) await loop;
    },
  };
}

/** One side: the ticker served upstream, a mediator with the plugin, a client of the mediator and guest memory. */
export interface MediatedSide {
  ticker: Ticker;
  server: DeviceServer;
  mediator: Mediator;
  plugin: MigrationPlugin;
  client: VfioUserClient;
  memory: GuestMemory;
  iova: bigint;
  upstreamPath: string;
  close(): Promise<void>;
}

/** Opens one side (guest memory of `size` bytes attached at {@link IOVA} with its fd), with the plugin of `spec` (or this plugin). */
export async function openSide(size: number, spec: MediatedMigrationSpec | MigrationPlugin = TICKER_SPEC): Promise<MediatedSide> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-medmig-'));
  const upstreamPath = join(dir, 'device.sock');
  const ticker = createTicker();
  const server = ticker.device.serve(upstreamPath);
  const plugin = 'stats' in spec ? spec : createMigrationPlugin(spec);
  const mediator = await Mediator.listen({ upstream: upstreamPath, listen: join(dir, 'mediator.sock'), plugins: [plugin], log: silentLogger() });
  const client = await VfioUserClient.connect(mediator.path);
  const memory = GuestMemory.create(size);
  await memory.attach(client, { iova: IOVA, mode: 'fd' });
  return {
    ticker, server, mediator, plugin, client, memory, iova: IOVA, upstreamPath,
    async close() {
      client.close();
      await mediator.close();
      await server.close();
      ticker.device.dispose();
      memory.dispose();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Writes a 32-bit register of BAR0 (through the mediator). */
export async function writeReg(side: Pick<MediatedSide, 'client'>, offset: number, value: number): Promise<void> {
  const data = new Uint8Array(4);
  new DataView(data.buffer).setUint32(0, value >>> 0, true);
  await side.client.regionWrite(RegionIndex.BAR0, BigInt(offset), data);
}

/** Reads a 32-bit register of BAR0 (through the mediator). */
export async function readReg(side: Pick<MediatedSide, 'client'>, offset: number): Promise<number> {
  const data = await side.client.regionRead(RegionIndex.BAR0, BigInt(offset), 4);
  return new DataView(data.buffer, data.byteOffset).getUint32(0, true);
}

/** Programs a ticker: ring of `length` bytes at the guest memory's start, seed, enabled. */
export async function startTicker(side: Pick<MediatedSide, 'client' | 'iova'>, length: number, seed: number): Promise<void> {
  await writeReg(side, TickerReg.TARGET_LO, Number(side.iova & 0xffff_ffffn));
  await writeReg(side, TickerReg.TARGET_HI, Number(side.iova >> 32n));
  await writeReg(side, TickerReg.LENGTH, length);
  await writeReg(side, TickerReg.SEED, seed);
  await writeReg(side, TickerReg.CONTROL, 1);
}
