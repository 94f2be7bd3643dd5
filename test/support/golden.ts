/**
 * Golden messages: whole vfio-user messages (header + payload) built by hand
 * with the independent {@link WireBuilder}, each with the value the codec must
 * decode it to and the codec functions under test. Covers request and reply of
 * every command 1–18 except the obsolete 14, plus the layouts peers differ on.
 *
 * Reused by the transport tests for split-at-every-byte framing: every entry's
 * `bytes` is one complete message and `fds` is how many fds travel with it.
 */
import * as p from '../../src/protocol/index.js';
import { buildMessage, pattern, wb, type WireBuilder } from './wire-builder.js';

/** One golden message. */
export interface Golden {
  /** Unique, descriptive name (used as the test name). */
  readonly name: string;
  /** Raw command number. */
  readonly cmd: number;
  readonly direction: 'request' | 'reply';
  /** The whole message: 16-byte header + payload. */
  readonly bytes: Uint8Array;
  /** The header fields `bytes` starts with. */
  readonly header: { msgId: number; cmd: number; msgSize: number; flags: number; errorNo: number };
  /** Number of fds sent alongside (SCM_RIGHTS on the header's sendmsg). */
  readonly fds: number;
  /** What `decode(payload)` must deep-equal. */
  readonly value: unknown;
  /** Decodes the payload (bytes after the header). */
  decode(payload: Uint8Array): unknown;
  /** Encodes `value` back to exactly the payload; absent for decode-only (non-canonical) bytes. */
  readonly encode: ((value: unknown) => Uint8Array) | undefined;
}

interface Spec<T> {
  name: string;
  cmd: number;
  direction: 'request' | 'reply';
  /** Header flags; default 0 for requests, 1 (REPLY) for replies. */
  flags?: number;
  errorNo?: number;
  fds?: number;
  payload: WireBuilder | Uint8Array;
  value: T;
  decode: (payload: Uint8Array) => T;
  encode?: (value: T) => Uint8Array;
}

// Command numbers written out here rather than imported, to keep the bytes independent.
const C = {
  VERSION: 1, DMA_MAP: 2, DMA_UNMAP: 3, GET_INFO: 4, GET_REGION_INFO: 5, GET_REGION_IO_FDS: 6,
  GET_IRQ_INFO: 7, SET_IRQS: 8, REGION_READ: 9, REGION_WRITE: 10, DMA_READ: 11, DMA_WRITE: 12,
  RESET: 13, WRITE_MULTI: 15, FEATURE: 16, MIG_READ: 17, MIG_WRITE: 18,
} as const;

let nextId = 0x100;

function g<T>(s: Spec<T>): Golden {
  const msgId = nextId++;
  const flags = s.flags ?? (s.direction === 'request' ? 0 : 1);
  const errorNo = s.errorNo ?? 0;
  const bytes = buildMessage({ msgId, cmd: s.cmd, flags, errorNo }, s.payload);
  const encode = s.encode;
  return {
    name: `${s.direction === 'request' ? 'req' : 'rep'} ${s.name}`,
    cmd: s.cmd,
    direction: s.direction,
    bytes,
    header: { msgId, cmd: s.cmd, msgSize: bytes.length, flags, errorNo },
    fds: s.fds ?? 0,
    value: s.value,
    decode: (payload) => s.decode(payload),
    encode: encode && ((value) => encode(value as T)),
  };
}

const none = new Uint8Array(0);
const empty = { value: undefined, decode: p.decodeEmpty, encode: p.encodeEmpty };

/** DEVICE_FEATURE with typed `data`. */
interface Feature<T> {
  argsz: number;
  flags: number;
  data: T;
}

function feature<T>(decodeData: (d: Uint8Array) => T, encodeData: (v: T) => Uint8Array) {
  return {
    decode: (payload: Uint8Array): Feature<T> => {
      const f = p.decodeDeviceFeature(payload);
      return { argsz: f.argsz, flags: f.flags, data: decodeData(f.data) };
    },
    encode: (v: Feature<T>) => p.encodeDeviceFeature({ argsz: v.argsz, flags: v.flags, data: encodeData(v.data) }),
  };
}
const rawFeature = { decode: p.decodeDeviceFeature, encode: p.encodeDeviceFeature };

const GET = 1 << 16;
const SET = 1 << 17;
const PROBE = 1 << 18;

// ------------------------------------------------------------------ VERSION (1)

const CLIENT_JSON =
  '{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"migration":{"pgsize":4096},"twin_socket":{"supported":true}}}';
const QEMU_JSON =
  '{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":67108864,"max_dma_maps":65535,"pgsizes":4096,' +
  '"migration":{"pgsize":4096,"max_bitmap_size":268435456},"write_multiple":true,"x-deadline":{"supported":true}}}';
const LIBVFIO_USER_JSON =
  '{ "capabilities": { "max_msg_fds": 8, "max_data_xfer_size": 1048576, "migration": { "pgsize": 4096 }, ' +
  '"twin_socket": { "supported": true, "fd_index": 0 } } }';
const SERVER_JSON = '{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"twin_socket":{"supported":true,"fd_index":0}}}';
const version = { decode: p.decodeVersion, encode: p.encodeVersion };

const versionGoldens = [
  g({ name: 'VERSION with capabilities', cmd: C.VERSION, direction: 'request', ...version,
    payload: wb().u16(0).u16(2).cstr(CLIENT_JSON),
    value: { major: 0, minor: 2, capabilities: {
      maxMsgFds: 8, maxDataXferSize: 1048576, migration: { pgsize: 4096 }, twinSocket: { supported: true } } } }),
  g({ name: 'VERSION without JSON', cmd: C.VERSION, direction: 'request', ...version,
    payload: wb().u16(0).u16(2), value: { major: 0, minor: 2 } }),
  g({ name: 'VERSION spec capabilities and extensions (QEMU-like)', cmd: C.VERSION, direction: 'request', ...version,
    payload: wb().u16(0).u16(0).cstr(QEMU_JSON),
    value: { major: 0, minor: 0, capabilities: {
      maxMsgFds: 16, maxDataXferSize: 67108864, maxDmaMaps: 65535, pgsizes: 4096n,
      migration: { pgsize: 4096, extra: { max_bitmap_size: 268435456 } }, writeMultiple: true,
      extra: { 'x-deadline': { supported: true } } } } }),
  g({ name: 'VERSION libvfio-user json-c reply (decode only)', cmd: C.VERSION, direction: 'reply', fds: 1,
    decode: p.decodeVersion, payload: wb().u16(0).u16(2).cstr(LIBVFIO_USER_JSON),
    value: { major: 0, minor: 2, capabilities: {
      maxMsgFds: 8, maxDataXferSize: 1048576, migration: { pgsize: 4096 }, twinSocket: { supported: true, fdIndex: 0 } } } }),
  g({ name: 'VERSION twin-socket reply', cmd: C.VERSION, direction: 'reply', fds: 1, ...version,
    payload: wb().u16(0).u16(2).cstr(SERVER_JSON),
    value: { major: 0, minor: 2, capabilities: {
      maxMsgFds: 8, maxDataXferSize: 1048576, twinSocket: { supported: true, fdIndex: 0 } } } }),
];

// ------------------------------------------------------------ DMA (2, 3, 11, 12)

const IOVA = 0x1_0000_0000n;
const unmapReq = { decode: p.decodeDmaUnmapRequest, encode: p.encodeDmaUnmapRequest };
const unmapRep = { decode: p.decodeDmaUnmapReply, encode: p.encodeDmaUnmapReply };
const bitmap64 = Uint8Array.from({ length: 64 }, (_, i) => (i === 0 ? 0x05 : i === 63 ? 0x80 : 0));

const dmaGoldens = [
  g({ name: 'DMA_MAP with fd', cmd: C.DMA_MAP, direction: 'request', fds: 1,
    decode: p.decodeDmaMapRequest, encode: p.encodeDmaMapRequest,
    payload: wb().u32(32).u32(3).u64(0x1000n).u64(IOVA).u64(0x20_0000n),
    value: { argsz: 32, flags: 3, offset: 0x1000n, addr: IOVA, size: 0x20_0000n } }),
  g({ name: 'DMA_MAP message mode', cmd: C.DMA_MAP, direction: 'request',
    decode: p.decodeDmaMapRequest, encode: p.encodeDmaMapRequest,
    payload: wb().u32(32).u32(3).u64(0).u64(0xc000_0000n).u64(0x1000n),
    value: { argsz: 32, flags: 3, offset: 0n, addr: 0xc000_0000n, size: 0x1000n } }),
  g({ name: 'DMA_MAP', cmd: C.DMA_MAP, direction: 'reply', payload: none, ...empty }),
  g({ name: 'DMA_UNMAP', cmd: C.DMA_UNMAP, direction: 'request', ...unmapReq,
    payload: wb().u32(24).u32(0).u64(IOVA).u64(0x20_0000n),
    value: { argsz: 24, flags: 0, addr: IOVA, size: 0x20_0000n } }),
  g({ name: 'DMA_UNMAP echo', cmd: C.DMA_UNMAP, direction: 'reply', ...unmapRep,
    payload: wb().u32(24).u32(0).u64(IOVA).u64(0x20_0000n),
    value: { argsz: 24, flags: 0, addr: IOVA, size: 0x20_0000n } }),
  g({ name: 'DMA_UNMAP ALL', cmd: C.DMA_UNMAP, direction: 'request', ...unmapReq,
    payload: wb().u32(24).u32(2).u64(0).u64(0), value: { argsz: 24, flags: 2, addr: 0n, size: 0n } }),
  g({ name: 'DMA_UNMAP GET_DIRTY_BITMAP', cmd: C.DMA_UNMAP, direction: 'request', ...unmapReq,
    payload: wb().u32(104).u32(1).u64(IOVA).u64(0x20_0000n).u64(4096).u64(64),
    value: { argsz: 104, flags: 1, addr: IOVA, size: 0x20_0000n, bitmap: { pgsize: 4096n, size: 64n } } }),
  g({ name: 'DMA_UNMAP with bitmap', cmd: C.DMA_UNMAP, direction: 'reply', ...unmapRep,
    payload: wb().u32(104).u32(1).u64(IOVA).u64(0x20_0000n).u64(4096).u64(64).bytes(bitmap64),
    value: { argsz: 104, flags: 1, addr: IOVA, size: 0x20_0000n, bitmap: { pgsize: 4096n, size: 64n, data: bitmap64 } } }),
  g({ name: 'DMA_UNMAP ENOENT error', cmd: C.DMA_UNMAP, direction: 'reply', flags: 0x21, errorNo: 2,
    payload: none, ...empty }),
  g({ name: 'DMA_READ', cmd: C.DMA_READ, direction: 'request',
    decode: p.decodeDmaReadRequest, encode: p.encodeDmaAccess,
    payload: wb().u64(0xc000_0000n).u64(16), value: { addr: 0xc000_0000n, count: 16n } }),
  g({ name: 'DMA_READ', cmd: C.DMA_READ, direction: 'reply',
    decode: (x) => p.decodeDmaReadReply(x), encode: (v) => p.encodeDmaAccessWithData(v),
    payload: wb().u64(0xc000_0000n).u64(16).bytes(pattern(16)),
    value: { addr: 0xc000_0000n, count: 16n, data: pattern(16) } }),
  g({ name: 'DMA_READ QEMU layout', cmd: C.DMA_READ, direction: 'reply',
    decode: (x) => p.decodeDmaReadReply(x, 'qemu'), encode: (v) => p.encodeDmaAccessWithData(v, 'qemu'),
    payload: wb().u64(0xc000_0000n).u32(16).bytes(pattern(16)).zeros(4),
    value: { addr: 0xc000_0000n, count: 16n, data: pattern(16) } }),
  g({ name: 'DMA_WRITE', cmd: C.DMA_WRITE, direction: 'request',
    decode: p.decodeDmaWriteRequest, encode: (v) => p.encodeDmaAccessWithData(v),
    payload: wb().u64(0xc000_1000n).u64(8).bytes(pattern(8, 0x40)),
    value: { addr: 0xc000_1000n, count: 8n, data: pattern(8, 0x40) } }),
  g({ name: 'DMA_WRITE', cmd: C.DMA_WRITE, direction: 'reply',
    decode: p.decodeDmaWriteReply, encode: (v) => p.encodeDmaAccess(v as p.DmaAccess),
    payload: wb().u64(0xc000_1000n).u64(8), value: { addr: 0xc000_1000n, count: 8n } }),
  g({ name: 'DMA_WRITE spec 12-byte reply (decode only)', cmd: C.DMA_WRITE, direction: 'reply',
    decode: p.decodeDmaWriteReply, payload: wb().u64(0xc000_1000n).u32(8), value: { addr: 0xc000_1000n, count: 8n } }),
  g({ name: 'DMA_WRITE QEMU bare reply (decode only)', cmd: C.DMA_WRITE, direction: 'reply',
    decode: p.decodeDmaWriteReply, payload: none, value: undefined }),
];

// ------------------------------------------------------ device, region, irq (4–10, 13)

const regionInfo = { decode: p.decodeRegionInfo, encode: p.encodeRegionInfo };
const regionHeader = (argsz: number, flags: number, index: number, capOffset: number, size: bigint, offset: bigint) =>
  wb().u32(argsz).u32(flags).u32(index).u32(capOffset).u64(size).u64(offset);

const regionGoldens = [
  g({ name: 'DEVICE_GET_INFO', cmd: C.GET_INFO, direction: 'request',
    decode: p.decodeDeviceInfo, encode: p.encodeDeviceInfo,
    payload: wb().u32(16).u32(0).u32(0).u32(0), value: { argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 } }),
  g({ name: 'DEVICE_GET_INFO', cmd: C.GET_INFO, direction: 'reply',
    decode: p.decodeDeviceInfo, encode: p.encodeDeviceInfo,
    payload: wb().u32(16).u32(3).u32(9).u32(5), value: { argsz: 16, flags: 3, numRegions: 9, numIrqs: 5 } }),
  g({ name: 'DEVICE_GET_REGION_INFO', cmd: C.GET_REGION_INFO, direction: 'request',
    decode: p.decodeRegionInfoRequest, encode: p.encodeRegionInfoRequest,
    payload: wb().u32(80).u32(0).u32(1).zeros(20), value: { argsz: 80, index: 1 } }),
  g({ name: 'DEVICE_GET_REGION_INFO without caps', cmd: C.GET_REGION_INFO, direction: 'reply', ...regionInfo,
    payload: regionHeader(32, 3, 0, 0, 0x1000n, 0n),
    value: { argsz: 32, flags: 3, index: 0, capOffset: 0, size: 0x1000n, offset: 0n, caps: [] } }),
  g({ name: 'DEVICE_GET_REGION_INFO argsz too small', cmd: C.GET_REGION_INFO, direction: 'reply', ...regionInfo,
    payload: regionHeader(80, 7, 1, 0, 0x4000n, 0n),
    value: { argsz: 80, flags: 7, index: 1, capOffset: 0, size: 0x4000n, offset: 0n, caps: [] } }),
  g({ name: 'DEVICE_GET_REGION_INFO sparse mmap', cmd: C.GET_REGION_INFO, direction: 'reply', fds: 1, ...regionInfo,
    payload: regionHeader(80, 0xf, 1, 32, 0x4000n, 0x10000n)
      .u16(1).u16(1).u32(0).u32(2).u32(0).u64(0).u64(0x1000n).u64(0x2000n).u64(0x2000n),
    value: { argsz: 80, flags: 0xf, index: 1, capOffset: 32, size: 0x4000n, offset: 0x10000n, caps: [
      { kind: 'sparse-mmap', version: 1, areas: [{ offset: 0n, size: 0x1000n }, { offset: 0x2000n, size: 0x2000n }] }] } }),
  g({ name: 'DEVICE_GET_REGION_INFO cap chain sparse+type+unknown', cmd: C.GET_REGION_INFO, direction: 'reply', fds: 1,
    ...regionInfo,
    payload: regionHeader(112, 0xf, 9, 32, 0x2000n, 0n)
      .u16(1).u16(1).u32(64).u32(1).u32(0).u64(0).u64(0x2000n)
      .u16(2).u16(1).u32(80).u32(3).u32(1)
      .u16(7).u16(2).u32(0).bytes(pattern(24)),
    value: { argsz: 112, flags: 0xf, index: 9, capOffset: 32, size: 0x2000n, offset: 0n, caps: [
      { kind: 'sparse-mmap', version: 1, areas: [{ offset: 0n, size: 0x2000n }] },
      { kind: 'type', version: 1, type: 3, subtype: 1 },
      { kind: 'unknown', id: 7, version: 2, data: pattern(24) }] } }),
  g({ name: 'DEVICE_GET_REGION_INFO backwards chain (decode only)', cmd: C.GET_REGION_INFO, direction: 'reply', fds: 1,
    decode: p.decodeRegionInfo,
    payload: regionHeader(80, 0xf, 9, 48, 0x2000n, 0n)
      .u16(2).u16(1).u32(0).u32(3).u32(1)
      .u16(1).u16(1).u32(32).u32(1).u32(0).u64(0).u64(0x2000n),
    value: { argsz: 80, flags: 0xf, index: 9, capOffset: 48, size: 0x2000n, offset: 0n, caps: [
      { kind: 'sparse-mmap', version: 1, areas: [{ offset: 0n, size: 0x2000n }] },
      { kind: 'type', version: 1, type: 3, subtype: 1 }] } }),
];

const ioFdsReply48 = { decode: p.decodeRegionIoFdsReply, encode: (v: p.RegionIoFdsReply) => p.encodeRegionIoFdsReply(v) };
const ioFdsReply40 = {
  decode: p.decodeRegionIoFdsReply,
  encode: (v: p.RegionIoFdsReply) => p.encodeRegionIoFdsReply(v, { recordSize: 40 }),
};
const ioe = { offset: 0x100n, size: 4n, fdIndex: 0, type: 0, flags: 1, shadowMemFdIndex: 0, shadowOffset: 0n, datamatch: 0xdeadn };

const ioFdGoldens = [
  g({ name: 'DEVICE_GET_REGION_IO_FDS', cmd: C.GET_REGION_IO_FDS, direction: 'request',
    decode: p.decodeRegionIoFdsRequest, encode: p.encodeRegionIoFdsRequest,
    payload: wb().u32(112).u32(0).u32(0).u32(0), value: { argsz: 112, flags: 0, index: 0, count: 0 } }),
  g({ name: 'DEVICE_GET_REGION_IO_FDS 48-byte records', cmd: C.GET_REGION_IO_FDS, direction: 'reply', fds: 3,
    ...ioFdsReply48,
    payload: wb().u32(112).u32(0).u32(0).u32(2)
      .u64(0x100n).u64(4).u32(0).u32(0).u32(1).u32(0).u64(0).u64(0xdeadn)
      .u64(0x200n).u64(8).u32(1).u32(2).u32(0).u32(2).u64(0x1000n).u64(0),
    value: { argsz: 112, flags: 0, index: 0, count: 2, subRegions: [ioe,
      { offset: 0x200n, size: 8n, fdIndex: 1, type: 2, flags: 0, shadowMemFdIndex: 2, shadowOffset: 0x1000n, datamatch: 0n }] } }),
  g({ name: 'DEVICE_GET_REGION_IO_FDS 40-byte spec records', cmd: C.GET_REGION_IO_FDS, direction: 'reply', fds: 1,
    ...ioFdsReply40,
    payload: wb().u32(96).u32(0).u32(0).u32(2)
      .u64(0x100n).u64(4).u32(0).u32(0).u32(1).u32(0).u64(0xdeadn)
      .u64(0x300n).u64(0).u32(0).u32(1).u32(0).u32(0).u64(0x1234_5678_9abc_def0n),
    value: { argsz: 96, flags: 0, index: 0, count: 2, subRegions: [ioe,
      { offset: 0x300n, size: 0n, fdIndex: 0, type: 1, flags: 0, shadowMemFdIndex: 0, shadowOffset: 0n,
        datamatch: 0x1234_5678_9abc_def0n }] } }),
  g({ name: 'DEVICE_GET_REGION_IO_FDS records withheld', cmd: C.GET_REGION_IO_FDS, direction: 'reply', ...ioFdsReply48,
    payload: wb().u32(112).u32(0).u32(0).u32(2), value: { argsz: 112, flags: 0, index: 0, count: 2, subRegions: [] } }),
];

const irqSet = { decode: p.decodeIrqSet, encode: p.encodeIrqSet };
const irqGoldens = [
  g({ name: 'DEVICE_GET_IRQ_INFO', cmd: C.GET_IRQ_INFO, direction: 'request', decode: p.decodeIrqInfo, encode: p.encodeIrqInfo,
    payload: wb().u32(16).u32(0).u32(2).u32(0), value: { argsz: 16, flags: 0, index: 2, count: 0 } }),
  g({ name: 'DEVICE_GET_IRQ_INFO', cmd: C.GET_IRQ_INFO, direction: 'reply', decode: p.decodeIrqInfo, encode: p.encodeIrqInfo,
    payload: wb().u32(16).u32(1).u32(2).u32(32), value: { argsz: 16, flags: 1, index: 2, count: 32 } }),
  g({ name: 'DEVICE_SET_IRQS EVENTFD|TRIGGER', cmd: C.SET_IRQS, direction: 'request', fds: 2, ...irqSet,
    payload: wb().u32(20).u32(0x24).u32(2).u32(0).u32(2), value: { argsz: 20, flags: 0x24, index: 2, start: 0, count: 2 } }),
  g({ name: 'DEVICE_SET_IRQS BOOL|TRIGGER', cmd: C.SET_IRQS, direction: 'request', ...irqSet,
    payload: wb().u32(23).u32(0x22).u32(1).u32(0).u32(3).bytes([1, 0, 1]),
    value: { argsz: 23, flags: 0x22, index: 1, start: 0, count: 3, data: Uint8Array.of(1, 0, 1) } }),
  g({ name: 'DEVICE_SET_IRQS NONE|TRIGGER disable', cmd: C.SET_IRQS, direction: 'request', ...irqSet,
    payload: wb().u32(20).u32(0x21).u32(0).u32(0).u32(0), value: { argsz: 20, flags: 0x21, index: 0, start: 0, count: 0 } }),
  g({ name: 'DEVICE_SET_IRQS', cmd: C.SET_IRQS, direction: 'reply', payload: none, ...empty }),
  g({ name: 'DEVICE_RESET', cmd: C.RESET, direction: 'request', payload: none, ...empty }),
  g({ name: 'DEVICE_RESET', cmd: C.RESET, direction: 'reply', payload: none, ...empty }),
];

const accessGoldens = [
  g({ name: 'REGION_READ', cmd: C.REGION_READ, direction: 'request',
    decode: p.decodeRegionReadRequest, encode: p.encodeRegionAccess,
    payload: wb().u64(0x10n).u32(7).u32(4), value: { offset: 0x10n, region: 7, count: 4 } }),
  g({ name: 'REGION_READ', cmd: C.REGION_READ, direction: 'reply',
    decode: p.decodeRegionReadReply, encode: (v) => p.encodeRegionAccessWithData(v as p.RegionAccessWithData),
    payload: wb().u64(0x10n).u32(7).u32(4).bytes([0x86, 0x80, 0x34, 0x12]),
    value: { offset: 0x10n, region: 7, count: 4, data: Uint8Array.of(0x86, 0x80, 0x34, 0x12) } }),
  g({ name: 'REGION_READ count 0 (libvfio-user, decode only)', cmd: C.REGION_READ, direction: 'reply',
    decode: p.decodeRegionReadReply, payload: none, value: undefined }),
  g({ name: 'REGION_WRITE', cmd: C.REGION_WRITE, direction: 'request',
    decode: p.decodeRegionWriteRequest, encode: p.encodeRegionAccessWithData,
    payload: wb().u64(0).u32(0).u32(8).bytes(pattern(8)), value: { offset: 0n, region: 0, count: 8, data: pattern(8) } }),
  g({ name: 'REGION_WRITE posted (NO_REPLY)', cmd: C.REGION_WRITE, direction: 'request', flags: 0x10,
    decode: p.decodeRegionWriteRequest, encode: p.encodeRegionAccessWithData,
    payload: wb().u64(0x2000n).u32(2).u32(2).bytes([0xaa, 0x55]),
    value: { offset: 0x2000n, region: 2, count: 2, data: Uint8Array.of(0xaa, 0x55) } }),
  g({ name: 'REGION_WRITE', cmd: C.REGION_WRITE, direction: 'reply',
    decode: p.decodeRegionWriteReply, encode: (v) => p.encodeRegionAccess(v as p.RegionAccess),
    payload: wb().u64(0).u32(0).u32(8), value: { offset: 0n, region: 0, count: 8 } }),
  g({ name: 'REGION_WRITE_MULTI', cmd: C.WRITE_MULTI, direction: 'request', flags: 0x10,
    decode: p.decodeRegionWriteMulti, encode: p.encodeRegionWriteMulti,
    payload: wb().u64(2).u64(0x40n).u32(0).u32(4).bytes([1, 2, 3, 4]).zeros(4).u64(0x48n).u32(2).u32(8).bytes(pattern(8, 0xa0)),
    value: { writes: [
      { offset: 0x40n, region: 0, count: 4, data: Uint8Array.of(1, 2, 3, 4) },
      { offset: 0x48n, region: 2, count: 8, data: pattern(8, 0xa0) }] } }),
  g({ name: 'REGION_WRITE_MULTI', cmd: C.WRITE_MULTI, direction: 'reply',
    decode: p.decodeRegionWriteMultiReply, encode: p.encodeRegionWriteMultiReply, payload: wb().u64(2), value: { wrCnt: 2n } }),
];

// ------------------------------------------------------------ DEVICE_FEATURE (16)

const migFeature = feature(p.decodeMigrationFeature, p.encodeMigrationFeature);
const stateFeature = feature(p.decodeMigDeviceState, p.encodeMigDeviceState);
const startFeature = feature(p.decodeDmaLoggingControl, p.encodeDmaLoggingControl);
const reportReq = feature(p.decodeDmaLoggingReport, p.encodeDmaLoggingReport);
const reportRep = feature(p.decodeDmaLoggingReportReply, p.encodeDmaLoggingReportReply);
const sizeFeature = feature(p.decodeMigDataSize, p.encodeMigDataSize);
const ranges = [{ iova: 0n, length: 0x8000_0000n }, { iova: IOVA, length: 0x4000_0000n }];
const report = { iova: IOVA, length: 0x40000n, pageSize: 4096n };
const reportBitmap = Uint8Array.of(0x03, 0, 0, 0, 0, 0, 0, 0x80);
const startPayload = () =>
  wb().u32(56).u32(SET | 6).u64(4096).u32(2).u32(0).u64(0).u64(0x8000_0000n).u64(IOVA).u64(0x4000_0000n);

const featureGoldens = [
  g({ name: 'DEVICE_FEATURE GET MIGRATION', cmd: C.FEATURE, direction: 'request', ...rawFeature,
    payload: wb().u32(16).u32(GET | 1), value: { argsz: 16, flags: GET | 1, data: none } }),
  g({ name: 'DEVICE_FEATURE GET MIGRATION', cmd: C.FEATURE, direction: 'reply', ...migFeature,
    payload: wb().u32(16).u32(GET | 1).u64(5), value: { argsz: 16, flags: GET | 1, data: { flags: 5n } } }),
  g({ name: 'DEVICE_FEATURE SET MIG_DEVICE_STATE', cmd: C.FEATURE, direction: 'request', ...stateFeature,
    payload: wb().u32(16).u32(SET | 2).u32(1).i32(-1),
    value: { argsz: 16, flags: SET | 2, data: { deviceState: 1, dataFd: -1 } } }),
  g({ name: 'DEVICE_FEATURE SET MIG_DEVICE_STATE echo', cmd: C.FEATURE, direction: 'reply', ...stateFeature,
    payload: wb().u32(16).u32(SET | 2).u32(1).i32(-1),
    value: { argsz: 16, flags: SET | 2, data: { deviceState: 1, dataFd: -1 } } }),
  g({ name: 'DEVICE_FEATURE GET MIG_DEVICE_STATE', cmd: C.FEATURE, direction: 'request', ...rawFeature,
    payload: wb().u32(16).u32(GET | 2), value: { argsz: 16, flags: GET | 2, data: none } }),
  g({ name: 'DEVICE_FEATURE GET MIG_DEVICE_STATE', cmd: C.FEATURE, direction: 'reply', ...stateFeature,
    payload: wb().u32(16).u32(GET | 2).u32(2).u32(0),
    value: { argsz: 16, flags: GET | 2, data: { deviceState: 2, dataFd: 0 } } }),
  g({ name: 'DEVICE_FEATURE SET MIG_DEVICE_STATE failed (error with payload)', cmd: C.FEATURE, direction: 'reply',
    flags: 0x21, errorNo: 22, ...stateFeature,
    payload: wb().u32(16).u32(SET | 2).u32(0).u32(0),
    value: { argsz: 16, flags: SET | 2, data: { deviceState: 0, dataFd: 0 } } }),
  g({ name: 'DEVICE_FEATURE PROBE GET|SET MIG_DEVICE_STATE', cmd: C.FEATURE, direction: 'request', ...rawFeature,
    payload: wb().u32(8).u32(PROBE | SET | GET | 2), value: { argsz: 8, flags: PROBE | SET | GET | 2, data: none } }),
  g({ name: 'DEVICE_FEATURE PROBE echo', cmd: C.FEATURE, direction: 'reply', ...rawFeature,
    payload: wb().u32(8).u32(PROBE | SET | GET | 2), value: { argsz: 8, flags: PROBE | SET | GET | 2, data: none } }),
  g({ name: 'DEVICE_FEATURE SET DMA_LOGGING_START', cmd: C.FEATURE, direction: 'request', ...startFeature,
    payload: startPayload(), value: { argsz: 56, flags: SET | 6, data: { pageSize: 4096n, ranges } } }),
  g({ name: 'DEVICE_FEATURE SET DMA_LOGGING_START echo', cmd: C.FEATURE, direction: 'reply', ...startFeature,
    payload: startPayload(), value: { argsz: 56, flags: SET | 6, data: { pageSize: 4096n, ranges } } }),
  g({ name: 'DEVICE_FEATURE SET DMA_LOGGING_STOP', cmd: C.FEATURE, direction: 'request', ...rawFeature,
    payload: wb().u32(8).u32(SET | 7), value: { argsz: 8, flags: SET | 7, data: none } }),
  g({ name: 'DEVICE_FEATURE SET DMA_LOGGING_STOP echo', cmd: C.FEATURE, direction: 'reply', ...rawFeature,
    payload: wb().u32(8).u32(SET | 7), value: { argsz: 8, flags: SET | 7, data: none } }),
  g({ name: 'DEVICE_FEATURE GET DMA_LOGGING_REPORT', cmd: C.FEATURE, direction: 'request', ...reportReq,
    payload: wb().u32(40).u32(GET | 8).u64(IOVA).u64(0x40000n).u64(4096),
    value: { argsz: 40, flags: GET | 8, data: report } }),
  g({ name: 'DEVICE_FEATURE GET DMA_LOGGING_REPORT', cmd: C.FEATURE, direction: 'reply', ...reportRep,
    payload: wb().u32(40).u32(GET | 8).u64(IOVA).u64(0x40000n).u64(4096).bytes(reportBitmap),
    value: { argsz: 40, flags: GET | 8, data: { ...report, bitmap: reportBitmap } } }),
  g({ name: 'DEVICE_FEATURE GET MIG_DATA_SIZE', cmd: C.FEATURE, direction: 'request', ...rawFeature,
    payload: wb().u32(16).u32(GET | 9), value: { argsz: 16, flags: GET | 9, data: none } }),
  g({ name: 'DEVICE_FEATURE GET MIG_DATA_SIZE', cmd: C.FEATURE, direction: 'reply', ...sizeFeature,
    payload: wb().u32(16).u32(GET | 9).u64(0x1234_5678n),
    value: { argsz: 16, flags: GET | 9, data: { stopCopyLength: 0x1234_5678n } } }),
];

// ------------------------------------------------------------ migration data (17, 18)

const migGoldens = [
  g({ name: 'MIG_DATA_READ', cmd: C.MIG_READ, direction: 'request',
    decode: p.decodeMigDataReadRequest, encode: p.encodeMigDataReadRequest,
    payload: wb().u32(72).u32(64), value: { argsz: 72, size: 64 } }),
  g({ name: 'MIG_DATA_READ', cmd: C.MIG_READ, direction: 'reply', decode: p.decodeMigDataReadReply, encode: p.encodeMigData,
    payload: wb().u32(13).u32(5).bytes(pattern(5, 0x30)), value: { argsz: 13, size: 5, data: pattern(5, 0x30) } }),
  g({ name: 'MIG_DATA_READ padded end of data (libvfio-user, decode only)', cmd: C.MIG_READ, direction: 'reply',
    decode: p.decodeMigDataReadReply, payload: wb().u32(8).u32(0).zeros(64), value: { argsz: 8, size: 0, data: none } }),
  g({ name: 'MIG_DATA_WRITE', cmd: C.MIG_WRITE, direction: 'request', decode: p.decodeMigDataWriteRequest, encode: p.encodeMigData,
    payload: wb().u32(8).u32(6).bytes(pattern(6, 0x30)), value: { argsz: 8, size: 6, data: pattern(6, 0x30) } }),
  g({ name: 'MIG_DATA_WRITE', cmd: C.MIG_WRITE, direction: 'reply', payload: none, ...empty }),
];

/** Every golden message, in command order within each family. */
export const GOLDENS: readonly Golden[] = [
  ...versionGoldens,
  ...dmaGoldens,
  ...regionGoldens,
  ...ioFdGoldens,
  ...irqGoldens,
  ...accessGoldens,
  ...featureGoldens,
  ...migGoldens,
];

/** All golden messages concatenated into one stream, with each message's end offset. */
export function goldenStream(): { bytes: Uint8Array; ends: number[] } {
  const total = GOLDENS.reduce((n, x) => n + x.bytes.length, 0);
  const bytes = new Uint8Array(total);
  const ends: number[] = [];
  let at = 0;
  for (const x of GOLDENS) {
    bytes.set(x.bytes, at);
    at += x.bytes.length;
    ends.push(at);
  }
  return { bytes, ends };
}
