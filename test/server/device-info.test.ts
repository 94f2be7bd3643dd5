import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Command, DeviceInfoFlags } from '../../src/protocol/constants.js';
import { decodeDeviceInfo, encodeDeviceInfo } from '../../src/protocol/device.js';
import { withDevice } from '../support/pci-driver.js';
import { wb } from '../support/wire-builder.js';

const EINVAL = 22;
const getInfo = encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 });

describe('DEVICE_GET_INFO', () => {
  it('answers argsz 16, flags PCI|RESET (3), 9 regions, 5 IRQ indexes', (t) =>
    withDevice(t, async ({ client }) => {
      const r = await client.ok(Command.DEVICE_GET_INFO, getInfo);
      assert.equal(r.payload.length, 16);
      assert.deepEqual(decodeDeviceInfo(r.payload), { argsz: 16, flags: DeviceInfoFlags.PCI | DeviceInfoFlags.RESET, numRegions: 9, numIrqs: 5 });
      assert.equal(DeviceInfoFlags.PCI | DeviceInfoFlags.RESET, 3);
      assert.equal(r.fds.length, 0);
    }));

  it('ignores the request fields other than argsz; a larger argsz and trailing bytes still get 16 bytes', (t) =>
    withDevice(t, async ({ client }) => {
      const r = await client.ok(Command.DEVICE_GET_INFO, wb().u32(4096).u32(0xffffffff).u32(77).u32(88).zeros(16).build());
      assert.equal(r.payload.length, 16);
      assert.deepEqual(decodeDeviceInfo(r.payload), { argsz: 16, flags: 3, numRegions: 9, numIrqs: 5 });
    }));

  for (const [name, payload] of [
    ['argsz 15', wb().u32(15).u32(0).u32(0).u32(0).build()],
    ['argsz 0', wb().u32(0).u32(0).u32(0).u32(0).build()],
    ['a 15-byte payload', wb().u32(16).u32(0).u32(0).zeros(3).build()],
    ['a 4-byte payload', wb().u32(16).build()],
  ] as const) {
    it(`refuses ${name} with EINVAL and keeps serving`, (t) =>
      withDevice(t, async ({ client }) => {
        const r = await client.fails(Command.DEVICE_GET_INFO, payload, EINVAL);
        assert.equal(r.payload.length, 0, 'the error reply carries no payload');
        await client.ok(Command.DEVICE_GET_INFO, getInfo);
      }));
  }
});
