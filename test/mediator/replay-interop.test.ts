/**
 * Record/replay against libvfio-user's gpio-pci-idio-16 sample (when
 * LIBVFIO_USER_BUILD is set): a session recorded through a mediator replays
 * against a fresh sample process with no difference; replayed against the
 * same process again — whose input pins count the output writes it has seen —
 * the input reads are reported.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import { Mediator } from '../../src/mediator/mediator.js';
import { createRecorder } from '../../src/mediator/record.js';
import { replay } from '../../src/mediator/replay.js';
import { createEventFd, createSealedMemfd, native } from '../../src/native/addon.js';
import { DmaMapFlags, IrqIndex, IrqSetFlags } from '../../src/protocol/constants.js';
import { silentLogger } from '../../src/log.js';
import { libvfioUserBuild, startSampleServer } from '../interop/libvfio-user.js';
import { tempDir } from './record-support.js';

const build = libvfioUserBuild();

async function driveGpio(path: string): Promise<void> {
  const client = await VfioUserClient.connect(path, { logger: silentLogger() });
  const ram = createSealedMemfd('guest-ram', 1 << 20);
  const irq = createEventFd();
  try {
    const info = await client.deviceInfo();
    for (let i = 0; i < info.numRegions; i++) {
      const { fd } = await client.regionInfo(i);
      if (fd !== undefined) native.close(fd);
    }
    for (let i = 0; i < info.numIrqs; i++) await client.irqInfo(i);
    await client.regionRead(7, 0n, 64);
    await client.dmaMap({ addr: 0x10_0000n, size: 1n << 20n, flags: DmaMapFlags.READ | DmaMapFlags.WRITE }, ram);
    await client.setIrqs({ flags: IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, index: IrqIndex.INTX, start: 0, count: 1 }, [irq]);
    for (let round = 0; round < 4; round++) {
      await client.regionWrite(2, 0n, new Uint8Array([0x0f]));
      await client.regionRead(2, 1n, 1);
    }
    await client.dmaUnmap(0x10_0000n, 1n << 20n);
  } finally {
    client.close();
    native.close(ram);
    native.close(irq);
  }
}

describe('record/replay against libvfio-user', () => {
  it("gpio-pci-idio-16: no difference against a fresh process; the pins' state is reported against a used one", { skip: build.skip }, async () => {
    const binary = join(build.dir!, 'samples', 'gpio-pci-idio-16');
    const tmp = tempDir();
    try {
      const recordedPath = join(tmp.dir, 'recorded.sock');
      const recorded = await startSampleServer(binary, [recordedPath], recordedPath);
      const file = join(tmp.dir, 'gpio.vfrec');
      const recorder = createRecorder(file, { captureMemory: 1 << 20, log: silentLogger() });
      const mediator = await Mediator.listen({ upstream: recordedPath, listen: join(tmp.dir, 'm.sock'), taps: [recorder], log: silentLogger() });
      try {
        await driveGpio(mediator.path);
      } finally {
        await mediator.close();
        await recorder.close();
      }
      try {
        const used = await replay(file, { to: recordedPath, log: silentLogger(), timeoutMs: 5000 });
        assert.ok(used.differences.length > 0);
        assert.ok(used.differences.every((d) => d.kind === 'reply' && d.command === 'REGION_READ'), JSON.stringify(used.differences, null, 2));
      } finally {
        await recorded.stop();
      }
      const freshPath = join(tmp.dir, 'fresh.sock');
      const fresh = await startSampleServer(binary, [freshPath], freshPath);
      try {
        const report = await replay(file, { to: freshPath, log: silentLogger(), timeoutMs: 5000 });
        assert.deepEqual(report.differences, [], JSON.stringify(report.differences, null, 2));
        assert.ok(report.messages > 20);
      } finally {
        await fresh.stop();
      }
    } finally {
      tmp.close();
    }
  });
});
