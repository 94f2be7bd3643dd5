/**
 * The live-migration orchestrator on the sample devices (the GPIO card and the
 * memory device; the DMA engine has its own tests), each with 8 MiB of guest
 * memory, to a local destination (a second session in this process) and to a
 * remote one (a MigrationReceiver on loopback TCP). The source is put in a
 * non-default state through its registers (and, for the memory device, its
 * mmapped BAR0); a "guest" keeps writing guest memory (and BAR0) during
 * pre-copy and stops when the orchestrator decides to switch over. Afterwards
 * guest memory, device state (`save()`), the BAR registers and config space
 * are compared byte for byte, and the destination device is driven once more.
 */
import { read32, write32 } from '../support/regs.js';
import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { setCommand, writeConfig } from '../../src/client/pci-config.js';
import { MappedRegion } from '../../src/client/regions.js';
import type { VfioUserDevice } from '../../src/device/device.js';
import { createGpioDevice, GpioReg, type GpioDevice } from '../../src/devices/gpio.js';
import { createMemoryDevice, MemoryCommand, MemoryReg, MemoryStatus, type MemoryDevice } from '../../src/devices/memory.js';
import { MEMORY_STATE_HEADER_SIZE } from '../../src/devices/memory-migration.js';
import { migrate, type MigrationReport, type Progress } from '../../src/orchestrator/migrate.js';
import { MigrationReceiver, type ReceiveOutcome } from '../../src/orchestrator/receiver.js';
import { RemoteDestination } from '../../src/orchestrator/remote.js';
import { MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import { PciCommand } from '../../src/pci/registers.js';
import { pattern, serve } from '../devices/driver.js';

const IOVA = 0x2_0000_0000n;
const KiB = 1024;
const MiB = 1024 * KiB;
const GUEST = 8 * MiB;
const PAGE = 4096;
const BUDGET_MS = 2000;
const CONFIG = RegionIndex.CONFIG;
const BAR0 = RegionIndex.BAR0;
const BAR2 = RegionIndex.BAR2;
const MEMORY_BAR0 = 1 * MiB;

type Kind = 'local' | 'remote';

/** One side: a served sample device, a session to it and guest memory attached at IOVA. */
interface Host<D> {
  dev: D;
  client: VfioUserClient;
  memory: GuestMemory;
  iova: bigint;
}

/** What a device contributes to the common scenario. */
interface Spec<D extends { device: VfioUserDevice }> {
  name: string;
  create(): D;
  /** Programs config space and puts the device in a non-default state. */
  prepare(src: Host<D>, cleanup: Array<() => void>): Promise<void>;
  /** A guest step during pre-copy (every event-loop turn, besides the guest-memory writes), e.g. a BAR0 write through the mmap. */
  guestTick?(k: number): void;
  /** Device-specific checks after the migration (both sides compared; then the destination driven). */
  verify(src: Host<D>, dst: Host<D>, report: MigrationReport, cleanup: Array<() => void>): Promise<void>;
}

const u32 = (b: Uint8Array, at = 0): number => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at, true);

async function save(device: VfioUserDevice): Promise<Uint8Array> {
  const m = device.definition.migration;
  assert.ok(m, 'the device is migratable');
  return new Uint8Array(await m.save());
}

async function openHost<D extends { device: VfioUserDevice }>(spec: Spec<D>, closers: Array<() => Promise<void> | void>): Promise<Host<D>> {
  const dev = spec.create();
  const served = serve(dev.device);
  closers.push(() => served.close());
  const client = await VfioUserClient.connect(served.path);
  closers.push(() => client.close());
  const memory = GuestMemory.create(GUEST);
  closers.push(() => memory.dispose());
  await memory.attach(client, { iova: IOVA, mode: 'fd' });
  return { dev, client, memory, iova: IOVA };
}

/** A receiving host in this process: its own device, and a receiver preparing a session and guest memory for it per offer. */
interface Receiving<D> {
  url: string;
  /** The side prepared for the offer (undefined before one). */
  side: Host<D> | undefined;
  outcome: Promise<ReceiveOutcome>;
}

async function openReceiving<D extends { device: VfioUserDevice }>(spec: Spec<D>, closers: Array<() => Promise<void> | void>): Promise<Receiving<D>> {
  const dev = spec.create();
  const served = serve(dev.device);
  closers.push(() => served.close());
  let settle: (o: ReceiveOutcome) => void = () => undefined;
  const r: Receiving<D> = { url: '', side: undefined, outcome: new Promise((resolve) => (settle = resolve)) };
  const receiver = await MigrationReceiver.listen({
    port: 0,
    prepare: async (offer) => {
      const client = await VfioUserClient.connect(served.path);
      const memory = GuestMemory.create(offer.memory.size);
      let released = false;
      closers.push(() => {
        if (released) return;
        client.close();
        memory.dispose();
      });
      await memory.attach(client, { iova: offer.memory.iova, mode: 'fd' });
      r.side = { dev, client, memory, iova: offer.memory.iova };
      return {
        side: { client, memory, iova: offer.memory.iova },
        release: async () => {
          released = true;
          client.close();
          memory.dispose();
          await new Promise((resolve) => setTimeout(resolve, 20));
        },
      };
    },
    onOutcome: (o) => settle(o),
  });
  closers.push(() => receiver.close());
  r.url = `tcp://127.0.0.1:${receiver.port}`;
  return r;
}

/** The common scenario: prepare, migrate under guest writes, compare, drive the destination. */
async function scenario<D extends { device: VfioUserDevice }>(t: TestContext, spec: Spec<D>, kind: Kind): Promise<void> {
  const closers: Array<() => Promise<void> | void> = [];
  const cleanup: Array<() => void> = [];
  try {
    const src = await openHost(spec, closers);
    let local: Host<D> | undefined;
    let remote: Receiving<D> | undefined;
    if (kind === 'local') local = await openHost(spec, closers);
    else remote = await openReceiving(spec, closers);

    // Guest memory: a seeded pattern over all 8 MiB; the device in a non-default state.
    src.memory.write(0n, pattern(GUEST, 0x5eed));
    await spec.prepare(src, cleanup);
    const configBefore = await src.client.regionRead(CONFIG, 0n, 256);
    const fresh = spec.create();
    try {
      assert.notDeepEqual(await save(src.dev.device), await save(fresh.device), 'the source state is not the default one');
    } finally {
      fresh.device.dispose();
    }

    // The guest: one page write per event-loop turn (low pages, copied first, and pages spread over the memory) until the switch-over.
    let writes = 0;
    let writing = true;
    const guest = (): void => {
      if (!writing) return;
      const k = writes++;
      const page = k % 2 === 0 ? k % 32 : (k * 613) % (GUEST / PAGE);
      src.memory.write(BigInt(page * PAGE + (k % 8) * 512), pattern(512, 0x1000 + k));
      setImmediate(guest);
    };
    // Device-side guest writes every event-loop turn too: the device never runs dry of pre-copy deltas, so a
    // pre-copy round of device data must end by its time slice (it once drained until an empty read: a hang).
    let ticks = 0;
    let ticking = true;
    const tick = (): void => {
      if (!writing || !ticking) return;
      spec.guestTick?.(ticks++);
      setImmediate(tick);
    };
    setImmediate(tick);
    const ticker = { stop: () => void (ticking = false) };
    cleanup.push(() => ticker.stop());
    const progress: Progress[] = [];
    const onProgress = (p: Progress): void => {
      progress.push(p);
      if (p.phase !== 'precopy' || p.projectedDowntimeMs <= BUDGET_MS) writing = false; // the orchestrator stops the source next
    };
    const destination = local ?? (await RemoteDestination.connect(remote?.url ?? '', { memory: { size: src.memory.size, iova: IOVA } }));
    if (destination instanceof RemoteDestination) closers.push(() => destination.close());
    setImmediate(guest);
    const report = await migrate({ source: src, destination, downtimeBudgetMs: BUDGET_MS, onProgress });
    writing = false;
    ticker.stop();
    t.diagnostic(
      `${spec.name}/${kind}: downtime ${report.downtimeMs.toFixed(2)} ms, total ${report.totalMs.toFixed(1)} ms, ${report.iterations} iterations, ${writes} guest writes, ${ticks} device-side writes; bytes ${JSON.stringify(report.bytes, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v))}`,
    );
    assert.equal(report.outcome, 'migrated', report.reason);
    assert.equal(report.destination, kind === 'local' ? 'local' : remote?.url);
    assert.ok(report.downtimeMs <= BUDGET_MS, `downtime ${report.downtimeMs} ms`);
    assert.ok(progress.some((p) => p.phase === 'precopy'), 'pre-copy reported');
    assert.equal(progress.at(-1)?.phase, 'done');
    assert.ok(writes >= 4, `the guest wrote during pre-copy (${writes} writes)`);
    if (spec.guestTick) assert.ok(ticks >= 1, `the guest wrote the device during pre-copy (${ticks} writes)`);

    let dst: Host<D>;
    if (remote) {
      const o = await remote.outcome;
      assert.equal(o.outcome, 'committed', o.reason);
      assert.equal(o.memoryBytes, report.bytes.precopyMemory + report.bytes.stopCopyMemory);
      assert.equal(o.deviceBytes, report.bytes.precopyDevice + report.bytes.stopCopyDevice);
      assert.ok(remote.side, 'the receiver prepared a side');
      dst = remote.side;
    } else {
      assert.ok(local);
      dst = local;
    }
    assert.equal(await src.client.migrationState(), S.STOP);
    assert.equal(await dst.client.migrationState(), S.RUNNING);

    // Guest memory byte for byte (the stopped source's memory is the switch-over snapshot).
    const srcMemory = Buffer.from(src.memory.read(0n, GUEST));
    const dstMemory = Buffer.from(dst.memory.read(0n, GUEST));
    if (!srcMemory.equals(dstMemory)) {
      const differing = new Set<number>();
      for (let at = 0; at < GUEST; at += PAGE) if (srcMemory.compare(dstMemory, at, at + PAGE, at, at + PAGE) !== 0) differing.add(at / PAGE);
      assert.fail(`guest memory differs in ${differing.size} pages: ${[...differing].slice(0, 16).join(', ')}`);
    }
    // Pages the guest wrote after the tracker started were sent again: more than one full copy of guest memory.
    assert.ok(report.bytes.precopyMemory + report.bytes.stopCopyMemory > BigInt(GUEST), 'dirty pages re-sent');
    // Device state: the destination's equals the stopped source's, and that is the state prepared before migrating.
    const srcState = await save(src.dev.device);
    assert.deepEqual(await save(dst.dev.device), srcState, 'device state (save) byte for byte');
    // Config space: the destination's equals the source's before the migration and the stopped source's now.
    const dstConfig = await dst.client.regionRead(CONFIG, 0n, 256);
    assert.deepEqual(dstConfig, configBefore, 'config space (destination vs source before)');
    assert.deepEqual(await src.client.regionRead(CONFIG, 0n, 256), configBefore, 'config space (source after)');

    await spec.verify(src, dst, report, cleanup);
  } finally {
    for (const fn of cleanup.reverse()) fn();
    for (const fn of closers.reverse()) await fn();
  }
}

/** Programs BAR addresses and the command register (memory decoding). */
async function programConfig(client: VfioUserClient, bars: ReadonlyArray<[number, number]>): Promise<void> {
  for (const [offset, value] of bars) await writeConfig(client, offset, 4, value);
  await setCommand(client, PciCommand.MEMORY);
}

// GPIO card -----------------------------------------------------------------

const GPIO_OUTPUTS = 0xa5c3;
const GPIO_ENABLE = 0x0ff0;
const GPIO_FILTER = 0x5a;

const gpio: Spec<GpioDevice> = {
  name: 'gpio',
  create: () => createGpioDevice(),
  async prepare(src) {
    await programConfig(src.client, [[0x18, 0xfeb0_0000]]);
    await write32(src.client, BAR2, GpioReg.OUTPUT, GPIO_OUTPUTS);
    await write32(src.client, BAR2, GpioReg.IRQ_ENABLE, GPIO_ENABLE);
    await src.client.regionWrite(BAR2, BigInt(GpioReg.FILTER_CTL), Uint8Array.of(GPIO_FILTER));
    src.dev.setInput(0, true); // not enabled: no latch
    src.dev.setInput(5, true); // enabled: latches status bit 5 (INTx asserted)
    src.dev.setInput(9, true); // enabled: latches bit 9
    src.dev.setInput(9, false); // and back: the bit stays latched
    assert.equal(src.dev.inputs, 0x0021);
    assert.equal(src.dev.outputs, GPIO_OUTPUTS);
    assert.equal(src.dev.irqEnable, GPIO_ENABLE);
    assert.equal(src.dev.irqStatus, 0x0220);
  },
  async verify(src, dst, report) {
    assert.equal(report.bytes.precopyDevice, 0n, 'no pre-copy device data (STOP_COPY only)');
    assert.ok(report.bytes.stopCopyDevice > 0n);
    // The host side of the destination card and its registers (0x10–0x1f: no read side effects) as on the source.
    assert.deepEqual(
      { inputs: dst.dev.inputs, outputs: dst.dev.outputs, irqEnable: dst.dev.irqEnable, irqStatus: dst.dev.irqStatus },
      { inputs: 0x0021, outputs: GPIO_OUTPUTS, irqEnable: GPIO_ENABLE, irqStatus: 0x0220 },
    );
    const srcRegs = await src.client.regionRead(BAR2, BigInt(GpioReg.OUTPUT), 16);
    assert.deepEqual(await dst.client.regionRead(BAR2, BigInt(GpioReg.OUTPUT), 16), srcRegs, 'BAR2 0x10-0x1f');
    assert.deepEqual([0, 4, 8, 12].map((at) => u32(srcRegs, at)), [GPIO_OUTPUTS, 0x0021, GPIO_ENABLE, 0x0220]);
    // PCI Status bit 3 (INTx pending) follows the latched status on the destination too.
    const config = await dst.client.regionRead(CONFIG, 6n, 2);
    assert.equal((config[0] ?? 0) & 0x08, 0x08, 'INTx status bit set on the destination');
    // The destination works: outputs, a new enabled input change latches, RW1C clears.
    await write32(dst.client, BAR2, GpioReg.OUTPUT, 0x1234);
    assert.equal(await read32(dst.client, BAR2, GpioReg.OUTPUT), 0x1234);
    assert.equal(dst.dev.outputs, 0x1234);
    dst.dev.setInput(6, true);
    assert.equal(await read32(dst.client, BAR2, GpioReg.INPUT), 0x0061);
    assert.equal(await read32(dst.client, BAR2, GpioReg.IRQ_STATUS), 0x0260);
    await write32(dst.client, BAR2, GpioReg.IRQ_STATUS, 0xffff);
    assert.equal(await read32(dst.client, BAR2, GpioReg.IRQ_STATUS), 0);
    assert.equal(((await dst.client.regionRead(CONFIG, 6n, 1))[0] ?? 0) & 0x08, 0, 'INTx status bit cleared with the last status bit');
    // The stopped source changed nothing.
    assert.equal(src.dev.outputs, GPIO_OUTPUTS);
  },
};

// Memory device ---------------------------------------------------------------

/** The source's BAR0 through its client's mmap, and its CHECKSUM register (set by prepare). */
let memoryView: Uint8Array | undefined;
let memoryChecksum: number | undefined;

const memory: Spec<MemoryDevice> = {
  name: 'memory',
  create: () => createMemoryDevice({ size: MEMORY_BAR0 }),
  async prepare(src, cleanup) {
    await programConfig(src.client, [
      [0x10, 0xe000_000c],
      [0x14, 0x0000_0001],
      [0x18, 0xfeb0_0000],
    ]);
    const bar0 = await MappedRegion.open(src.client, BAR0);
    cleanup.push(() => bar0.close());
    const view = bar0.view(0n, MEMORY_BAR0);
    assert.ok(view, 'BAR0 is mmapped whole');
    memoryView = view;
    view.set(pattern(300 * KiB, 7), 5); // through the mmap
    await src.client.regionWrite(BAR0, BigInt(600 * KiB), pattern(10 * KiB, 8)); // through REGION_WRITE
    await write32(src.client, BAR2, MemoryReg.FILL_PATTERN, 0xdeadbeef);
    await write32(src.client, BAR2, MemoryReg.FILL_OFFSET, 0x8_0001);
    await write32(src.client, BAR2, MemoryReg.FILL_LENGTH, 0x1_2345);
    await write32(src.client, BAR2, MemoryReg.COMMAND, MemoryCommand.FILL);
    await src.dev.idle(); // commands run asynchronously
    assert.equal(await read32(src.client, BAR2, MemoryReg.STATUS), MemoryStatus.DONE);
    await write32(src.client, BAR2, MemoryReg.FILL_PATTERN, 0x01020304); // registers left different from the last fill
    assert.equal(src.dev.memory[0x8_0001], 0xef);
    await write32(src.client, BAR2, MemoryReg.COMMAND, MemoryCommand.CHECKSUM);
    await src.dev.idle();
    memoryChecksum = await read32(src.client, BAR2, MemoryReg.CHECKSUM);
    assert.equal(memoryChecksum, src.dev.checksum());
  },
  guestTick(k) {
    // BAR0 writes the device cannot see (mmap): its pre-copy scan must find them. 16 pages, so the final record stays small.
    memoryView?.set(pattern(256, 0x2000 + k), (k % 16) * 16 * PAGE + (k % 13) * 256);
  },
  async verify(src, dst, report, cleanup) {
    assert.ok(report.bytes.precopyDevice >= BigInt(MEMORY_STATE_HEADER_SIZE + MEMORY_BAR0), 'the BAR0 image went in pre-copy');
    assert.ok(report.bytes.stopCopyDevice < BigInt(MEMORY_BAR0 / 4), `the final record is small (${report.bytes.stopCopyDevice} bytes)`);
    // BAR0 byte for byte: device memory, the source's mmap, the destination client's own mmap.
    assert.ok(Buffer.from(dst.dev.memory).equals(Buffer.from(src.dev.memory)), 'BAR0 (device memory)');
    assert.ok(memoryView && Buffer.from(memoryView).equals(Buffer.from(dst.dev.memory)), 'BAR0 as the source client wrote it');
    const bar0 = await MappedRegion.open(dst.client, BAR0);
    cleanup.push(() => bar0.close());
    const dstView = bar0.view(0n, MEMORY_BAR0);
    assert.ok(dstView && Buffer.from(dstView).equals(Buffer.from(src.dev.memory)), 'BAR0 through the destination mmap');
    // Control registers on both (REGION_READ is allowed in STOP; these reads have no side effects).
    const srcRegs = await src.client.regionRead(BAR2, 0n, 32);
    assert.deepEqual(await dst.client.regionRead(BAR2, 0n, 32), srcRegs, 'BAR2 control block');
    assert.deepEqual([8, 12, 16, 24, 28].map((at) => u32(srcRegs, at)), [0x01020304, 0x8_0001, 0x1_2345, MemoryStatus.DONE, memoryChecksum]);
    // The destination works: a fill, its checksum; the source (stopped) is untouched.
    const before = src.dev.checksum();
    await write32(dst.client, BAR2, MemoryReg.FILL_OFFSET, 0);
    await write32(dst.client, BAR2, MemoryReg.FILL_LENGTH, PAGE);
    await write32(dst.client, BAR2, MemoryReg.COMMAND, MemoryCommand.FILL);
    await dst.dev.idle();
    assert.equal(await read32(dst.client, BAR2, MemoryReg.STATUS), MemoryStatus.DONE);
    assert.deepEqual([...dst.dev.memory.subarray(0, 8)], [4, 3, 2, 1, 4, 3, 2, 1]);
    assert.ok(dstView.subarray(0, PAGE).every((b, i) => b === [4, 3, 2, 1][i % 4]), 'the fill seen through the destination mmap');
    await write32(dst.client, BAR2, MemoryReg.COMMAND, MemoryCommand.CHECKSUM);
    await dst.dev.idle();
    const checksum = await read32(dst.client, BAR2, MemoryReg.CHECKSUM);
    assert.equal(checksum, dst.dev.checksum());
    assert.notEqual(checksum, before);
    assert.equal(src.dev.checksum(), before, 'the source BAR0 unchanged');
    memoryView = undefined;
    memoryChecksum = undefined;
  },
};

describe('migrate() on the sample devices', () => {
  for (const kind of ['local', 'remote'] as const) {
    it(`GPIO card with guest memory, ${kind} destination: memory, state, registers and config equal; the destination works`, { timeout: 8000 }, (t) => scenario(t, gpio, kind));
    it(`memory device (shared BAR0, pre-copy) with guest memory, ${kind} destination: memory, BAR0, state and config equal; the destination works`, { timeout: 8000 }, (t) => scenario(t, memory, kind));
  }
});
