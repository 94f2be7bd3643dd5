/**
 * The capabilities a vfio-user device is less likely to have, decoded (or just
 * named) as pciutils 3.9 `lspci -vv` does: Slot ID, Debug port, Hot-plug,
 * Subsystem (SSVID), and the extended ACS, ARI, ATS and LTR; those lspci only
 * names (`<?>`) are named the same way.
 */
import { flagFields, flagText, u16, x, type BitNames } from './pci-bytes.js';
import type { Decoded } from './pci-caps.js';

/** Names the device's subsystem ids (the Subsystem capability of bridges), as the Subsystem line does. */
export type SubsystemNamer = (subsystemVendor: number, subsystem: number) => string;

const titled = (title: string): Decoded => ({ name: title.replace(/ <\?>$/, ''), title, details: [], fields: {} });

const STANDARD_NAMES: Readonly<Record<number, string>> = {
  0x06: 'CompactPCI hot-swap <?>',
  0x0b: 'CompactPCI central resource control <?>',
  0x0c: 'Hot-plug capable',
  0x0e: 'AGP3 <?>',
  0x0f: 'Secure device <?>',
};

/** Standard capabilities beyond PM, MSI, MSI-X, Express and vendor; `undefined` for one lspci decodes and we do not. */
export function decodeMoreStandard(b: Uint8Array, at: number, id: number, subsystem: SubsystemNamer): Decoded | undefined {
  const cap = u16(b, at + 2);
  const named = STANDARD_NAMES[id];
  if (named !== undefined) return titled(named);
  if (id === 0x04) {
    const esr = cap & 0xff;
    return { name: 'Slot ID', title: `Slot ID: ${esr & 0x1f} slots, First${esr & 0x20 ? '+' : '-'}, chassis ${x(cap >> 8, 2)}`, details: [], fields: { slots: esr & 0x1f, first: (esr & 0x20) !== 0, chassis: cap >> 8 } };
  }
  if (id === 0x0a) return { name: 'Debug port', title: `Debug port: BAR=${cap >> 13} offset=${x(cap & 0x1fff, 4)}`, details: [], fields: { bar: cap >> 13, offset: cap & 0x1fff } };
  if (id === 0x0d) {
    const [sv, sd] = [u16(b, at + 4), u16(b, at + 6)];
    return { name: 'Subsystem', title: `Subsystem: ${subsystem(sv, sd)}`, details: [], fields: { subsystemVendorId: sv, subsystemId: sd } };
  }
  return undefined;
}

const EXTENDED_NAMES: Readonly<Record<number, string>> = {
  0x04: 'Power Budgeting <?>',
  0x06: 'Root Complex Internal Link <?>',
  0x08: 'Multi-Function Virtual Channel <?>',
  0x0a: 'Root Complex Register Block <?>',
  0x11: 'Multi-Root I/O Virtualization <?>',
  0x16: 'Dynamic Power Allocation <?>',
  0x1a: 'Protocol Multiplexing <?>',
  0x1c: 'LN Requester <?>',
  0x20: 'PCI Express over M_PHY <?>',
  0x21: 'FRS Queueing <?>',
  0x22: 'Readiness Time Reporting <?>',
  0x25: 'Data Link Feature <?>',
  0x26: 'Physical Layer 16.0 GT/s <?>',
  0x27: 'Lane Margining at the Receiver <?>',
  0x28: 'Hierarchy ID <?>',
  0x29: 'Native PCIe Enclosure Management <?>',
};

const ACS: BitNames = [['SrcValid', 0x1], ['TransBlk', 0x2], ['ReqRedir', 0x4], ['CmpltRedir', 0x8], ['UpstreamFwd', 0x10], ['EgressCtrl', 0x20], ['DirectTrans', 0x40]];
const ARI: BitNames = [['MFVC', 0x1], ['ACS', 0x2]];

function ltrNs(v: number): number {
  return (v & 0x3ff) * 2 ** (((v >> 10) & 7) * 5);
}

/** Extended capabilities beyond AER, DSN and VSEC; `undefined` for one lspci decodes and we do not. */
export function decodeMoreExtended(b: Uint8Array, at: number, id: number): Decoded | undefined {
  const named = EXTENDED_NAMES[id];
  if (named !== undefined) return titled(named);
  const [cap, ctl] = [u16(b, at + 4), u16(b, at + 6)];
  switch (id) {
    case 0x0d:
      return {
        name: 'Access Control Services',
        title: 'Access Control Services',
        details: [`ACSCap:\t${flagText(cap, ACS)}`, `ACSCtl:\t${flagText(ctl, ACS)}`],
        fields: { capability: flagFields(cap, ACS), control: flagFields(ctl, ACS) },
      };
    case 0x0e:
      return {
        name: 'Alternative Routing-ID Interpretation (ARI)',
        title: 'Alternative Routing-ID Interpretation (ARI)',
        details: [`ARICap:\t${flagText(cap, ARI)}, Next Function: ${(cap >> 8) & 0xff}`, `ARICtl:\t${flagText(ctl, ARI)}, Function Group: ${(ctl >> 4) & 7}`],
        fields: { capability: flagFields(cap, ARI), nextFunction: (cap >> 8) & 0xff, control: flagFields(ctl, ARI), functionGroup: (ctl >> 4) & 7 },
      };
    case 0x0f:
      return {
        name: 'Address Translation Service (ATS)',
        title: 'Address Translation Service (ATS)',
        details: [`ATSCap:\tInvalidate Queue Depth: ${x(cap & 0x1f, 2)}`, `ATSCtl:\tEnable${ctl & 0x8000 ? '+' : '-'}, Smallest Translation Unit: ${x(ctl & 0x1f, 2)}`],
        fields: { invalidateQueueDepth: cap & 0x1f, enable: (ctl & 0x8000) !== 0, smallestTranslationUnit: ctl & 0x1f },
      };
    case 0x18:
      return {
        name: 'Latency Tolerance Reporting',
        title: 'Latency Tolerance Reporting',
        details: [`Max snoop latency: ${ltrNs(cap)}ns`, `Max no snoop latency: ${ltrNs(ctl)}ns`],
        fields: { maxSnoopLatencyNs: ltrNs(cap), maxNoSnoopLatencyNs: ltrNs(ctl) },
      };
    default:
      return undefined;
  }
}
