/**
 * Vendor-specific capabilities (id 0x09): id, next, length (header included),
 * then the device author's payload. Read-only unless the author marks the
 * payload writable; the 3-byte header is always read-only.
 */
import { InvalidArgumentError } from '../../errors.js';
import type { RegisterFile } from '../register-file.js';
import { CapabilityId } from '../registers.js';
import type { VendorCapabilityOptions } from '../types.js';
import { installCapHeader, type Capability, type CapabilityDefinition } from './capability.js';

/** Bytes before the payload: id, next, length. */
export const VENDOR_HEADER_SIZE = 3;
/** Largest payload (the length byte counts the header too). */
export const VENDOR_MAX_PAYLOAD = 0xff - VENDOR_HEADER_SIZE;

function install(regs: RegisterFile, offset: number, o: VendorCapabilityOptions): Capability {
  const size = VENDOR_HEADER_SIZE + o.payload.length;
  installCapHeader(regs, offset, CapabilityId.VENDOR);
  regs.define(offset + 2, 1, size);
  regs.fill(offset + VENDOR_HEADER_SIZE, o.payload);
  if (o.writable === true) regs.wmask.fill(0xff, offset + VENDOR_HEADER_SIZE, offset + size);
  return { name: 'vendor', id: CapabilityId.VENDOR, extended: false, offset, size };
}

/** The vendor-specific row of the capability table: one instance per `vendorCapabilities` entry. */
export const vendorCapability: CapabilityDefinition = {
  name: 'vendor',
  extended: false,
  plan(options) {
    return (options.vendorCapabilities ?? []).map((cap, i) => {
      if (!(cap.payload instanceof Uint8Array) || cap.payload.length > VENDOR_MAX_PAYLOAD) {
        throw new InvalidArgumentError(`vendorCapabilities[${i}].payload: at most ${VENDOR_MAX_PAYLOAD} bytes`);
      }
      const o = { payload: cap.payload.slice(), writable: cap.writable ?? false };
      return { size: VENDOR_HEADER_SIZE + o.payload.length, install: (ctx, offset) => install(ctx.regs, offset, o) };
    });
  },
};
