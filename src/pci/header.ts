/**
 * The type 0 header (0x00–0x3f): identity registers (read-only), Command (RW
 * bits in {@link COMMAND_WRITABLE}), Status (RW1C error bits, device-updated
 * INTx status), Cache Line Size / Latency Timer / Interrupt Line (RW), BARs
 * and ROM (see bars.ts), and the read-only rest (BIST 0, Min_Gnt/Max_Lat 0,
 * reserved bytes 0). Writes to read-only registers are silently ignored.
 */
import { InvalidArgumentError } from '../errors.js';
import { installBars, type BarLayout } from './bars.js';
import { RegisterFile } from './register-file.js';
import { COMMAND_WRITABLE, HeaderType, PciHeader, PciStatus, STATUS_RW1C } from './registers.js';
import type { ConfigSpaceOptions } from './types.js';

/** Identity fields after defaults and range checks. */
export interface Identity {
  readonly vendorId: number;
  readonly deviceId: number;
  readonly subsystemVendorId: number;
  readonly subsystemId: number;
  readonly classCode: number;
  readonly revision: number;
  readonly interruptPin: number;
  readonly multiFunction: boolean;
}

function checkField(name: string, value: number, max: number): number {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new InvalidArgumentError(`${name}: ${value} is not an integer in 0–0x${max.toString(16)}`);
  }
  return value;
}

/**
 * Applies defaults to the identity options and checks their ranges.
 * @throws {InvalidArgumentError} EINVAL naming the field out of range.
 */
export function validateIdentity(o: ConfigSpaceOptions): Identity {
  return {
    vendorId: checkField('vendorId', o.vendorId, 0xffff),
    deviceId: checkField('deviceId', o.deviceId, 0xffff),
    subsystemVendorId: checkField('subsystemVendorId', o.subsystemVendorId ?? 0, 0xffff),
    subsystemId: checkField('subsystemId', o.subsystemId ?? 0, 0xffff),
    classCode: checkField('classCode', o.classCode ?? 0, 0xffffff),
    revision: checkField('revision', o.revision ?? 0, 0xff),
    interruptPin: checkField('interruptPin', o.interruptPin ?? 0, 4),
    multiFunction: o.multiFunction ?? false,
  };
}

/**
 * Writes the power-on header and its access masks. The capability pointer and
 * Status.CAP_LIST are set later, by the capability layout.
 * @param regs - config space registers (all zero).
 * @param id - validated identity.
 * @param bars - validated BAR slots.
 * @param romSize - validated ROM size, if any.
 */
export function installHeader(
  regs: RegisterFile,
  id: Identity,
  bars: ReadonlyArray<BarLayout | undefined>,
  romSize: bigint | undefined,
): void {
  regs.define(PciHeader.VENDOR_ID, 2, id.vendorId);
  regs.define(PciHeader.DEVICE_ID, 2, id.deviceId);
  regs.define(PciHeader.COMMAND, 2, 0, { wmask: COMMAND_WRITABLE });
  regs.define(PciHeader.STATUS, 2, 0, { w1c: STATUS_RW1C, dev: STATUS_RW1C | PciStatus.INTERRUPT });
  regs.define(PciHeader.REVISION_ID, 1, id.revision);
  regs.define(PciHeader.CLASS_PROG, 1, id.classCode & 0xff);
  regs.define(PciHeader.CLASS_PROG + 1, 2, id.classCode >>> 8);
  regs.define(PciHeader.CACHE_LINE_SIZE, 1, 0, { wmask: 0xff });
  regs.define(PciHeader.LATENCY_TIMER, 1, 0, { wmask: 0xff });
  regs.define(PciHeader.HEADER_TYPE, 1, id.multiFunction ? HeaderType.MULTI_FUNCTION : HeaderType.NORMAL);
  regs.define(PciHeader.SUBSYSTEM_VENDOR_ID, 2, id.subsystemVendorId);
  regs.define(PciHeader.SUBSYSTEM_ID, 2, id.subsystemId);
  regs.define(PciHeader.INTERRUPT_LINE, 1, 0, { wmask: 0xff });
  regs.define(PciHeader.INTERRUPT_PIN, 1, id.interruptPin);
  installBars(regs, bars, romSize);
}
