#!/usr/bin/env node
/**
 * The `vfio-user` command line. Every command has `--help`; failures print one
 * line on stderr and exit non-zero.
 */
import { Command as Cli } from 'commander';
import { runDemo } from './commands/demo.js';
import { runDemoPeer } from './commands/demo-peer.js';
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

program.command('demo-peer', { hidden: true }).action(() => runDemoPeer());

try {
  await program.parseAsync(process.argv);
} catch (error) {
  fail(error);
}
