/**
 * `VFIO_USER_TRACE=protocol,dma,irq,pci,migration,session` (or `all`, `-tag`
 * to drop one): the server logs, at `debug`, one record per handled request
 * whose command belongs to an enabled tag — command, message id, payload
 * bytes, the decoded request (byte arrays shown by length), the errno of
 * a failure and the handling time — plus session start and end. Tags:
 *
 * - `protocol`: every request;
 * - `dma`: DMA_MAP, DMA_UNMAP; `irq`: DEVICE_GET_IRQ_INFO, DEVICE_SET_IRQS;
 * - `pci`: REGION_READ/REGION_WRITE of config space;
 * - `migration`: DEVICE_FEATURE, MIG_DATA_READ, MIG_DATA_WRITE;
 * - `session`: a client negotiated VERSION, a session ended.
 *
 * Off (the default), a request costs one Set lookup and nothing else.
 */
import { Command, RegionIndex, commandName } from '../protocol/constants.js';
import { decodeRequest } from '../protocol/request.js';
import { TraceTag, tracing } from '../log.js';
import type { Logger } from '../log.js';
import type { Message } from '../transport/transport.js';

const CMD_TAGS: ReadonlyMap<number, TraceTag> = new Map<number, TraceTag>([
  [Command.DMA_MAP, TraceTag.DMA],
  [Command.DMA_UNMAP, TraceTag.DMA],
  [Command.DEVICE_GET_IRQ_INFO, TraceTag.IRQ],
  [Command.DEVICE_SET_IRQS, TraceTag.IRQ],
  [Command.DEVICE_FEATURE, TraceTag.MIGRATION],
  [Command.MIG_DATA_READ, TraceTag.MIGRATION],
  [Command.MIG_DATA_WRITE, TraceTag.MIGRATION],
  [Command.VERSION, TraceTag.SESSION],
]);

/** Region access payloads start with offset (u64) then region (u32). */
const REGION_FIELD = 8;

/** The enabled tags a request belongs to (empty: not traced). */
function tagsOf(m: Message): TraceTag[] {
  const tags: TraceTag[] = [];
  if (tracing(TraceTag.PROTOCOL)) tags.push(TraceTag.PROTOCOL);
  const cmd = m.header.cmd;
  const tag = CMD_TAGS.get(cmd);
  if (tag !== undefined && tracing(tag)) tags.push(tag);
  const access = cmd === Command.REGION_READ || cmd === Command.REGION_WRITE;
  if (access && tracing(TraceTag.PCI) && m.payload.length >= REGION_FIELD + 4) {
    const region = new DataView(m.payload.buffer, m.payload.byteOffset, m.payload.length).getUint32(REGION_FIELD, true);
    if (region === RegionIndex.CONFIG) tags.push(TraceTag.PCI);
  }
  return tags;
}

/** A decoded body fit for a log line: byte arrays become their length. */
function printable(m: Message): unknown {
  try {
    return JSON.parse(JSON.stringify(decodeRequest(m.header, m.payload).body ?? null, (_key, v: unknown) => (v instanceof Uint8Array ? { bytes: v.length } : typeof v === 'bigint' ? `0x${v.toString(16)}` : v)));
  } catch {
    return undefined; // the failure itself is in the record's errno
  }
}

/** Whether any tag is enabled at all (checked once per request before timing it). */
export const serverTracing = Object.values(TraceTag).some((t) => tracing(t));

/**
 * Logs one handled request when one of its tags is enabled.
 * @param startedMs - `performance.now()` when its handling began.
 * @param errno - the errno replied, for a failed request.
 */
export function traceRequest(logger: Logger, m: Message, startedMs: number, errno?: number): void {
  const tags = tagsOf(m);
  if (tags.length === 0) return;
  const record = {
    trace: tags.join(','),
    cmd: commandName(m.header.cmd),
    msgId: m.header.msgId,
    bytes: m.payload.length,
    request: printable(m),
    ...(errno === undefined ? {} : { errno }),
    us: Math.round((performance.now() - startedMs) * 1000),
  };
  logger.debug(record, `${record.cmd} #${record.msgId} ${errno === undefined ? 'ok' : `error ${errno}`}`);
}

/** Logs the end of a session (`session` tag; its start is the VERSION request's record). */
export function traceSessionEnd(logger: Logger, reason: Error | undefined): void {
  if (tracing(TraceTag.SESSION)) logger.debug({ trace: TraceTag.SESSION, ...(reason ? { err: reason } : {}) }, 'session closed');
}
