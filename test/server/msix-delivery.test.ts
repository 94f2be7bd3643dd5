/**
 * MSI-X as QEMU drives it: QEMU keeps its own copy of the MSI-X table (it never
 * writes the device's), forwards the Message Control word and installs one
 * eventfd per vector. The device's interrupts must reach those eventfds — and
 * a client that does program the device's table still gets its masking.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, IrqIndex, IrqSetFlags, RegionIndex } from '../../src/protocol/constants.js';
import { encodeIrqSet } from '../../src/protocol/irq.js';
import { encodeRegionAccessWithData } from '../../src/protocol/region-access.js';
import { createEventFd, native } from '../../src/native/addon.js';
import { StepClient } from '../support/step-client.js';
import { serveTestDevice, type ServedDevice } from '../support/server-fixture.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const EAGAIN = -11;
const u16le = (v: number): Uint8Array => Uint8Array.of(v & 0xff, v >> 8);

async function regionWrite(client: StepClient, region: number, offset: number, data: Uint8Array): Promise<void> {
  await client.ok(Command.REGION_WRITE, encodeRegionAccessWithData({ offset: BigInt(offset), region, count: data.length, data }));
}

/** VERSION, one eventfd on MSI-X vector 0 and MSI-X enabled in config space (no table write), as QEMU does. */
async function qemuLikeMsix(served: ServedDevice): Promise<{ client: StepClient; efd: number }> {
  const { client } = await StepClient.open(served.path, { maxMsgFds: 8, maxDataXferSize: 1 << 20, maxDmaMaps: 65535 });
  const efd = createEventFd();
  const set = encodeIrqSet({ argsz: 24, flags: IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, index: IrqIndex.MSIX, start: 0, count: 1 });
  await client.ok(Command.DEVICE_SET_IRQS, set, [efd]);
  const control = (served.device.config.msix?.offset ?? 0) + 2;
  await regionWrite(client, RegionIndex.CONFIG, control, u16le(0xc000)); // Enable + Function Mask (Linux sets both first)
  await regionWrite(client, RegionIndex.CONFIG, control, u16le(0x8000)); // then clears the mask
  return { client, efd };
}

describe('MSI-X delivery to a client that emulates the table itself', () => {
  it('signals the vector\'s eventfd although the device\'s table still holds its reset Mask bits', () =>
    assertNoFdLeak(async () => {
      const served = serveTestDevice();
      const { client, efd } = await qemuLikeMsix(served);
      assert.equal(served.device.config.msix?.entry(0).masked, true);
      assert.equal(served.device.interrupt(0), true);
      assert.equal(native.eventfdRead(efd), 1n);
      native.close(efd);
      client.close();
      await served.close();
    }));

  it('holds interrupts under the forwarded Function Mask and delivers them when it clears', () =>
    assertNoFdLeak(async () => {
      const served = serveTestDevice();
      const { client, efd } = await qemuLikeMsix(served);
      const control = (served.device.config.msix?.offset ?? 0) + 2;
      await regionWrite(client, RegionIndex.CONFIG, control, u16le(0xc000));
      assert.equal(served.device.interrupt(0), false);
      assert.equal(native.eventfdRead(efd), EAGAIN);
      assert.equal(served.device.config.msix?.isPending(0), true, 'pending in the PBA QEMU reads');
      await regionWrite(client, RegionIndex.CONFIG, control, u16le(0x8000));
      assert.equal(native.eventfdRead(efd), 1n);
      assert.equal(served.device.config.msix?.isPending(0), false);
      native.close(efd);
      client.close();
      await served.close();
    }));

  it('applies the Mask bits once the client writes the device\'s table, and again not after a reset', () =>
    assertNoFdLeak(async () => {
      const served = serveTestDevice();
      const { client, efd } = await qemuLikeMsix(served);
      const table = new Uint8Array(16);
      new DataView(table.buffer).setUint32(0, 0xfee00000, true);
      new DataView(table.buffer).setUint32(12, 1, true); // masked
      await regionWrite(client, RegionIndex.BAR4, 0, table);
      assert.equal(served.device.interrupt(0), false, 'masked in a table the client uses');
      assert.equal(native.eventfdRead(efd), EAGAIN);
      await regionWrite(client, RegionIndex.BAR4, 12, Uint8Array.of(0, 0, 0, 0));
      assert.equal(native.eventfdRead(efd), 1n, 'fired on unmask');
      await client.ok(Command.DEVICE_RESET);
      const control = (served.device.config.msix?.offset ?? 0) + 2;
      await regionWrite(client, RegionIndex.CONFIG, control, u16le(0x8000));
      assert.equal(served.device.interrupt(0), true, 'after reset the table is no longer the client\'s');
      assert.equal(native.eventfdRead(efd), 1n);
      native.close(efd);
      client.close();
      await served.close();
    }));
});
