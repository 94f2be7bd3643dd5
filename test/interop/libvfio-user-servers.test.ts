/**
 * Optional interoperability test: our step client (and so our codec) against
 * libvfio-user's sample servers. Skipped unless LIBVFIO_USER_BUILD names a
 * libvfio-user build directory (docs/interop.md).
 *
 * - `samples/gpio-pci-idio-16`: a 16-pin GPIO card, PCI 0x494f:0x0dc8, BAR2 of
 *   256 bytes (callbacks), INTx, migration callbacks, DMA enabled.
 * - `samples/server`: only if it starts. At efd091b it refuses to (its BAR1 is
 *   0x3000 bytes, not a power of two); upstream raised BAR1 to 16 KiB later.
 *   This is where the GET_REGION_INFO argsz retry, the sparse-mmap capability
 *   and its fd are exercised.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Command,
  DeviceFeature,
  DeviceFeatureFlags,
  DeviceInfoFlags,
  DmaMapFlags,
  HeaderFlags,
  IrqInfoFlags,
  IrqSetFlags,
  MigrationFlags,
  RegionIndex,
  RegionInfoFlags,
  createEventFd,
  decodeDeviceFeature,
  decodeDeviceInfo,
  decodeDmaUnmapReply,
  decodeIrqInfo,
  decodeMigrationFeature,
  decodeRegionInfo,
  decodeRegionReadReply,
  decodeRegionWriteReply,
  encodeDeviceFeature,
  encodeDeviceInfo,
  encodeDmaMapRequest,
  encodeDmaUnmapRequest,
  encodeIrqInfo,
  encodeIrqSet,
  encodeRegionAccess,
  encodeRegionAccessWithData,
  encodeRegionInfoRequest,
  mapFd,
  memfdCreate,
  unmap,
} from '../../src/index.js';
import type { RegionInfo } from '../../src/index.js';
import { native } from '../../src/internal.js';
import { StepClient } from '../support/step-client.js';
import { libvfioUserBuild, startSampleServer, type SampleServer } from './libvfio-user.js';

const build = libvfioUserBuild();
const EINVAL = 22;

/** What one GET_REGION_INFO exchange (with its argsz retry) gave. */
interface RegionInfoResult {
  /** The reply to argsz = 32. */
  first: RegionInfo;
  firstLength: number;
  firstFds: number;
  /** The reply to the retry with the argsz the server asked for, if it asked for more. */
  retry: RegionInfo | undefined;
  fds: number[];
}

/** GET_REGION_INFO the way a VMM does it: argsz 32 first, again with the argsz the reply asks for. */
async function regionInfo(client: StepClient, index: number): Promise<RegionInfoResult> {
  const r1 = await client.ok(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 32, index }));
  const first = decodeRegionInfo(r1.payload);
  for (const fd of r1.fds) native.close(fd);
  if (first.argsz <= 32) return { first, firstLength: r1.payload.length, firstFds: r1.fds.length, retry: undefined, fds: [] };
  const r2 = await client.ok(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: first.argsz, index }));
  assert.equal(r2.payload.length, first.argsz, 'the retry returns everything asked for');
  return { first, firstLength: r1.payload.length, firstFds: r1.fds.length, retry: decodeRegionInfo(r2.payload), fds: r2.fds };
}

/** PCI ids from the first 64 bytes of config space, read with REGION_READ. */
async function pciIds(client: StepClient): Promise<{ vendor: number; device: number; subVendor: number; subDevice: number; headerType: number }> {
  const r = await client.ok(Command.REGION_READ, encodeRegionAccess({ offset: 0n, region: RegionIndex.CONFIG, count: 64 }));
  const reply = decodeRegionReadReply(r.payload);
  assert.ok(reply);
  assert.deepEqual([reply.offset, reply.region, reply.count, reply.data.length], [0n, RegionIndex.CONFIG, 64, 64]);
  const v = new DataView(reply.data.buffer, reply.data.byteOffset, reply.data.length);
  return { vendor: v.getUint16(0, true), device: v.getUint16(2, true), subVendor: v.getUint16(0x2c, true), subDevice: v.getUint16(0x2e, true), headerType: v.getUint8(0x0e) };
}

async function irqInfo(client: StepClient, index: number): Promise<{ flags: number; count: number }> {
  const r = await client.ok(Command.DEVICE_GET_IRQ_INFO, encodeIrqInfo({ argsz: 16, flags: 0, index, count: 0 }));
  const info = decodeIrqInfo(r.payload);
  assert.deepEqual([info.argsz, info.index], [16, index]);
  return { flags: info.flags, count: info.count };
}

describe('our client against libvfio-user samples/gpio-pci-idio-16', { skip: build.skip }, () => {
  let dir: string;
  let server: SampleServer;
  let client: StepClient;
  let versionReply: Awaited<ReturnType<typeof StepClient.open>>['version'];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-user-interop-gpio-'));
    const path = join(dir, 'gpio.sock');
    server = await startSampleServer(join(build.dir ?? '', 'samples', 'gpio-pci-idio-16'), ['-v', path], path);
    ({ client, version: versionReply } = await StepClient.open(path, { maxMsgFds: 8 }));
  });

  after(async () => {
    client?.close();
    const end = await server?.stop();
    rmSync(dir, { recursive: true, force: true });
    // It re-attaches after every client, so it only ends by our SIGTERM.
    assert.equal(end?.signal, 'SIGTERM', `gpio-pci-idio-16 ended unexpectedly: ${end?.stderr}`);
  });

  it('VERSION: 0.2 with its JSON capabilities (migration page size included: the sample migrates)', () => {
    assert.equal(versionReply.major, 0);
    assert.equal(versionReply.minor, 2);
    const caps = versionReply.capabilities;
    assert.equal(caps?.maxMsgFds, 8);
    assert.equal(caps?.maxDataXferSize, 1 << 20);
    assert.equal(caps?.migration?.pgsize, 4096);
    assert.equal(caps?.twinSocket, undefined);
  });

  it('DEVICE_GET_INFO: PCI | RESET, 9 regions, 5 IRQ indexes', async () => {
    const r = await client.ok(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }));
    assert.deepEqual(decodeDeviceInfo(r.payload), { argsz: 16, flags: DeviceInfoFlags.PCI | DeviceInfoFlags.RESET, numRegions: 9, numIrqs: 5 });
  });

  it('DEVICE_GET_REGION_INFO for all 9 regions: BAR2 and config space of 256 bytes, no caps, so no retry', async () => {
    const RW = RegionInfoFlags.READ | RegionInfoFlags.WRITE;
    for (let index = 0; index < 9; index++) {
      const r = await regionInfo(client, index);
      assert.equal(r.retry, undefined, `region ${index} needed no retry`);
      assert.equal(r.firstFds, 0);
      const used = index === RegionIndex.BAR2 || index === RegionIndex.CONFIG;
      assert.deepEqual(
        { argsz: r.first.argsz, flags: r.first.flags, index: r.first.index, capOffset: r.first.capOffset, size: r.first.size, offset: r.first.offset, caps: r.first.caps },
        { argsz: 32, flags: used ? RW : 0, index, capOffset: 0, size: used ? 256n : 0n, offset: 0n, caps: [] },
      );
    }
    // Too small an argsz, and an index past the last region: EINVAL.
    await client.fails(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 31, index: 0 }), EINVAL);
    await client.fails(Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 32, index: 9 }), EINVAL);
  });

  it('REGION_READ of config space: vendor 0x494f, device 0x0dc8, subsystem 0:0, type-0 header', async () => {
    assert.deepEqual(await pciIds(client), { vendor: 0x494f, device: 0x0dc8, subVendor: 0, subDevice: 0, headerType: 0 });
  });

  it('REGION_WRITE / REGION_READ of BAR2: an output pin toggled shows on the input register', async () => {
    const readInputs = async (): Promise<number> => {
      const r = await client.ok(Command.REGION_READ, encodeRegionAccess({ offset: 1n, region: RegionIndex.BAR2, count: 1 }));
      const reply = decodeRegionReadReply(r.payload);
      assert.deepEqual([reply?.offset, reply?.region, reply?.count], [1n, RegionIndex.BAR2, 1]);
      return reply!.data[0]!;
    };
    // Input bit i is 1 while output pin i's toggle count is a multiple of 3: all 1 on a fresh device.
    assert.equal(await readInputs(), 0xff);
    const w = await client.ok(Command.REGION_WRITE, encodeRegionAccessWithData({ offset: 0n, region: RegionIndex.BAR2, count: 1, data: Uint8Array.of(0x01) }));
    assert.deepEqual(decodeRegionWriteReply(w.payload), { offset: 0n, region: RegionIndex.BAR2, count: 1 });
    assert.equal(await readInputs(), 0xfe);
    await client.fails(Command.REGION_READ, encodeRegionAccess({ offset: 0xffn, region: RegionIndex.BAR2, count: 2 }), EINVAL);
  });

  it('DEVICE_GET_IRQ_INFO: INTx 1, MSI 0, MSI-X 0, ERR 1, REQ 1, all EVENTFD', async () => {
    const infos = [];
    for (let index = 0; index < 5; index++) infos.push(await irqInfo(client, index));
    const E = IrqInfoFlags.EVENTFD;
    assert.deepEqual(infos, [{ flags: E, count: 1 }, { flags: E, count: 0 }, { flags: E, count: 0 }, { flags: E, count: 1 }, { flags: E, count: 1 }]);
    await client.fails(Command.DEVICE_GET_IRQ_INFO, encodeIrqInfo({ argsz: 16, flags: 0, index: 5, count: 0 }), EINVAL);
  });

  it('DEVICE_SET_IRQS: an INTx eventfd installed, triggered from our side (TRIGGER|NONE), then disabled', async () => {
    const efd = createEventFd();
    try {
      const trigger = IrqSetFlags.ACTION_TRIGGER;
      await client.ok(Command.DEVICE_SET_IRQS, encodeIrqSet({ argsz: 20, flags: trigger | IrqSetFlags.DATA_EVENTFD, index: 0, start: 0, count: 1 }), [efd]);
      assert.equal(native.eventfdRead(efd), -11, 'nothing signalled yet (EAGAIN)');
      await client.ok(Command.DEVICE_SET_IRQS, encodeIrqSet({ argsz: 20, flags: trigger | IrqSetFlags.DATA_NONE, index: 0, start: 0, count: 1 }));
      assert.equal(native.eventfdRead(efd), 1n, 'the server wrote 1 to our eventfd');
      // MSI has no vectors here; a count of 2 exceeds INTx's one.
      await client.fails(Command.DEVICE_SET_IRQS, encodeIrqSet({ argsz: 20, flags: trigger | IrqSetFlags.DATA_NONE, index: 1, start: 0, count: 1 }), EINVAL);
      await client.fails(Command.DEVICE_SET_IRQS, encodeIrqSet({ argsz: 20, flags: trigger | IrqSetFlags.DATA_NONE, index: 0, start: 0, count: 2 }), EINVAL);
      await client.ok(Command.DEVICE_SET_IRQS, encodeIrqSet({ argsz: 20, flags: trigger | IrqSetFlags.DATA_NONE, index: 0, start: 0, count: 0 }));
    } finally {
      native.close(efd);
    }
  });

  it('DEVICE_FEATURE GET MIGRATION: STOP_COPY | PRE_COPY', async () => {
    const r = await client.ok(Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 16, flags: DeviceFeatureFlags.GET | DeviceFeature.MIGRATION, data: new Uint8Array(0) }));
    const reply = decodeDeviceFeature(r.payload);
    assert.deepEqual([reply.argsz, reply.flags], [16, DeviceFeatureFlags.GET | DeviceFeature.MIGRATION]);
    assert.equal(decodeMigrationFeature(reply.data).flags, MigrationFlags.STOP_COPY | MigrationFlags.PRE_COPY);
  });

  it('DMA_MAP of a memfd and DMA_UNMAP: the unmap reply echoes the request', async () => {
    const fd = memfdCreate('interop-guest', 0x2000);
    try {
      await client.ok(Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags: DmaMapFlags.READ | DmaMapFlags.WRITE, offset: 0n, addr: 0x100000n, size: 0x2000n }), [fd]);
      const r = await client.ok(Command.DMA_UNMAP, encodeDmaUnmapRequest({ argsz: 24, flags: 0, addr: 0x100000n, size: 0x2000n }));
      assert.deepEqual(decodeDmaUnmapReply(r.payload), { argsz: 24, flags: 0, addr: 0x100000n, size: 0x2000n });
      await client.fails(Command.DMA_UNMAP, encodeDmaUnmapRequest({ argsz: 24, flags: 0, addr: 0x100000n, size: 0x2000n }), 2);
    } finally {
      native.close(fd);
    }
  });

  it('REGION_WRITE_MULTI (not in libvfio-user) and a NO_REPLY error: as documented', async () => {
    await client.fails(Command.REGION_WRITE_MULTI, new Uint8Array(8), EINVAL);
    const silent = client.post(Command.REGION_READ, encodeRegionAccess({ offset: 0x1000n, region: RegionIndex.BAR2, count: 1 }), HeaderFlags.NO_REPLY);
    await pciIds(client);
    assert.equal(client.replies.some((r) => r.msgId === silent), false, 'a failed NO_REPLY request gets no reply');
  });
});

describe('our client against libvfio-user samples/server (when it starts)', { skip: build.skip }, () => {
  let dir: string;
  let server: SampleServer | undefined;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-user-interop-server-'));
    const path = join(dir, 'server.sock');
    server = await startSampleServer(join(build.dir ?? '', 'samples', 'server'), ['-v', path], path);
  });

  after(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('region info with the argsz retry, the sparse-mmap capability and its fd; BAR1 mapped', async (t) => {
    const sample = server!;
    // The sample binds its socket before it sets its regions up, so it may die after we connect.
    const opened = await Promise.race([
      StepClient.open(join(dir, 'server.sock'), { maxMsgFds: 8 }).catch((e: unknown) => e as Error),
      sample.exited,
    ]);
    if (!(opened instanceof Object && 'client' in opened)) {
      const end = await sample.exited;
      // efd091b: "BAR region size 12288 must be a power of 2", "failed to setup BAR1 region".
      assert.match(end.stderr, /BAR region size 12288 must be a power of 2/, `samples/server failed otherwise: ${end.stderr}`);
      t.skip('samples/server refuses to start at this commit (its BAR1 of 0x3000 bytes is not a power of two)');
      return;
    }
    const { client, version } = opened;
    try {
      assert.equal(version.capabilities?.migration?.pgsize, 4096);
      assert.deepEqual(await pciIds(client), { vendor: 0xdead, device: 0xbeef, subVendor: 0xcafe, subDevice: 0xbabe, headerType: 0 });
      const bar0 = await regionInfo(client, RegionIndex.BAR0);
      assert.deepEqual([bar0.first.flags, bar0.first.size, bar0.retry], [RegionInfoFlags.READ | RegionInfoFlags.WRITE, 8n, undefined]);

      const bar1 = await regionInfo(client, RegionIndex.BAR1);
      // The first reply: 32 bytes, argsz 80 (32 + 16 cap header + 2 × 16 areas), MMAP but no CAPS, no fd.
      assert.deepEqual([bar1.firstLength, bar1.first.argsz, bar1.first.flags, bar1.first.capOffset, bar1.firstFds], [32, 80, 0x7, 0, 0]);
      const retry = bar1.retry;
      assert.ok(retry);
      assert.deepEqual([retry.argsz, retry.flags, retry.capOffset, retry.size, bar1.fds.length], [80, 0xf, 32, 0x4000n, 1]);
      assert.deepEqual(retry.caps, [{ kind: 'sparse-mmap', version: 1, areas: [{ offset: 0n, size: 0x1000n }, { offset: 0x2000n, size: 0x1000n }] }]);

      // Map the first sparse area, write through it, read it back with REGION_READ.
      const fd = bar1.fds[0]!;
      const area = new Uint8Array(mapFd(fd, Number(retry.offset), 0x1000, true));
      native.close(fd);
      area.set([0x76, 0x66, 0x69, 0x6f], 0);
      const r = await client.ok(Command.REGION_READ, encodeRegionAccess({ offset: 0n, region: RegionIndex.BAR1, count: 4 }));
      assert.deepEqual([...decodeRegionReadReply(r.payload)!.data], [0x76, 0x66, 0x69, 0x6f]);
      unmap(area.buffer as ArrayBuffer);

      // BAR0 reads time(NULL) - 0 before anything is written.
      const t0 = await client.ok(Command.REGION_READ, encodeRegionAccess({ offset: 0n, region: RegionIndex.BAR0, count: 8 }));
      const data = decodeRegionReadReply(t0.payload)!.data;
      const seconds = new DataView(data.buffer, data.byteOffset, 8).getBigInt64(0, true);
      assert.ok(Math.abs(Number(seconds) - Date.now() / 1000) < 5, `BAR0 read ${seconds}`);
    } finally {
      client.close();
    }
    // The sample exits when its client goes away.
    const end = await sample.exited;
    assert.equal(end.code, 0, end.stderr);
  });
});
