/**
 * Power Management capability (id 0x01), 8 bytes, version 3, D0 and D3hot
 * only, no PME:
 *
 * | off | reg | access |
 * |---|---|---|
 * | 2 | PMC = 0x0003 (version 3) | RO |
 * | 4 | PMCSR: PowerState bits 1:0 RW, No_Soft_Reset (bit 3) = 1 | RW / RO |
 * | 6 | PMCSR_BSE = 0, Data = 0 | RO |
 *
 * Writing an unsupported power state (D1, D2) is discarded, as the PCI PM
 * specification requires: the write completes and the state stays.
 */
import { CapabilityId } from '../registers.js';
import type { RegisterFile } from '../register-file.js';
import { installCapHeader, type Capability, type CapabilityDefinition } from './capability.js';

/** Size of the PM capability. */
export const PM_SIZE = 8;
/** Offsets inside the PM capability. */
export const PmReg = {
  PMC: 2,
  PMCSR: 4,
} as const;
/** One of the offsets in {@link PmReg}. */
export type PmReg = (typeof PmReg)[keyof typeof PmReg];

const PMC_VERSION_3 = 0x0003;
const PMCSR_STATE_MASK = 0x0003;
const PMCSR_NO_SOFT_RESET = 0x0008;
const D1 = 1;
const D2 = 2;

function install(regs: RegisterFile, offset: number): Capability {
  installCapHeader(regs, offset, CapabilityId.PM);
  regs.define(offset + PmReg.PMC, 2, PMC_VERSION_3);
  regs.define(offset + PmReg.PMCSR, 2, PMCSR_NO_SOFT_RESET, { wmask: PMCSR_STATE_MASK });
  regs.define(offset + PmReg.PMCSR + 2, 2, 0);
  return {
    name: 'pm',
    id: CapabilityId.PM,
    extended: false,
    offset,
    size: PM_SIZE,
    afterWrite(before) {
      const state = regs.u16(offset + PmReg.PMCSR) & PMCSR_STATE_MASK;
      if (state !== D1 && state !== D2) return;
      const old = (before[PmReg.PMCSR] ?? 0) & PMCSR_STATE_MASK;
      regs.set16(offset + PmReg.PMCSR, (regs.u16(offset + PmReg.PMCSR) & ~PMCSR_STATE_MASK) | old);
    },
  };
}

/** The PM row of the capability table: present unless `pm: false`. */
export const pmCapability: CapabilityDefinition = {
  name: 'pm',
  extended: false,
  plan(options) {
    if (options.pm === false) return [];
    return [{ size: PM_SIZE, install: (ctx, offset) => install(ctx.regs, offset) }];
  },
};
