/**
 * PCI Express capability (id 0x10), version 2, 60 bytes (0x3c). A Gen1 x1
 * function, link up, Max_Payload_Size 128 bytes, no FLR, no slot, no root
 * registers:
 *
 * | off | reg | power-on | access |
 * |---|---|---|---|
 * | 0x02 | Express Capabilities | version 2, port type | RO |
 * | 0x04 | Device Capabilities | MPS 128, L0s < 64 ns, L1 < 1 µs, Role-Based Error Reporting | RO |
 * | 0x08 | Device Control | 0x2810 (Relaxed Ordering, No Snoop, MRRS 512) | bits 0–7, 11–14 RW |
 * | 0x0a | Device Status | 0 | error-detected bits 0–3 RW1C |
 * | 0x0c | Link Capabilities | 2.5 GT/s, x1, ASPM optionality compliance | RO |
 * | 0x10 | Link Control | 0 | ASPM (1:0), RCB (3), Common Clock (6), Extended Synch (7) RW |
 * | 0x12 | Link Status | 2.5 GT/s, x1, Slot Clock | RO |
 * | 0x2c | Link Capabilities 2 | 2.5 GT/s supported | RO |
 * | 0x30 | Link Control 2 | Target Link Speed 2.5 GT/s | RO |
 *
 * Every other register (slot, root, Device Capabilities/Control/Status 2) is
 * read-only zero. A Root Complex integrated endpoint has no link: its link
 * registers are all zero.
 */
import { InvalidArgumentError } from '../../errors.js';
import type { RegisterFile } from '../register-file.js';
import { CapabilityId } from '../registers.js';
import { ExpressPortType, type ExpressOptions } from '../types.js';
import { installCapHeader, type Capability, type CapabilityDefinition } from './capability.js';

/** Size of the PCI Express capability (version 2). */
export const EXPRESS_SIZE = 0x3c;
/** Offsets inside the PCI Express capability. */
export const ExpressReg = {
  FLAGS: 0x02,
  DEVCAP: 0x04,
  DEVCTL: 0x08,
  DEVSTA: 0x0a,
  LNKCAP: 0x0c,
  LNKCTL: 0x10,
  LNKSTA: 0x12,
  DEVCAP2: 0x24,
  DEVCTL2: 0x28,
  LNKCAP2: 0x2c,
  LNKCTL2: 0x30,
  LNKSTA2: 0x32,
} as const;
/** One of the offsets in {@link ExpressReg}. */
export type ExpressReg = (typeof ExpressReg)[keyof typeof ExpressReg];

/** Device/Port Type field values (Express Capabilities bits 7:4). */
export const EXPRESS_PORT_TYPE_CODE: Readonly<Record<ExpressPortType, number>> = {
  endpoint: 0x0,
  'legacy-endpoint': 0x1,
  'rc-integrated': 0x9,
};

const CAP_VERSION_2 = 0x2;
const DEVCAP_ROLE_BASED_ERRORS = 1 << 15;
const DEVCTL_POWER_ON = 0x2810;
const DEVCTL_WRITABLE = 0x78ff;
const DEVSTA_RW1C = 0x000f;
const LINK_SPEED_2_5GT = 0x1;
const LINK_WIDTH_X1 = 0x1 << 4;
const LNKCAP_ASPM_OPTIONALITY = 1 << 22;
const LNKCTL_WRITABLE = 0x00cb;
const LNKSTA_SLOT_CLOCK = 1 << 12;
const LNKCAP2_SPEED_2_5GT = 1 << 1;

function installLink(regs: RegisterFile, offset: number): void {
  regs.define(offset + ExpressReg.LNKCAP, 4, LINK_SPEED_2_5GT | LINK_WIDTH_X1 | LNKCAP_ASPM_OPTIONALITY);
  regs.define(offset + ExpressReg.LNKCTL, 2, 0, { wmask: LNKCTL_WRITABLE });
  regs.define(offset + ExpressReg.LNKSTA, 2, LINK_SPEED_2_5GT | LINK_WIDTH_X1 | LNKSTA_SLOT_CLOCK);
  regs.define(offset + ExpressReg.LNKCAP2, 4, LNKCAP2_SPEED_2_5GT);
  regs.define(offset + ExpressReg.LNKCTL2, 2, LINK_SPEED_2_5GT);
}

function install(regs: RegisterFile, offset: number, portType: ExpressPortType): Capability {
  installCapHeader(regs, offset, CapabilityId.EXPRESS);
  regs.define(offset + ExpressReg.FLAGS, 2, CAP_VERSION_2 | (EXPRESS_PORT_TYPE_CODE[portType] << 4));
  regs.define(offset + ExpressReg.DEVCAP, 4, DEVCAP_ROLE_BASED_ERRORS);
  regs.define(offset + ExpressReg.DEVCTL, 2, DEVCTL_POWER_ON, { wmask: DEVCTL_WRITABLE });
  regs.define(offset + ExpressReg.DEVSTA, 2, 0, { w1c: DEVSTA_RW1C, dev: DEVSTA_RW1C });
  if (portType !== ExpressPortType.RC_INTEGRATED) installLink(regs, offset);
  return { name: 'express', id: CapabilityId.EXPRESS, extended: false, offset, size: EXPRESS_SIZE };
}

function validatePortType(o: ExpressOptions): ExpressPortType {
  const portType = o.portType ?? ExpressPortType.ENDPOINT;
  if (!Object.hasOwn(EXPRESS_PORT_TYPE_CODE, portType)) {
    throw new InvalidArgumentError(`express.portType: unknown port type ${String(portType)}`);
  }
  return portType;
}

/** The PCI Express row of the capability table: present when `express` is given. */
export const expressCapability: CapabilityDefinition = {
  name: 'express',
  extended: false,
  plan(options) {
    if (options.express === undefined) return [];
    const portType = validatePortType(options.express);
    return [{ size: EXPRESS_SIZE, install: (ctx, offset) => install(ctx.regs, offset, portType) }];
  },
};
