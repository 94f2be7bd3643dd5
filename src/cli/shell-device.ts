/**
 * The shell's device commands: `info`, `read`, `write` (the CLI's commands,
 * same arguments, on the shell's session), `bars`, `reset` and `mig-state`.
 */
import { Command } from 'commander';
import { barSizes } from '../client/pci-config.js';
import { MigrationState } from '../protocol/constants.js';
import { stateName } from '../migration/state-machine.js';
import { InvalidArgumentError } from '../errors.js';
import { describeAssignment } from './bar-gate.js';
import { formatValues, leBytes, readReport, readValues, writeValue } from './commands/access.js';
import { formatInfo, gatherInfo } from './commands/info.js';
import { countFlag, lspciOnClient } from './commands/lspci.js';
import { hex, humanSize, parseRegion, parseWidth, regionName, table } from './common.js';
import { parseCount, parseInteger } from './values.js';
import { textResult, type ShellCommand } from './shell-types.js';

const MAX_COUNT = 1 << 20;
const regionHelp = 'bar0..bar5, rom, config, vga, or a region index';

const info: ShellCommand = {
  name: 'info',
  summary: 'negotiated version and capabilities, device info, regions and IRQ indexes',
  build: (ctx, done) =>
    new Command('info').description(info.summary).action(async () => {
      const report = await gatherInfo(ctx.session.client, ctx.session.socket);
      done({ value: report, lines: formatInfo(report) });
    }),
};

const lspci: ShellCommand = {
  name: 'lspci',
  summary: 'config space decoded as lspci does (-v, -vv, -n, -nn; --dump for `lspci -F`)',
  build: (ctx, done) =>
    new Command('lspci')
      .description(lspci.summary)
      .option('-v, --verbose', 'more detail (repeatable: -vv)', countFlag, 0)
      .option('-n, --numeric', 'numeric ids (repeatable: -nn)', countFlag, 0)
      .option('-i, --pci-ids <file>', 'the pci.ids to name ids from')
      .option('--dump', 'the hex dump `lspci -F FILE` reads')
      .action(async (options: { verbose: number; numeric: number; pciIds?: string; dump?: boolean }) => {
        const lines: string[] = [];
        const capture = { line: (t: string) => void lines.push(t), trace: (t: string) => ctx.out.trace(t) };
        const json = ctx.json && options.dump !== true;
        await lspciOnClient(ctx.session.client, { ...options, json }, capture);
        if (json) done({ value: JSON.parse(lines.join('\n')) as unknown, lines: [] });
        else done({ value: options.dump ? { dump: lines.join('\n') } : { text: lines.join('\n') }, lines });
      }),
};

const read: ShellCommand = {
  name: 'read',
  summary: 'read registers (REGION_READ of --width bytes per value, little-endian)',
  build: (ctx, done) =>
    new Command('read')
      .description(read.summary)
      .argument('<region>', regionHelp)
      .argument('<offset>', 'byte offset in the region')
      .option('--count <n>', 'number of values to read', '1')
      .option('--width <bytes>', 'access width: 1, 2, 4 or 8', '4')
      .action(async (regionText: string, offsetText: string, options: { count: string; width: string }) => {
        const region = parseRegion(regionText);
        const offset = parseInteger(offsetText, 'OFFSET');
        const width = parseWidth(options.width);
        const count = parseCount(options.count, '--count', { max: MAX_COUNT });
        const values = await readValues(ctx.session.gate, region, offset, width, count);
        done({ value: readReport(region, offset, width, values), lines: formatValues(offset, width, values) });
      }),
};

const write: ShellCommand = {
  name: 'write',
  summary: 'write one register (REGION_WRITE of --width bytes, little-endian)',
  build: (ctx, done) =>
    new Command('write')
      .description(write.summary)
      .argument('<region>', regionHelp)
      .argument('<offset>', 'byte offset in the region')
      .argument('<value>', 'the value; must fit in --width bytes')
      .option('--width <bytes>', 'access width: 1, 2, 4 or 8', '4')
      .action(async (regionText: string, offsetText: string, valueText: string, options: { width: string }) => {
        const region = parseRegion(regionText);
        const offset = parseInteger(offsetText, 'OFFSET');
        const width = parseWidth(options.width);
        const value = parseInteger(valueText, 'VALUE');
        await writeValue(ctx.session.gate, region, offset, leBytes(value, width));
        const shown = hex(value, width * 2);
        const value_ = { region, regionName: regionName(region), offset, width, value: shown, ok: true };
        done(textResult(value_, `wrote ${shown} to ${regionName(region)}+${hex(offset)} (${width} byte${width === 1 ? '' : 's'})`));
      }),
};

const bars: ShellCommand = {
  name: 'bars',
  summary: 'list the BARs (sizing probe); --assign gives them addresses and enables decoding, as a VMM does',
  build: (ctx, done) =>
    new Command('bars')
      .description(bars.summary)
      .option('--assign', 'assign unassigned BARs and enable memory/I-O decoding (once per session)')
      .action(async (options: { assign?: boolean }) => {
        if (options.assign) {
          const a = await ctx.session.gate.assign();
          done({ value: a, lines: [describeAssignment(a)] });
          return;
        }
        const sized = await barSizes(ctx.session.client);
        const rows = sized.map((b) => [`BAR${b.index}`, b.type + (b.prefetchable ? ' prefetchable' : ''), humanSize(b.size), b.address === 0n ? 'unassigned' : hex(b.address)]);
        done({ value: { bars: sized }, lines: table([['bar', 'type', 'size', 'address'], ...rows]) });
      }),
};

const reset: ShellCommand = {
  name: 'reset',
  summary: 'DEVICE_RESET (the only reset a shell does before it exits)',
  build: (ctx, done) =>
    new Command('reset').description(reset.summary).action(async () => {
      await ctx.session.client.reset();
      ctx.session.gate.forget();
      done(textResult({ reset: true }, 'device reset'));
    }),
};

const STATE_WORDS = Object.keys(MigrationState).map((k) => k.toLowerCase().replace(/_/g, '-'));

/**
 * Parses a migration state: `running`, `stop`, `pre-copy`, `stop-copy`, `resuming`, … or its number.
 * @throws {InvalidArgumentError} EINVAL for another word.
 */
export function parseMigrationState(text: string): number {
  const key = text.trim().toUpperCase().replace(/-/g, '_');
  const byName = (MigrationState as Record<string, number>)[key];
  if (byName !== undefined) return byName;
  if (/^\d$/.test(text.trim()) && Number(text) < STATE_WORDS.length) return Number(text);
  throw new InvalidArgumentError(`STATE: '${text}' is not a migration state (${STATE_WORDS.join(', ')})`);
}

const migState: ShellCommand = {
  name: 'mig-state',
  summary: 'the device migration state (DEVICE_FEATURE MIG_DEVICE_STATE); with STATE, set it',
  build: (ctx, done) =>
    new Command('mig-state')
      .description(migState.summary)
      .argument('[state]', STATE_WORDS.join(', '))
      .action(async (stateText: string | undefined) => {
        const client = ctx.session.client;
        if (stateText !== undefined) await client.setMigrationState(parseMigrationState(stateText));
        const state = await client.migrationState();
        done(textResult({ state: stateName(state), value: state }, `migration state ${stateName(state)}`));
      }),
};

/** The device commands. */
export const DEVICE_COMMANDS: readonly ShellCommand[] = [info, lspci, read, write, bars, reset, migState];
