/**
 * Typed plugins end to end: a real Mediator in front of our sample devices,
 * driven by VfioUserClient. Each hook kind observed from the client's side:
 * a trapped register read emulated, sparse areas rewritten (the client maps
 * only what is left), a DMA_MAP refused with EPERM, a DEVICE_FEATURE answered
 * locally, MIG_DEVICE_STATE through migState, a throwing hook turned into an
 * error reply with the session surviving, interrupts interposed and counted,
 * and a DMA_MAP stripped of its fd so the device's DMA crosses the mediator.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import { MappedRegion } from '../../src/client/regions.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { Interrupts } from '../../src/client/interrupts.js';
import { createGpioDevice } from '../../src/devices/gpio.js';
import { createMemoryDevice } from '../../src/devices/memory.js';
import { createDmaEngineDevice, DmaEngineControl, DmaEngineReg } from '../../src/devices/dma-engine.js';
import { DESCRIPTOR_SIZE, DescriptorFlags, DescriptorStatus, decodeResult, encodeDescriptor } from '../../src/devices/dma-descriptor.js';
import { DeviceFeature, DeviceFeatureFlags, IrqIndex, MigrationState, RegionIndex } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { RemoteError } from '../../src/errors.js';
import { definePlugin, interposeInterrupts, sparseAreasOf, subtractRange, withSparseAreas } from '../../src/mediator/typed.js';
import { upstreamDeviceInfo, upstreamRegionInfo, upstreamRegionRead } from '../../src/mediator/upstream-ops.js';
import { Command } from '../../src/protocol/constants.js';
import { encodeRegionAccess } from '../../src/protocol/region-access.js';
import { native } from '../../src/native/addon.js';
import { StepClient } from '../support/step-client.js';
import type { MediatorPlugin } from '../../src/mediator/types.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { mediate, waitFor, type MediatedDevice } from './support.js';
import type { VfioUserDevice } from '../../src/device/device.js';

const GPIO_BAR = RegionIndex.BAR2;
const GPIO_OUTPUT = 0x10n;
const GPIO_INPUT = 0x14n;
const GPIO_IRQ_ENABLE = 0x18n;
const u32 = (v: number): Uint8Array => new Uint8Array(new Uint32Array([v >>> 0]).buffer);
const le32 = (b: Uint8Array): number => new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);

/** Runs `fn` with a client connected through a mediator carrying `plugins`; checks that no fd leaks and the session ends. */
async function through(device: VfioUserDevice, plugins: MediatorPlugin[], fn: (client: VfioUserClient, m: MediatedDevice) => Promise<void>): Promise<void> {
  await assertNoFdLeak(async () => {
    const m = await mediate(device, { plugins });
    try {
      const client = await VfioUserClient.connect(m.path);
      try {
        await fn(client, m);
      } finally {
        await client.close();
      }
      await waitFor(() => m.mediator.sessionCount === 0, 'the mediated session to end');
    } finally {
      await m.close();
    }
  });
}

describe('typed plugins through a real mediator', () => {
  it('traps a register read and emulates it; other registers reach the device', async () => {
    const seen: bigint[] = [];
    const trap = definePlugin({
      name: 'trap-input',
      regionRead: (e) => {
        seen.push(e.offset);
        return e.region === GPIO_BAR && e.offset === GPIO_INPUT ? { reply: u32(0xcafe) } : undefined;
      },
    });
    const gpio = createGpioDevice();
    gpio.setInput(0, true);
    await through(gpio.device, [trap], async (client) => {
      assert.equal(le32(await client.regionRead(GPIO_BAR, GPIO_INPUT, 4)), 0xcafe, 'emulated');
      await client.regionWrite(GPIO_BAR, GPIO_OUTPUT, u32(0x1234));
      assert.equal(le32(await client.regionRead(GPIO_BAR, GPIO_OUTPUT, 4)), 0x1234, 'forwarded to the device');
      assert.equal(gpio.outputs, 0x1234);
      assert.deepEqual(seen, [GPIO_INPUT, GPIO_OUTPUT]);
    });
  });

  it('rewrites the sparse areas: the client maps only what is left, and the trapped page crosses the mediator', async () => {
    const trapped: bigint[] = [];
    const plugin = definePlugin({
      name: 'trap-page',
      regionInfo: (e) => (e.index === 0 ? { reply: { info: withSparseAreas(e.info, subtractRange(sparseAreasOf(e.info), 0x1000n, 0x1000n)) } } : undefined),
      regionWrite: (e) => void (e.region === 0 && trapped.push(e.offset)),
    });
    const memory = createMemoryDevice({ size: 64 * 1024 });
    await through(memory.device, [plugin], async (client) => {
      const region = await MappedRegion.open(client, 0);
      try {
        assert.deepEqual(region.areas.map((a) => [a.offset, a.size]), [[0n, 0x1000n], [0x2000n, 0xe000n]]);
        assert.equal(region.pathOf(0x1000n, 4, 'write'), 'message');
        assert.equal(region.pathOf(0x2000n, 4, 'write'), 'mmap');
        await region.write(0x1800n, u32(0xdeadbeef));
        await region.write(0x2800n, u32(0x0badf00d));
        assert.deepEqual(trapped, [0x1800n], 'only the trapped page\'s write was seen');
        assert.equal(le32(await client.regionRead(0, 0x1800n, 4)), 0xdeadbeef, 'the trapped write reached the device');
        assert.equal(le32(await client.regionRead(0, 0x2800n, 4)), 0x0badf00d, 'the mapped page is the device memory');
      } finally {
        region.close();
      }
    });
  });

  it('refuses a DMA_MAP with EPERM; the session goes on', async () => {
    const maps: unknown[] = [];
    const plugin = definePlugin({ name: 'no-dma', dmaMap: (e) => (maps.push({ addr: e.addr, size: e.size, fd: e.fd !== undefined }), { error: Errno.EPERM }) });
    const guest = GuestMemory.create(1 << 20, { windowSize: 1 << 20 });
    try {
      await through(createDmaEngineDevice().device, [plugin], async (client) => {
        await assert.rejects(guest.attach(client, { iova: 0x10_0000n }), (e: unknown) => e instanceof RemoteError && e.errno === Errno.EPERM);
        assert.deepEqual(maps, [{ addr: 0x10_0000n, size: 1n << 20n, fd: true }]);
        assert.equal((await client.deviceInfo()).numRegions, 9);
      });
    } finally {
      guest.dispose();
    }
  });

  it('answers a DEVICE_FEATURE the device does not have, GET and PROBE', async () => {
    const FEATURE = 0x7e01;
    const plugin = definePlugin({
      name: 'feature',
      feature: (e) => (e.feature !== FEATURE ? undefined : e.op === 'get' ? { reply: u32(42) } : e.op === 'probe' && !e.probe.set ? { reply: true } : { error: Errno.ENOTSUP }),
    });
    const gpio = createGpioDevice();
    await through(gpio.device, [plugin], async (client) => {
      const reply = await client.deviceFeature(FEATURE | DeviceFeatureFlags.GET);
      assert.equal(le32(reply.data), 42);
      assert.equal(await client.probeFeature(FEATURE, DeviceFeatureFlags.GET), true);
      await assert.rejects(client.probeFeature(FEATURE, DeviceFeatureFlags.SET).then((ok) => assert.fail(`probe SET answered ${ok}`)), (e: unknown) => e instanceof RemoteError && e.errno === Errno.ENOTSUP);
    });
    await through(createGpioDevice().device, [], async (client) => {
      await assert.rejects(client.deviceFeature(FEATURE | DeviceFeatureFlags.GET), (e: unknown) => e instanceof RemoteError && e.errno === Errno.EINVAL, 'without the plugin: the device has no such feature');
    });
  });

  it('rewrites the device\'s answers: a read\'s data masked, a feature hidden', async () => {
    const plugin = definePlugin({
      name: 'rewrite-replies',
      regionReadReply: (e) => (e.region === GPIO_BAR && e.offset === GPIO_OUTPUT ? { reply: e.data.map((b, i) => (i === 0 ? b & 0x0f : b)) } : undefined),
      featureReply: (e) => (e.feature === DeviceFeature.MIGRATION && e.errno === 0 ? { error: Errno.ENOTSUP } : undefined),
    });
    const gpio = createGpioDevice();
    await through(gpio.device, [plugin], async (client) => {
      await client.regionWrite(GPIO_BAR, GPIO_OUTPUT, u32(0x12ab));
      assert.equal(le32(await client.regionRead(GPIO_BAR, GPIO_OUTPUT, 4)), 0x120b, 'the client reads the rewritten data');
      assert.equal(gpio.outputs, 0x12ab, 'the device holds what was written');
      await assert.rejects(client.migrationFlags(), (e: unknown) => e instanceof RemoteError && e.errno === Errno.ENOTSUP);
      assert.equal(await client.migrationState(), MigrationState.RUNNING, 'other features pass');
    });
  });

  it('gives MIG_DEVICE_STATE to migState: observed, and a transition refused with EBUSY', async () => {
    const seen: string[] = [];
    const plugin = definePlugin({
      name: 'mig',
      migState: (e) => {
        seen.push(e.op === 'get' ? 'get' : `set ${e.state}`);
        return e.op === 'set' && e.state === MigrationState.STOP_COPY ? { error: Errno.EBUSY } : undefined;
      },
    });
    await through(createGpioDevice().device, [plugin], async (client) => {
      assert.equal(await client.migrationState(), MigrationState.RUNNING);
      await client.setMigrationState(MigrationState.STOP);
      await assert.rejects(client.setMigrationState(MigrationState.STOP_COPY), (e: unknown) => e instanceof RemoteError && e.errno === Errno.EBUSY);
      assert.equal(await client.migrationState(), MigrationState.STOP, 'the refused arc did not reach the device');
      await client.setMigrationState(MigrationState.RUNNING);
      assert.deepEqual(seen.slice(0, 4), ['get', `set ${MigrationState.STOP}`, `set ${MigrationState.STOP_COPY}`, 'get']);
    });
  });

  it('a hook that throws becomes an error reply with its errno (EIO without one); the session survives', async () => {
    let calls = 0;
    const plugin = definePlugin({
      name: 'thrower',
      regionRead: (e) => {
        calls++;
        if (e.offset === 0x14n) throw Object.assign(new Error('no reading INPUT today'), { errno: Errno.EACCES });
        if (e.offset === 0x18n) throw new Error('a plain bug');
        return undefined;
      },
    });
    await through(createGpioDevice().device, [plugin], async (client) => {
      await assert.rejects(client.regionRead(GPIO_BAR, 0x14n, 4), (e: unknown) => e instanceof RemoteError && e.errno === Errno.EACCES);
      await assert.rejects(client.regionRead(GPIO_BAR, 0x18n, 4), (e: unknown) => e instanceof RemoteError && e.errno === Errno.EIO);
      assert.equal(le32(await client.regionRead(GPIO_BAR, GPIO_OUTPUT, 4)), 0, 'the session still works');
      assert.equal(calls, 3);
    });
  });

  it('interposes on the interrupt eventfds: each interrupt counted, then delivered to the client', async () => {
    const counted: number[] = [];
    const plugin = definePlugin({ name: 'count-irqs', setIrqs: (e, ctx) => interposeInterrupts(e, ctx, (s) => void counted.push(s.vector)) });
    const gpio = createGpioDevice();
    await through(gpio.device, [plugin], async (client) => {
      const irqs = await Interrupts.enable(client, IrqIndex.INTX);
      try {
        await client.regionWrite(GPIO_BAR, GPIO_IRQ_ENABLE, u32(0xffff));
        const fired = irqs.waitFor(0, 10_000);
        gpio.setInput(3, true);
        assert.ok((await fired) >= 1n);
        assert.ok(counted.length >= 1 && counted.every((v) => v === 0), `counted before delivery: ${counted.join(',')}`);
      } finally {
        await irqs.disable();
      }
    });
  });

  for (const strip of [false, true]) {
    const title = strip
      ? 'strips the fd of a DMA_MAP: the device\'s DMA then arrives as messages the plugin sees, and the copy is right'
      : 'passes the memfd of a DMA_MAP on: the device\'s DMA never crosses the mediator, and the copy is right';
    it(title, async () => {
      const dma = { maps: 0, reads: 0, writes: 0, bytes: 0 };
      const plugin = definePlugin({
        name: 'watch-dma',
        dmaMap: (e) => (dma.maps++, assert.notEqual(e.fd, undefined), strip ? { forward: { fd: null } } : undefined),
        dmaRead: (e) => void ((dma.reads += 1), (dma.bytes += Number(e.count))),
        dmaWrite: (e) => void ((dma.writes += 1), (dma.bytes += e.data.length)),
      });
      const guest = GuestMemory.create(1 << 20, { windowSize: 1 << 20 });
      try {
        await through(createDmaEngineDevice().device, [plugin], async (client) => {
          const src = await copyOnce(client, guest, 0x10_0000n, 64 * 1024);
          assert.deepEqual(guest.read(0x4_0000n, src.length), src);
          assert.equal(dma.maps, 1);
          if (strip) {
            assert.ok(dma.reads >= 2 && dma.writes >= 2, `DMA crossed the mediator (${dma.reads} reads, ${dma.writes} writes)`);
            assert.ok(dma.bytes >= 2 * src.length);
          } else {
            assert.deepEqual({ reads: dma.reads, writes: dma.writes }, { reads: 0, writes: 0 });
          }
          await guest.detach(client);
        });
      } finally {
        guest.dispose();
      }
    });
  }

  it('splits a REGION_WRITE_MULTI: emulated writes answered here, the others written to the device, the client told the total', async () => {
    const emulated: bigint[] = [];
    const plugin = definePlugin({ name: 'split', regionWrite: (e) => (e.offset === GPIO_IRQ_ENABLE ? (emulated.push(e.offset), { reply: true }) : undefined) });
    const gpio = createGpioDevice();
    await through(gpio.device, [plugin], async (client) => {
      const done = await client.regionWriteMulti([
        { region: GPIO_BAR, offset: GPIO_OUTPUT, count: 2, data: new Uint8Array([0x21, 0x43]) },
        { region: GPIO_BAR, offset: GPIO_IRQ_ENABLE, count: 2, data: new Uint8Array([0xff, 0xff]) },
      ]);
      assert.equal(done, 2n);
      assert.deepEqual(emulated, [GPIO_IRQ_ENABLE]);
      assert.equal(gpio.outputs, 0x4321, 'the forwarded write reached the card');
      assert.equal(gpio.irqEnable, 0, 'the emulated one did not');
    });
  });

  it('hooks that await the device through upstream-ops: INPUT reads what OUTPUT holds; region info and device info asked by the mediator', async () => {
    const facts: string[] = [];
    const plugin = definePlugin({
      name: 'loopback',
      onSessionStart: (ctx) => upstreamDeviceInfo(ctx).then(
        () => assert.fail('answered before VERSION'),
        (e: unknown) => void facts.push(`before VERSION: ${(e as { code?: string }).code}`),
      ),
      regionRead: async (e, ctx) => {
        if (e.region !== GPIO_BAR || e.offset !== GPIO_INPUT || e.count !== 4) return undefined;
        facts.push(`regions ${(await upstreamDeviceInfo(ctx)).numRegions}`);
        const { info, fd } = await upstreamRegionInfo(ctx, GPIO_BAR);
        if (fd !== undefined) native.close(fd);
        facts.push(`bar2 ${info.size}`);
        return { reply: await upstreamRegionRead(ctx, GPIO_BAR, GPIO_OUTPUT, 4) };
      },
    });
    await through(createGpioDevice().device, [plugin], async (client) => {
      await client.regionWrite(GPIO_BAR, GPIO_OUTPUT, u32(0x55aa));
      assert.equal(le32(await client.regionRead(GPIO_BAR, GPIO_INPUT, 4)), 0x55aa);
      assert.deepEqual(facts, ['before VERSION: EAGAIN', 'regions 9', 'bar2 256']);
    });
  });

  it('forwards a malformed command untouched: the device refuses it (EINVAL), nothing crashes, the session goes on', async () => {
    let called = 0;
    const plugin = definePlugin({ name: 'strict', regionRead: () => (called++, undefined) });
    await assertNoFdLeak(async () => {
      const m = await mediate(createGpioDevice().device, { plugins: [plugin] });
      try {
        const { client } = await StepClient.open(m.path);
        try {
          await client.fails(Command.REGION_READ, new Uint8Array([1, 2, 3]), Errno.EINVAL);
          assert.equal(called, 0, 'the hook never saw the malformed read');
          const r = await client.ok(Command.REGION_READ, encodeRegionAccess({ region: GPIO_BAR, offset: GPIO_OUTPUT, count: 4 }));
          assert.equal(r.payload.length, 20);
          assert.equal(called, 1);
        } finally {
          client.close();
        }
        await waitFor(() => m.mediator.sessionCount === 0, 'the mediated session to end');
      } finally {
        await m.close();
      }
    });
  });
});

/** Maps `guest` at `iova`, has the DMA engine copy `bytes` from gpa 0x1_0000 to 0x4_0000, waits for DONE. @returns the source bytes. */
async function copyOnce(client: VfioUserClient, guest: GuestMemory, iova: bigint, bytes: number): Promise<Uint8Array> {
  await guest.attach(client, { iova });
  const src = new Uint8Array(bytes).map((_, i) => (i * 7 + 3) & 0xff);
  guest.write(0x1_0000n, src);
  guest.write(0n, encodeDescriptor({ src: iova + 0x1_0000n, dst: iova + 0x4_0000n, length: src.length, flags: DescriptorFlags.COPY }));
  const reg = (offset: number, v: number): Promise<void> => client.regionWrite(RegionIndex.BAR0, BigInt(offset), u32(v));
  await reg(DmaEngineReg.RING_BASE_LO, Number(iova & 0xffff_ffffn));
  await reg(DmaEngineReg.RING_BASE_HI, Number(iova >> 32n));
  await reg(DmaEngineReg.RING_SIZE, 4);
  await reg(DmaEngineReg.CONTROL, DmaEngineControl.ENABLE);
  await reg(DmaEngineReg.TAIL, 1);
  await waitFor(() => (decodeResult(guest.read(0n, DESCRIPTOR_SIZE)).status & 0xffff) !== DescriptorStatus.PENDING, 'the descriptor to complete');
  assert.equal(decodeResult(guest.read(0n, DESCRIPTOR_SIZE)).status & 0xffff, DescriptorStatus.DONE);
  await reg(DmaEngineReg.CONTROL, 0);
  return src;
}
