#!/usr/bin/env node
/**
 * The `vfio-user` command line. Every command has `--help`; results go to
 * stdout (`--json` for machine output); `--trace` prints every protocol
 * message on stderr; failures print one line on stderr and exit 1.
 */
import './die-with-parent.js'; // first: a server child started by this CLI dies with its parent
import { Command as Cli, Option } from 'commander';
import { runDemo, type DemoOptions } from './commands/demo.js';
import { SERVE_DEVICES, runServe, type ServeCommandOptions } from './commands/serve.js';
import { DEFAULT_SERVER_MSG_FDS, MAX_SERVER_MSG_FDS } from '../server/server.js';
import { runInfo, type InfoOptions } from './commands/info.js';
import { countFlag, runLspci, type LspciOptions } from './commands/lspci.js';
import { PCI_IDS_ENV } from './pci-ids.js';
import { runRead, runWrite, type ReadOptions, type WriteOptions } from './commands/access.js';
import { runBench, type BenchOptions } from './commands/bench.js';
import { ASSIGN_BARS_MODES } from './bar-gate.js';
import { runShell, type ShellOptions } from './commands/shell.js';
import { MAX_DEMO_JOBS, runMigrate, type MigrateCommandOptions } from './commands/migrate.js';
import { runMigrateListen, type MigrateListenOptions } from './commands/migrate-listen.js';
import { runMigrateResolve, type MigrateResolveOptions } from './commands/migrate-resolve.js';
import { MIN_MEMORY_LIMIT, runHost, type HostCommandOptions } from './commands/host.js';
import { registerMdev } from './commands/mdev.js';
import { registerMediate } from './commands/mediate.js';
import { registerReplay } from './commands/replay.js';
import { countOption, durationOption, sizeOption } from './values.js';
import { describeError, type GlobalOptions } from './common.js';
import { VERSION } from '../version.js';

/** Commander's multi-line errors ("unknown option '--jsn'\n(Did you mean --json?)") as one line. */
function oneLine(text: string): string {
  return text.trim().split('\n').map((l) => l.trim()).filter((l) => l !== '').join(' ');
}

function fail(error: unknown): never {
  process.stderr.write(`vfio-user: ${describeError(error)}\n`);
  process.exit(1);
}

const program = new Cli()
  .name('vfio-user')
  .description('vfio-user in TypeScript: write PCI devices, serve them over a UNIX socket, drive them')
  .version(VERSION)
  .option('--trace', 'print every vfio-user message on stderr, one decoded line each (time, direction, command, reply latency)')
  .addOption(durationOption('--timeout <duration>', 'per-request (and connect) timeout: 500ms, 10s, 1m, or plain milliseconds', { default: '10s' }))
  // Every subcommand's --help lists --trace/--timeout too; commander's errors stay one line, "(Did you mean --json?)" included.
  .configureHelp({ showGlobalOptions: true })
  .configureOutput({ outputError: (text, write) => write(`vfio-user: ${oneLine(text.replace(/^error: /, ''))}\n`) })
  .addHelpText(
    'after',
    `
Global options go before or after the command. --json prints one JSON document on stdout;
--trace prints one line per message on stderr. Failures print one line on stderr, exit 1.

Examples:
  vfio-user serve dma-engine --socket /tmp/dma.sock &
  vfio-user info /tmp/dma.sock
  vfio-user lspci -v /tmp/dma.sock
  vfio-user lspci --dump /tmp/dma.sock > dump.txt && lspci -F dump.txt -vv
  vfio-user read /tmp/dma.sock bar0 0x0 --count 10
  vfio-user --trace write /tmp/dma.sock bar0 0x14 64
  taskset -c 0 vfio-user bench /tmp/dma.sock --count 100000
  npm start   # = vfio-user migrate --demo --downtime 300ms`,
  );

const globals = (): GlobalOptions => program.opts<GlobalOptions>();
const json = new Option('--json', 'machine-readable output (one JSON document)');

program
  .command('demo')
  .description('serve the DMA engine in a child process and drive it as a VMM would: guest RAM, MSI-X, a stream of verified DMA copies')
  .option('--jobs <n>', 'number of copy jobs', '2000')
  .addOption(json)
  .action((options: DemoOptions) => runDemo(options, globals()));

program
  .command('serve')
  .description('serve a device on a UNIX socket until SIGINT/SIGTERM: a sample device, or your own ES module exporting a device definition, a device or a factory (args after -- go to the factory)')
  .argument('<device>', `${SERVE_DEVICES.join(', ')}, or a module: ./my-device.js, /path/dev.mjs, a package name`)
  .argument('[args...]', "after --: arguments for the module's factory ({ args, socket })")
  .requiredOption('--socket <path>', 'socket path to create (removed on exit)')
  .addOption(sizeOption('--size <bytes>', 'memory device: BAR0 size, a power of two (4K, 64K, 1M; default 1M)', { powerOfTwo: true }))
  .option('--allow-uid <uid...>', 'only serve clients running as these uids')
  .addOption(countOption('--max-msg-fds <n>', `fds a client may send per message, advertised in VERSION (1–${MAX_SERVER_MSG_FDS}; QEMU accepts ≤ 16)`, { max: MAX_SERVER_MSG_FDS, default: String(DEFAULT_SERVER_MSG_FDS) }))
  .action(async (device: string, args: string[], options: ServeCommandOptions) => {
    await runServe(device, options, undefined, args);
  });

program
  .command('info')
  .description('negotiated version and capabilities, device info, every region and IRQ index')
  .argument('<socket>', 'the server socket')
  .addOption(json)
  .action((socket: string, options: InfoOptions) => runInfo(socket, options, globals()));

program
  .command('lspci')
  .description('read config space and decode it like lspci: one line, -v, -vv (BAR sizes from a sizing probe)')
  .argument('<socket>', 'the server socket')
  .option('-v, --verbose', 'more detail, as lspci: -v header and capability list, -vv every register (repeatable)', countFlag, 0)
  .option('-n, --numeric', 'numeric ids instead of names; -nn both (repeatable)', countFlag, 0)
  .option('-i, --pci-ids <file>', `the pci.ids to name ids from (default: $${PCI_IDS_ENV}, then the system's)`)
  .option('--dump', 'print the hex dump that `lspci -F FILE` reads (does not touch the device)')
  .addOption(json)
  .action((socket: string, options: LspciOptions) => runLspci(socket, options, globals()));

const regionHelp = 'bar0..bar5, rom, config, vga, or a region index';
const assignBars = new Option('--assign-bars <mode>', 'BAR set-up for servers that serve a BAR only once assigned and decoding (QEMU x-remote): auto = assign addresses and enable decode like a VMM when a BAR access is refused for that, always, never')
  .choices(ASSIGN_BARS_MODES)
  .default('auto');
program
  .command('read')
  .description('read registers: one REGION_READ of --width bytes per value, little-endian, printed in hex')
  .argument('<socket>', 'the server socket')
  .argument('<region>', regionHelp)
  .argument('<offset>', 'byte offset in the region (decimal or 0x-hex)')
  .option('--count <n>', 'number of values to read', '1')
  .option('--width <bytes>', 'access width: 1, 2, 4 or 8', '4')
  .addOption(assignBars)
  .addOption(json)
  .action((socket: string, region: string, offset: string, options: ReadOptions) => runRead(socket, region, offset, options, globals()));

program
  .command('write')
  .description('write one register: a REGION_WRITE of --width bytes, little-endian')
  .argument('<socket>', 'the server socket')
  .argument('<region>', regionHelp)
  .argument('<offset>', 'byte offset in the region (decimal or 0x-hex)')
  .argument('<value>', 'the value (decimal or 0x-hex); must fit in --width bytes')
  .option('--width <bytes>', 'access width: 1, 2, 4 or 8', '4')
  .addOption(assignBars)
  .addOption(json)
  .action((socket: string, region: string, offset: string, value: string, options: WriteOptions) => runWrite(socket, region, offset, value, options, globals()));

program
  .command('bench')
  .description('REGION_READ latency percentiles (1 in flight) and throughput (pipelined); pin with taskset yourself')
  .argument('<socket>', 'the server socket')
  .option('--region <region>', regionHelp, 'bar0')
  .option('--offset <offset>', 'byte offset in the region', '0')
  .option('--size <bytes>', 'bytes per read (4, 64, 4K; K = 1024)', '4')
  .option('--count <n>', 'requests per measurement', '10000')
  .option('--depth <n>', 'requests in flight for the throughput rows', '16')
  .option('--large-size <bytes>', 'bytes per read for the MB/s row (64K, 1M; capped to the region and max_data_xfer_size)', '64K')
  .addOption(assignBars)
  .addOption(json)
  .action((socket: string, options: BenchOptions) => runBench(socket, options, globals()));

program
  .command('shell')
  .description('one session, many commands: read commands from stdin (a prompt with history on a terminal, else a script) or --file; the device is reset only when the shell exits (`help` lists the commands)')
  .argument('<socket>', 'the server socket')
  .option('--file <script>', 'read the commands from this file')
  .option('--keep-going', 'run every line of a script even after a failure (the exit status is still 1)')
  .addOption(assignBars)
  .addOption(new Option('--json', 'one JSON object per command on stdout'))
  .action((socket: string, options: ShellOptions) => runShell(socket, options, globals()));

program
  .command('migrate')
  .description('live-migrate a device and its guest RAM under a downtime budget: --from a served device (this process is its VMM) --to another socket or a receiver (`vfio-user migrate-listen`) at tcp://HOST:PORT; or --demo (a busy DMA engine)')
  .option('--from <socket...>', 'the source device: any served device whose definition declares migration (e.g. `vfio-user serve ./my-device.js`); repeated as [NAME=]SOCKET: the devices of one VM, migrated as a container sharing one guest RAM')
  .option('--to <target...>', 'the destination: a device socket on this host (this process then holds it until SIGINT/SIGTERM), or a receiver at tcp://HOST:PORT; for a container: tcp://HOST:PORT, or one [NAME=]SOCKET per --from')
  .option('--allow-without-p2p', 'a container where a device lacks P2P migration: migrate anyway, with a warning (it may DMA into a peer that already stopped), instead of refusing')
  .addOption(sizeOption('--guest-ram <bytes>', '--from: guest RAM size (a memfd, DMA-mapped with its fd; default: --guest-ram-file\'s size, else 64M)'))
  .option('--guest-ram-file <file>', '--from: initialise guest RAM from this file')
  .option('--iova <addr>', '--from: where the device sees guest RAM (default 0x100000000)')
  .option('--no-hold', '--from to a socket: release the migrated destination at once (it resets) instead of holding it until SIGINT/SIGTERM')
  .option('--shell', '--from to a socket: drive the migrated destination with `vfio-user shell` commands from stdin; their end (quit, EOF) releases it')
  .option('--demo', 'the end-to-end demo: a DMA engine served by a child process, copy jobs running while it migrates')
  .addOption(durationOption('--downtime <duration>', 'downtime budget: 300ms, 1s, or plain milliseconds', { min: 0, default: '300ms' }))
  .addOption(countOption('--jobs <n>', '--demo: copy jobs streamed on the source (the destination runs the rest)', { max: MAX_DEMO_JOBS, default: '600' }))
  .addOption(sizeOption('--bandwidth <rate>', 'pre-copy bandwidth cap in bytes/s, e.g. 200M (= 200 MiB/s)', { perSecond: true }))
  .option('--auto-converge', '--demo: throttle the guest workload when pre-copy does not converge (QEMU auto-converge: 20%, +10%, at most 99%)')
  .addOption(durationOption('--time-limit <duration>', 'hard limit on the whole migration (aborted back to the source beyond it)', { default: '60s' }))
  .option('--tls-creds <dir>', "mutual TLS: a directory with ca-cert.pem, client-cert.pem, client-key.pem (QEMU's tls-creds-x509 layout)")
  .option('--no-tls', 'allow a plaintext channel to a receiver beyond loopback (TLS is required there otherwise)')
  .addOption(durationOption('--resolve-timeout <duration>', "how long to keep asking the receiver how the migration ended when the commit's reply is lost (then the source is held)", { default: '10s' }))
  .addOption(json)
  .action((options: MigrateCommandOptions) => runMigrate(options, globals()));

program
  .command('migrate-resolve')
  .description('ask a receiver (`vfio-user migrate-listen`) how migration ID ended, for a source left held: committed = stop the source for good, abandoned = resume it')
  .requiredOption('--to <url>', 'the receiver, tcp://HOST:PORT')
  .requiredOption('--id <id>', "the migration id (the sender's summary prints it)")
  .option('--tls-creds <dir>', 'mutual TLS, as for migrate')
  .addOption(json)
  .action((options: MigrateResolveOptions) => runMigrateResolve(options, globals()));

program
  .command('migrate-listen')
  .description('receive live migrations on TCP (`vfio-user migrate --from … --to tcp://HOST:PORT`, or --demo) as the destination\'s VMM: a migration that does not commit resets the device; a committed one runs here, held with its guest RAM until SIGINT/SIGTERM (the demo\'s: until its sender is done)')
  .option('--port <n>', 'TCP port (0 = any; the address is printed on stderr)', '0')
  .option('--host <addr>', 'address to listen on', '127.0.0.1')
  .option('--socket <path...>', 'the destination device, e.g. served by `vfio-user serve ./my-device.js` (default: a DMA engine served in a child process, for the demo); repeated as NAME=PATH: the devices of a container (the sender\'s names)')
  .option('--serve <device>', 'serve this device in a child process as the destination instead (a sample device or a module, as `vfio-user serve`; its arguments after --)')
  .argument('[args...]', "after --: arguments for --serve's device module")
  .option('--once', 'receive one migration: exit 1 if it does not commit; once committed, hold it until SIGINT/SIGTERM, then exit 0 (the demo: exit when its sender is done)')
  .option('--shell', 'drive a held device with `vfio-user shell` commands from stdin once its sender is done; their end (quit, EOF) releases it and exits (status 1 if a command failed)')
  .option('--tls-creds <dir>', "mutual TLS: a directory with ca-cert.pem, server-cert.pem, server-key.pem (QEMU's tls-creds-x509 layout); senders need a client certificate from that CA")
  .option('--no-tls', 'allow a plaintext, unauthenticated channel on an address beyond loopback (TLS is required there otherwise)')
  .addOption(json)
  .action((args: string[], options: MigrateListenOptions) => runMigrateListen(options, globals(), undefined, args));

registerMdev(program);
registerMediate(program);
registerReplay(program);

program
  .command('host')
  .description('run a device host until SIGINT/SIGTERM: mediated-device parents and their types, instances by UUID each on <run-dir>/<uuid>.sock, persistent definitions (auto ones started), controlled by `vfio-user mdev` through <run-dir>/control.sock')
  .option('--parent <spec...>', 'load a parent module beside the built-in ones: ./my-parent.js, /path/parent.mjs, a package name (repeatable)')
  .option('--no-builtin-parents', 'do not load the built-in sample parents (memory-pool, gpio-bank)')
  .option('--run-dir <dir>', 'sockets: control.sock and <uuid>.sock (default $VFIO_USER_RUN_DIR, /run/vfio-user for root, else $XDG_RUNTIME_DIR/vfio-user)')
  .option('--config-dir <dir>', 'definitions <dir>/<parent>/<uuid> and scripts.d/ (default $VFIO_USER_CONFIG_DIR, /etc/vfio-user for root, else ~/.config/vfio-user)')
  .option('--allow-uid <uid...>', 'uids allowed on the control socket beside the host\'s own and root (repeatable)')
  .addOption(durationOption('--watchdog <duration>', 'an instance whose event loop stalls this long is terminated and restarted', { default: '5s' }))
  .addOption(sizeOption('--memory-limit <bytes>', 'heap cap of each instance\'s worker (device memory not counted)', { min: MIN_MEMORY_LIMIT, default: '256M' }))
  .addOption(durationOption('--callout-timeout <duration>', 'each callout or notifier script is killed after this long (a pre-callout then vetoes)', { default: '10s' }))
  .option('--no-autostart', 'do not start the auto definitions')
  .addOption(json)
  .action((options: HostCommandOptions) => runHost(options));

// `vfio-user lspci SOCK --dump | head`: a closed pipe ends the output, not the process with a stack trace.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code === 'EPIPE') process.exit(0);
  fail(error);
});

try {
  await program.parseAsync(process.argv);
} catch (error) {
  fail(error);
}
