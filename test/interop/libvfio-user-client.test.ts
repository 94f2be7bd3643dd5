/**
 * Optional interoperability test: libvfio-user's `samples/client` (the C
 * reference client) against a device of ours shaped like its `samples/server`.
 * Skipped unless LIBVFIO_USER_BUILD names a libvfio-user build directory
 * (docs/interop.md says how to make one, outside this repository).
 *
 * Our server has no DEVICE_FEATURE support yet (no migration, no DMA dirty
 * logging), so the client cannot finish. Three runs:
 *
 * 1. direct: the client connects to our server's socket; it succeeds up to
 *    and including SET_IRQS and stops at DEVICE_FEATURE DMA_LOGGING_START
 *    (our EINVAL), exit status 1;
 * 2. through a transparent recording tap, to assert every message of that
 *    exchange and what our server answered;
 * 3. through the tap with two test-only stand-ins for what our server lacks:
 *    the DMA_LOGGING_* features answered from our device's own DMA controller
 *    (`device.dma.startLogging/report/stopLogging`), and the fd of the DMA_MAP
 *    at IOVA 0 withheld, so that our server reaches that page with
 *    DMA_WRITE/DMA_READ messages as the sample server does with
 *    `vfu_sgl_write/read`. The client then gets through BAR0, the INTx, the
 *    server's DMA (direct and by messages), dirty bitmaps and DMA_UNMAP, and
 *    stops at the first migration request, SET MIG_DEVICE_STATE (our EINVAL).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  Command,
  DeviceFeature,
  DeviceFeatureFlags,
  HeaderFlags,
  MigrationState,
  RegionInfoFlags,
  decodeDeviceFeature,
  decodeDmaLoggingControl,
  decodeDmaLoggingReportReply,
  decodeDmaMapRequest,
  decodeDmaReadRequest,
  decodeDmaWriteRequest,
  decodeMigDeviceState,
  decodeRegionInfo,
  decodeRegionReadRequest,
  decodeRegionWriteRequest,
  decodeVersion,
  featureIndex,
} from '../../src/index.js';
import type { DeviceServer } from '../../src/index.js';
import { libvfioUserBuild, runSample, type SampleResult } from './libvfio-user.js';
import { serverSampleDevice, type SampleDevice } from './server-sample-device.js';
import { Tap, type TapRecord } from './tap.js';
import { assertNoFdLeak } from '../support/fd-count.js';

const build = libvfioUserBuild();
const CLIENT_TIMEOUT_MS = 30_000;
/** Our server's `max_msg_fds` (the largest allowed; the default is 16); the client maps twice as many one-page DMA regions. */
const OUR_MAX_MSG_FDS = 253;
const EINVAL = 22;

/** What the client prints about the device, identical to its output against libvfio-user's own server sample (BAR1 16 KiB). */
const DEVICE_LINES = [
  'client: devinfo: flags 0x3, num_regions 9, num_irqs 5',
  'client: get_device_region_info: region_info[0] offset 0 flags 0x3 size 8 cap_sz 0 #FDs 0',
  'client: get_device_region_info: region_info[1] offset 0 flags 0xf size 16384 cap_sz 48 #FDs 1',
  'client: get_region_vfio_caps: Sparse cap nr_mmap_areas 2',
  'client: get_region_vfio_caps: area 0 offset 0 size 4096',
  'client: get_region_vfio_caps: area 1 offset 0x2000 size 4096',
  ...[2, 3, 4, 5, 6].map((i) => `client: get_device_region_info: region_info[${i}] offset 0 flags 0 size 0 cap_sz 0 #FDs 0`),
  'client: get_device_region_info: region_info[7] offset 0 flags 0x3 size 256 cap_sz 0 #FDs 0',
  'client: get_device_region_info: region_info[8] offset 0 flags 0 size 0 cap_sz 0 #FDs 0',
  'client: IRQ INTx: count=1 flags=0x1',
  'client: IRQ ERR: count=1 flags=0x1',
  'client: IRQ REQ: count=1 flags=0x1',
];
/** The client's deliberate access to region 0xdeadbeef, expected to fail EINVAL (a warning, not an error). */
const BOGUS_REGION_WARNING = 'client: failed to read from region -559038737 0-0x3: Invalid argument';

interface Harness {
  sample: SampleDevice;
  server: DeviceServer;
  serverPath: string;
  dir: string;
}

function lines(text: string): string[] {
  return text.split('\n').filter((l) => l.length > 0);
}

function describeResult(r: SampleResult): string {
  return `exit ${r.code} signal ${r.signal}${r.timedOut ? ' (timed out)' : ''}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`;
}

/** One c2s command and what answered it (our server, or the tap). */
interface Exchange {
  request: TapRecord;
  reply: TapRecord | undefined;
}

/** Pairs each client command with its reply (the client sends one request at a time). */
function exchanges(records: readonly TapRecord[]): Exchange[] {
  const out: Exchange[] = [];
  const isCommand = (r: TapRecord): boolean => (r.header.flags & HeaderFlags.TYPE_MASK) === HeaderFlags.TYPE_COMMAND;
  records.forEach((r, i) => {
    if (r.dir !== 'c2s' || !isCommand(r)) return;
    const reply = records.slice(i + 1).find((x) => x.dir !== 'c2s' && !isCommand(x) && x.header.msgId === r.header.msgId && x.header.cmd === r.header.cmd);
    out.push({ request: r, reply });
  });
  return out;
}

/** Forgets what earlier tests made the device record. */
function clearLog(log: SampleDevice['log']): void {
  for (const list of [log.resets, log.bar0Writes, log.bar0Reads, log.timers, log.interrupts, log.dma, log.errors] as unknown[][]) list.length = 0;
}

function errnoOf(x: Exchange): number {
  assert.ok(x.reply, `no reply to command ${x.request.header.cmd} (msg ${x.request.header.msgId})`);
  return (x.reply.header.flags & HeaderFlags.ERROR) !== 0 ? x.reply.header.errorNo : 0;
}

describe('libvfio-user samples/client against our device (shaped like samples/server)', { skip: build.skip }, () => {
  const client = join(build.dir ?? '', 'samples', 'client');
  let h: Harness;

  before(async () => {
    // The first child process makes libuv open fds it keeps (SIGCHLD handling): not a leak of ours.
    await runSample(client, ['-h'], CLIENT_TIMEOUT_MS);
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-interop-'));
    const sample = serverSampleDevice();
    const serverPath = join(dir, 'device.sock');
    h = { sample, server: sample.device.serve({ path: serverPath, limits: { maxMsgFds: OUR_MAX_MSG_FDS } }), serverPath, dir };
  });

  after(async () => {
    await h.server.close();
    h.sample.device.dispose();
    rmSync(h.dir, { recursive: true, force: true });
  });

  /**
   * Runs the client against `path`, waits until our server has cleaned the session up, and checks
   * that it kept no fd of it (the 506 DMA fds, the INTx eventfd).
   */
  async function runClient(path: string): Promise<SampleResult> {
    const sessionsBefore = h.server.sessionCount;
    let result!: SampleResult;
    await assertNoFdLeak(async () => {
      result = await runSample(client, [path], CLIENT_TIMEOUT_MS);
      assert.equal(result.timedOut, false, `the client hung:\n${describeResult(result)}`);
      await h.server.idle();
    });
    assert.equal(h.server.sessionCount, sessionsBefore + 1, 'the client was served in exactly one session');
    return result;
  }

  it('direct: the client gets through DMA, interrupts, dirty logging and message DMA, and stops at migration', async () => {
    const log = h.sample.log;
    clearLog(log);
    const r = await runClient(h.serverPath);
    const why = describeResult(r);
    assert.equal(r.code, 1, why);
    const out = lines(r.stdout);
    assert.deepEqual(out.slice(0, DEVICE_LINES.length), DEVICE_LINES, why);
    assert.equal(out[DEVICE_LINES.length + 2], 'client: INTx triggered!', why);
    assert.equal(out.filter((l) => l.startsWith('client: get_dirty_bitmap: ')).length, 2 * OUR_MAX_MSG_FDS, why);
    const err = lines(r.stderr);
    assert.equal(err[0], BOGUS_REGION_WARNING, why);
    // Our server has no migration yet: SET MIG_DEVICE_STATE is refused (EINVAL, request echoed, as libvfio-user
    // does). The sample's reply reader leaves that echoed payload in the socket, so its fake-guest thread may
    // then read it as a header and fail with EPROTO instead: either way the client stops at migration.
    assert.ok(
      err.includes('client: failed to set state: -1: Invalid argument') || err.at(-1) === 'client: fake guest failed to write garbage to BAR1: Protocol error',
      why,
    );
    await h.sample.timerWorkDone;
    assert.deepEqual(log.dma, [
      { addr: 0x1000n, mode: 'mmap', matches: true },
      { addr: 0n, mode: 'mmap', matches: true },
    ]);
    assert.deepEqual(log.resets, ['client', 'lost-connection']);
  });

  it('recorded: the exact exchange up to the stop, and our device state at that point', async () => {
    const log = h.sample.log;
    clearLog(log);
    let atStop: { regions: number; modes: Set<string>; intxEventFd: boolean; resets: string[] } | undefined;
    const tap = Tap.open({
      upstream: h.serverPath,
      path: join(h.dir, 'tap-plain.sock'),
      onClientCommand(m) {
        if (m.header.cmd === Command.DEVICE_FEATURE && !atStop) {
          const dma = h.sample.device.dma;
          atStop = { regions: dma.regions().length, modes: new Set(dma.regions().map((x) => x.mode)), intxEventFd: h.sample.device.irqs.hasEventFd(0, 0), resets: [...log.resets] };
        }
        return { forward: true };
      },
    });
    try {
      const r = await runClient(join(h.dir, 'tap-plain.sock'));
      assert.equal(r.code, 1, describeResult(r));
      assert.deepEqual(tap.errors, []);
      const xs = exchanges(tap.records);
      const cmds = xs.map((x) => x.request.header.cmd);

      // VERSION: the client offers max_msg_fds 32 and max_data_xfer_size 1024; we answer 0.2 with ours.
      const [version] = xs;
      assert.equal(version?.request.header.cmd, Command.VERSION);
      assert.equal(errnoOf(version), 0);
      const offered = decodeVersion(version.request.payload);
      assert.deepEqual([offered.major, offered.minor, offered.capabilities?.maxMsgFds, offered.capabilities?.maxDataXferSize], [0, 2, 32, 1024]);
      const answered = decodeVersion(version.reply!.payload);
      assert.deepEqual([answered.major, answered.minor, answered.capabilities?.maxMsgFds], [0, 2, OUR_MAX_MSG_FDS]);
      assert.equal(answered.capabilities?.twinSocket, undefined, 'no twin socket unless asked (the sample client would crash on one)');

      // The order of commands up to dirty logging, and every one succeeded but the deliberate bogus read.
      const dmaMaps = 2 * OUR_MAX_MSG_FDS;
      const untilLogging = cmds.indexOf(Command.DEVICE_FEATURE) + 1;
      assert.deepEqual(cmds.slice(0, untilLogging), [
        Command.VERSION,
        Command.REGION_READ,
        Command.DEVICE_GET_INFO,
        ...[0, 1, 1, 2, 3, 4, 5, 6, 7, 8].map(() => Command.DEVICE_GET_REGION_INFO),
        Command.REGION_READ,
        Command.DEVICE_RESET,
        ...Array.from({ length: dmaMaps }, () => Command.DMA_MAP),
        ...Array.from({ length: 5 }, () => Command.DEVICE_GET_IRQ_INFO),
        Command.DEVICE_SET_IRQS,
        Command.DEVICE_FEATURE,
      ]);
      const failures = xs.slice(0, untilLogging).map((x, i) => [i, x.request.header.cmd, errnoOf(x)]).filter(([, , e]) => e !== 0);
      assert.deepEqual(failures, [[1, Command.REGION_READ, EINVAL]]);
      assert.deepEqual({ ...decodeRegionReadRequest(xs[1]!.request.payload) }, { offset: 0n, region: 0xdeadbeef, count: 4 });

      // Config space, first 64 bytes: ids, BAR0 an I/O BAR, INTA#. libvfio-user's own server sample answers
      // the same bytes except 0x14-0x27: it marks every BAR slot registered without VFU_REGION_FLAG_MEM,
      // unused ones included, as I/O space (0x1); our BAR1 is memory and our unused BARs read 0.
      const config = xs[13]!;
      assert.deepEqual({ ...decodeRegionReadRequest(config.request.payload) }, { offset: 0n, region: 7, count: 64 });
      assert.equal(
        Buffer.from(config.reply!.payload.subarray(16)).toString('hex'),
        'addeefbe' + '00'.repeat(12) + '01000000' + '00'.repeat(24) + 'fecabeba' + '00'.repeat(12) + '00010000',
      );

      // BAR1 region info: the argsz retry, as libvfio-user answers it (32 bytes, argsz 80, no CAPS, no fd; then caps + 1 fd).
      const bar1 = xs.filter((x) => x.request.header.cmd === Command.DEVICE_GET_REGION_INFO).slice(1, 3);
      const first = decodeRegionInfo(bar1[0]!.reply!.payload);
      assert.equal(bar1[0]!.reply!.payload.length, 32);
      assert.deepEqual([first.argsz, first.flags, first.capOffset, bar1[0]!.reply!.fds], [80, RegionInfoFlags.READ | RegionInfoFlags.WRITE | RegionInfoFlags.MMAP, 0, 0]);
      const retry = decodeRegionInfo(bar1[1]!.reply!.payload);
      assert.deepEqual([retry.argsz, retry.flags, retry.capOffset, retry.size, bar1[1]!.reply!.fds], [80, 0xf, 32, 0x4000n, 1]);
      assert.deepEqual(retry.caps, [{ kind: 'sparse-mmap', version: 1, areas: [{ offset: 0n, size: 0x1000n }, { offset: 0x2000n, size: 0x1000n }] }]);

      // DMA_MAP: one page each of one file, with its fd; SET_IRQS: INTx eventfd.
      const maps = xs.filter((x) => x.request.header.cmd === Command.DMA_MAP);
      maps.forEach((x, i) => {
        const body = decodeDmaMapRequest(x.request.payload);
        assert.deepEqual([body.addr, body.size, body.offset, body.flags, x.request.fds], [BigInt(i * 4096), 4096n, BigInt(i * 4096), 3, 1]);
      });
      assert.equal(xs.find((x) => x.request.header.cmd === Command.DEVICE_SET_IRQS)?.request.fds, 1);

      // DEVICE_FEATURE SET DMA_LOGGING_START (page size 4096, no ranges = everything): accepted, echoed with our page size.
      const start = xs[untilLogging - 1]!;
      const feature = decodeDeviceFeature(start.request.payload);
      assert.equal(feature.flags, DeviceFeatureFlags.SET | DeviceFeature.DMA_LOGGING_START);
      assert.deepEqual(decodeDmaLoggingControl(feature.data), { pageSize: 4096n, ranges: [] });
      assert.equal(errnoOf(start), 0);
      assert.deepEqual(decodeDmaLoggingControl(decodeDeviceFeature(start.reply!.payload).data), { pageSize: 4096n, ranges: [] });

      // Our device when logging started: 506 mmap DMA regions, the INTx eventfd installed, reset once by the client.
      assert.deepEqual(atStop, { regions: dmaMaps, modes: new Set(['mmap']), intxEventFd: true, resets: ['client'] });
      assert.deepEqual(log.resets, ['client', 'lost-connection']);
    } finally {
      tap.close();
    }
  });

  it('tapped: the whole exchange up to migration, byte for byte where it matters', async () => {
    const { device, log } = h.sample;
    clearLog(log);
    const tapPath = join(h.dir, 'tap-bridged.sock');
    const tap = Tap.open({ upstream: h.serverPath, path: tapPath, onClientCommand: () => ({ forward: true }) });
    try {
      const r = await runClient(tapPath);
      const why = describeResult(r);
      assert.equal(r.code, 1, why);
      assert.deepEqual(tap.errors, []);
      await h.sample.timerWorkDone;
      assert.deepEqual(log.errors, []);

      const out = lines(r.stdout);
      assert.deepEqual(out.slice(0, DEVICE_LINES.length), DEVICE_LINES, why);
      const rest = out.slice(DEVICE_LINES.length);
      assert.match(rest[0] ?? '', /^client: wrote to BAR0: \d+$/, why);
      assert.match(rest[1] ?? '', /^client: read from BAR0: -?[01]$/, why);
      assert.equal(rest[2], 'client: INTx triggered!', why);
      const bitmaps = rest.slice(3);
      assert.equal(bitmaps.length, 2 * OUR_MAX_MSG_FDS, why);
      bitmaps.forEach((line, i) => {
        const start = i === 0 ? '0' : `0x${(i * 4096).toString(16)}`;
        assert.equal(line, `client: get_dirty_bitmap: ${start}-0x${(i * 4096 + 4095).toString(16)}\t${i < 2 ? '0x1' : '0'}`);
      });
      const err = lines(r.stderr);
      assert.equal(err[0], BOGUS_REGION_WARNING, why);
      assert.ok(err.includes('client: failed to set state: -1: Invalid argument') || err.at(-1) === 'client: fake guest failed to write garbage to BAR1: Protocol error', why);

      // The device: BAR0 written (+1 s, then +10 s for the migration test), read once; INTx delivered;
      // DMA into region 1 directly and into region 0 by messages, read back equal.
      assert.equal(log.bar0Writes.length, 2);
      assert.deepEqual(log.timers.slice(0, 1), [1]);
      assert.equal(log.bar0Reads.length, 1);
      assert.deepEqual(log.interrupts, [true]);
      assert.deepEqual(log.dma, [
        { addr: 0x1000n, mode: 'mmap', matches: true },
        { addr: 0n, mode: 'mmap', matches: true },
      ]);
      assert.deepEqual(log.resets, ['client', 'lost-connection']);

      // Our server's DMA messages: 4 DMA_WRITE of 1 KiB ('A'..'D'), then 4 DMA_READ of 1 KiB (2 × 2 KiB
      // chunked to the client's max_data_xfer_size), message ids 1-8, each answered by the client: the
      // same messages, byte for byte, as libvfio-user's server sample sends.
      const serverCmds = tap.records.filter((x) => x.dir === 's2c' && (x.header.flags & HeaderFlags.TYPE_MASK) === HeaderFlags.TYPE_COMMAND);
      assert.deepEqual(
        serverCmds.map((x) => {
          const body = x.header.cmd === Command.DMA_WRITE ? decodeDmaWriteRequest(x.payload) : decodeDmaReadRequest(x.payload);
          return [x.header.msgId, x.header.cmd, body.addr, body.count];
        }),
        [
          ...[0, 1, 2, 3].map((i) => [i + 1, Command.DMA_WRITE, BigInt(i * 1024), 1024n]),
          ...[0, 1, 2, 3].map((i) => [i + 5, Command.DMA_READ, BigInt(i * 1024), 1024n]),
        ],
      );
      serverCmds.slice(0, 4).forEach((x, i) => assert.ok(decodeDmaWriteRequest(x.payload).data.every((b) => b === 0x41 + i)));
      const clientReplies = tap.records.filter((x) => x.dir === 'c2s' && (x.header.flags & HeaderFlags.TYPE_MASK) === HeaderFlags.TYPE_REPLY);
      assert.deepEqual(clientReplies.map((x) => [x.header.cmd, x.header.flags, x.payload.length]), [
        ...[0, 1, 2, 3].map(() => [Command.DMA_WRITE, HeaderFlags.TYPE_REPLY, 16]),
        ...[0, 1, 2, 3].map(() => [Command.DMA_READ, HeaderFlags.TYPE_REPLY, 16 + 1024]),
      ]);

      // The dirty bitmaps: page 0x1000 dirty in our DMA controller's own log (the direct writes); page 0
      // clean (written by DMA_WRITE messages, which the client performed and marked itself).
      const reports = tap.records.filter(
        (x) => x.dir === 's2c' && x.header.cmd === Command.DEVICE_FEATURE && featureIndex(decodeDeviceFeature(x.payload).flags) === DeviceFeature.DMA_LOGGING_REPORT,
      );
      assert.equal(reports.length, 2 * OUR_MAX_MSG_FDS);
      const dirty = reports.map((x) => decodeDmaLoggingReportReply(decodeDeviceFeature(x.payload).data)).filter((x) => x.bitmap.some((b) => b !== 0));
      assert.deepEqual(dirty.map((x) => [x.iova, [...x.bitmap]]), [[0x1000n, [1, 0, 0, 0, 0, 0, 0, 0]]]);

      // After the DMA: 253 DMA_UNMAPs (echoed), the BAR0 write, then the migration request and the fake guest's 12 KiB BAR1 writes.
      const xs = exchanges(tap.records);
      const unmaps = xs.filter((x) => x.request.header.cmd === Command.DMA_UNMAP);
      assert.equal(unmaps.length, OUR_MAX_MSG_FDS);
      for (const x of unmaps) {
        assert.equal(errnoOf(x), 0);
        assert.deepEqual(x.reply!.payload, x.request.payload);
      }
      // The fake guest thread writes BAR1 while the main thread asks for PRE_COPY; the client exits on
      // the refusal, so its last write may go unanswered.
      const isBar1Write = (x: Exchange): boolean => x.request.header.cmd === Command.REGION_WRITE && decodeRegionWriteRequest(x.request.payload).region === 1;
      for (const x of xs.filter(isBar1Write)) {
        assert.equal(decodeRegionWriteRequest(x.request.payload).count, 0x3000);
        if (x.reply) assert.equal(errnoOf(x), 0);
      }
      const stopAt = xs.findIndex((x) => x.request.header.cmd === Command.DEVICE_FEATURE && decodeDeviceFeature(x.request.payload).flags === (DeviceFeatureFlags.SET | DeviceFeature.MIG_DEVICE_STATE));
      assert.ok(stopAt > 0, 'the client asked for a migration state');
      const stop = xs[stopAt]!;
      assert.equal(decodeMigDeviceState(decodeDeviceFeature(stop.request.payload).data).deviceState, MigrationState.PRE_COPY);
      assert.equal(errnoOf(stop), EINVAL);
      assert.deepEqual(xs.slice(stopAt + 1).filter((x) => !isBar1Write(x)), [], 'nothing but the fake guest\'s BAR1 writes after the stop');
      assert.deepEqual(xs.filter((x) => x.reply === undefined && !isBar1Write(x)), [], 'every other command was answered');
      const failed = xs.filter((x) => x.reply && errnoOf(x) !== 0).map((x) => x.request.header.cmd);
      assert.deepEqual(failed, [Command.REGION_READ, Command.DEVICE_FEATURE], 'only the bogus read and the migration request failed');
      assert.equal(device.connected, false);
    } finally {
      tap.close();
    }
  });
});
