/**
 * The PCI Express capability as pciutils 3.9 `lspci -vv` prints it: the title
 * (port type, interrupt message number), then the Device, Link, Slot and Root
 * registers, and the version-2 ones (pci-express2.ts). JSON fields carry the
 * main values decoded and every register raw.
 */
import { flagFields, flagText, u16, u32, x, type BitNames } from './pci-bytes.js';
import type { Decoded } from './pci-caps.js';
import { express2Lines } from './pci-express2.js';

/** What the Express decode needs from outside the capability. */
export interface ExpressContext {
  /** A memory BAR is implemented (lspci then shows AtomicOpsCap). */
  hasMemoryBar: boolean;
  /** The function is device 0 function 0 (our slot is always 00:00.0). */
  functionZero: boolean;
}

/** Device/port types of the Express Capabilities register. */
export const ExpressType = {
  ENDPOINT: 0x0,
  LEGACY_ENDPOINT: 0x1,
  ROOT_PORT: 0x4,
  UPSTREAM: 0x5,
  DOWNSTREAM: 0x6,
  PCI_BRIDGE: 0x7,
  PCIE_BRIDGE: 0x8,
  ROOT_INTEGRATED: 0x9,
  ROOT_EVENT_COLLECTOR: 0xa,
} as const;

const T = ExpressType;
const ENDPOINTS: readonly number[] = [T.ENDPOINT, T.LEGACY_ENDPOINT];
const L0S = ['<64ns', '<128ns', '<256ns', '<512ns', '<1us', '<2us', '<4us', 'unlimited'];
const L1 = ['<1us', '<2us', '<4us', '<8us', '<16us', '<32us', '<64us', 'unlimited'];
const ASPM_SUPPORT = ['not supported', 'L0s', 'L1', 'L0s L1'];
const ASPM_ENABLED = ['Disabled', 'L0s Enabled', 'L1 Enabled', 'L0s L1 Enabled'];

function typeName(type: number, flags: number): string {
  const slot = `(Slot${(flags & 0x100) !== 0 ? '+' : '-'})`;
  const names: Record<number, string> = {
    [T.ENDPOINT]: 'Endpoint',
    [T.LEGACY_ENDPOINT]: 'Legacy Endpoint',
    [T.ROOT_PORT]: `Root Port ${slot}`,
    [T.UPSTREAM]: 'Upstream Port',
    [T.DOWNSTREAM]: `Downstream Port ${slot}`,
    [T.PCI_BRIDGE]: 'PCI-Express to PCI/PCI-X Bridge',
    [T.PCIE_BRIDGE]: `PCI/PCI-X to PCI-Express Bridge ${slot}`,
    [T.ROOT_INTEGRATED]: 'Root Complex Integrated Endpoint',
    [T.ROOT_EVENT_COLLECTOR]: 'Root Complex Event Collector',
  };
  return names[type] ?? `Unknown type ${type}`;
}

/** `%g`-style watts, as pciutils' show_power_limit(). */
function powerLimit(value: number, scale: number): string {
  if (scale === 0 && value === 0xff) return '>600W';
  const v = scale === 0 && value >= 0xf0 && value <= 0xfe ? 250 + 25 * (value - 0xf0) : value;
  return `${Number((v * ([1, 0.1, 0.01, 0.001][scale] ?? 1)).toPrecision(6))}W`;
}

function linkSpeed(code: number): string {
  return ['unknown', '2.5GT/s', '5GT/s', '8GT/s', '16GT/s', '32GT/s', '64GT/s'][code] ?? 'unknown';
}

function compare(type: number, sta: number, cap: number): string {
  if (sta > cap) return ' (overdriven)';
  if (sta === cap || type === T.ROOT_PORT || type === T.DOWNSTREAM || type === T.PCIE_BRIDGE) return '';
  return ' (downgraded)';
}

const DEVCTL_ERR: BitNames = [['CorrErr', 0x1], ['NonFatalErr', 0x2], ['FatalErr', 0x4], ['UnsupReq', 0x8]];
const DEVCTL_MISC: BitNames = [['RlxdOrd', 0x10], ['ExtTag', 0x100], ['PhantFunc', 0x200], ['AuxPwr', 0x400], ['NoSnoop', 0x800]];
const DEVSTA: BitNames = [...DEVCTL_ERR, ['AuxPwr', 0x10], ['TransPend', 0x20]];
const LNKCAP: BitNames = [['ClockPM', 0x40000], ['Surprise', 0x80000], ['LLActRep', 0x100000], ['BwNot', 0x200000], ['ASPMOptComp', 0x400000]];
const LNKCTL: BitNames = [['ExtSynch', 0x80], ['ClockPM', 0x100], ['AutWidDis', 0x200], ['BWInt', 0x400], ['AutBWInt', 0x800]];
const LNKSTA: BitNames = [['TrErr', 0x400], ['Train', 0x800], ['SlotClk', 0x1000], ['DLActive', 0x2000], ['BWMgmt', 0x4000], ['ABWMgmt', 0x8000]];

function deviceLines(b: Uint8Array, at: number, type: number): string[] {
  const cap = u32(b, at + 4);
  const ctl = u16(b, at + 8);
  const endpoint = ENDPOINTS.includes(type);
  const flr = endpoint || type === T.ROOT_INTEGRATED;
  let line1 = `DevCap:\tMaxPayload ${128 << (cap & 7)} bytes, PhantFunc ${(1 << ((cap & 0x18) >> 3)) - 1}`;
  if (endpoint) line1 += `, Latency L0s ${L0S[(cap >> 6) & 7]}, L1 ${L1[(cap >> 9) & 7]}`;
  let line2 = `\tExtTag${(cap & 0x20) !== 0 ? '+' : '-'}`;
  if (endpoint || type === T.UPSTREAM || type === T.PCI_BRIDGE) line2 += ` ${flagText(cap, [['AttnBtn', 0x1000], ['AttnInd', 0x2000], ['PwrInd', 0x4000]])}`;
  line2 += ` ${flagText(cap, [['RBE', 0x8000]])}`;
  if (flr) line2 += ` ${flagText(cap, [['FLReset', 0x10000000]])}`;
  if (type === T.ENDPOINT || type === T.UPSTREAM || type === T.PCI_BRIDGE) line2 += ` SlotPowerLimit ${powerLimit((cap >> 18) & 0xff, (cap >> 26) & 3)}`;
  let misc = `\t${flagText(ctl, DEVCTL_MISC)}`;
  if (type === T.PCI_BRIDGE) misc += ` ${flagText(ctl, [['BrConfRtry', 0x8000]])}`;
  if (flr && (cap & 0x10000000) !== 0) misc += ` ${flagText(ctl, [['FLReset', 0x8000]])}`;
  return [
    line1,
    line2,
    `DevCtl:\t${flagText(ctl, DEVCTL_ERR)}`,
    misc,
    `\tMaxPayload ${128 << ((ctl >> 5) & 7)} bytes, MaxReadReq ${128 << ((ctl >> 12) & 7)} bytes`,
    `DevSta:\t${flagText(u16(b, at + 10), DEVSTA)}`,
  ];
}

function linkLines(b: Uint8Array, at: number, type: number): string[] {
  const cap = u32(b, at + 12);
  const ctl = u16(b, at + 16);
  const sta = u16(b, at + 18);
  const aspm = (cap >> 10) & 3;
  let capLine = `LnkCap:\tPort #${cap >>> 24}, Speed ${linkSpeed(cap & 0xf)}, Width x${(cap >> 4) & 0x3f}, ASPM ${ASPM_SUPPORT[aspm]}`;
  if (aspm !== 0) {
    capLine += ', Exit Latency ';
    if (aspm & 1) capLine += `L0s ${L0S[(cap >> 12) & 7]}`;
    if (aspm & 2) capLine += `${aspm & 1 ? ', ' : ''}L1 ${L1[(cap >> 15) & 7]}`;
  }
  const rcb = [T.ROOT_PORT, T.ENDPOINT, T.LEGACY_ENDPOINT, T.PCI_BRIDGE].includes(type as 0) ? ` RCB ${ctl & 8 ? 128 : 64} bytes,` : '';
  return [
    capLine,
    `\t${flagText(cap, LNKCAP)}`,
    `LnkCtl:\tASPM ${ASPM_ENABLED[ctl & 3]};${rcb} ${flagText(ctl, [['Disabled', 0x10], ['CommClk', 0x40]])}`,
    `\t${flagText(ctl, LNKCTL)}`,
    `LnkSta:\tSpeed ${linkSpeed(sta & 0xf)}${compare(type, sta & 0xf, cap & 0xf)}, Width x${(sta >> 4) & 0x3f}${compare(type, (sta >> 4) & 0x3f, (cap >> 4) & 0x3f)}`,
    `\t${flagText(sta, LNKSTA)}`,
  ];
}

const INDICATOR = ['Unknown', 'On', 'Blink', 'Off'];

function slotLines(b: Uint8Array, at: number): string[] {
  const cap = u32(b, at + 0x14);
  const ctl = u16(b, at + 0x18);
  const sta = u16(b, at + 0x1a);
  return [
    `SltCap:\t${flagText(cap, [['AttnBtn', 1], ['PwrCtrl', 2], ['MRL', 4], ['AttnInd', 8], ['PwrInd', 0x10], ['HotPlug', 0x40], ['Surprise', 0x20]])}`,
    `\tSlot #${cap >>> 19}, PowerLimit ${powerLimit((cap >> 7) & 0xff, (cap >> 15) & 3)}; ${flagText(cap, [['Interlock', 0x20000], ['NoCompl', 0x40000]])}`,
    `SltCtl:\tEnable: ${flagText(ctl, [['AttnBtn', 1], ['PwrFlt', 2], ['MRL', 4], ['PresDet', 8], ['CmdCplt', 0x10], ['HPIrq', 0x20], ['LinkChg', 0x1000]])}`,
    `\tControl: AttnInd ${INDICATOR[(ctl >> 6) & 3]}, PwrInd ${INDICATOR[(ctl >> 8) & 3]}, ${flagText(ctl, [['Power', 0x400], ['Interlock', 0x800]])}`,
    `SltSta:\tStatus: ${flagText(sta, [['AttnBtn', 1], ['PowerFlt', 2], ['MRL', 0x20], ['CmdCplt', 0x10], ['PresDet', 0x40], ['Interlock', 0x80]])}`,
    `\tChanged: ${flagText(sta, [['MRL', 4], ['PresDet', 8], ['LinkState', 0x100]])}`,
  ];
}

function rootLines(b: Uint8Array, at: number): string[] {
  const sta = u32(b, at + 0x20);
  return [
    `RootCap: CRSVisible${u16(b, at + 0x1e) & 1 ? '+' : '-'}`,
    `RootCtl: ${flagText(u16(b, at + 0x1c), [['ErrCorrectable', 1], ['ErrNon-Fatal', 2], ['ErrFatal', 4], ['PMEIntEna', 8], ['CRSVisible', 0x10]])}`,
    `RootSta: PME ReqID ${x(sta & 0xffff, 4)}, ${flagText(sta, [['PMEStatus', 0x10000], ['PMEPending', 0x20000]])}`,
  ];
}

function fields(b: Uint8Array, at: number, flags: number, type: number): Record<string, unknown> {
  const devcap = u32(b, at + 4);
  const devctl = u16(b, at + 8);
  const lnkcap = u32(b, at + 12);
  const lnksta = u16(b, at + 18);
  return {
    version: flags & 0xf,
    type,
    typeName: typeName(type, flags).replace(/ \(Slot.\)$/, ''),
    slotImplemented: (flags & 0x100) !== 0,
    interruptMessage: (flags >> 9) & 0x1f,
    maxPayloadSupported: 128 << (devcap & 7),
    functionLevelReset: (devcap & 0x10000000) !== 0,
    deviceControl: { ...flagFields(devctl, [...DEVCTL_ERR, ...DEVCTL_MISC]), maxPayload: 128 << ((devctl >> 5) & 7), maxReadRequest: 128 << ((devctl >> 12) & 7) },
    deviceStatus: flagFields(u16(b, at + 10), DEVSTA),
    link: { port: lnkcap >>> 24, maxSpeed: linkSpeed(lnkcap & 0xf), maxWidth: (lnkcap >> 4) & 0x3f, speed: linkSpeed(lnksta & 0xf), width: (lnksta >> 4) & 0x3f },
    registers: {
      devcap,
      devctl,
      devsta: u16(b, at + 10),
      lnkcap,
      lnkctl: u16(b, at + 16),
      lnksta,
      devcap2: u32(b, at + 0x24),
      devctl2: u16(b, at + 0x28),
      lnkcap2: u32(b, at + 0x2c),
      lnkctl2: u16(b, at + 0x30),
      lnksta2: u16(b, at + 0x32),
    },
  };
}

/** Decodes the Express capability at `at` (id 0x10). */
export function decodeExpress(b: Uint8Array, at: number, context: ExpressContext): Decoded {
  const flags = u16(b, at + 2);
  const type = (flags >> 4) & 0xf;
  const tail = `${typeName(type, flags)}, MSI ${x((flags >> 9) & 0x1f, 2)}`;
  const link = type !== T.ROOT_INTEGRATED && type !== T.ROOT_EVENT_COLLECTOR;
  const slot = (type === T.ROOT_PORT || type === T.DOWNSTREAM || type === T.PCIE_BRIDGE) && (flags & 0x100) !== 0;
  const root = type === T.ROOT_PORT || type === T.ROOT_EVENT_COLLECTOR;
  const details = [...deviceLines(b, at, type), ...(link ? linkLines(b, at, type) : []), ...(slot ? slotLines(b, at) : []), ...(root ? rootLines(b, at) : [])];
  if ((flags & 0xf) >= 2) details.push(...express2Lines(b, at, type, { ...context, link }));
  return { name: 'PCI Express', title: `Express (v${flags & 0xf}) ${tail}`, brief: `Express ${tail}`, details, fields: fields(b, at, flags, type) };
}
