/**
 * Migration of the GPIO card through real sockets and the client library: a
 * source driven into a non-trivial state (outputs, latched inputs, MSI in
 * config space) moves to a destination fed at odd chunk sizes; both sides'
 * state and config space compare equal and the destination carries on.
 * Also: quiesce in STOP, and `load` refusing bad data.
 */
import { drain, feedVarying } from '../support/migration-io.js';
import { read32, write32 } from '../support/regs.js';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { Interrupts } from '../../src/client/interrupts.js';
import { enableMsi, setCommand, writeConfig } from '../../src/client/pci-config.js';
import { createGpioDevice, GPIO_DEVICE_TYPE, GPIO_PCI_ID, GPIO_STATE_SIZE, GPIO_STATE_VERSION, GpioReg, type GpioDevice, type GpioOptions } from '../../src/devices/gpio.js';
import { ProtocolError, RemoteError } from '../../src/errors.js';
import type { MigrationDefinition } from '../../src/migration/types.js';
import { encodeStream } from '../../src/migration/stream.js';
import { IrqIndex, MigrationFlags, MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import { PciCommand } from '../../src/pci/registers.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { serve, type Served } from './driver.js';

/** MIG_DATA_WRITE of `stream` in pieces of varying odd sizes. */
const feed = (client: VfioUserClient, stream: Uint8Array): Promise<void> => feedVarying(client, stream, (size) => (size * 3 + 1) % 3001);

const BAR2 = RegionIndex.BAR2;
const CONFIG = RegionIndex.CONFIG;

/** A served card and a connected client. */
interface Card {
  gpio: GpioDevice;
  served: Served;
  client: VfioUserClient;
}

async function withCards(fn: (cards: Card[]) => Promise<void>, options: GpioOptions[]): Promise<void> {
  await assertNoFdLeak(async () => {
    const cards: Card[] = [];
    try {
      for (const o of options) {
        const gpio = createGpioDevice(o);
        const served = serve(gpio.device);
        cards.push({ gpio, served, client: await VfioUserClient.connect(served.path) });
      }
      await fn(cards);
    } finally {
      for (const c of cards) {
        c.client.close();
        await c.served.close();
      }
    }
  });
}

function hooks(gpio: GpioDevice): MigrationDefinition {
  const m = gpio.device.definition.migration;
  assert.ok(m, 'the card is migratable');
  return m;
}

const isEinval = (e: unknown): boolean => e instanceof RemoteError && e.errno === 22;

describe('GPIO card migration', () => {
  it('offers STOP_COPY and P2P; moves outputs, inputs, IRQ enable/status, filter and config space; the destination carries on', async () => {
    const announced: number[][] = [];
    await withCards(async ([src, dst]) => {
      assert.ok(src && dst);
      assert.equal(await src.client.migrationFlags(), MigrationFlags.STOP_COPY | MigrationFlags.P2P);
      // Config space: BAR2 address, memory decoding, MSI on.
      await writeConfig(src.client, 0x18, 4, 0xfebf_1000);
      await setCommand(src.client, PciCommand.MEMORY | PciCommand.MASTER);
      await enableMsi(src.client);
      const srcIrq = await Interrupts.enable(src.client, IrqIndex.MSI);
      const dstIrq = await Interrupts.enable(dst.client, IrqIndex.MSI); // eventfds: the destination client's own

      await write32(src.client, BAR2, GpioReg.OUTPUT, 0xbeef);
      await write32(src.client, BAR2, GpioReg.IRQ_ENABLE, 0x00ff);
      await src.client.regionWrite(BAR2, BigInt(GpioReg.FILTER_CTL), Uint8Array.of(0x5a));
      const fired = srcIrq.waitFor(0);
      src.gpio.setInput(1, true); // enabled: latches and interrupts
      src.gpio.setInput(9, true); // not enabled: level only
      assert.equal(await fired, 1n);
      assert.deepEqual([src.gpio.inputs, src.gpio.outputs, src.gpio.irqEnable, src.gpio.irqStatus], [0x0203, 0xbeef, 0x00ff, 0x0002]);

      await src.client.setMigrationState(S.STOP_COPY);
      assert.equal(await src.client.migrationState(), S.STOP_COPY);
      assert.equal(await src.client.migrationDataSize(), BigInt(GPIO_STATE_SIZE));
      const saved = await hooks(src.gpio).save();
      const stream = await drain(src.client, 37);

      await dst.client.setMigrationState(S.RESUMING);
      await feed(dst.client, stream);
      await dst.client.setMigrationState(S.STOP);
      assert.deepEqual(announced, [], 'restored outputs are reported only once the card runs');
      await dst.client.setMigrationState(S.RUNNING);
      assert.deepEqual(announced, [[0xbeef, 0]]);
      assert.deepEqual(await hooks(dst.gpio).save(), saved, 'device state byte for byte');
      assert.deepEqual([dst.gpio.inputs, dst.gpio.outputs, dst.gpio.irqEnable, dst.gpio.irqStatus], [0x0203, 0xbeef, 0x00ff, 0x0002]);

      await src.client.setMigrationState(S.STOP); // STOP_COPY refuses region access; STOP allows it
      const srcConfig = await src.client.regionRead(CONFIG, 0n, 256);
      assert.deepEqual(await dst.client.regionRead(CONFIG, 0n, 256), srcConfig, 'config space (MSI enabled, BAR2, Command)');

      // Behaviour on the destination: the registers read back, an input change interrupts through the migrated MSI.
      assert.equal(await read32(dst.client, BAR2, GpioReg.OUTPUT), 0xbeef);
      assert.equal(await read32(dst.client, BAR2, GpioReg.INPUT), 0x0203);
      assert.equal(await read32(dst.client, BAR2, GpioReg.IRQ_STATUS), 0x0002);
      assert.equal((await dst.client.regionRead(BAR2, BigInt(GpioReg.FILTER_CTL), 1))[0], 0x5a);
      const dstFired = dstIrq.waitFor(0);
      dst.gpio.setInput(2, true);
      assert.equal(await dstFired, 1n);
      assert.equal(await read32(dst.client, BAR2, GpioReg.IRQ_STATUS), 0x0006);
      await write32(dst.client, BAR2, GpioReg.IRQ_STATUS, 0x0006);
      assert.equal(dst.gpio.irqStatus, 0);
      await write32(dst.client, BAR2, GpioReg.OUTPUT, 0x0001);
      assert.deepEqual(announced, [[0xbeef, 0], [0x0001, 0xbeef]]);
      assert.equal(srcIrq.total(0), 1n, 'the source raised nothing after it stopped');
    }, [{ inputs: 0x0001 }, { onOutputChange: (now, before) => void announced.push([now, before]) }]);
  });

  it('is quiesced while stopped: inputs are not sampled, nothing latches or interrupts, writes and read side effects do nothing', async () => {
    const announced: number[][] = [];
    await withCards(async ([card]) => {
      assert.ok(card);
      const { gpio, client } = card;
      await enableMsi(client);
      const irq = await Interrupts.enable(client, IrqIndex.MSI);
      await write32(client, BAR2, GpioReg.IRQ_ENABLE, 0xffff);
      await write32(client, BAR2, GpioReg.OUTPUT, 0x00f0);

      await client.setMigrationState(S.RUNNING_P2P);
      const p2p = irq.waitFor(0);
      gpio.setInput(0, true);
      assert.equal(await p2p, 1n, 'RUNNING_P2P is running for a card without DMA');
      await write32(client, BAR2, GpioReg.IRQ_STATUS, 0xffff);

      await client.setMigrationState(S.STOP);
      const before = await hooks(gpio).save();
      gpio.setInput(3, true);
      gpio.setInput(0, false);
      await write32(client, BAR2, GpioReg.OUTPUT, 0x1234);
      await write32(client, BAR2, GpioReg.IRQ_ENABLE, 0);
      await client.regionWrite(BAR2, 0n, Uint8Array.of(0xff, 0xff, 0xff, 0xff));
      assert.equal(await read32(client, BAR2, 0x00), 0x0000_01f0, 'dword 0 reads IRQ_CTL…');
      assert.equal(gpio.irqEnable, 0xffff, '…without disabling interrupts while stopped');
      assert.equal(await read32(client, BAR2, GpioReg.INPUT), 0x0001, 'the inputs are not sampled');
      assert.deepEqual(await hooks(gpio).save(), before, 'no state changed');
      await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(irq.total(0), 1n, 'no interrupt while stopped');

      const resumed = irq.waitFor(0);
      await client.setMigrationState(S.RUNNING);
      assert.equal(await resumed, 1n, 'the lines are sampled on resume: changed enabled inputs interrupt');
      assert.equal(gpio.inputs, 0x0008);
      assert.equal(gpio.irqStatus, 0x0009);
      assert.equal(gpio.outputs, 0x00f0);
      assert.deepEqual(announced, [[0x00f0, 0]]);
    }, [{ onOutputChange: (now, before) => void announced.push([now, before]) }]);
  });

  it('load refuses bad data with a clear error, changing nothing; over the wire that is EINVAL and ERROR, left by DEVICE_RESET', async () => {
    await withCards(async ([card]) => {
      assert.ok(card);
      const m = hooks(card.gpio);
      const good = await m.save();
      const bad = (patch: (b: Uint8Array) => Uint8Array): Uint8Array => patch(good.slice());
      assert.throws(() => m.load('full', good.subarray(0, 11)), (e: unknown) => e instanceof ProtocolError && /11 bytes, the layout has 12/.test(e.message));
      assert.throws(() => m.load('full', new Uint8Array(13)), /13 bytes/);
      assert.throws(() => m.load('full', bad((b) => ((b[10] = 1), b))), /reserved bytes at offset 9 are not zero/);
      assert.throws(() => m.load('delta', good), /a 'delta' record/);
      assert.deepEqual(await m.save(), good);

      const identity = { deviceType: GPIO_DEVICE_TYPE, pciVendor: GPIO_PCI_ID.vendorId, pciDevice: GPIO_PCI_ID.deviceId, stateVersion: GPIO_STATE_VERSION };
      await card.client.setMigrationState(S.RESUMING);
      await assert.rejects(card.client.migDataWrite(encodeStream(identity, [{ kind: 'full', payload: new Uint8Array(16) }])), isEinval);
      assert.equal(await card.client.migrationState(), S.ERROR);
      await card.client.reset();
      assert.equal(await card.client.migrationState(), S.RUNNING);
      const state = Uint8Array.of(0x0f, 0, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0);
      await card.client.setMigrationState(S.RESUMING);
      await card.client.migDataWrite(encodeStream(identity, [{ kind: 'full', payload: state }]));
      await card.client.setMigrationState(S.RUNNING);
      assert.equal(await read32(card.client, BAR2, GpioReg.OUTPUT), 0x000f, 'a well-formed state without a config record loads');
    }, [{}]);
  });
});
