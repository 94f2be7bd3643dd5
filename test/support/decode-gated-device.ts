/**
 * A device that serves its BARs the way QEMU's `x-remote` vfio-user server
 * does: an access to a BAR is refused (EINVAL) unless the BAR holds an address
 * and the Command register enables its space, because that server looks each
 * access up in the device's bus address space, where an unassigned or
 * non-decoding BAR is absent. Each BAR is plain memory once it decodes.
 */
import { createDevice, type VfioUserDevice } from '../../src/device/device.js';
import type { BarDefinition } from '../../src/device/types.js';
import { InvalidArgumentError } from '../../src/errors.js';

/** The gated device and the accesses it refused. */
export interface DecodeGatedDevice {
  device: VfioUserDevice;
  /** BAR accesses refused because the BAR did not decode. */
  refused: number;
  /** The backing bytes of each BAR, by index. */
  memory: ReadonlyMap<number, Uint8Array>;
}

/** BAR0: 4 KiB mem32; BAR1: 32-byte I/O; BAR2: 64 KiB mem64 (slots 2–3). */
export function createDecodeGatedDevice(): DecodeGatedDevice {
  const memory = new Map<number, Uint8Array>([
    [0, new Uint8Array(4096)],
    [1, new Uint8Array(32)],
    [2, new Uint8Array(0x10000)],
  ]);
  const state = { refused: 0 };
  const gate = (index: number): Uint8Array => {
    const config = device.config;
    const decoding = index === 1 ? config.ioEnabled : config.memoryEnabled;
    if (!decoding || config.barAddress(index) === 0n) {
      state.refused++;
      throw new InvalidArgumentError(`BAR${index} is not mapped in the bus address space (unassigned or decode off)`);
    }
    return memory.get(index) as Uint8Array;
  };
  const bar = (index: number, extra: Partial<BarDefinition>): BarDefinition => ({
    size: (memory.get(index) as Uint8Array).length,
    read: (o, n) => gate(index).slice(o, o + n),
    write: (o, d) => void gate(index).set(d, o),
    ...extra,
  });
  const device: VfioUserDevice = createDevice({
    name: 'decode-gated',
    pci: { vendorId: 0x8086, deviceId: 0x10d3, classCode: 0x020000 },
    regions: { bar0: bar(0, {}), bar1: bar(1, { type: 'io' }), bar2: bar(2, { type: 'mem64' }) },
    reset: () => memory.forEach((m) => m.fill(0)),
  });
  return {
    device,
    get refused() {
      return state.refused;
    },
    memory,
  };
}
