/**
 * The shell's own commands: `migrate TARGET` (live-migrate the held session
 * with its guest RAM), `sleep`, `echo`, `help` and `quit`.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { Command } from 'commander';
import { InvalidArgumentError, StateError } from '../errors.js';
import { Errno } from '../protocol/errno.js';
import { parseTimeout, table } from './common.js';
import type { GuestMemory } from '../client/guest-memory.js';
import { parseDuration, parseSize } from './values.js';
import { migrateSession, type SessionMigration } from './vmm-session.js';
import { textResult, type ShellCommand, type ShellContext, type ShellResult } from './shell-types.js';

function migrationResult(r: SessionMigration, target: string): ShellResult {
  const { report } = r;
  const bytes = report.bytes.precopyMemory + report.bytes.stopCopyMemory + report.bytes.precopyDevice + report.bytes.stopCopyDevice;
  const lines = [
    `migration ${report.outcome}${report.reason ? `: ${report.reason}` : ''} to ${target}`,
    `total ${report.totalMs.toFixed(0)} ms, downtime ${report.downtimeMs.toFixed(1)} ms, ${(Number(bytes) / 1e6).toFixed(1)} MB moved (${report.iterations} pre-copy iterations)`,
  ];
  if (r.destination) lines.push(`now driving the destination device ${target} (the source stays stopped)`);
  else if (report.outcome === 'migrated') lines.push('the receiver holds the destination; this shell still holds the stopped source');
  else lines.push(`the source ${report.sourceRecovery === 'running' ? 'runs again' : `recovery: ${report.sourceRecovery ?? 'none'}`}`);
  const value = { outcome: report.outcome, reason: report.reason ?? null, target, totalMs: report.totalMs, downtimeMs: report.downtimeMs, bytes: report.bytes, migrationId: report.migrationId ?? null, switched: r.destination !== undefined };
  return { value, lines };
}

/** The one guest RAM block a migration carries. */
function guestRam(ctx: ShellContext): { memory: GuestMemory; iova: bigint } {
  const maps = ctx.session.mappings;
  if (maps.length !== 1 || maps[0] === undefined) {
    throw new StateError(`migrate carries one guest RAM block: map one with dma-map SIZE IOVA (${maps.length} mapped now)`, { errno: Errno.EINVAL });
  }
  return { memory: maps[0].memory, iova: maps[0].iova };
}

const migrate: ShellCommand = {
  name: 'migrate',
  summary: 'live-migrate the device and its guest RAM to a device socket or a receiver at tcp://HOST:PORT',
  build: (ctx, done) =>
    new Command('migrate')
      .description(migrate.summary)
      .argument('<target>', 'a device socket (this shell then drives it) or tcp://HOST:PORT (vfio-user migrate-listen)')
      .option('--downtime <duration>', 'downtime budget', '300ms')
      .option('--time-limit <duration>', 'limit on the whole migration', '60s')
      .option('--bandwidth <rate>', 'pre-copy bandwidth cap in bytes/s (200M, …)')
      .option('--tls-creds <dir>', 'tcp:// targets: mutual TLS credentials (ca-cert.pem, client-cert.pem, client-key.pem)')
      .option('--no-tls', 'tcp:// targets: allow a plaintext channel beyond loopback')
      .action(async (target: string, options: { downtime: string; timeLimit: string; bandwidth?: string; tlsCreds?: string; tls: boolean }) => {
        const source = { socket: ctx.session.socket, client: ctx.session.client, ...guestRam(ctx) };
        const result = await migrateSession(source, target, {
          downtimeBudgetMs: parseDuration(options.downtime, '--downtime'),
          timeLimitMs: parseDuration(options.timeLimit, '--time-limit'),
          requestTimeoutMs: parseTimeout(ctx.global.timeout),
          ...(options.bandwidth === undefined ? {} : { bandwidthLimit: parseSize(options.bandwidth, '--bandwidth', { perSecond: true }) }),
          ...(options.tlsCreds === undefined ? {} : { tlsCreds: options.tlsCreds }),
          noTls: !options.tls,
        });
        if (result.destination) await ctx.session.switchTo(result.destination);
        done(migrationResult(result, target));
      }),
};

const sleep: ShellCommand = {
  name: 'sleep',
  summary: 'wait (300ms, 2s, …); interrupts keep being counted meanwhile',
  build: (_ctx, done) =>
    new Command('sleep')
      .description(sleep.summary)
      .argument('<duration>', '300ms, 2s, plain milliseconds')
      .action(async (text: string) => {
        const ms = parseDuration(text, 'DURATION', { min: 0 });
        await delay(ms);
        done(textResult({ sleptMs: ms }));
      }),
};

const echo: ShellCommand = {
  name: 'echo',
  summary: 'print the words (a script annotating its output)',
  build: (_ctx, done) =>
    new Command('echo')
      .description(echo.summary)
      .argument('[words...]', 'text')
      .allowUnknownOption()
      .helpOption(false)
      .action((words: string[]) => done(textResult({ text: words.join(' ') }, words.join(' ')))),
};

const help: ShellCommand = {
  name: 'help',
  summary: 'list the commands; help COMMAND for its arguments and options',
  build: (ctx, done) =>
    new Command('help')
      .description(help.summary)
      .argument('[command]', 'a command')
      .action((name: string | undefined) => {
        if (name === undefined) {
          const rows = ctx.commands.map((c) => [c.name, c.summary]);
          done({ value: { commands: ctx.commands.map((c) => ({ name: c.name, summary: c.summary })) }, lines: [...table(rows), '', 'COMMAND --help (or help COMMAND) shows its arguments and options.'] });
          return;
        }
        const command = ctx.commands.find((c) => c.name === name || c.aliases?.includes(name));
        if (command === undefined) throw new InvalidArgumentError(`help: no command '${name}' (help lists them)`);
        const text = command.build(ctx, () => undefined).helpInformation();
        done({ value: { command: command.name, help: text }, lines: text.replace(/\n+$/, '').split('\n') });
      }),
};

const quit: ShellCommand = {
  name: 'quit',
  aliases: ['exit'],
  summary: 'end the shell (the device resets when the session closes)',
  build: (ctx, done) =>
    new Command('quit').description(quit.summary).action(() => {
      ctx.quit();
      done(textResult({ quit: true }));
    }),
};

/** The shell's own commands. */
export const MISC_COMMANDS: readonly ShellCommand[] = [migrate, sleep, echo, help, quit];
