/**
 * A device of ours shaped like libvfio-user's `samples/server.c` (efd091b),
 * for its `samples/client`:
 *
 * - PCI ids 0xdead:0xbeef, subsystem 0xcafe:0xbabe, conventional header;
 * - BAR0: 8 bytes (`sizeof(time_t)`), callbacks only. Only 8-byte accesses at 0:
 *   a write stores a time `t` and arms a timer for `t - time(NULL)` whole
 *   seconds (as `setitimer` does; at least 1); a read returns `time(NULL) - t`. The sample
 *   registers it without VFU_REGION_FLAG_MEM, i.e. as an I/O BAR, which lets
 *   it be 8 bytes; ours is an I/O BAR of 8 bytes too.
 * - BAR1: 16 KiB of shared memory (the sample's 0x3000 is refused by its own
 *   library at efd091b; upstream raised it to 16 KiB), client-mappable in two
 *   sparse areas, [0, 4 KiB) and [8 KiB, 12 KiB). libvfio-user does not limit
 *   I/O BARs to 256 bytes as PCI does; we do, so ours is a 32-bit memory BAR.
 * - INTx (1 vector), ERR and REQ (libvfio-user gives every device one of each).
 * - A reset hook.
 * - When the timer fires: INTx, then DMA like `do_dma_io()` — 4 × 1 KiB written
 *   ('A'..'D') and read back as 2 × 2 KiB, first directly into the second DMA
 *   region (marking it dirty), then into the first one, which the sample does
 *   with DMA_WRITE/DMA_READ messages (`vfu_sgl_write/read`) even though it was
 *   mapped with an fd. Ours does the same with `device.dma.write/read(…,
 *   { via: 'message' })`.
 *
 * Everything the device sees is written down in {@link SampleDeviceLog}.
 */
import { InvalidArgumentError, createDevice } from '../../src/index.js';
import type { DeviceDefinition, DmaRegion, ResetReason, VfioUserDevice } from '../../src/index.js';

type DmaAccessMode = DmaRegion['mode'];

/** One DMA pass of the timer (`do_dma_io`). */
export interface SampleDmaPass {
  /** IOVA of the region. */
  addr: bigint;
  /** How the region was mapped in our DMA controller. */
  mode: DmaAccessMode;
  /** The bytes read back equal the bytes written. */
  matches: boolean;
}

/** What the device observed. */
export interface SampleDeviceLog {
  resets: ResetReason[];
  bar0Writes: bigint[];
  /** Values returned by BAR0 reads. */
  bar0Reads: bigint[];
  /** Timers armed (seconds from the write). */
  timers: number[];
  /** `device.interrupt(0)` results when the timer fired. */
  interrupts: boolean[];
  dma: SampleDmaPass[];
  /** Errors thrown inside the timer's work. */
  errors: unknown[];
}

/** The device, its log, and a promise for the timer's work. */
export interface SampleDevice {
  device: VfioUserDevice;
  log: SampleDeviceLog;
  /** Resolves when the timer's INTx + DMA work has finished (never, if the timer never fires). */
  readonly timerWorkDone: Promise<void>;
}

const CHUNK = 1024;
const CHUNKS = 4;

/** `time(NULL)`. */
function now(): bigint {
  return BigInt(Math.floor(Date.now() / 1000));
}

/** Builds the device. */
export function serverSampleDevice(): SampleDevice {
  const log: SampleDeviceLog = { resets: [], bar0Writes: [], bar0Reads: [], timers: [], interrupts: [], dma: [], errors: [] };
  let bar0 = 0n;
  let timer: NodeJS.Timeout | undefined;
  let resolveWork!: () => void;
  const timerWorkDone = new Promise<void>((r) => (resolveWork = r));

  const checkBar0 = (offset: number, length: number): void => {
    if (offset !== 0 || length !== 8) throw new InvalidArgumentError(`bad BAR0 access 0x${offset.toString(16)}+${length}`, { errno: 22 });
  };

  const fire = async (): Promise<void> => {
    timer = undefined;
    try {
      log.interrupts.push(device.interrupt(0));
      const regions = device.dma.regions();
      const [first, second] = regions;
      if (!first || !second) throw new Error(`the timer needs two DMA regions, the client mapped ${regions.length}`);
      await dmaPass(second.addr, second.mode, true);
      await dmaPass(first.addr, first.mode, false);
    } catch (e) {
      log.errors.push(e);
    } finally {
      resolveWork();
    }
  };

  /** `do_dma_io()`: 4 × 1 KiB written, read back as 2 × 2 KiB. */
  const dmaPass = async (addr: bigint, mode: DmaAccessMode, direct: boolean): Promise<void> => {
    const written = new Uint8Array(CHUNK * CHUNKS);
    for (let i = 0; i < CHUNKS; i++) {
      const chunk = written.subarray(i * CHUNK, (i + 1) * CHUNK).fill(0x41 + i);
      const at = addr + BigInt(i * CHUNK);
      if (direct) device.dma.view(at, CHUNK, { write: true }).set(chunk);
      else await device.dma.write(at, chunk, { via: 'message' });
    }
    const read = new Uint8Array(CHUNK * CHUNKS);
    for (let i = 0; i < CHUNKS; i += 2) {
      const at = addr + BigInt(i * CHUNK);
      read.set(direct ? device.dma.readSync(at, 2 * CHUNK) : await device.dma.read(at, 2 * CHUNK, { via: 'message' }), i * CHUNK);
    }
    log.dma.push({ addr, mode, matches: Buffer.compare(read, written) === 0 });
  };

  const definition: DeviceDefinition = {
    name: 'libvfio-user-server-sample',
    pci: { vendorId: 0xdead, deviceId: 0xbeef, subsystemVendorId: 0xcafe, subsystemId: 0xbabe, classCode: 0 },
    regions: {
      bar0: {
        size: 8,
        type: 'io',
        read(offset, length) {
          checkBar0(offset, length);
          const delta = now() - bar0;
          log.bar0Reads.push(delta);
          const out = new Uint8Array(8);
          new DataView(out.buffer).setBigInt64(0, delta, true);
          return out;
        },
        write(offset, data) {
          checkBar0(offset, data.length);
          const t = new DataView(data.buffer, data.byteOffset, 8).getBigInt64(0, true);
          log.bar0Writes.push(t);
          const seconds = Number(t - now());
          if (seconds < 0) throw new InvalidArgumentError(`BAR0: time ${t} is in the past`, { errno: 22 });
          clearTimeout(timer);
          // The sample's setitimer() disarms on 0, which happens when a second boundary falls between
          // the client's time(NULL) + 1 and ours, and then the client waits for its INTx forever; we
          // arm at least 1 s instead. Never sooner: the BAR0 read that follows must be answered before
          // our DMA messages reach the client's socket.
          log.timers.push(Math.max(seconds, 1));
          timer = setTimeout(() => void fire(), Math.max(seconds, 1) * 1000);
          bar0 = t;
        },
      },
      bar1: { size: 0x4000, shared: { sparse: [{ offset: 0, size: 0x1000 }, { offset: 0x2000, size: 0x1000 }] } },
    },
    irqs: { intx: true, err: true, req: true },
    // The sample's config space has no capabilities; ours would get Power Management by default.
    capabilities: { pm: false },
    reset(reason) {
      log.resets.push(reason);
      if (reason === 'lost-connection') {
        clearTimeout(timer);
        timer = undefined;
      }
    },
  };
  const device = createDevice(definition);
  return { device, log, timerWorkDone };
}
