/**
 * The shell's guest-memory commands: `dma-map SIZE IOVA` (a sealed memfd
 * DMA-mapped at IOVA, with its fd or for DMA messages), `dma-unmap IOVA`,
 * `dma-list`, and `mem-read` / `mem-write` / `mem-fill` / `mem-dump` at
 * device addresses (IOVAs) inside a mapping.
 */
import { Command, Option } from 'commander';
import { formatValues, leBytes, leValue } from './commands/access.js';
import { hex, humanSize, parseWidth, table } from './common.js';
import { parseCount, parseInteger, parseSize } from './values.js';
import { textResult, type ShellCommand, type ShellContext } from './shell-types.js';
import type { GuestMapping } from './shell-session.js';

/** Largest `mem-dump` / `mem-read` output, so a typo cannot print gigabytes. */
const MAX_SHOWN = 1 << 20;
/** Largest `dma-map` block (the memfd is mapped in this process too). */
const MAX_MAP = 64 * 2 ** 30;

function describeMapping(m: GuestMapping): Record<string, unknown> {
  return { iova: m.iova, size: m.size, mode: m.mode, writable: m.writable, shell: m.attachment !== undefined };
}

/** Reads `length` bytes at device address `iova` from the mapping holding them. */
function guestRead(ctx: ShellContext, iova: bigint, length: number): Uint8Array {
  const { mapping, offset } = ctx.session.locate(iova, length);
  return mapping.memory.read(offset, length);
}

/** Writes `data` at device address `iova` in the mapping holding it. */
function guestWrite(ctx: ShellContext, iova: bigint, data: Uint8Array): void {
  const { mapping, offset } = ctx.session.locate(iova, data.length);
  mapping.memory.write(offset, data);
}

/** `hexdump -C` lines of `data` shown at `base`. */
export function hexDump(base: bigint, data: Uint8Array): string[] {
  const lines: string[] = [];
  const digits = Math.max(8, (base + BigInt(data.length)).toString(16).length);
  for (let at = 0; at < data.length; at += 16) {
    const row = data.subarray(at, at + 16);
    const bytes = Array.from(row, (b) => b.toString(16).padStart(2, '0'));
    const left = bytes.slice(0, 8).join(' ');
    const right = bytes.slice(8).join(' ');
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${(base + BigInt(at)).toString(16).padStart(digits, '0')}  ${left.padEnd(23)}  ${right.padEnd(23)}  |${ascii}|`);
  }
  return lines;
}

const dmaMap: ShellCommand = {
  name: 'dma-map',
  summary: 'allocate SIZE bytes of guest RAM (a memfd) and DMA_MAP it at IOVA',
  build: (ctx, done) =>
    new Command('dma-map')
      .description(dmaMap.summary)
      .argument('<size>', 'bytes, a multiple of 4096 (4K, 1M, …)')
      .argument('<iova>', 'where the device sees it (page aligned)')
      .addOption(new Option('--mode <mode>', 'fd: the server maps the memfd; message: it uses DMA_READ/DMA_WRITE messages').choices(['fd', 'message']).default('fd'))
      .option('--read-only', 'the device may only read it')
      .action(async (sizeText: string, iovaText: string, options: { mode: 'fd' | 'message'; readOnly?: boolean }) => {
        const size = parseSize(sizeText, 'SIZE', { min: 4096, max: MAX_MAP });
        const iova = parseInteger(iovaText, 'IOVA');
        const m = await ctx.session.map(size, iova, options.mode, options.readOnly !== true);
        done(textResult(describeMapping(m), `mapped ${humanSize(m.size)} of guest RAM at ${hex(iova)} (${m.mode}${m.writable ? '' : ', read-only'})`));
      }),
};

const dmaUnmap: ShellCommand = {
  name: 'dma-unmap',
  summary: 'DMA_UNMAP the guest RAM the shell mapped at IOVA, and free it',
  build: (ctx, done) =>
    new Command('dma-unmap')
      .description(dmaUnmap.summary)
      .argument('<iova>', 'the IOVA given to dma-map')
      .action(async (iovaText: string) => {
        const m = await ctx.session.unmap(parseInteger(iovaText, 'IOVA'));
        done(textResult(describeMapping(m), `unmapped ${humanSize(m.size)} at ${hex(m.iova)}`));
      }),
};

const dmaList: ShellCommand = {
  name: 'dma-list',
  summary: 'the guest RAM mapped into the device',
  build: (ctx, done) =>
    new Command('dma-list').description(dmaList.summary).action(() => {
      const rows = ctx.session.mappings.map((m) => [hex(m.iova), hex(m.iova + m.size - 1n), humanSize(m.size), m.mode, m.writable ? 'rw' : 'r', m.attachment ? 'shell' : 'session']);
      const lines = rows.length === 0 ? ['no DMA mappings'] : table([['iova', 'last', 'size', 'mode', 'access', 'owner'], ...rows]);
      done({ value: { mappings: ctx.session.mappings.map(describeMapping) }, lines });
    }),
};

const memRead: ShellCommand = {
  name: 'mem-read',
  summary: 'read guest RAM at a device address: --count values of --width bytes, little-endian',
  build: (ctx, done) =>
    new Command('mem-read')
      .description(memRead.summary)
      .argument('<iova>', 'device address inside a mapping')
      .option('--count <n>', 'number of values', '1')
      .option('--width <bytes>', '1, 2, 4 or 8', '4')
      .action((iovaText: string, options: { count: string; width: string }) => {
        const iova = parseInteger(iovaText, 'IOVA');
        const width = parseWidth(options.width);
        const count = parseCount(options.count, '--count', { max: MAX_SHOWN / width });
        const bytes = guestRead(ctx, iova, width * count);
        const values = Array.from({ length: count }, (_, i) => bytes.subarray(i * width, (i + 1) * width));
        const value = { iova, width, count, values: values.map((b) => hex(leValue(b), width * 2)), data: Buffer.from(bytes).toString('hex') };
        done({ value, lines: formatValues(iova, width, values) });
      }),
};

const memWrite: ShellCommand = {
  name: 'mem-write',
  summary: 'write one little-endian value of --width bytes to guest RAM at a device address',
  build: (ctx, done) =>
    new Command('mem-write')
      .description(memWrite.summary)
      .argument('<iova>', 'device address inside a mapping')
      .argument('<value>', 'the value; must fit in --width bytes')
      .option('--width <bytes>', '1, 2, 4 or 8', '4')
      .action((iovaText: string, valueText: string, options: { width: string }) => {
        const iova = parseInteger(iovaText, 'IOVA');
        const width = parseWidth(options.width);
        const value = parseInteger(valueText, 'VALUE');
        guestWrite(ctx, iova, leBytes(value, width));
        done(textResult({ iova, width, value: hex(value, width * 2) }, `wrote ${hex(value, width * 2)} to guest RAM at ${hex(iova)}`));
      }),
};

const memFill: ShellCommand = {
  name: 'mem-fill',
  summary: 'fill LENGTH bytes of guest RAM at a device address with BYTE',
  build: (ctx, done) =>
    new Command('mem-fill')
      .description(memFill.summary)
      .argument('<iova>', 'device address inside a mapping')
      .argument('<length>', 'bytes (4K, 1M, …)')
      .argument('<byte>', 'the byte value, 0–255')
      .action((iovaText: string, lengthText: string, byteText: string) => {
        const iova = parseInteger(iovaText, 'IOVA');
        const length = parseSize(lengthText, 'LENGTH', { min: 1 });
        const byte = Number(parseInteger(byteText, 'BYTE', 0xffn));
        guestWrite(ctx, iova, new Uint8Array(length).fill(byte));
        done(textResult({ iova, length, byte }, `filled ${length} bytes at ${hex(iova)} with ${hex(byte, 2)}`));
      }),
};

const memDump: ShellCommand = {
  name: 'mem-dump',
  summary: 'hexdump -C of LENGTH bytes of guest RAM at a device address',
  build: (ctx, done) =>
    new Command('mem-dump')
      .description(memDump.summary)
      .argument('<iova>', 'device address inside a mapping')
      .argument('[length]', 'bytes (default 256)', '256')
      .action((iovaText: string, lengthText: string) => {
        const iova = parseInteger(iovaText, 'IOVA');
        const length = parseSize(lengthText, 'LENGTH', { min: 1, max: MAX_SHOWN });
        const data = guestRead(ctx, iova, length);
        done({ value: { iova, length, data: Buffer.from(data).toString('hex') }, lines: hexDump(iova, data) });
      }),
};

/** The guest-memory commands. */
export const MEMORY_COMMANDS: readonly ShellCommand[] = [dmaMap, dmaUnmap, dmaList, memRead, memWrite, memFill, memDump];
