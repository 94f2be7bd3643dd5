/**
 * DMA dirty logging over DEVICE_FEATURE: DMA_LOGGING_START (6, SET),
 * DMA_LOGGING_STOP (7, SET), DMA_LOGGING_REPORT (8, GET), with the kernel's
 * validation (ranges ≤ 256, page-aligned, not overlapping, no overflow) and the
 * spec's additions (num_ranges 0 = log everything; the START reply echoes the
 * request with the page size chosen). The ranges are honoured (only device
 * writes inside them are logged) and a REPORT may name any range: several
 * regions, part of one (see `DmaController.report`). Logging is a library
 * feature, so every device offers it.
 */
import { ProtocolError } from '../../errors.js';
import { DeviceFeature, DeviceFeatureFlags, U64_MAX } from '../../protocol/constants.js';
import { Errno } from '../../protocol/errno.js';
import {
  decodeDmaLoggingControl,
  decodeDmaLoggingReport,
  encodeDmaLoggingControl,
  encodeDmaLoggingReportReply,
  type DmaLoggingRange,
} from '../../protocol/feature.js';
import type { FeatureHandler } from '../features.js';

/** Most ranges one START may carry (one 4 KiB page of 16-byte ranges, as the kernel). */
export const MAX_LOGGING_RANGES = 256;
const E2BIG = 7;

function isPowerOfTwo(x: bigint): boolean {
  return x > 0n && (x & (x - 1n)) === 0n;
}

/** Validates START's ranges, one rule per check. @throws {ProtocolError} E2BIG, EINVAL, EOVERFLOW. */
function checkRanges(pageSize: bigint, ranges: readonly DmaLoggingRange[]): void {
  if (ranges.length > MAX_LOGGING_RANGES) throw new ProtocolError(`DMA_LOGGING_START: ${ranges.length} ranges, at most ${MAX_LOGGING_RANGES}`, { errno: E2BIG });
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

const report: FeatureHandler = {
  ops: DeviceFeatureFlags.GET,
  get(ctx, data) {
    const r = decodeDmaLoggingReport(data);
    if (r.pageSize < 4096n || !isPowerOfTwo(r.pageSize)) throw new ProtocolError(`DMA_LOGGING_REPORT: page size ${r.pageSize} must be a power of two ≥ 4096`);
    if (r.iova + r.length - 1n > U64_MAX) throw new ProtocolError('DMA_LOGGING_REPORT: range overflows 2^64', { errno: Errno.EOVERFLOW });
    return encodeDmaLoggingReportReply({ ...r, bitmap: ctx.dma.report(r.iova, r.length, r.pageSize) });
  },
};

/** The three logging features, by index. */
export const DMA_LOGGING_FEATURES: ReadonlyArray<readonly [number, FeatureHandler]> = [
  [DeviceFeature.DMA_LOGGING_START, start],
  [DeviceFeature.DMA_LOGGING_STOP, stop],
  [DeviceFeature.DMA_LOGGING_REPORT, report],
];
