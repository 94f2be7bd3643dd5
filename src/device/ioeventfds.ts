/**
 * ioeventfds: a region can offer eventfds for doorbell-style registers
 * (DEVICE_GET_REGION_IO_FDS). A VMM hands them to KVM, so a guest write of the
 * right size (and value, with datamatch) at that offset signals the eventfd
 * instead of costing a REGION_WRITE round trip. The device polls them and sees
 * each signal as a write of the datamatch value at that offset.
 */
import { InvalidArgumentError } from '../errors.js';
import { createEventFd, native } from '../native/addon.js';
import type { NativePoller } from '../native/types.js';
import type { IoEventFdDescription } from '../server/types.js';

/** What a device author declares for one ioeventfd. */
export interface IoEventFdDefinition {
  /** Offset in the region of the register. */
  offset: number;
  /** Access size the VMM matches: 1, 2, 4 or 8 bytes. */
  size: 1 | 2 | 4 | 8;
  /** Only writes of this value signal (KVM datamatch); any value when absent. */
  datamatch?: bigint;
}

/** `KVM_IOEVENTFD_FLAG_DATAMATCH`. */
const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;

/** One live ioeventfd of a region. */
export class IoEventFd {
  readonly definition: IoEventFdDefinition;
  readonly fd: number;
  readonly #poller: NativePoller;

  /**
   * @param onWrite - called once per signal with the register's offset and the datamatch value (or zeros).
   * @throws {InvalidArgumentError} EINVAL for a bad size or offset.
   */
  constructor(regionSize: number, definition: IoEventFdDefinition, onWrite: (offset: number, data: Uint8Array) => void) {
    checkIoEventFd(regionSize, definition);
    const { offset, size } = definition;
    this.definition = definition;
    this.fd = createEventFd();
    const data = new Uint8Array(8);
    new DataView(data.buffer).setBigUint64(0, BigInt.asUintN(64, definition.datamatch ?? 0n), true);
    const value = data.slice(0, size);
    this.#poller = new native.Poller(this.fd, () => {
      if (typeof native.eventfdRead(this.fd) === 'bigint') onWrite(offset, value);
    });
    this.#poller.start(native.constants.UV_READABLE);
  }

  /** The record GET_REGION_IO_FDS reports. */
  describe(): IoEventFdDescription {
    const d = this.definition;
    return {
      offset: BigInt(d.offset),
      size: BigInt(d.size),
      fd: this.fd,
      datamatch: d.datamatch ?? 0n,
      flags: d.datamatch === undefined ? 0 : KVM_IOEVENTFD_FLAG_DATAMATCH,
    };
  }

  /** Stops polling and closes the eventfd. */
  dispose(): void {
    this.#poller.close();
    native.close(this.fd);
  }
}

/**
 * Checks one ioeventfd declaration against its region.
 * @throws {InvalidArgumentError} EINVAL unless it is a naturally aligned 1/2/4/8-byte register inside the region.
 */
export function checkIoEventFd(regionSize: number, d: IoEventFdDefinition): void {
  if (![1, 2, 4, 8].includes(d.size) || d.offset < 0 || d.offset + d.size > regionSize || d.offset % d.size !== 0) {
    throw new InvalidArgumentError(`ioeventfd at 0x${d.offset.toString(16)} size ${d.size}: must be a naturally aligned 1/2/4/8-byte register inside the region`);
  }
}
