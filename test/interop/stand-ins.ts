/**
 * Test-only stand-ins, in the tap between libvfio-user's `samples/client` and
 * our server, for two things our server does not do yet:
 *
 * - DEVICE_FEATURE DMA_LOGGING_START / STOP / REPORT (our server refuses every
 *   DEVICE_FEATURE with EINVAL): answered here from the device's own DMA
 *   controller (`startLogging`, `stopLogging`, `report`), with libvfio-user's
 *   replies (the request echoed; for REPORT the request header, the range and
 *   the bitmap).
 * - DMA by messages to a region the client mapped with an fd: libvfio-user's
 *   `vfu_sgl_read/write` always use DMA_READ/DMA_WRITE messages, our
 *   `DmaController.read/write` only for regions mapped without an fd. The
 *   DMA_MAP at IOVA 0 is forwarded without its fd, so our server reaches that
 *   page by messages, as `samples/server` does.
 */
import {
  Command,
  DeviceFeature,
  DeviceFeatureFlags,
  bitmapBytes,
  decodeDeviceFeature,
  decodeDmaLoggingControl,
  decodeDmaLoggingReport,
  decodeDmaMapRequest,
  encodeDeviceFeature,
  encodeDmaLoggingReportReply,
  featureIndex,
  featureOps,
} from '../../src/index.js';
import type { Message } from '../../src/index.js';
import type { SampleDevice } from './server-sample-device.js';
import type { TapAction } from './tap.js';

/** The tap hook: the two stand-ins above; everything else is forwarded unchanged. */
export function standIn(sample: SampleDevice, m: Message): TapAction {
  try {
    return act(sample, m);
  } catch (e) {
    // What our server would answer for a refused request: the error's errno (EINVAL by default).
    return { reply: { errorNo: (e as { errno?: number }).errno ?? 22 } };
  }
}

function act(sample: SampleDevice, m: Message): TapAction {
  if (m.header.cmd === Command.DMA_MAP && decodeDmaMapRequest(m.payload).addr === 0n) return { forward: true, dropFds: true };
  if (m.header.cmd !== Command.DEVICE_FEATURE) return { forward: true };
  const request = decodeDeviceFeature(m.payload);
  const dma = sample.device.dma;
  const index = featureIndex(request.flags);
  const ops = featureOps(request.flags);
  if (index === DeviceFeature.DMA_LOGGING_START && ops === DeviceFeatureFlags.SET) {
    dma.startLogging(decodeDmaLoggingControl(request.data).pageSize);
    return { reply: { payload: m.payload } };
  }
  if (index === DeviceFeature.DMA_LOGGING_STOP && ops === DeviceFeatureFlags.SET) {
    dma.stopLogging();
    return { reply: { payload: m.payload } };
  }
  if (index === DeviceFeature.DMA_LOGGING_REPORT && ops === DeviceFeatureFlags.GET) {
    const report = decodeDmaLoggingReport(request.data);
    const region = dma.regions().find((x) => x.addr === report.iova);
    // A message-mode region has no bitmap of ours; libvfio-user's (fd-backed) one would be clean:
    // the pages written by DMA_WRITE messages are the client's to track, and it does.
    const bitmap = region?.mode === 'message' ? new Uint8Array(Number(bitmapBytes(report.length, report.pageSize))) : dma.report(report.iova, report.length, report.pageSize);
    return { reply: { payload: encodeDeviceFeature({ argsz: request.argsz, flags: request.flags, data: encodeDmaLoggingReportReply({ ...report, bitmap }) }) } };
  }
  return { forward: true };
}
