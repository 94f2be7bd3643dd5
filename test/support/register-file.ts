/**
 * A register file for migratable test devices: a BAR whose writes mark 4 KiB
 * pages dirty, and the page-list delta its pre-copy sends (u32 page index,
 * then the page, per dirty page).
 */
import type { BarDefinition } from '../../src/device/types.js';

const PAGE = 4096;
const ENTRY = 4 + PAGE;

/** A BAR over `regs` whose writes add the pages they touch to `dirty`. */
export function registerFileBar(regs: Uint8Array, dirty: Set<number>): BarDefinition {
  return {
    size: regs.length,
    read: (o, n) => regs.slice(o, o + n),
    write: (o, d) => {
      regs.set(d, o);
      for (let p = o >> 12; p <= (o + d.length - 1) >> 12; p++) dirty.add(p);
    },
  };
}

/** The dirty pages of `regs` as a page list (and `dirty` cleared), or undefined when none are dirty. */
export function takePageDelta(regs: Uint8Array, dirty: Set<number>): Uint8Array | undefined {
  if (dirty.size === 0) return undefined;
  const pages = [...dirty];
  dirty.clear();
  const out = new Uint8Array(pages.length * ENTRY);
  pages.forEach((p, i) => {
    new DataView(out.buffer).setUint32(i * ENTRY, p, true);
    out.set(regs.subarray(p * PAGE, p * PAGE + PAGE), i * ENTRY + 4);
  });
  return out;
}

/** Applies a page list made by {@link takePageDelta} to `regs`. */
export function applyPageDelta(regs: Uint8Array, payload: Uint8Array): void {
  for (let at = 0; at < payload.length; at += ENTRY) {
    const p = new DataView(payload.buffer, payload.byteOffset + at).getUint32(0, true);
    regs.set(payload.subarray(at + 4, at + ENTRY), p * PAGE);
  }
}
