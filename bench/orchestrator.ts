/**
 * Live migration through the orchestrator (`migrate()`), over a UNIX socket
 * and over loopback TCP, each with a reference from the same run. The source
 * is a device in its own process (bench/serve-dirtying.ts) whose DMA dirties
 * guest memory at a set rate, its guest RAM in this process (GuestMemory, fd mode).
 * - UNIX: the destination device in its own process, its session and guest
 *   memory in this process (a local destination). Reference: the guest-memory
 *   copy bandwidth (GuestMemory read → write in 1 MiB chunks, as the
 *   orchestrator copies; best of 5, after a warm-up migration).
 * - TCP: the destination device in its own process behind a receiver process
 *   (bench/receive.ts: `MigrationReceiver` on 127.0.0.1, its own session and
 *   guest memory), reached with `RemoteDestination`. Reference: the channel
 *   bandwidth (GuestMemory read → channel → the receiver's GuestMemory, 1 MiB
 *   chunks, until flushed; best of 3, after a warm-up migration).
 * Per transport (bench/orchestrator-matrix.ts): per dirty rate (0 / 10 / 50 /
 * 90 % of that transport's reference), 3 migrations within the downtime budget
 * (300 ms, then a tight 25 ms where the rate decides convergence); time to abort.
 * Processes are not pinned (TCP: four processes move data; 2+ CPUs needed).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect as connectTcp } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { GuestMemory } from '../src/client/guest-memory.js';
import { RemoteDestination } from '../src/orchestrator/remote.js';
import { loadTlsCredentials, type ChannelTlsCredentials } from '../src/orchestrator/channel-tls.js';
import { makeTlsCredentials } from './tls-creds.js';
import { printThroughput, runThroughput, type ThroughputResult } from './orchestrator-throughput.js';
import { zeroFill } from '../src/orchestrator/memory-copy.js';
import { Errno } from '../src/protocol/errno.js';
import {
  close,
  IOVA,
  migrateOnce,
  open,
  printMatrix,
  round,
  runMatrix,
  serveDevice,
  stop,
  type DestinationFactory,
  type OrchestratorAbort,
  type OrchestratorBudget,
  type OrchestratorRun,
  type OrchestratorTransport,
  type Side,
} from './orchestrator-matrix.js';

export type { OrchestratorAbort, OrchestratorBudget, OrchestratorRate, OrchestratorRun, OrchestratorTransport } from './orchestrator-matrix.js';

/** What this section reports. The top-level fields are the UNIX-socket transport (as before TCP was added). */
export interface OrchestratorResult {
  guestBytes: number;
  copyGBps: number;
  /** Bytes moved / total time of the 0 % runs under the first budget (best of 3). */
  migrationGBps: number;
  /** The given budget (default 300 ms), then a tight one (25 ms) where the dirty rate decides convergence. */
  budgets: OrchestratorBudget[];
  abort: OrchestratorAbort;
  /** The same matrix over loopback TCP (RemoteDestination → MigrationReceiver in its own process). */
  tcp: OrchestratorTransport;
  /** tcp.migrationGBps / migrationGBps. */
  tcpToUnix: number;
  /**
   * The channel over mutual TLS 1.3 (another receiver process, same device): channel copy and whole
   * migration at 0 % dirty rate (best of 3 each), and their share of plaintext TCP's; or why it was skipped.
   */
  tls: { channelGBps: number; migrationGBps: number; channelToPlain: number; migrationToPlain: number; connectMs: number } | { skipped: string };
  /** Bare loopback TCP to a discarding process (GB/s), and the TCP migration's share of it. */
  rawTcpGBps: number;
  tcpToRawTcp: number;
  /** Idle and data guests over TCP, ours against QEMU's pre-copy (VFIO_USER_QEMU) and bare TCP, in the same run. */
  throughput: ThroughputResult;
}

const RECEIVER = new URL('./receive.js', import.meta.url).pathname;

/** Reference: copy all guest memory src → dst in 1 MiB chunks, as the orchestrator does (bytes per ms). */
function copyBandwidth(src: GuestMemory, dst: GuestMemory): number {
  let best = Infinity;
  const chunk = 1 << 20;
  for (let round = 0; round < 5; round++) {
    const t = performance.now();
    for (let gpa = 0n; gpa < src.size; gpa += BigInt(chunk)) dst.write(gpa, src.read(gpa, chunk));
    best = Math.min(best, performance.now() - t);
  }
  return Number(src.size) / best;
}

/** Reference: all guest memory through the channel into the receiver's memory, until flushed (bytes per ms). */
async function channelBandwidth(src: GuestMemory, connect: () => Promise<RemoteDestination>): Promise<number> {
  let best = Infinity;
  const chunk = 1 << 20;
  for (let round = 0; round < 3; round++) {
    const d = await connect();
    const t = performance.now();
    for (let gpa = 0n; gpa < src.size; gpa += BigInt(chunk)) await d.writeMemory(gpa, src.read(gpa, chunk));
    await d.flush();
    best = Math.min(best, performance.now() - t);
    await d.abandon();
  }
  return Number(src.size) / best;
}

const SINK = new URL('./tcp-sink.js', import.meta.url).pathname;

/**
 * Reference: the same bytes over a bare loopback TCP connection to a process
 * that discards them (1 MiB writes of one buffer, until the sink confirms the
 * end; best of 3; bytes per ms) — what the socket itself carries, no channel.
 */
async function rawTcpBandwidth(bytes: number): Promise<number> {
  const proc = spawn(process.execPath, [SINK], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream });
    let port = 0;
    for await (const line of lines) {
      const m = /^PORT (\d+)$/.exec(line);
      if (m) {
        port = Number(m[1]);
        break;
      }
    }
    const chunk = Buffer.alloc(1 << 20, 0xa5);
    let best = Infinity;
    for (let round = 0; round < 3; round++) {
      const socket = connectTcp({ host: '127.0.0.1', port });
      await once(socket, 'connect');
      const t = performance.now();
      for (let sent = 0; sent < bytes; sent += chunk.length) {
        if (!socket.write(chunk)) await once(socket, 'drain');
      }
      socket.end();
      await once(socket, 'data');
      best = Math.min(best, performance.now() - t);
      socket.destroy();
    }
    return bytes / best;
  } finally {
    proc.stdin?.end();
    proc.kill('SIGTERM');
  }
}

/** The receiver process in front of the device on `devicePath` (over mutual TLS with `tlsDir`); resolves with its port. */
async function startReceiver(devicePath: string, tlsDir?: string): Promise<{ proc: ReturnType<typeof spawn>; port: number }> {
  const proc = spawn(process.execPath, [RECEIVER, devicePath, ...(tlsDir ? [tlsDir] : [])], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream });
  const exited = once(proc, 'exit').then(([code]) => {
    throw new Error(`bench/receive.js exited (${String(code)}) before listening`);
  });
  const port = Promise.race([
    (async () => {
      for await (const line of lines) {
        const m = /^PORT (\d+)$/.exec(line);
        if (m) return Number(m[1]);
      }
      throw new Error('bench/receive.js: no PORT line');
    })(),
    exited,
  ]);
  return { proc, port: await port };
}

/** A RemoteDestination, retrying while the receiver still releases the previous migration (EBUSY). */
async function connectRemote(url: string, size: bigint, tls?: ChannelTlsCredentials): Promise<RemoteDestination> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await RemoteDestination.connect(url, { memory: { size, iova: IOVA }, ...(tls ? { tls } : {}) });
    } catch (error) {
      if ((error as { errno?: number }).errno !== Errno.EBUSY || attempt >= 40) throw error;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }
}

/**
 * The TCP channel's cost of TLS: a receiver process with mutual TLS 1.3 in front of the same
 * device; channel copy and whole migrations at 0 % dirty rate, best of 3 each, against plaintext's.
 */
async function tlsComparison(
  src: Side, dir: string, devicePath: string, budgetMs: number, plain: { channelGBps: number; migrationGBps: number }, procs: Array<ReturnType<typeof spawn>>,
): Promise<OrchestratorResult['tls']> {
  const made = makeTlsCredentials(join(dir, 'tls-creds'));
  if ('skipped' in made) return made;
  const rx = await startReceiver(devicePath, made.dir);
  procs.push(rx.proc);
  const creds = loadTlsCredentials(made.dir, 'client');
  zeroFill(src.memory, 0n, Number(src.memory.size)); // an idle guest, as in the plaintext 0 % runs it is compared with
  const url = `tcp://127.0.0.1:${rx.port}`;
  const connect = (): Promise<RemoteDestination> => connectRemote(url, src.memory.size, creds);
  const remote: DestinationFactory = {
    open: async () => {
      const d = await connect();
      return { destination: d, close: () => d.close() };
    },
  };
  await migrateOnce(src, remote, budgetMs, 1); // warm-up
  const channelGBps = round(((await channelBandwidth(src.memory, connect)) * 1000) / 1e9);
  const runs: OrchestratorRun[] = [];
  for (let i = 0; i < 3; i++) runs.push(await migrateOnce(src, remote, budgetMs, 1));
  const migrationGBps = Math.max(...runs.map((r) => r.GBps));
  const connects = runs.map((r) => r.connectMs).sort((a, b) => a - b);
  return {
    channelGBps, migrationGBps, channelToPlain: round(channelGBps / plain.channelGBps), migrationToPlain: round(migrationGBps / plain.migrationGBps), connectMs: connects[1] ?? 0,
  };
}

/** Runs the section. */
export async function runOrchestratorBench(o: { dir: string; guestBytes: number; budgetMs?: number; log: boolean; runs?: number; qemu?: string | undefined }): Promise<OrchestratorResult> {
  const budgets = [o.budgetMs ?? 300, 25];
  const sides: Side[] = [];
  const procs: Array<ReturnType<typeof spawn>> = [];
  try {
    sides.push(await open(join(o.dir, 'orch-src.sock'), o.guestBytes), await open(join(o.dir, 'orch-dst.sock'), o.guestBytes));
    const [src, dst] = sides as [Side, Side];

    // UNIX: the destination session in this process.
    const local: DestinationFactory = { open: async () => ({ destination: dst, close: () => undefined }) };
    await migrateOnce(src, local, budgets[0] as number, 1); // warm-up (also faults in both memfds)
    const copyRate = copyBandwidth(src.memory, dst.memory);
    const unix = await runMatrix(src, local, budgets, copyRate);
    await close(dst);
    sides.pop();

    // TCP: a fresh destination device behind the receiver process.
    const dstPath = join(o.dir, 'orch-dst-tcp.sock');
    procs.push(await serveDevice(dstPath, o.guestBytes));
    const rx = await startReceiver(dstPath);
    procs.push(rx.proc);
    const url = `tcp://127.0.0.1:${rx.port}`;
    const connect = (): Promise<RemoteDestination> => connectRemote(url, src.memory.size);
    const remote: DestinationFactory = {
      open: async () => {
        const d = await connect();
        return { destination: d, close: () => d.close() };
      },
    };
    await migrateOnce(src, remote, budgets[0] as number, 1); // warm-up
    const channelRate = await channelBandwidth(src.memory, connect);
    const rawTcpGBps = round(((await rawTcpBandwidth(Number(src.memory.size))) * 1000) / 1e9);
    const throughput = await runThroughput(src, remote, { runs: o.runs ?? 5, rawTcpGBps, qemu: o.qemu });
    // The matrix ends with aborted runs: the receiver then holds no committed session of the device (the TLS receiver needs it).
    const tcp = await runMatrix(src, remote, budgets, channelRate);
    const tls = await tlsComparison(src, o.dir, dstPath, budgets[0] as number, { channelGBps: tcp.copyGBps, migrationGBps: tcp.migrationGBps }, procs);

    const result: OrchestratorResult = {
      guestBytes: o.guestBytes,
      copyGBps: unix.copyGBps,
      migrationGBps: unix.migrationGBps,
      budgets: unix.budgets,
      abort: unix.abort,
      tcp,
      rawTcpGBps,
      tcpToUnix: round(tcp.migrationGBps / unix.migrationGBps),
      tls,
      tcpToRawTcp: round(tcp.migrationGBps / rawTcpGBps),
      throughput,
    };
    if (o.log) print(result, unix);
    return result;
  } finally {
    for (const s of sides) await close(s);
    for (const p of procs.reverse()) await stop(p);
  }
}

function print(r: OrchestratorResult, unix: OrchestratorTransport): void {
  const share = (b: OrchestratorBudget[]): string => b.map((x) => `${Math.round(x.metBudgetShare * 100)} % within ${x.budgetMs} ms`).join(', ');
  console.log(`\nLive migration (orchestrator): ${r.guestBytes >> 20} MiB guest RAM (fd mode) + a dirtying device in its own process (processes not pinned; 3 runs per rate)`);
  console.log(`  over a UNIX socket (destination session in the bench process):`);
  console.log(`  reference: guest-memory copy (GuestMemory read → write, 1 MiB chunks, best of 5)  ${r.copyGBps} GB/s`);
  console.log(`  whole migration at 0 % dirty rate (bytes moved / total time, best of 3)           ${r.migrationGBps} GB/s`);
  printMatrix(unix);
  console.log(`  over loopback TCP (RemoteDestination → MigrationReceiver in its own process, in front of the destination device):`);
  console.log(`  reference: channel copy (GuestMemory read → channel → receiver memory, 1 MiB chunks, flushed, best of 3)  ${r.tcp.copyGBps} GB/s`);
  console.log(`  reference: bare loopback TCP to a discarding process (1 MiB writes, best of 3)      ${r.rawTcpGBps} GB/s`);
  console.log(`  whole migration at 0 % dirty rate (bytes moved / total time, best of 3)           ${r.tcp.migrationGBps} GB/s (${r.tcpToRawTcp}× bare TCP)`);
  console.log(`  connect + receiver preparation before each migration (median, not in total time) ${r.tcp.connectMs} ms`);
  printMatrix(r.tcp);
  printThroughput(r.throughput);
  if ('skipped' in r.tls) console.log(`  over loopback TCP with mutual TLS 1.3: skipped (${r.tls.skipped})`);
  else {
    console.log(`  over loopback TCP with mutual TLS 1.3 (another receiver process, same device):`);
    console.log(`  channel copy (as above, best of 3)                                                ${r.tls.channelGBps} GB/s (${r.tls.channelToPlain}× plaintext)`);
    console.log(`  whole migration at 0 % dirty rate (best of 3)                                     ${r.tls.migrationGBps} GB/s (${r.tls.migrationToPlain}× plaintext)`);
    console.log(`  connect + TLS handshake + receiver preparation (median)                           ${r.tls.connectMs} ms`);
  }
  console.log(`  summary: whole migration UNIX ${r.migrationGBps} GB/s, TCP ${r.tcp.migrationGBps} GB/s (TCP/UNIX ${r.tcpToUnix});`);
  const q = r.throughput;
  console.log(`           TCP idle guest ${q.idle.oursGBps} GB/s${q.idle.oursToQemu === undefined ? '' : ` = ${q.idle.oursToQemu}× QEMU (${q.idle.qemuGBps} GB/s)`}; data guest ${q.data.oursGBps} GB/s = ${q.data.oursToRawTcp}× bare TCP${q.data.oursToQemu === undefined ? '' : `, ${q.data.oursToQemu}× QEMU (${q.data.qemuGBps} GB/s)`};`);
  console.log(`           switch-overs met the budget: UNIX ${share(r.budgets)}; TCP ${share(r.tcp.budgets)};`);
  console.log(`           time to abort (median): UNIX ${r.abort.medianMs} ms, TCP ${r.tcp.abort.medianMs} ms`);
}
