/** Little-endian reads of config bytes and lspci's `+`/`-` flags, for the lspci decoders. */

/** A byte of `b` (0 past the end). */
export const u8 = (b: Uint8Array, at: number): number => b[at] ?? 0;
/** A little-endian 16-bit word of `b`. */
export const u16 = (b: Uint8Array, at: number): number => u8(b, at) | (u8(b, at + 1) << 8);
/** A little-endian 32-bit dword of `b`, unsigned. */
export const u32 = (b: Uint8Array, at: number): number => (u16(b, at) | (u16(b, at + 2) << 16)) >>> 0;
/** Lower-case hex, zero-padded to `width`. */
export const x = (n: number | bigint, width: number): string => n.toString(16).padStart(width, '0');
/** lspci's flag suffix. */
export const pm = (on: boolean): string => (on ? '+' : '-');

/** Bit names of one register: name → mask. */
export type BitNames = ReadonlyArray<readonly [string, number]>;

/** `Name+ Other-` for each named bit of `value`. */
export function flagText(value: number, bits: BitNames): string {
  return bits.map(([name, mask]) => `${name}${pm((value & mask) !== 0)}`).join(' ');
}

/** `{ name: boolean }` for each named bit of `value` (JSON fields). */
export function flagFields(value: number, bits: BitNames): Record<string, boolean> {
  return Object.fromEntries(bits.map(([name, mask]) => [name, (value & mask) !== 0]));
}
