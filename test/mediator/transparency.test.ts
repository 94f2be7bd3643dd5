/**
 * Transparency: with no plugin, the mediator is invisible. The same sequence
 * of raw requests (every command our sample devices answer, error cases
 * included) sent straight to a device and through a mediator gets identical
 * replies: msg_id (the client's own), cmd, flags, error_no and payload bytes;
 * and fds that refer to the same files (same st_dev/st_ino). Against our
 * devices always; against libvfio-user's samples when LIBVFIO_USER_BUILD is
 * set (fresh sample processes, so fds compare by kind and size only).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fstatSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VfioUserDevice } from '../../src/device/device.js';
import { createGpioDevice } from '../../src/devices/gpio.js';
import { createMemoryDevice } from '../../src/devices/memory.js';
import { createDmaEngineDevice } from '../../src/devices/dma-engine.js';
import { Mediator } from '../../src/mediator/mediator.js';
import { Command, DeviceFeature, DeviceFeatureFlags, DmaMapFlags, HeaderFlags, IrqSetFlags, RegionIndex } from '../../src/protocol/constants.js';
import { decodeDeviceInfo, encodeDeviceInfo } from '../../src/protocol/device.js';
import { encodeDmaMapRequest, encodeDmaUnmapRequest } from '../../src/protocol/dma.js';
import { encodeDeviceFeature } from '../../src/protocol/feature.js';
import { encodeIrqInfo, encodeIrqSet } from '../../src/protocol/irq.js';
import { encodeRegionAccess, encodeRegionAccessWithData } from '../../src/protocol/region-access.js';
import { decodeRegionInfo, encodeRegionInfoRequest } from '../../src/protocol/region.js';
import type { Capabilities } from '../../src/protocol/capabilities.js';
import { createEventFd, memfdCreate, native } from '../../src/native/addon.js';
import { silentLogger } from '../../src/log.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { StepClient, type Reply } from '../support/step-client.js';
import { libvfioUserBuild, startSampleServer } from '../interop/libvfio-user.js';

/** A reply as compared: header fields, payload bytes, and what its fds are. */
interface Seen {
  step: string;
  msgId: number;
  cmd: number;
  flags: number;
  errorNo: number;
  payload: string;
  fds: string[];
}

type FdView = 'identity' | 'kind';

function describeFd(fd: number, view: FdView): string {
  const st = fstatSync(fd);
  const kind = st.isSocket() ? 'socket' : st.isFile() ? 'file' : st.isFIFO() ? 'fifo' : 'other';
  return view === 'identity' && kind !== 'socket' ? `${kind}:${st.dev}:${st.ino}` : `${kind}:${kind === 'socket' ? 0 : st.size}`;
}

/** @param owned - whether the fds are ours to close (the VERSION reply's twin socket is the step client's). */
function seen(step: string, r: Reply, view: FdView, owned = true): Seen {
  const fds = r.fds.map((fd) => describeFd(fd, view));
  if (owned) for (const fd of r.fds) native.close(fd);
  return { step, msgId: r.msgId, cmd: r.cmd, flags: r.flags, errorNo: r.errorNo, payload: Buffer.from(r.payload).toString('hex'), fds };
}

/**
 * The script: VERSION, then every query (regions with a short and a full argsz, IRQs), config and BAR
 * reads, a config write read back, DMA map/unmap with a memfd, SET_IRQS with an eventfd, feature probes,
 * error cases (bad region, bad command, short argsz), reset. Returns every reply as {@link Seen}.
 */
async function runScript(path: string, caps: Capabilities, view: FdView): Promise<Seen[]> {
  const { client } = await StepClient.open(path, caps);
  const out: Seen[] = [seen('VERSION', client.replies[0] as Reply, view, false)];
  const step = async (name: string, cmd: number, payload?: Uint8Array, fds?: number[], flags = 0): Promise<Reply> => {
    const r = await client.request(cmd, payload, fds, flags);
    const copy = { ...r, fds: [...r.fds] };
    out.push(seen(name, r, view));
    return copy;
  };
  const mem = memfdCreate('transparency', 64 * 1024);
  const efd = createEventFd();
  try {
    const infoReply = await step('DEVICE_GET_INFO', Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }));
    const info = decodeDeviceInfo(infoReply.payload);
    const bars: { index: number; size: bigint; flags: number }[] = [];
    for (let i = 0; i < info.numRegions; i++) {
      await step(`REGION_INFO ${i} short`, Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 32, index: i }));
      const full = await step(`REGION_INFO ${i}`, Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 512, index: i }));
      if ((full.flags & HeaderFlags.ERROR) === 0) {
        const ri = decodeRegionInfo(full.payload);
        if (i <= RegionIndex.BAR5 && ri.size > 0n) bars.push({ index: i, size: ri.size, flags: ri.flags });
      }
    }
    for (let i = 0; i < info.numIrqs; i++) await step(`IRQ_INFO ${i}`, Command.DEVICE_GET_IRQ_INFO, encodeIrqInfo({ argsz: 16, flags: 0, index: i, count: 0 }));
    for (let at = 0; at < 256; at += 64) await step(`config @${at}`, Command.REGION_READ, encodeRegionAccess({ region: RegionIndex.CONFIG, offset: BigInt(at), count: 64 }));
    for (const bar of bars) {
      const count = Number(bar.size < 16n ? bar.size : 16n);
      await step(`BAR${bar.index} read`, Command.REGION_READ, encodeRegionAccess({ region: bar.index, offset: 0n, count }));
    }
    await step('config write', Command.REGION_WRITE, encodeRegionAccessWithData({ region: RegionIndex.CONFIG, offset: 0x0dn, count: 1, data: new Uint8Array([0x40]) }));
    await step('config read back', Command.REGION_READ, encodeRegionAccess({ region: RegionIndex.CONFIG, offset: 0x0dn, count: 1 }));
    const flags = DmaMapFlags.READ | DmaMapFlags.WRITE;
    await step('DMA_MAP memfd', Command.DMA_MAP, encodeDmaMapRequest({ argsz: 32, flags, offset: 0n, addr: 0x10_0000n, size: 0x1_0000n }), [mem]);
    await step('DMA_UNMAP', Command.DMA_UNMAP, encodeDmaUnmapRequest({ argsz: 24, flags: 0, addr: 0x10_0000n, size: 0x1_0000n }));
    await step('DMA_UNMAP again', Command.DMA_UNMAP, encodeDmaUnmapRequest({ argsz: 24, flags: 0, addr: 0x10_0000n, size: 0x1_0000n }));
    const trigger = IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER;
    await step('SET_IRQS eventfd', Command.DEVICE_SET_IRQS, encodeIrqSet({ argsz: 20, flags: trigger, index: 0, start: 0, count: 1 }), [efd]);
    await step('SET_IRQS off', Command.DEVICE_SET_IRQS, encodeIrqSet({ argsz: 20, flags: IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, index: 0, start: 0, count: 0 }));
    for (const feature of [DeviceFeature.MIGRATION, DeviceFeature.DMA_LOGGING_START]) {
      await step(`FEATURE ${feature} probe`, Command.DEVICE_FEATURE, encodeDeviceFeature({ argsz: 8, flags: feature | DeviceFeatureFlags.PROBE | DeviceFeatureFlags.GET, data: new Uint8Array(0) }));
    }
    await step('read of region 99', Command.REGION_READ, encodeRegionAccess({ region: 99, offset: 0n, count: 4 }));
    await step('unknown command', 0x7777, new Uint8Array(8));
    await step('short DEVICE_GET_INFO', Command.DEVICE_GET_INFO, new Uint8Array(4));
    await step('DEVICE_RESET', Command.DEVICE_RESET);
    const noReply = client.post(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }), HeaderFlags.NO_REPLY);
    await step('after NO_REPLY', Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }));
    assert.ok(!client.replies.some((r) => r.msgId === noReply), 'no reply to a NO_REPLY command');
    return out;
  } finally {
    native.close(mem);
    native.close(efd);
    client.close();
  }
}

/** Runs the script straight to `device` then through a mediator in front of it (same device, one session after the other). */
async function compareOurs(device: VfioUserDevice, caps: Capabilities): Promise<{ direct: Seen[]; mediated: Seen[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-transparency-'));
  const upstream = join(dir, 'device.sock');
  const server = device.serve({ path: upstream });
  const mediator = await Mediator.listen({ upstream, listen: join(dir, 'm.sock'), log: silentLogger() });
  try {
    const direct = await runScript(upstream, caps, 'identity');
    await server.idle();
    const mediated = await runScript(mediator.path, caps, 'identity');
    return { direct, mediated };
  } finally {
    await mediator.close();
    await server.close();
    device.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** What the test compares: with a twin socket, its fd is the mediator's own socket (same kind, another inode). */
function assertSame(direct: Seen[], mediated: Seen[]): void {
  assert.ok(direct.length > 20, `a long script (${direct.length} replies)`);
  assert.equal(mediated.length, direct.length);
  for (let i = 0; i < direct.length; i++) assert.deepEqual(mediated[i], direct[i], `reply to ${direct[i]!.step}`);
}

describe('mediator transparency (no plugin): identical replies, same files', () => {
  const devices: [string, () => VfioUserDevice][] = [
    ['gpio', () => createGpioDevice().device],
    ['memory', () => createMemoryDevice({ size: 64 * 1024 }).device],
    ['dma-engine', () => createDmaEngineDevice().device],
  ];
  for (const [name, make] of devices) {
    it(`${name}: every reply byte for byte, fds the same files`, () =>
      assertNoFdLeak(async () => {
        const { direct, mediated } = await compareOurs(make(), { maxMsgFds: 8 });
        assertSame(direct, mediated);
        if (name === 'memory') assert.ok(direct.some((s) => s.fds.some((f) => f.startsWith('file:'))), 'a region fd was compared');
      }));
  }

  it('dma-engine with a twin socket: the same replies; the twin fd is a socket as the device gives', () =>
    assertNoFdLeak(async () => {
      const { direct, mediated } = await compareOurs(createDmaEngineDevice().device, { maxMsgFds: 8, twinSocket: { supported: true } });
      assert.deepEqual(direct[0]!.fds, ['socket:0']);
      assertSame(direct, mediated);
    }));

  const build = libvfioUserBuild();
  const samples: [string, string][] = [
    ['gpio-pci-idio-16', 'gpio-pci-idio-16'],
    ['server', 'server'],
  ];
  for (const [name, file] of samples) {
    it(`libvfio-user's ${name}: every reply byte for byte (fds by kind and size)`, { skip: build.skip }, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'vfio-user-transparency-lvu-'));
      const binary = join(build.dir ?? '', 'samples', file);
      const run = async (through: boolean, tag: string): Promise<Seen[]> => {
        const path = join(dir, `${tag}.sock`);
        const sample = await startSampleServer(binary, ['-v', path], path);
        const mediator = through ? await Mediator.listen({ upstream: path, listen: join(dir, `${tag}-m.sock`), log: silentLogger() }) : undefined;
        try {
          return await runScript(mediator?.path ?? path, { maxMsgFds: 8 }, 'kind');
        } finally {
          await mediator?.close();
          await sample.stop();
        }
      };
      try {
        const direct = await run(false, 'direct');
        const mediated = await run(true, 'mediated');
        assertSame(direct, mediated);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
