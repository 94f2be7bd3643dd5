/**
 * `vfio-user demo` (what `npm start` runs): the DMA engine served by a child
 * process (`vfio-user serve dma-engine`), driven from this one as a VMM and its
 * guest driver would: connect and negotiate, 64 MiB of guest RAM (a memfd the
 * device mmaps through DMA_MAP), bus master and MSI-X on with vectors 0 and 1
 * unmasked, eventfds for MSI-X, the descriptor ring programmed, then a stream
 * of copy jobs of 64 KiB–1 MiB of random data. Each job is verified twice: the
 * destination bytes against the source, and the checksum the device wrote back
 * against one computed here. Completions are learnt from MSI-X interrupts.
 * Exit status 0 only if every job verified.
 */
import { randomFillSync, randomInt } from 'node:crypto';
import type { VfioUserClient } from '../../client/client.js';
import { GuestMemory } from '../../client/guest-memory.js';
import { Interrupts } from '../../client/interrupts.js';
import { enableBusMaster, enableMsix, readConfig, unmaskMsixVector } from '../../client/pci-config.js';
import { IrqIndex } from '../../protocol/constants.js';
import { DescriptorStatus } from '../../devices/dma-descriptor.js';
import { DmaEngineReg } from '../../devices/dma-engine.js';
import { fnv1a32 } from '../../devices/fnv1a.js';
import { startServer } from '../serve-child.js';
import { CliError, hex, parseCount, stdio, toJson, withClient, type GlobalOptions, type Output } from '../common.js';
import { DmaEngineDriver, type CopyJob } from '../dma-driver.js';

/** Options of `demo`. */
export interface DemoOptions {
  jobs?: string;
  json?: boolean;
}

/** The demo's outcome (also its `--json` form). */
export interface DemoSummary {
  jobs: number;
  bytes: number;
  elapsedMs: number;
  mbPerSec: number;
  interrupts: { completion: bigint; error: bigint; waits: number };
  errors: number;
  device: { completed: number; errors: number };
  firstErrors: string[];
}

const GUEST_RAM = 64 << 20;
/** Where the device sees guest RAM: above 4 GiB, so the ring base needs RING_BASE_HI. */
const IOVA = 0x1_0000_0000n;
const RING_GPA = 0n;
const RING_SIZE = 64;
const DATA_GPA = 1 << 20;
const MAX_JOB = 1 << 20;
const MIN_JOB = 64 << 10;
/** Jobs per batch; two batches' buffers (source + destination each) fit in guest RAM. */
const BATCH = 15;
const SLOT = 2 * MAX_JOB;
const INTERRUPT_TIMEOUT_MS = 5000;


/** Fills one batch's sources with random bytes and checksums them here. */
function prepare(memory: GuestMemory, firstSeq: number, count: number, half: number, firstSlot: number): CopyJob[] {
  const jobs: CopyJob[] = [];
  for (let i = 0; i < count; i++) {
    const base = BigInt(DATA_GPA + (half * BATCH + i) * SLOT);
    const length = randomInt(MIN_JOB, MAX_JOB + 1);
    const source = memory.view(base, length);
    randomFillSync(source);
    jobs.push({ seq: firstSeq + i, slot: (firstSlot + i) % RING_SIZE, src: base, dst: base + BigInt(MAX_JOB), length, expected: fnv1a32(source) });
  }
  return jobs;
}

/** Checks one completed job (status, device checksum, destination bytes); returns what is wrong with it, if anything. */
export function verifyJob(driver: DmaEngineDriver, job: CopyJob): string | undefined {
  const { status, checksum } = driver.result(job);
  if ((status & 0xffff) !== DescriptorStatus.DONE) return `job ${job.seq}: status ${hex(status, 8)} (errno ${status >>> 16})`;
  if (checksum !== job.expected) return `job ${job.seq}: device checksum ${hex(checksum, 8)}, expected ${hex(job.expected, 8)}`;
  const src = Buffer.from(driver.memory.view(job.src, job.length));
  const dst = Buffer.from(driver.memory.view(job.dst, job.length));
  if (!src.equals(dst)) return `job ${job.seq}: destination differs from source`;
  return undefined;
}

/** Runs `total` jobs, two batches in the pipeline: the next is filled while the device copies the current one. */
async function runJobs(driver: DmaEngineDriver, irqs: Interrupts, total: number): Promise<Omit<DemoSummary, 'device' | 'interrupts'> & { waits: number }> {
  const failures: string[] = [];
  let bytes = 0;
  let waits = 0;
  const batches = Math.ceil(total / BATCH);
  const batchJobs = (b: number): CopyJob[] => prepare(driver.memory, b * BATCH, Math.min(BATCH, total - b * BATCH), b % 2, driver.tail);
  const start = process.hrtime.bigint();
  let current = batchJobs(0);
  await driver.post(current);
  for (let b = 0; b < batches; b++) {
    const next = b + 1 < batches ? batchJobs(b + 1) : undefined; // ring slots follow the posted batch's
    waits += await driver.waitFor(current, irqs, INTERRUPT_TIMEOUT_MS);
    for (const job of current) {
      const problem = verifyJob(driver, job);
      if (problem) failures.push(problem);
      else bytes += job.length;
    }
    if (!next) break;
    await driver.post(next);
    current = next;
  }
  const elapsedMs = Number(process.hrtime.bigint() - start) / 1e6;
  return { jobs: total, bytes, elapsedMs, mbPerSec: bytes / 1e6 / (elapsedMs / 1000), errors: failures.length, firstErrors: failures.slice(0, 5), waits };
}

async function drive(client: VfioUserClient, jobs: number, out: Output, quiet: boolean): Promise<DemoSummary> {
  const say = (line: string): void => void (quiet || out.line(line));
  const info = await client.deviceInfo();
  const ids = await readConfig(client, 0, 4);
  say(`connected  vfio-user ${client.version.major}.${client.version.minor}; device ${(ids & 0xffff).toString(16).padStart(4, "0")}:${(ids >>> 16).toString(16).padStart(4, "0")}, ${info.numRegions} regions, ${info.numIrqs} IRQ indexes`);
  const memory = GuestMemory.create(GUEST_RAM, { name: 'demo-guest-ram' });
  try {
    await memory.attach(client, { iova: IOVA, mode: 'fd' });
    say(`guest RAM  ${GUEST_RAM >> 20} MiB memfd, DMA_MAP at IOVA ${hex(IOVA)} with its fd (the device mmaps it)`);
    await enableBusMaster(client);
    const irqs = await Interrupts.enable(client, IrqIndex.MSIX);
    try {
      const msix = await enableMsix(client);
      for (let v = 0; v < Math.min(2, msix.tableSize); v++) await unmaskMsixVector(client, v, msix);
      say(`PCI        bus master on; MSI-X on, ${msix.tableSize} vectors (table BAR${msix.tableBar}+${hex(msix.tableOffset)}) with eventfds, vectors 0 (done) and 1 (error) unmasked`);
      const driver = new DmaEngineDriver(client, memory, IOVA, RING_GPA, RING_SIZE);
      await driver.start();
      say(`ring       ${RING_SIZE} descriptors at IOVA ${hex(IOVA + RING_GPA)}, engine enabled; ${jobs} copy jobs of ${MIN_JOB >> 10} KiB..${MAX_JOB >> 20} MiB of random data, ${BATCH} per doorbell`);
      const result = await runJobs(driver, irqs, jobs);
      const device = { completed: await driver.reg(DmaEngineReg.COMPLETED), errors: await driver.reg(DmaEngineReg.ERRORS) };
      await driver.stop();
      const { waits, ...rest } = result;
      return { ...rest, device, interrupts: { completion: irqs.total(0), error: irqs.total(1), waits } };
    } finally {
      await irqs.disable();
    }
    await memory.detach(client); // DMA_UNMAP, as a VMM does before it lets go of guest RAM
  } finally {
    memory.dispose();
  }
}

/** The summary line(s) of a run. */
export function formatSummary(s: DemoSummary): string[] {
  const lines = [
    `summary    ${s.jobs} jobs, ${(s.bytes / 1e6).toFixed(1)} MB copied and verified in ${(s.elapsedMs / 1000).toFixed(2)} s = ${s.mbPerSec.toFixed(1)} MB/s; ` +
      `MSI-X interrupts: ${s.interrupts.completion} completion, ${s.interrupts.error} error; errors ${s.errors}; device COMPLETED=${s.device.completed} ERRORS=${s.device.errors}`,
  ];
  for (const e of s.firstErrors) lines.push(`error      ${e}`);
  return lines;
}

/**
 * Runs the demo.
 * @throws {CliError} when a job fails verification (after printing the summary), or the device misbehaves.
 */
export async function runDemo(options: DemoOptions = {}, global: GlobalOptions = {}, out: Output = stdio): Promise<void> {
  const jobs = parseCount(options.jobs ?? '2000', '--jobs', 1_000_000);
  const server = await startServer('dma.sock'); // the child owns the socket's directory: nothing to remove here
  const { socket } = server;
  let summary: DemoSummary;
  try {
    if (!options.json) out.line(`server     pid ${server.child.pid}: vfio-user serve dma-engine --socket ${socket}`);
    summary = await withClient(socket, global, (client) => drive(client, jobs, out, options.json === true), { out });
  } finally {
    await server.stop();
  }
  if (options.json) out.line(toJson(summary));
  else formatSummary(summary).forEach((l) => out.line(l));
  if (summary.errors > 0 || summary.device.errors > 0) throw new CliError(`demo: ${summary.errors} of ${summary.jobs} jobs failed verification`);
}
