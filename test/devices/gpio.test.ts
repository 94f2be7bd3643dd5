/**
 * The GPIO sample card driven through a real socket: identity, outputs,
 * inputs, change-of-state interrupts on INTx and MSI, status clearing, reset.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createGpioDevice, GpioReg, type GpioDevice } from '../../src/devices/gpio.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { Command, RegionInfoFlags } from '../../src/protocol/constants.js';
import { decodeIrqInfo, encodeIrqInfo } from '../../src/protocol/irq.js';
import { decodeRegionInfo, encodeRegionInfoRequest } from '../../src/protocol/region.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { StepClient } from '../support/step-client.js';
import { closeAll, enableMsi, eventCount, installEventFds, IrqIndex, read32, readLe, RegionIndex, serve, waitEventFd, write32, writeLe } from './driver.js';

const BAR2 = RegionIndex.BAR2;
const CONFIG = RegionIndex.CONFIG;
const STATUS_INTERRUPT = 1 << 3;

/** Serves a fresh card and runs `fn` with a negotiated client; cleans up either way. */
async function withCard(fn: (gpio: GpioDevice, client: StepClient) => Promise<void>, outputs?: number[][]): Promise<void> {
  await assertNoFdLeak(async () => {
    const gpio = createGpioDevice({ onOutputChange: (now, before) => outputs?.push([now, before]) });
    const served = serve(gpio.device);
    const { client } = await StepClient.open(served.path);
    try {
      await fn(gpio, client);
    } finally {
      client.close();
      await served.close();
    }
  });
}

describe('GPIO sample device (PCI-IDIO-16)', () => {
  it('has the sample identity with a real class code, a 256-byte I/O BAR2 without mmap, INTx and one MSI vector', async () => {
    await withCard(async (_gpio, client) => {
      assert.equal(await readLe(client, CONFIG, 0x00, 2), 0x494f);
      assert.equal(await readLe(client, CONFIG, 0x02, 2), 0x0dc8);
      assert.equal(await readLe(client, CONFIG, 0x3d, 1), 1, 'Interrupt Pin INTA#');
      // A class code (Linux assigns no BARs to a classless card hot-plugged into a running guest) and an
      // I/O-port BAR2, as on the card and in libvfio-user's sample.
      assert.equal((await readLe(client, CONFIG, 0x08, 4)) >>> 8, 0x118000, 'class: signal processing controller, other');
      assert.equal((await readLe(client, CONFIG, 0x18, 4)) & 1, 1, 'BAR2 is an I/O BAR');
      const info = decodeRegionInfo((await client.ok(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 32, index: BAR2 }))).payload);
      assert.equal(info.size, 0x100n);
      assert.equal(info.flags, RegionInfoFlags.READ | RegionInfoFlags.WRITE);
      for (const [index, count] of [[IrqIndex.INTX, 1], [IrqIndex.MSI, 1], [IrqIndex.MSIX, 0]] as const) {
        const irq = decodeIrqInfo((await client.ok(Command.DEVICE_GET_IRQ_INFO, encodeIrqInfo({ argsz: 16, flags: 0, index, count: 0 }))).payload);
        assert.equal(irq.count, count, `IRQ index ${index}`);
      }
    });
  });

  it('outputs: byte and dword registers set and read back the same 16 lines', async () => {
    const changes: number[][] = [];
    await withCard(async (gpio, client) => {
      await writeLe(client, BAR2, GpioReg.OUT0_7, 1, 0xa5);
      await writeLe(client, BAR2, GpioReg.OUT8_15, 1, 0x3c);
      assert.equal(gpio.outputs, 0x3ca5);
      assert.equal(await read32(client, BAR2, GpioReg.OUTPUT), 0x3ca5);
      await write32(client, BAR2, GpioReg.OUTPUT, 0xffff1234);
      assert.equal(gpio.outputs, 0x1234, 'bits 31:16 are not outputs');
      assert.equal(await readLe(client, BAR2, GpioReg.OUT0_7, 1), 0x34);
      assert.equal(await readLe(client, BAR2, GpioReg.OUT8_15, 1), 0x12);
      await writeLe(client, BAR2, GpioReg.OUTPUT + 1, 1, 0x80); // one byte lane of the dword
      assert.equal(gpio.outputs, 0x8034);
      await write32(client, BAR2, GpioReg.INPUT, 0xffff); // read-only: ignored
      assert.equal(gpio.inputs, 0);
    }, changes);
    // The last change is the reset when the client went away.
    assert.deepEqual(changes, [[0x00a5, 0], [0x3ca5, 0x00a5], [0x1234, 0x3ca5], [0x8034, 0x1234], [0, 0x8034]]);
  });

  it('inputs: the host drives the lines, the driver reads them', async () => {
    await withCard(async (gpio, client) => {
      gpio.setInput(0, true);
      gpio.setInput(9, true);
      gpio.setInput(15, true);
      assert.equal(await readLe(client, BAR2, GpioReg.IN0_7, 1), 0x01);
      assert.equal(await readLe(client, BAR2, GpioReg.IN8_15, 1), 0x82);
      assert.equal(await read32(client, BAR2, GpioReg.INPUT), 0x8201);
      gpio.setInput(15, false);
      assert.equal(await read32(client, BAR2, GpioReg.INPUT), 0x0201);
      assert.throws(() => gpio.setInput(16, true), InvalidArgumentError);
      assert.throws(() => gpio.setInput(-1, true), InvalidArgumentError);
    });
  });

  it('an enabled input change raises INTx and latches status until written 1 to clear', async () => {
    await withCard(async (gpio, client) => {
      const [intx] = await installEventFds(client, IrqIndex.INTX, 1);
      try {
        await write32(client, BAR2, GpioReg.IRQ_ENABLE, 0x0001);
        gpio.setInput(1, true); // not enabled
        assert.equal(await waitEventFd(intx!, 50), 0n, 'no interrupt for a disabled input');
        gpio.setInput(0, true);
        assert.equal(await waitEventFd(intx!), 1n);
        assert.equal(await read32(client, BAR2, GpioReg.IRQ_STATUS), 0x0001);
        assert.equal(await readLe(client, BAR2, GpioReg.IRQ_STATUS_BYTE, 1), 0b101);
        assert.ok((await readLe(client, CONFIG, 0x06, 2)) & STATUS_INTERRUPT, 'PCI Status: interrupt asserted');
        gpio.setInput(0, false); // already latched: no new interrupt
        assert.equal(await waitEventFd(intx!, 50), 0n);
        await write32(client, BAR2, GpioReg.IRQ_STATUS, 0x0002); // not set: no effect
        assert.equal(await read32(client, BAR2, GpioReg.IRQ_STATUS), 0x0001);
        await write32(client, BAR2, GpioReg.IRQ_STATUS, 0x0001);
        assert.equal(await read32(client, BAR2, GpioReg.IRQ_STATUS), 0);
        assert.equal((await readLe(client, CONFIG, 0x06, 2)) & STATUS_INTERRUPT, 0, 'PCI Status: deasserted');
        gpio.setInput(0, true);
        assert.equal(await waitEventFd(intx!), 1n, 'fires again once cleared');
      } finally {
        closeAll([intx!]);
      }
    });
  });

  it('card-style control: writing IRQ_CTL enables all inputs, reading it disables, writing IN0_7 clears', async () => {
    await withCard(async (gpio, client) => {
      const [intx] = await installEventFds(client, IrqIndex.INTX, 1);
      try {
        await writeLe(client, BAR2, GpioReg.IRQ_CTL, 1, 0);
        assert.equal(gpio.irqEnable, 0xffff);
        gpio.setInput(12, true);
        assert.equal(await waitEventFd(intx!), 1n);
        assert.equal(await readLe(client, BAR2, GpioReg.IRQ_STATUS_BYTE, 1), 0b110, 'bank 8–15 and any');
        await writeLe(client, BAR2, GpioReg.IN0_7, 1, 0);
        assert.equal(gpio.irqStatus, 0);
        assert.equal(await readLe(client, BAR2, GpioReg.IRQ_CTL, 1), 0);
        assert.equal(gpio.irqEnable, 0, 'reading IRQ_CTL disabled the interrupts');
        gpio.setInput(12, false);
        assert.equal(await waitEventFd(intx!, 50), 0n);
        await read32(client, BAR2, GpioReg.OUT8_15); // dword 0x04 does not cover IRQ_CTL
        await writeLe(client, BAR2, GpioReg.FILTER_CTL, 1, 0x5a);
        assert.equal(await readLe(client, BAR2, GpioReg.FILTER_CTL, 1), 0x5a);
      } finally {
        closeAll([intx!]);
      }
    });
  });

  it('with MSI enabled the same interrupt arrives on the MSI eventfd instead', async () => {
    await withCard(async (gpio, client) => {
      const [intx] = await installEventFds(client, IrqIndex.INTX, 1);
      const [msi] = await installEventFds(client, IrqIndex.MSI, 1);
      try {
        await enableMsi(client);
        await write32(client, BAR2, GpioReg.IRQ_ENABLE, 0xffff);
        gpio.setInput(3, true);
        assert.equal(await waitEventFd(msi!), 1n);
        assert.equal(eventCount(intx!), 0n);
      } finally {
        closeAll([intx!, msi!]);
      }
    });
  });

  it('DEVICE_RESET and a disconnect clear outputs, enables and status but not the input lines', async () => {
    await assertNoFdLeak(async () => {
      const gpio = createGpioDevice({ inputs: 0x00f0 });
      const served = serve(gpio.device);
      try {
        const first = (await StepClient.open(served.path)).client;
        await write32(first, BAR2, GpioReg.OUTPUT, 0xbeef);
        await write32(first, BAR2, GpioReg.IRQ_ENABLE, 0xffff);
        gpio.setInput(0, true);
        assert.equal(gpio.irqStatus, 1);
        await first.ok(Command.DEVICE_RESET);
        assert.deepEqual([gpio.outputs, gpio.irqEnable, gpio.irqStatus, gpio.inputs], [0, 0, 0, 0x00f1]);
        await write32(first, BAR2, GpioReg.OUTPUT, 0x1111);
        first.close();
        await served.server.idle();
        assert.equal(gpio.outputs, 0, 'reset after the client went away');
        const second = (await StepClient.open(served.path)).client;
        assert.equal(await read32(second, BAR2, GpioReg.INPUT), 0x00f1);
        second.close();
      } finally {
        await served.close();
      }
    });
  });
});
