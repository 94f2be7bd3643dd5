/**
 * The shell's interrupt commands: `irq-enable INDEX` installs one eventfd per
 * vector with SET_IRQS (and, for MSI / MSI-X, enables the capability in
 * config space as a guest driver would, MSI-X vectors unmasked), `irq-list`
 * shows the signals counted per vector, `irq-wait` waits for signals not yet
 * reported (those that arrived between commands count), `irq-trigger` asks
 * the server to signal a vector itself, `irq-disable` removes the eventfds.
 */
import { Command } from 'commander';
import { Interrupts } from '../client/interrupts.js';
import { enableMsi, enableMsix, unmaskMsixVector } from '../client/pci-config.js';
import { InvalidArgumentError, StateError } from '../errors.js';
import { IrqIndex } from '../protocol/constants.js';
import { Errno } from '../protocol/errno.js';
import { irqName, table } from './common.js';
import { parseCount, parseDuration, parseInteger } from './values.js';
import { textResult, type ShellCommand, type ShellContext } from './shell-types.js';
import type { IrqState } from './shell-session.js';

const IRQ_WORDS: Readonly<Record<string, number>> = { intx: IrqIndex.INTX, msi: IrqIndex.MSI, msix: IrqIndex.MSIX, err: IrqIndex.ERR, req: IrqIndex.REQ };
const indexHelp = 'intx, msi, msix, err, req or an index';

/**
 * Parses an IRQ index: `intx`, `msi`, `msix`, `err`, `req` (any case) or a number.
 * @throws {InvalidArgumentError} EINVAL for anything else.
 */
export function parseIrqIndex(text: string): number {
  const word = IRQ_WORDS[text.trim().toLowerCase()];
  return word ?? Number(parseInteger(text, 'INDEX', 0xffff_ffffn));
}

function enabled(ctx: ShellContext, index: number): IrqState {
  const state = ctx.session.irqs.get(index);
  if (state === undefined || state.irq.closed) throw new StateError(`${irqName(index)} is not enabled (irq-enable ${irqName(index).toLowerCase()})`, { errno: Errno.ENOENT });
  return state;
}

/** MSI/MSI-X Enable in config space, as a guest driver sets them (MSI-X: vectors unmasked). */
async function enableInConfig(ctx: ShellContext, irq: Interrupts): Promise<string | undefined> {
  const client = ctx.session.client;
  if (irq.index === IrqIndex.MSIX) {
    const info = await enableMsix(client);
    for (let v = irq.start; v < irq.start + irq.count; v++) await unmaskMsixVector(client, v, info);
    return 'MSI-X enabled in config space, vectors unmasked';
  }
  if (irq.index === IrqIndex.MSI) {
    let vectors = 1;
    while (vectors < irq.start + irq.count) vectors *= 2;
    await enableMsi(client, vectors);
    return `MSI enabled in config space (${vectors} vector${vectors === 1 ? '' : 's'})`;
  }
  return undefined;
}

const irqEnable: ShellCommand = {
  name: 'irq-enable',
  summary: 'install eventfds for the vectors of an IRQ index (SET_IRQS); MSI/MSI-X are also enabled in config space',
  build: (ctx, done) =>
    new Command('irq-enable')
      .description(irqEnable.summary)
      .argument('<index>', indexHelp)
      .option('--start <vector>', 'first vector', '0')
      .option('--vectors <n>', 'number of vectors (default: all from --start)')
      .option('--no-config', 'do not touch config space (MSI / MSI-X Enable, vector masks)')
      .action(async (indexText: string, options: { start: string; vectors?: string; config: boolean }) => {
        const index = parseIrqIndex(indexText);
        if (ctx.session.irqs.get(index)?.irq.closed === false) throw new InvalidArgumentError(`${irqName(index)} is already enabled (irq-disable it first)`, { errno: Errno.EEXIST });
        const start = Number(parseInteger(options.start, '--start', 0xffff_ffffn));
        const vectors = options.vectors === undefined ? undefined : parseCount(options.vectors, '--vectors');
        const irq = await Interrupts.enable(ctx.session.client, index, { start, ...(vectors === undefined ? {} : { vectors }) });
        ctx.session.irqs.set(index, { irq, seen: new Map() });
        const config = options.config ? await enableInConfig(ctx, irq) : undefined;
        const range = irq.count === 1 ? `vector ${irq.start}` : `vectors ${irq.start}–${irq.start + irq.count - 1}`;
        done(textResult({ index, name: irqName(index), start: irq.start, count: irq.count, config: config ?? null }, `${irqName(index)}: eventfds on ${range}${config ? `; ${config}` : ''}`));
      }),
};

const irqDisable: ShellCommand = {
  name: 'irq-disable',
  summary: 'remove the eventfds of an IRQ index (SET_IRQS)',
  build: (ctx, done) =>
    new Command('irq-disable')
      .description(irqDisable.summary)
      .argument('<index>', indexHelp)
      .action(async (indexText: string) => {
        const index = parseIrqIndex(indexText);
        await enabled(ctx, index).irq.disable();
        ctx.session.irqs.delete(index);
        done(textResult({ index, name: irqName(index), disabled: true }, `${irqName(index)}: eventfds removed`));
      }),
};

const irqList: ShellCommand = {
  name: 'irq-list',
  summary: 'signals counted on every enabled vector',
  build: (ctx, done) =>
    new Command('irq-list').description(irqList.summary).action(() => {
      const vectors: Array<{ index: number; name: string; vector: number; total: bigint }> = [];
      for (const [index, { irq }] of ctx.session.irqs) {
        if (irq.closed) continue;
        for (let v = irq.start; v < irq.start + irq.count; v++) vectors.push({ index, name: irqName(index), vector: v, total: irq.total(v) });
      }
      const lines = vectors.length === 0 ? ['no interrupts enabled (irq-enable INDEX)'] : table([['irq', 'vector', 'signals'], ...vectors.map((v) => [v.name, String(v.vector), v.total.toString()])]);
      done({ value: { vectors }, lines });
    }),
};

const irqWait: ShellCommand = {
  name: 'irq-wait',
  summary: 'wait until a vector has signals irq-wait has not reported yet (those since the last irq-wait count)',
  build: (ctx, done) =>
    new Command('irq-wait')
      .description(irqWait.summary)
      .argument('<index>', indexHelp)
      .argument('[vector]', 'the vector', '0')
      .option('--timeout <duration>', 'give up after (300ms, 5s, …)', '5s')
      .action(async (indexText: string, vectorText: string, options: { timeout: string }) => {
        const index = parseIrqIndex(indexText);
        const vector = Number(parseInteger(vectorText, 'VECTOR', 0xffff_ffffn));
        const timeoutMs = parseDuration(options.timeout, '--timeout');
        const state = enabled(ctx, index);
        const seen = state.seen.get(vector) ?? 0n;
        let total = state.irq.total(vector);
        if (total === seen) {
          await state.irq.waitFor(vector, timeoutMs);
          total = state.irq.total(vector);
        }
        state.seen.set(vector, total);
        const fresh = total - seen;
        done(textResult({ index, name: irqName(index), vector, signals: fresh, total }, `${irqName(index)} vector ${vector}: ${fresh} new signal${fresh === 1n ? '' : 's'} (${total} in all)`));
      }),
};

const irqTrigger: ShellCommand = {
  name: 'irq-trigger',
  summary: 'ask the server to signal a vector itself (SET_IRQS TRIGGER, a loopback test)',
  build: (ctx, done) =>
    new Command('irq-trigger')
      .description(irqTrigger.summary)
      .argument('<index>', indexHelp)
      .argument('[vector]', 'the vector', '0')
      .action(async (indexText: string, vectorText: string) => {
        const index = parseIrqIndex(indexText);
        const vector = Number(parseInteger(vectorText, 'VECTOR', 0xffff_ffffn));
        await enabled(ctx, index).irq.trigger(vector);
        done(textResult({ index, name: irqName(index), vector, triggered: true }, `${irqName(index)} vector ${vector}: triggered`));
      }),
};

/** The interrupt commands. */
export const IRQ_COMMANDS: readonly ShellCommand[] = [irqEnable, irqDisable, irqList, irqWait, irqTrigger];
