/** assignBars / barDecodes against a device that serves BARs only once assigned and decoding (as QEMU's x-remote). */
import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import { assignBars, barDecodes } from '../../src/client/bar-setup.js';
import { readConfig, writeConfig } from '../../src/client/pci-config.js';
import { RemoteError, StateError } from '../../src/errors.js';
import { Errno } from '../../src/protocol/errno.js';
import { PciCommand, PciHeader } from '../../src/pci/registers.js';
import { createDecodeGatedDevice, type DecodeGatedDevice } from '../support/decode-gated-device.js';
import { serve, type Served } from '../cli/support.js';

describe('assignBars', () => {
  let gated: DecodeGatedDevice;
  let served: Served;
  let client: VfioUserClient;
  beforeEach(async () => {
    gated = createDecodeGatedDevice();
    served = serve(gated.device);
    client = await VfioUserClient.connect(served.path);
  });
  afterEach(async () => {
    client.close();
    await served.close();
  });

  it('the gated device refuses BAR accesses until its BARs are assigned and decode', async () => {
    await assert.rejects(client.regionRead(0, 0n, 4), (e: unknown) => e instanceof RemoteError && e.errno === Errno.EINVAL);
    assert.equal(gated.refused, 1);
    assert.equal(await barDecodes(client, 0), false);
  });

  it('places BARs largest first, naturally aligned, I/O in the I/O window, and enables both decodes', async () => {
    const a = await assignBars(client);
    // BAR2 (64 KiB mem64) first at the window base, then BAR0 (4 KiB) right after it; BAR1 (32-byte I/O) at 0xc000
    assert.deepEqual(a.bars.map((b) => [b.index, b.type, b.address, b.size, b.assigned]), [
      [0, 'mem32', 0xc001_0000n, 0x1000n, true],
      [1, 'io', 0xc000n, 0x20n, true],
      [2, 'mem64', 0xc000_0000n, 0x10000n, true],
    ]);
    assert.equal(a.command & (PciCommand.MEMORY | PciCommand.IO), PciCommand.MEMORY | PciCommand.IO);
    assert.equal(gated.device.config.barAddress(0), 0xc001_0000n);
    assert.equal(gated.device.config.barAddress(2), 0xc000_0000n);
    assert.equal(gated.device.config.memoryEnabled && gated.device.config.ioEnabled, true);
    for (const index of [0, 1, 2]) assert.equal(await barDecodes(client, index), true, `BAR${index}`);
    await client.regionWrite(2, 0x100n, Uint8Array.of(1, 2, 3, 4));
    assert.deepEqual([...await client.regionRead(2, 0x100n, 4)], [1, 2, 3, 4]);
    assert.deepEqual([...(gated.memory.get(2) ?? new Uint8Array()).subarray(0x100, 0x104)], [1, 2, 3, 4]);
  });

  it('keeps a BAR that has an address and places the others around it; Bus Master stays off', async () => {
    await writeConfig(client, PciHeader.BASE_ADDRESS_0, 4, 0xc000_0000);
    const a = await assignBars(client);
    assert.deepEqual(a.bars.map((b) => [b.index, b.address, b.assigned]), [
      [0, 0xc000_0000n, false],
      [1, 0xc000n, true],
      [2, 0xc001_0000n, true],
    ]);
    assert.equal(a.command & PciCommand.MASTER, 0);
    const again = await assignBars(client, { reassign: true });
    assert.equal(again.bars.every((b) => b.assigned), true);
  });

  it('ENOSPC when a BAR does not fit its window; nothing is enabled then', async () => {
    await assert.rejects(assignBars(client, { memWindow: { base: 0xc000_0000n, size: 0x800n } }), (e: unknown) => e instanceof StateError && e.errno === Errno.ENOSPC);
    assert.equal((await readConfig(client, PciHeader.COMMAND, 2)) & PciCommand.MEMORY, 0);
  });

  it('a 64-bit BAR that does not fit below 4 GiB goes to the 64-bit window', async () => {
    const a = await assignBars(client, { memWindow: { base: 0xc000_0000n, size: 0x2000n }, mem64Window: { base: 1n << 36n, size: 1n << 30n } });
    assert.deepEqual(a.bars.map((b) => [b.index, b.address]), [
      [0, 0xc000_0000n],
      [1, 0xc000n],
      [2, 1n << 36n],
    ]);
    assert.equal(gated.device.config.barAddress(2), 1n << 36n);
    assert.deepEqual([...await client.regionRead(2, 0n, 2)], [0, 0]);
  });
});
