/**
 * DMA dirty logging over DEVICE_FEATURE: DMA_LOGGING_START (6, SET),
 * DMA_LOGGING_STOP (7, SET), DMA_LOGGING_REPORT (8, GET), with the kernel's
 * validation (ranges ≤ 256, page-aligned, not overlapping, no overflow) and the
 * spec's additions (num_ranges 0 = log everything; the START reply echoes the
 * request with the page size chosen). The ranges are honoured (only device
 * writes inside them are logged) and a REPORT may name any range: several
 * regions, part of one (see `DmaController.report`). Logging is a library
 * feature, so every device offers it. A REPORT is refused before it clears a
 * bit (argsz, and a bitmap beyond the client's max_data_xfer_size: E2BIG).
 */
import { ProtocolError } from '../../errors.js';
import { DeviceFeature, DeviceFeatureFlags, U64_MAX } from '../../protocol/constants.js';
import { Errno } from '../../protocol/errno.js';
import {
  decodeDmaLoggingControl,
  decodeDmaLoggingReport,
  encodeDmaLoggingControl,
  encodeDmaLoggingReportReply,
  bitmapBytes,
  type DmaLoggingRange,
  type DmaLoggingReport,
} from '../../protocol/feature.js';
import type { FeatureHandler } from '../features.js';
import type { HandlerContext } from '../types.js';

/** Most ranges one START may carry (one 4 KiB page of 16-byte ranges, as the kernel). */
export const MAX_LOGGING_RANGES = 256;
/** The REPORT reply data's fixed part: iova, length, page_size. */
const REPORT_HEAD = 24;
/** DEVICE_FEATURE's own argsz and flags, before the data. */
const FEATURE_HEAD = 8;

function isPowerOfTwo(x: bigint): boolean {
  return x > 0n && (x & (x - 1n)) === 0n;
}

/** Validates START's ranges, one rule per check. @throws {ProtocolError} E2BIG, EINVAL, EOVERFLOW. */
function checkRanges(pageSize: bigint, ranges: readonly DmaLoggingRange[]): void {
  if (ranges.length > MAX_LOGGING_RANGES) throw new ProtocolError(`DMA_LOGGING_START: ${ranges.length} ranges, at most ${MAX_LOGGING_RANGES}`, { errno: Errno.E2BIG });
  for (const r of ranges) {
    if (r.iova % pageSize !== 0n || r.length % pageSize !== 0n || r.length === 0n) {
      throw new ProtocolError(`DMA_LOGGING_START: range 0x${r.iova.toString(16)}+0x${r.length.toString(16)} is not a non-empty multiple of page size ${pageSize}`);
    }
    if (r.iova + r.length - 1n > U64_MAX) throw new ProtocolError('DMA_LOGGING_START: range overflows 2^64', { errno: Errno.EOVERFLOW });
  }
  const sorted = [...ranges].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1] as DmaLoggingRange;
    if ((sorted[i] as DmaLoggingRange).iova < prev.iova + prev.length) throw new ProtocolError('DMA_LOGGING_START: ranges overlap');
  }
}

const start: FeatureHandler = {
  ops: DeviceFeatureFlags.SET,
  set(ctx, data) {
    const control = decodeDmaLoggingControl(data);
    if (!isPowerOfTwo(control.pageSize)) throw new ProtocolError(`DMA_LOGGING_START: page size ${control.pageSize} is not a power of two`);
    checkRanges(control.pageSize, control.ranges);
    ctx.dma.startLogging(control.pageSize, control.ranges);
    return encodeDmaLoggingControl({ pageSize: ctx.dma.loggingPageSize ?? control.pageSize, ranges: control.ranges });
  },
};

const stop: FeatureHandler = {
  ops: DeviceFeatureFlags.SET,
  set(ctx) {
    ctx.dma.stopLogging();
  },
};

/**
 * Every rule of a REPORT, no side effect: the request, the controller's rules
 * (logging on, a mapped byte, …) and the bound on the reply: its payload
 * (8 + 24 + bitmap) must not exceed the client's max_data_xfer_size, else E2BIG —
 * the kernel's errno for a feature request asking more than one call may
 * carry; the client splits the range (or reports at a larger page size).
 * Without the bound a 40-byte request for 8 TiB would make a 256 MiB reply.
 * @returns the request and the reply data length (24 + bitmap).
 * @throws {ProtocolError} EINVAL, EOVERFLOW, ENOENT, E2BIG.
 */
function checkReport(ctx: HandlerContext, data: Uint8Array): { request: DmaLoggingReport; size: number } {
  const r = decodeDmaLoggingReport(data);
  if (r.pageSize < 4096n || !isPowerOfTwo(r.pageSize)) throw new ProtocolError(`DMA_LOGGING_REPORT: page size ${r.pageSize} must be a power of two ≥ 4096`);
  if (r.iova + r.length - 1n > U64_MAX) throw new ProtocolError('DMA_LOGGING_REPORT: range overflows 2^64', { errno: Errno.EOVERFLOW });
  const payload = BigInt(FEATURE_HEAD + REPORT_HEAD) + bitmapBytes(r.length, r.pageSize);
  const limit = ctx.client.maxDataXferSize;
  if (payload > BigInt(limit)) {
    throw new ProtocolError(`DMA_LOGGING_REPORT: a ${payload}-byte reply exceeds the client's max_data_xfer_size ${limit}: report a smaller range`, { errno: Errno.E2BIG });
  }
  return { request: r, size: REPORT_HEAD + ctx.dma.reportSize(r.iova, r.length, r.pageSize) };
}

const report: FeatureHandler = {
  ops: DeviceFeatureFlags.GET,
  replySize: (ctx, data) => checkReport(ctx, data).size,
  get(ctx, data) {
    const { request: r } = checkReport(ctx, data);
    return encodeDmaLoggingReportReply({ ...r, bitmap: ctx.dma.report(r.iova, r.length, r.pageSize) });
  },
};

/** The three logging features, by index. */
export const DMA_LOGGING_FEATURES: ReadonlyArray<readonly [number, FeatureHandler]> = [
  [DeviceFeature.DMA_LOGGING_START, start],
  [DeviceFeature.DMA_LOGGING_STOP, stop],
  [DeviceFeature.DMA_LOGGING_REPORT, report],
];
