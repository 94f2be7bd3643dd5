/**
 * Vendor-Specific Extended Capabilities (id 0x000b, version 1): the extended
 * capability header, then the VSEC header (VSEC ID bits 15:0, VSEC Rev bits
 * 19:16, VSEC Length bits 31:20, counting both headers), then the payload.
 * Headers are read-only; the payload is read-only unless marked writable.
 */
import { InvalidArgumentError } from '../../errors.js';
import type { RegisterFile } from '../register-file.js';
import { ExtCapabilityId } from '../registers.js';
import type { VsecOptions } from '../types.js';
import { installExtCapHeader, type Capability, type CapabilityDefinition } from './capability.js';

/** Bytes before the payload: extended capability header and VSEC header. */
export const VSEC_HEADER_SIZE = 8;
/** Largest VSEC Length (12 bits). */
export const VSEC_MAX_LENGTH = 0xfff;
const VSEC_VERSION = 1;

function validate(o: VsecOptions, i: number): VsecOptions {
  const where = `vsecs[${i}]`;
  if (!Number.isInteger(o.id) || o.id < 0 || o.id > 0xffff) throw new InvalidArgumentError(`${where}.id: ${o.id} is not 16-bit`);
  if (!Number.isInteger(o.rev) || o.rev < 0 || o.rev > 0xf) throw new InvalidArgumentError(`${where}.rev: ${o.rev} is not 4-bit`);
  if (!(o.payload instanceof Uint8Array) || VSEC_HEADER_SIZE + o.payload.length > VSEC_MAX_LENGTH) {
    throw new InvalidArgumentError(`${where}.payload: at most ${VSEC_MAX_LENGTH - VSEC_HEADER_SIZE} bytes`);
  }
  return { id: o.id, rev: o.rev, payload: o.payload.slice(), writable: o.writable ?? false };
}

function install(regs: RegisterFile, offset: number, o: VsecOptions): Capability {
  const size = VSEC_HEADER_SIZE + o.payload.length;
  installExtCapHeader(regs, offset, ExtCapabilityId.VENDOR, VSEC_VERSION);
  regs.define(offset + 4, 4, (o.id | (o.rev << 16) | (size << 20)) >>> 0);
  regs.fill(offset + VSEC_HEADER_SIZE, o.payload);
  if (o.writable === true) regs.wmask.fill(0xff, offset + VSEC_HEADER_SIZE, offset + size);
  return { name: 'vsec', id: ExtCapabilityId.VENDOR, extended: true, offset, size };
}

/** The VSEC row of the capability table: one instance per `vsecs` entry. */
export const vsecCapability: CapabilityDefinition = {
  name: 'vsec',
  extended: true,
  plan(options) {
    return (options.vsecs ?? []).map((vsec, i) => {
      const o = validate(vsec, i);
      return { size: VSEC_HEADER_SIZE + o.payload.length, install: (ctx, offset) => install(ctx.regs, offset, o) };
    });
  },
};
