#!/usr/bin/env node
/**
 * The `vfio-user` command line. Every command has `--help`; failures print one
 * line on stderr and exit non-zero.
 */
import { Argument, Command as Cli } from 'commander';
import { runDemo } from './commands/demo.js';
import { runDemoPeer } from './commands/demo-peer.js';
import { SERVE_DEVICES, runServe, type ServeCommandOptions } from './commands/serve.js';
import { VERSION } from '../version.js';

function fail(error: unknown): never {
  process.stderr.write(`vfio-user: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}

const program = new Cli()
  .name('vfio-user')
  .description('vfio-user in TypeScript: write PCI devices, serve them over a UNIX socket, drive them')
  .version(VERSION);

program
  .command('demo')
  .description('run the foundation demo: two processes, VERSION, shared guest RAM, an eventfd interrupt, latency')
  .action(async () => {
    await runDemo();
  });

program
  .command('serve')
  .description('serve a sample device on a UNIX socket until SIGINT/SIGTERM')
  .addArgument(new Argument('<device>', 'the device to serve').choices(SERVE_DEVICES))
  .requiredOption('--socket <path>', 'socket path to create (removed on exit)')
  .option('--size <bytes>', 'memory device: BAR0 size, a power of two (K/M/G suffixes allowed; default 1M)')
  .option('--allow-uid <uid...>', 'only serve clients running as these uids')
  .action(async (device: string, options: ServeCommandOptions) => {
    await runServe(device, options);
  });

program.command('demo-peer', { hidden: true }).action(() => runDemoPeer());

try {
  await program.parseAsync(process.argv);
} catch (error) {
  fail(error);
}
