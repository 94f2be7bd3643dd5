/**
 * What the server must know about a client beyond its capabilities: where the
 * client departs from the specification in ways the bytes cannot reveal.
 *
 * QEMU's client (10.1–10.2, hw/vfio-user) lays out DMA_READ replies and
 * DMA_WRITE requests as its C struct `VFIOUserDMARW` (u64 address, **u32**
 * count, data at byte 12, 4 pad bytes), where the specification and
 * libvfio-user have a u64 count and data at 16. Both layouts have the same
 * length, and a u64 count equals a u32 count whenever the first data bytes are
 * zero, so the layout cannot be told from a message: it is chosen once, at
 * VERSION. QEMU also sends each message with one non-blocking write and drops
 * what does not fit in the socket buffer (seen at ~200 KiB), so messages to it
 * stay well under that.
 *
 * QEMU is also not told about `write_multiple`: QEMU 10.1–10.2 defines
 * `VFIO_PROXY_USE_MULTI` as 0x16, which includes `VFIO_PROXY_FORCE_QUEUED`
 * (0x4), so a server that advertises it makes QEMU queue every message for its
 * vfio-user iothread instead of sending it from the accessing thread, which
 * wakes the iothread through an eventfd to send it (measured per `inl`, QEMU
 * and the server on one CPU: 8 more system calls in QEMU and ~20 µs; bench
 * `qemu`, docs/interop.md). QEMU only builds REGION_WRITE_MULTI past 1,024
 * queued posted writes, so it loses nothing without it.
 *
 * Nor about top-level extension members (`x-isolation-group`): QEMU's
 * `caps_parse` prints a "spurious capabilities" warning for every member it
 * does not know, on every attach, and would never use them.
 *
 * QEMU is recognised by its VERSION: minor 0 and `migration.max_bitmap_size`,
 * a member only QEMU's client sends (the specification dropped it with
 * migration v1; libvfio-user and this library never send it). A server can
 * also be told the layout outright ({@link DmaLayoutOption}).
 */
import type { DmaLayout } from '../protocol/dma.js';
import type { Version } from '../protocol/version.js';

/** How a server picks the DMA message layout: `'auto'` recognises QEMU, or a fixed layout. */
export type DmaLayoutOption = 'auto' | DmaLayout;

/** The client's departures from the specification that the server works around. */
export interface ClientProfile {
  /** Layout of server→client DMA_READ replies and DMA_WRITE requests. */
  readonly dmaLayout: DmaLayout;
  /** Largest data count of one server→client DMA message (besides the client's max_data_xfer_size). */
  readonly dmaChunkLimit: number;
  /** Whether `write_multiple` may be advertised (false for QEMU, whatever the DMA layout option). */
  readonly writeMultiple: boolean;
  /** Whether top-level extension members (`x-isolation-group`) may be advertised (false for QEMU). */
  readonly extensions: boolean;
  /** Short name for logs. */
  readonly name: 'qemu' | 'vfio-user';
}

/** Data bytes per DMA message to QEMU: far below the ~200 KiB its one-shot send can lose. */
export const QEMU_DMA_CHUNK = 64 * 1024;

const SPEC = { dmaLayout: 'vfio-user', dmaChunkLimit: Number.MAX_SAFE_INTEGER, name: 'vfio-user' } as const;
const QEMU = { dmaLayout: 'qemu', dmaChunkLimit: QEMU_DMA_CHUNK, name: 'qemu' } as const;

/** Whether a VERSION request is QEMU's client's (see the module comment). */
export function looksLikeQemu(version: Version): boolean {
  const migration = version.capabilities?.migration?.extra;
  return version.minor === 0 && migration !== undefined && Object.hasOwn(migration, 'max_bitmap_size');
}

/**
 * The profile of the client that sent `version`.
 * @param option - `'auto'` (default) recognises QEMU; a layout forces it.
 */
export function clientProfile(version: Version, option: DmaLayoutOption = 'auto'): ClientProfile {
  const qemu = looksLikeQemu(version);
  const layout = option === 'auto' ? (qemu ? 'qemu' : 'vfio-user') : option;
  return { ...(layout === 'qemu' ? QEMU : SPEC), writeMultiple: !qemu, extensions: !qemu };
}
