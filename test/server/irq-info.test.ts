import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, IrqIndex, IrqInfoFlags } from '../../src/protocol/constants.js';
import { decodeIrqInfo, encodeIrqInfo } from '../../src/protocol/irq.js';
import { testDeviceDefinition } from '../support/server-fixture.js';
import { withDevice } from '../support/pci-driver.js';
import { wb } from '../support/wire-builder.js';

const EINVAL = 22;
const req = (index: number, argsz = 16): Uint8Array => encodeIrqInfo({ argsz, flags: 0, index, count: 0 });

describe('DEVICE_GET_IRQ_INFO', () => {
  it('answers the configured count per index (INTx 1, MSI 4, MSI-X 8, ERR 1, REQ 1), flags EVENTFD', (t) =>
    withDevice(t, async ({ client }) => {
      const counts = [
        [IrqIndex.INTX, 1],
        [IrqIndex.MSI, 4],
        [IrqIndex.MSIX, 8],
        [IrqIndex.ERR, 1],
        [IrqIndex.REQ, 1],
      ] as const;
      for (const [index, count] of counts) {
        const r = await client.ok(Command.DEVICE_GET_IRQ_INFO, req(index, 64));
        assert.equal(r.payload.length, 16);
        assert.deepEqual(decodeIrqInfo(r.payload), { argsz: 16, flags: IrqInfoFlags.EVENTFD, index, count }, `index ${index}`);
      }
    }));

  it('answers count 0 for the indexes a device without interrupts lacks', (t) =>
    withDevice(
      t,
      async ({ client }) => {
        for (let index = 0; index < 5; index++) {
          const r = await client.ok(Command.DEVICE_GET_IRQ_INFO, req(index));
          assert.deepEqual(decodeIrqInfo(r.payload), { argsz: 16, flags: IrqInfoFlags.EVENTFD, index, count: 0 });
        }
      },
      testDeviceDefinition({ irqs: { err: false, req: false }, msix: undefined }),
    ));

  it('reports ERR and REQ with one vector by default, as vfio-pci and libvfio-user do (QEMU warns at 0)', (t) =>
    withDevice(
      t,
      async ({ client }) => {
        for (const index of [IrqIndex.ERR, IrqIndex.REQ]) {
          const r = await client.ok(Command.DEVICE_GET_IRQ_INFO, req(index));
          assert.equal(decodeIrqInfo(r.payload).count, 1, `index ${index}`);
        }
      },
      testDeviceDefinition({ irqs: {}, msix: undefined }),
    ));

  for (const [name, payload] of [
    ['index 5', req(5)],
    ['index 0xffffffff', req(0xffffffff)],
    ['argsz 15', req(IrqIndex.MSIX, 15)],
    ['argsz 0', req(IrqIndex.INTX, 0)],
    ['a 12-byte payload', wb().u32(16).u32(0).u32(2).build()],
  ] as const) {
    it(`refuses ${name} with EINVAL and keeps serving`, (t) =>
      withDevice(t, async ({ client }) => {
        await client.fails(Command.DEVICE_GET_IRQ_INFO, payload, EINVAL);
        await client.ok(Command.DEVICE_GET_IRQ_INFO, req(IrqIndex.MSIX));
      }));
  }
});
