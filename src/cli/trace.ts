/**
 * `--trace`: one line per message the client sends or receives, with the time
 * since the first message and, for replies, the round trip:
 *
 * ```
 * +0.123ms → REGION_READ #5 region=0 off=0x0 count=4
 * +0.150ms ← REGION_READ #5 ok count=4 data=44 4d 41 01 (36B, 27µs)
 * ```
 *
 * Payloads are decoded with the protocol decoders; one that does not decode is
 * shown by its size only.
 */
import type { TraceEvent } from '../client/core.js';
import { Command, DeviceInfoFlags, DmaMapFlags, HeaderFlags, IrqInfoFlags, IrqSetFlags, RegionInfoFlags, commandName } from '../protocol/constants.js';
import { errnoName } from '../protocol/errno.js';
import { decodeRequest } from '../protocol/request.js';
import { decodeVersion, type Version } from '../protocol/version.js';
import { formatCapabilitiesJson } from '../protocol/capabilities.js';
import { decodeDeviceInfo } from '../protocol/device.js';
import { decodeRegionInfo } from '../protocol/region.js';
import { decodeIrqInfo } from '../protocol/irq.js';
import { decodeRegionReadReply, decodeRegionWriteReply } from '../protocol/region-access.js';
import { decodeDmaReadRequest, decodeDmaWriteRequest, decodeDmaUnmapReply } from '../protocol/dma.js';
import { decodeRegionIoFdsReply } from '../protocol/region-io-fds.js';
import { decodeDeviceFeature } from '../protocol/feature.js';
import { decodeMigDataReadReply } from '../protocol/migration-data.js';

const DATA_PREVIEW = 16;

/** Formats trace events as lines; times are relative to the first event seen. */
export function createTracePrinter(write: (line: string) => void): (event: TraceEvent) => void {
  let start: bigint | undefined;
  /** When each request in flight was traced, per channel, so latencies match the printed times. */
  const sent = new Map<string, bigint>();
  return (event) => {
    start ??= event.timeNs;
    const isReply = (event.header.flags & HeaderFlags.TYPE_MASK) === HeaderFlags.TYPE_REPLY;
    // a reply travels the other way from its command; the server's commands have their own ids
    const commandDirection = isReply === (event.direction === 'send') ? 'recv' : 'send';
    const key = `${event.channel}:${commandDirection}:${event.header.msgId}`;
    let latencyNs = event.latencyNs;
    if (!isReply) sent.set(key, event.timeNs);
    else {
      const at = sent.get(key);
      sent.delete(key);
      if (at !== undefined) latencyNs = event.timeNs - at;
    }
    write(formatTraceEvent(latencyNs === undefined ? event : { ...event, latencyNs }, start));
  };
}

/** One trace line for `event`, its time relative to `startNs`. */
export function formatTraceEvent(event: TraceEvent, startNs: bigint): string {
  const ms = Number(event.timeNs - startNs) / 1e6;
  const arrow = event.direction === 'send' ? '→' : '←';
  const twin = event.channel === 'twin' ? ' [twin]' : '';
  const { header } = event;
  const isReply = (header.flags & HeaderFlags.TYPE_MASK) === HeaderFlags.TYPE_REPLY;
  const head = `+${ms.toFixed(3)}ms ${arrow}${twin} ${commandName(header.cmd)} #${header.msgId}`;
  const fds = event.fds > 0 ? ` fds=${event.fds}` : '';
  if (!isReply) return `${head}${join(safe(() => describeCommand(event)))}${fds}`;
  const latency = event.latencyNs === undefined ? '' : `, ${formatMicros(event.latencyNs)}`;
  if ((header.flags & HeaderFlags.ERROR) !== 0) {
    return `${head} error ${errnoName(header.errorNo) ?? 'errno'} ${header.errorNo} (${event.payload.length}B${latency})`;
  }
  return `${head} ok${join(safe(() => describeReply(header.cmd, event.payload)))}${fds} (${event.payload.length}B${latency})`;
}

function formatMicros(ns: bigint): string {
  const us = Number(ns) / 1000;
  return us >= 100 ? `${Math.round(us)}µs` : `${us.toFixed(1)}µs`;
}

function join(text: string): string {
  return text === '' ? '' : ` ${text}`;
}

function safe(describe: () => string): string {
  try {
    return describe();
  } catch {
    return '(undecodable)';
  }
}

const h = (n: number | bigint): string => `0x${n.toString(16)}`;

function bits(value: number, names: Readonly<Record<string, number>>): string {
  const set = Object.entries(names)
    .filter(([, bit]) => bit !== 0 && (value & bit) === bit)
    .map(([name]) => name);
  return set.length > 0 ? set.join('|') : h(value);
}

function preview(data: Uint8Array): string {
  const shown = Array.from(data.subarray(0, DATA_PREVIEW), (b) => b.toString(16).padStart(2, '0')).join(' ');
  return data.length > DATA_PREVIEW ? `${shown} …` : shown;
}

function versionText(v: Version): string {
  const caps = v.capabilities === undefined ? '' : ` ${formatCapabilitiesJson(v.capabilities).slice('{"capabilities":'.length, -1)}`;
  return `${v.major}.${v.minor}${caps}`;
}

const IRQ_SET_NAMES = {
  DATA_NONE: IrqSetFlags.DATA_NONE,
  DATA_BOOL: IrqSetFlags.DATA_BOOL,
  DATA_EVENTFD: IrqSetFlags.DATA_EVENTFD,
  MASK: IrqSetFlags.ACTION_MASK,
  UNMASK: IrqSetFlags.ACTION_UNMASK,
  TRIGGER: IrqSetFlags.ACTION_TRIGGER,
};

/** A command we send (client→server), or one the server sends us (DMA_READ/DMA_WRITE). */
function describeCommand(event: TraceEvent): string {
  const { header, payload } = event;
  if (header.cmd === Command.DMA_READ) {
    const a = decodeDmaReadRequest(payload);
    return `addr=${h(a.addr)} count=${a.count}`;
  }
  if (header.cmd === Command.DMA_WRITE) {
    const a = decodeDmaWriteRequest(payload);
    return `addr=${h(a.addr)} count=${a.count} data=${preview(a.data)}`;
  }
  const r = decodeRequest(header, payload, Number.MAX_SAFE_INTEGER);
  switch (r.cmd) {
    case Command.VERSION:
      return versionText(r.body);
    case Command.DMA_MAP:
      return `iova=${h(r.body.addr)} size=${h(r.body.size)} off=${h(r.body.offset)} ${bits(r.body.flags, DmaMapFlags)}`;
    case Command.DMA_UNMAP:
      return `iova=${h(r.body.addr)} size=${h(r.body.size)}${r.body.flags ? ` flags=${h(r.body.flags)}` : ''}`;
    case Command.DEVICE_GET_REGION_INFO:
    case Command.DEVICE_GET_REGION_IO_FDS:
    case Command.DEVICE_GET_IRQ_INFO:
      return `index=${r.body.index}`;
    case Command.DEVICE_SET_IRQS:
      return `index=${r.body.index} start=${r.body.start} count=${r.body.count} ${bits(r.body.flags, IRQ_SET_NAMES)}`;
    case Command.REGION_READ:
      return `region=${r.body.region} off=${h(r.body.offset)} count=${r.body.count}`;
    case Command.REGION_WRITE:
      return `region=${r.body.region} off=${h(r.body.offset)} count=${r.body.count} data=${preview(r.body.data)}`;
    case Command.REGION_WRITE_MULTI:
      return `writes=${r.body.writes.length}`;
    case Command.DEVICE_FEATURE:
      return `flags=${h(r.body.flags)} data=${r.body.data.length}B`;
    case Command.MIG_DATA_READ:
      return `size=${r.body.size}`;
    case Command.MIG_DATA_WRITE:
      return `size=${r.body.size}`;
    default:
      return '';
  }
}

/** A successful reply (to us, or ours to the server's DMA_READ/DMA_WRITE). */
function describeReply(cmd: number, payload: Uint8Array): string {
  switch (cmd) {
    case Command.VERSION:
      return versionText(decodeVersion(payload));
    case Command.DEVICE_GET_INFO: {
      const d = decodeDeviceInfo(payload);
      return `flags=${bits(d.flags, DeviceInfoFlags)} regions=${d.numRegions} irqs=${d.numIrqs}`;
    }
    case Command.DEVICE_GET_REGION_INFO: {
      const r = decodeRegionInfo(payload);
      return `index=${r.index} size=${h(r.size)} flags=${r.flags === 0 ? '0' : bits(r.flags, RegionInfoFlags)} off=${h(r.offset)}`;
    }
    case Command.DEVICE_GET_REGION_IO_FDS: {
      const r = decodeRegionIoFdsReply(payload);
      return `index=${r.index} count=${r.count}`;
    }
    case Command.DEVICE_GET_IRQ_INFO: {
      const i = decodeIrqInfo(payload);
      return `index=${i.index} count=${i.count} flags=${i.flags === 0 ? '0' : bits(i.flags, IrqInfoFlags)}`;
    }
    case Command.REGION_READ: {
      const r = decodeRegionReadReply(payload);
      return r === undefined ? 'count=0' : `count=${r.count} data=${preview(r.data)}`;
    }
    case Command.REGION_WRITE: {
      const r = decodeRegionWriteReply(payload);
      return `count=${r?.count ?? 0}`;
    }
    case Command.DMA_UNMAP:
      return decodeDmaUnmapReply(payload).bitmap ? 'bitmap' : '';
    case Command.DEVICE_FEATURE:
      return `data=${decodeDeviceFeature(payload).data.length}B`;
    case Command.MIG_DATA_READ:
      return `size=${decodeMigDataReadReply(payload).size}`;
    default:
      return '';
  }
}
