/**
 * The upstream's PCI config space (region 7) as device state: read whole at
 * STOP_COPY, restored on the destination by writing back only what a driver
 * writes (the standard header's writable fields, the MSI / MSI-X / PM / PCIe
 * control fields found by walking the capability list, the spec's extra
 * spans), BARs first and COMMAND last — the rest is the device's identity and
 * must already match (checked).
 */
import { ProtocolError } from '../../errors.js';
import { RegionIndex } from '../../protocol/constants.js';
import type { UpstreamPort } from './upstream.js';

/** A span of config space. */
export interface ConfigSpan {
  offset: number;
  size: number;
}

/** Bytes a restore leaves alone but requires equal: vendor, device, revision, class, header type. */
const IDENTITY: readonly ConfigSpan[] = [{ offset: 0x00, size: 4 }, { offset: 0x08, size: 4 }, { offset: 0x0e, size: 1 }];
const HEADER_FIELDS: readonly ConfigSpan[] = [
  { offset: 0x0c, size: 1 }, // cache line size
  { offset: 0x0d, size: 1 }, // latency timer
  { offset: 0x10, size: 24 }, // BAR0..5
  { offset: 0x30, size: 4 }, // expansion ROM
  { offset: 0x3c, size: 1 }, // interrupt line
];
const COMMAND: ConfigSpan = { offset: 0x04, size: 2 };
const CAP_LIST_STATUS_BIT = 0x10;
const MAX_CAPS = 48;

/** The control fields of one capability (id at `at`), in restore order. */
function capabilitySpans(bytes: Uint8Array, id: number, at: number): ConfigSpan[] {
  const u16 = (o: number): number => (bytes[o] ?? 0) | ((bytes[o + 1] ?? 0) << 8);
  switch (id) {
    case 0x01: // power management: PMCSR
      return [{ offset: at + 4, size: 2 }];
    case 0x05: {
      // MSI: address, data, mask, then the control word (enable last)
      const control = u16(at + 2);
      const is64 = (control & 0x80) !== 0;
      const masking = (control & 0x100) !== 0;
      const spans: ConfigSpan[] = [{ offset: at + 4, size: is64 ? 8 : 4 }, { offset: at + (is64 ? 12 : 8), size: 2 }];
      if (masking) spans.push({ offset: at + (is64 ? 16 : 12), size: 4 });
      spans.push({ offset: at + 2, size: 2 });
      return spans;
    }
    case 0x11: // MSI-X: message control
      return [{ offset: at + 2, size: 2 }];
    case 0x10: // PCI Express: device control, link control, device control 2
      return [{ offset: at + 0x08, size: 2 }, { offset: at + 0x10, size: 2 }, { offset: at + 0x28, size: 2 }];
    default:
      return [];
  }
}

/**
 * The spans a restore writes, in order: header fields, capability control
 * fields, `extra`, COMMAND. Spans past `bytes.length` are dropped.
 */
export function writableSpans(bytes: Uint8Array, extra: readonly ConfigSpan[] = []): ConfigSpan[] {
  const spans: ConfigSpan[] = [...HEADER_FIELDS];
  if (((bytes[0x06] ?? 0) & CAP_LIST_STATUS_BIT) !== 0) {
    const seen = new Set<number>();
    for (let at = (bytes[0x34] ?? 0) & 0xfc; at >= 0x40 && at < 0x100 && !seen.has(at) && seen.size < MAX_CAPS; at = (bytes[at + 1] ?? 0) & 0xfc) {
      seen.add(at);
      spans.push(...capabilitySpans(bytes, bytes[at] ?? 0, at));
    }
  }
  spans.push(...extra, COMMAND);
  return spans.filter((s) => s.offset + s.size <= bytes.length);
}

/** Reads the upstream's config space (`size` bytes, at most 4096). */
export async function readConfig(port: UpstreamPort, size: number): Promise<Uint8Array> {
  return port.regionRead(RegionIndex.CONFIG, 0n, Math.min(size, 4096));
}

/**
 * Writes `saved`'s writable spans into the upstream's config space.
 * @throws {ProtocolError} EINVAL when the identity bytes differ from the upstream's own (another device).
 */
export async function restoreConfig(port: UpstreamPort, saved: Uint8Array, extra: readonly ConfigSpan[] = []): Promise<void> {
  const current = await readConfig(port, saved.length);
  for (const span of IDENTITY) {
    for (let i = span.offset; i < span.offset + span.size; i++) {
      if (current[i] !== saved[i]) throw new ProtocolError(`mediated device state: config byte 0x${i.toString(16)} differs from the destination's (another device)`);
    }
  }
  for (const span of writableSpans(saved, extra)) {
    await port.regionWrite(RegionIndex.CONFIG, BigInt(span.offset), saved.subarray(span.offset, span.offset + span.size));
  }
}
