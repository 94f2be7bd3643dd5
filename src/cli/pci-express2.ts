/**
 * The version-2 registers of the PCI Express capability (DevCap2/DevCtl2,
 * LnkCap2/LnkCtl2/LnkSta2) worded as pciutils 3.9 `lspci -vv` prints them.
 */
import { flagText, u16, u32, type BitNames } from './pci-bytes.js';

const T = { ENDPOINT: 0x0, LEGACY_ENDPOINT: 0x1, ROOT_PORT: 0x4, UPSTREAM: 0x5, DOWNSTREAM: 0x6, PCIE_BRIDGE: 0x8, ROOT_INTEGRATED: 0x9 } as const;

const TIMEOUT_RANGES: Readonly<Record<number, string>> = { 0: 'Not Supported', 1: 'Range A', 2: 'Range B', 3: 'Range AB', 6: 'Range BC', 7: 'Range ABC', 14: 'Range BCD', 15: 'Range ABCD' };
const TIMEOUT_VALUES: Readonly<Record<number, string>> = {
  0: '50us to 50ms', 1: '50us to 100us', 2: '1ms to 10ms', 5: '16ms to 55ms', 6: '65ms to 210ms', 9: '260ms to 900ms', 10: '1s to 3.5s', 13: '4s to 13s', 14: '17s to 64s',
};
const OBFF_CAP = ['Not Supported', 'Via message', 'Via WAKE#', 'Via message/WAKE#'];
const EPR = ['Not Supported', 'Dev Specific', 'Form Factor Dev Specific', 'Reserved'];
const LN_CLS = ['Not Supported', '64byte cachelines', '128byte cachelines', 'Reserved'];
const TPH = ['TPHComp- ExtTPHComp-', 'TPHComp+ ExtTPHComp-', '', 'TPHComp+ ExtTPHComp+'];
const OBFF_CTL = ['Disabled', 'Via message A', 'Via message B', 'Via WAKE#'];
const TARGET_SPEED = ['2.5GT/s', '2.5GT/s', '5GT/s', '8GT/s', '16GT/s', '32GT/s', '64GT/s'];
const DEEMPHASIS = ['-6dB', '-3.5dB'];
const PRESETS = [
  '-6dB de-emphasis, 0dB preshoot', '-3.5dB de-emphasis, 0dB preshoot', '-4.4dB de-emphasis, 0dB preshoot', '-2.5dB de-emphasis, 0dB preshoot',
  '0dB de-emphasis, 0dB preshoot', '0dB de-emphasis, 1.9dB preshoot', '0dB de-emphasis, 2.5dB preshoot', '-6.0dB de-emphasis, 3.5dB preshoot',
  '-3.5dB de-emphasis, 3.5dB preshoot', '0dB de-emphasis, 3.5dB preshoot',
];
const MARGIN = ['Normal Operating Range', '800-1200mV(full-swing)/400-700mV(half-swing)', ...Array<string>(4).fill('200-400mV(full-swing)/100-200mV(half-swing)')];
const CROSSLINK = ['unsupported', 'Upstream Port', 'Downstream Port', 'incomplete'];
const COMPONENT: Readonly<Record<number, string>> = { 0: 'Link Down - Not Determined', 1: 'Link Down - Not Present', 2: 'Link Down - Present', 4: 'Link Up - Present', 5: 'Link Up - Present and DRS Received' };
const LNKSTA2_1: BitNames = [['EqualizationComplete', 0x2], ['EqualizationPhase1', 0x4]];
const LNKSTA2_2: BitNames = [['EqualizationPhase2', 0x8], ['EqualizationPhase3', 0x10], ['LinkEqualizationRequest', 0x20]];

function speedVector(v: number): string {
  if (v & 0x60) return 'RsvdP';
  const top = [0x10, 0x08, 0x04, 0x02].find((bit) => (v & bit) !== 0);
  const names: Record<number, string> = { 0x10: '2.5-32GT/s', 0x08: '2.5-16GT/s', 0x04: '2.5-8GT/s', 0x02: '2.5-5GT/s' };
  if (top !== undefined) return names[top] ?? 'Unknown';
  return v & 1 ? '2.5GT/s' : 'Unknown';
}

function devCap2Lines(cap: number, type: number, hasMemoryBar: boolean): string[] {
  const lines = [`DevCap2: Completion Timeout: ${TIMEOUT_RANGES[cap & 0xf] ?? 'Unknown'}, ${flagText(cap, [['TimeoutDis', 0x10], ['NROPrPrP', 0x400], ['LTR', 0x800]])}`];
  let line = `\t ${flagText(cap, [['10BitTagComp', 0x10000], ['10BitTagReq', 0x20000]])} OBFF ${OBFF_CAP[(cap >> 18) & 3]}, ${flagText(cap, [['ExtFmt', 0x100000], ['EETLPPrefix', 0x200000]])}`;
  if (cap & 0x200000) line += `, MaxEETLPPrefixes ${(cap >> 22) & 3 || 4}`;
  lines.push(line, `\t EmergencyPowerReduction ${EPR[(cap >> 24) & 3]}, EmergencyPowerReductionInit${cap & 0x4000000 ? '+' : '-'}`);
  line = `\t FRS${cap & 0x80000000 ? '+' : '-'}`;
  if (type === T.ROOT_PORT) line += ` LN System CLS ${LN_CLS[(cap >> 14) & 3]},`;
  if (type === T.ROOT_PORT || type === T.ENDPOINT) line += ` ${TPH[(cap >> 12) & 3]}`;
  if (type === T.ROOT_PORT || type === T.DOWNSTREAM) line += ` ARIFwd${cap & 0x20 ? '+' : '-'}`;
  lines.push(line);
  const port = type === T.ROOT_PORT || type === T.UPSTREAM || type === T.DOWNSTREAM;
  if (port || hasMemoryBar) {
    let atomic = '\t AtomicOpsCap:';
    if (port) atomic += ` Routing${cap & 0x40 ? '+' : '-'}`;
    if (type === T.ROOT_PORT || hasMemoryBar) atomic += ` ${flagText(cap, [['32bit', 0x80], ['64bit', 0x100], ['128bitCAS', 0x200]])}`;
    lines.push(atomic);
  }
  return lines;
}

function devCtl2Lines(ctl: number, type: number): string[] {
  let line = `DevCtl2: Completion Timeout: ${TIMEOUT_VALUES[ctl & 0xf] ?? 'Unknown'}, ${flagText(ctl, [['TimeoutDis', 0x10], ['LTR', 0x400], ['10BitTagReq', 0x1000]])} OBFF ${OBFF_CTL[(ctl >> 13) & 3]},`;
  if (type === T.ROOT_PORT || type === T.DOWNSTREAM) line += ` ARIFwd${ctl & 0x20 ? '+' : '-'}`;
  const lines = [line];
  const requester = type === T.ROOT_PORT || type === T.ENDPOINT || type === T.ROOT_INTEGRATED || type === T.LEGACY_ENDPOINT;
  const port = type === T.ROOT_PORT || type === T.UPSTREAM || type === T.DOWNSTREAM;
  if (requester || port) {
    let atomic = '\t AtomicOpsCtl:';
    if (requester) atomic += ` ReqEn${ctl & 0x40 ? '+' : '-'}`;
    if (port) atomic += ` EgressBlck${ctl & 0x80 ? '+' : '-'}`;
    lines.push(atomic);
  }
  return lines;
}

/**
 * The link lines; `functionZero`: the function is device 0 function 0 (an endpoint's
 * other functions leave LnkCap2 and LnkCtl2 reserved, so lspci skips them).
 */
function link2Lines(b: Uint8Array, at: number, type: number, functionZero: boolean): string[] {
  const lines: string[] = [];
  let cap = 0;
  if (!((type === T.ENDPOINT || type === T.LEGACY_ENDPOINT) && !functionZero)) {
    cap = u32(b, at + 0x2c);
    if (cap !== 0) lines.push(`LnkCap2: Supported Link Speeds: ${speedVector((cap >> 1) & 0x7f)}, ${flagText(cap, [['Crosslink', 0x100], ['Retimer', 0x800000], ['2Retimers', 0x1000000], ['DRS', 0x80000000]])}`);
    const ctl = u16(b, at + 0x30);
    let line = `LnkCtl2: Target Link Speed: ${TARGET_SPEED[ctl & 0xf] ?? 'Unknown'}, ${flagText(ctl, [['EnterCompliance', 0x10], ['SpeedDis', 0x20]])}`;
    if (type === T.DOWNSTREAM) line += `, Selectable De-emphasis: ${DEEMPHASIS[(ctl >> 6) & 1]}`;
    lines.push(
      line,
      `\t Transmit Margin: ${MARGIN[(ctl >> 7) & 7] ?? 'Unknown'}, ${flagText(ctl, [['EnterModifiedCompliance', 0x400], ['ComplianceSOS', 0x800]])}`,
      `\t Compliance Preset/De-emphasis: ${PRESETS[(ctl >> 12) & 0xf] ?? 'Unknown'}`,
    );
  }
  const sta = u16(b, at + 0x32);
  lines.push(
    `LnkSta2: Current De-emphasis Level: ${DEEMPHASIS[sta & 1]}, ${flagText(sta, LNKSTA2_1)}`,
    `\t ${flagText(sta, LNKSTA2_2)}`,
    `\t ${flagText(sta, [['Retimer', 0x40], ['2Retimers', 0x80]])} CrosslinkRes: ${CROSSLINK[(sta >> 8) & 3]}`,
  );
  const downstream = type === T.ROOT_PORT || type === T.DOWNSTREAM || type === T.PCIE_BRIDGE;
  if (downstream && cap & 0x80000000) {
    lines[lines.length - 1] += `, DRS${sta & 0x8000 ? '+' : '-'}`;
    lines.push(`\t DownstreamComp: ${COMPONENT[(sta >> 12) & 7] ?? 'Reserved'}`);
  }
  return lines;
}

/** The `-vv` lines of the version-2 registers of the Express capability at `at`. */
export function express2Lines(b: Uint8Array, at: number, type: number, context: { hasMemoryBar: boolean; link: boolean; functionZero: boolean }): string[] {
  return [...devCap2Lines(u32(b, at + 0x24), type, context.hasMemoryBar), ...devCtl2Lines(u16(b, at + 0x28), type), ...(context.link ? link2Lines(b, at, type, context.functionZero) : [])];
}
