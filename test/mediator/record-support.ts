/**
 * Helpers of the record/replay tests: a deterministic device (registers, a
 * shared BAR, MSI-X, a DMA engine that copies guest memory through
 * `device.dma` while its doorbell write is answered), a client session that
 * exercises it through a recording mediator, and fresh instances to replay against.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import { createDevice, type VfioUserDevice } from '../../src/device/device.js';
import type { DeviceDefinition } from '../../src/device/types.js';
import { createEventFd, createSealedMemfd, mapFd, native, unmap } from '../../src/native/addon.js';
import { DmaMapFlags, IrqIndex, IrqSetFlags } from '../../src/protocol/constants.js';
import { Mediator } from '../../src/mediator/mediator.js';
import { createRecorder, type Recorder, type RecorderOptions } from '../../src/mediator/record.js';
import { silentLogger } from '../../src/log.js';
import type { DeviceServer } from '../../src/server/server.js';

/** BAR0 registers of the replay test device. */
export const Reg = { ID: 0x00, SCRATCH: 0x04, SRC: 0x08, DST: 0x10, LEN: 0x18, GO: 0x1c, SUM: 0x20 } as const;
export const DEVICE_ID_VALUE = 0x52504c59; // 'YLPR'
/** Guest RAM passed as a memfd, and a window the client serves by messages (mapped without an fd). */
export const RAM = { addr: 0x10_0000n, size: 0x10_0000 } as const;
export const WINDOW = { addr: 0x80_0000n, size: 0x1_0000 } as const;

/** What a variant of the device changes (for replays that must find differences). */
export interface Variant {
  id?: number;
  deviceId?: number;
  /** Added to each byte the DMA engine copies. */
  add?: number;
}

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}

/** The device: ID, SCRATCH, a copy engine (SRC/DST/LEN, GO runs it and awaits it), SUM: a position-weighted checksum of the bytes copied. */
export function replayDevice(variant: Variant = {}): VfioUserDevice {
  const regs = new DataView(new ArrayBuffer(0x40));
  regs.setUint32(Reg.ID, variant.id ?? DEVICE_ID_VALUE, true);
  const copy = async (): Promise<void> => {
    const src = regs.getBigUint64(Reg.SRC, true);
    const dst = regs.getBigUint64(Reg.DST, true);
    const data = await device.dma.read(src, regs.getUint32(Reg.LEN, true));
    let sum = 0;
    for (let i = 0; i < data.length; i++) {
      data[i] = (data[i]! + (variant.add ?? 1)) & 0xff;
      sum = (Math.imul(sum, 31) + data[i]!) >>> 0;
    }
    await device.dma.write(dst, data);
    regs.setUint32(Reg.SUM, sum, true);
    device.interrupt(0);
  };
  const definition: DeviceDefinition = {
    name: 'replay-test',
    pci: { vendorId: 0x1234, deviceId: variant.deviceId ?? 0x5a10, classCode: 0xff0000, revision: 1 },
    regions: {
      bar0: {
        size: 0x1000,
        read: (offset, length) => {
          const out = new Uint8Array(length);
          for (let i = 0; i < length; i++) out[i] = offset + i < 0x40 ? regs.getUint8(offset + i) : 0;
          return out;
        },
        write: async (offset, data) => {
          for (let i = 0; i < data.length; i++) if (offset + i >= 4 && offset + i < Reg.SUM) regs.setUint8(offset + i, data[i]!);
          if (offset === Reg.GO) await copy();
        },
      },
      bar2: { size: 0x1000, shared: true },
    },
    irqs: { intx: true, msix: 2 },
    msix: { bar: 0, tableOffset: 0x800, pbaOffset: 0xc00 },
  };
  const device = createDevice(definition); // the callbacks above run only once it is served
  return device;
}

/** A device served on a fresh socket. */
export interface ServedReplayDevice {
  path: string;
  device: VfioUserDevice;
  server: DeviceServer;
  close(): Promise<void>;
}

/** Serves a (variant of the) replay device in `dir`. */
export function serveReplayDevice(dir: string, name: string, variant: Variant = {}): ServedReplayDevice {
  const device = replayDevice(variant);
  const path = join(dir, `${name}.sock`);
  const server = device.serve({ path });
  return {
    path,
    device,
    server,
    async close() {
      await server.close();
      device.dispose();
    },
  };
}

/** A temporary directory removed by `close()`. */
export function tempDir(): { dir: string; close(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-replay-'));
  return { dir, close: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A recording of {@link driveSession} through a mediator: the file and what the recorder reported. */
export async function recordSession(dir: string, options: RecorderOptions & { twinSocket?: boolean; pauseMs?: number } = {}): Promise<{ file: string; recorder: Recorder }> {
  const served = serveReplayDevice(dir, 'recorded');
  const file = join(dir, 'session.vfrec');
  const recorder = createRecorder(file, { log: silentLogger(), upstreamPath: served.path, ...options });
  const mediator = await Mediator.listen({ upstream: served.path, listen: join(dir, 'mediator.sock'), taps: [recorder], log: silentLogger() });
  try {
    await driveSession(mediator.path, options);
  } finally {
    await mediator.close();
    await served.close();
    await recorder.close();
  }
  return { file, recorder };
}

/** Guest memory the client serves by messages (the window mapped without an fd). */
class Window {
  readonly bytes = new Uint8Array(WINDOW.size);
  read(addr: bigint, count: number): Uint8Array {
    const at = Number(addr - WINDOW.addr);
    return this.bytes.slice(at, at + count);
  }
  write(addr: bigint, data: Uint8Array): void {
    this.bytes.set(data, Number(addr - WINDOW.addr));
  }
}

async function writeReg(client: VfioUserClient, reg: number, value: number | bigint): Promise<void> {
  const data = typeof value === 'bigint' ? new Uint8Array(new BigUint64Array([value]).buffer) : u32(value);
  await client.regionWrite(0, BigInt(reg), data);
}

/**
 * A VMM's session: VERSION, device/region/IRQ info, config reads, register
 * writes and reads, DMA_MAP of a memfd (with content) and of a window without
 * fd, MSI-X eventfds, two device DMA copies (memfd → window: DMA_WRITE
 * messages; window → memfd: DMA_READ messages), the checksum, unmap, reset.
 */
export async function driveSession(path: string, o: { twinSocket?: boolean; pauseMs?: number } = {}): Promise<void> {
  const window = new Window();
  for (let i = 0; i < 256; i++) window.bytes[i] = (i * 7) & 0xff;
  const client = await VfioUserClient.connect(path, { twinSocket: o.twinSocket ?? false, dma: window, logger: silentLogger() });
  const ram = createSealedMemfd('guest-ram', RAM.size);
  const view = mapFd(ram, 0, RAM.size, true);
  new Uint8Array(view).set(Array.from({ length: 512 }, (_, i) => (i * 13 + 5) & 0xff), 0x100);
  const irqs = [createEventFd(), createEventFd()];
  try {
    await client.deviceInfo();
    for (const index of [0, 2, 7]) {
      const { fd } = await client.regionInfo(index);
      if (fd !== undefined) native.close(fd);
    }
    await client.irqInfo(IrqIndex.MSIX);
    await client.regionRead(7, 0n, 64);
    await writeReg(client, Reg.SCRATCH, 0xcafe0001);
    await client.regionRead(0, BigInt(Reg.ID), 8);
    if (o.pauseMs) await new Promise((r) => setTimeout(r, o.pauseMs));
    await client.dmaMap({ addr: RAM.addr, size: BigInt(RAM.size), flags: DmaMapFlags.READ | DmaMapFlags.WRITE }, ram);
    await client.dmaMap({ addr: WINDOW.addr, size: BigInt(WINDOW.size), flags: DmaMapFlags.READ | DmaMapFlags.WRITE });
    await client.setIrqs({ flags: IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, index: IrqIndex.MSIX, start: 0, count: 2 }, irqs);
    // memfd → window (the device reads the memfd directly, writes the window by DMA_WRITE)
    await writeReg(client, Reg.SRC, RAM.addr + 0x100n);
    await writeReg(client, Reg.DST, WINDOW.addr + 0x1000n);
    await writeReg(client, Reg.LEN, 512);
    await writeReg(client, Reg.GO, 1);
    await client.regionRead(0, BigInt(Reg.SUM), 4);
    // window → memfd (DMA_READ messages answered from the client's window)
    await writeReg(client, Reg.SRC, WINDOW.addr);
    await writeReg(client, Reg.DST, RAM.addr + 0x8000n);
    await writeReg(client, Reg.LEN, 256);
    await writeReg(client, Reg.GO, 1);
    await client.regionRead(0, BigInt(Reg.SUM), 4);
    await client.dmaUnmap(WINDOW.addr, BigInt(WINDOW.size));
    await client.dmaUnmapAll();
    await client.reset();
  } finally {
    client.close();
    unmap(view);
    native.close(ram);
    for (const fd of irqs) native.close(fd);
  }
}
