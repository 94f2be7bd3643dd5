/**
 * Migration data sessions through the real server (migration.md §5.1): which
 * arcs open, keep and close the saving and resuming streams, PRE_COPY's "no
 * data right now" against STOP_COPY's end of stream, a destination fed the
 * stream in any chunking up to max_data_xfer_size, and command gating by
 * state (libvfio-user's rules, src/migration/gating.ts) as a client sees it.
 */
import { drain } from '../support/migration-io.js';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import type { ClientOptions } from '../../src/client/core.js';
import { RemoteError } from '../../src/errors.js';
import { COMMAND_GATES, MIG_DATA_READ_STATES, MIG_DATA_WRITE_STATES, isCommandAllowed } from '../../src/migration/gating.js';
import { StreamReader } from '../../src/migration/stream-reader.js';
import type { StreamRecordKind } from '../../src/migration/stream-format.js';
import { Command, DmaMapFlags, IrqIndex, IrqSetFlags, MigrationState as M, RegionIndex } from '../../src/protocol/constants.js';
import { registerFileBar } from '../support/register-file.js';
import { serveTestDevice, testDeviceDefinition, type ServedDevice } from '../support/server-fixture.js';

const { ERROR, STOP: S, RUNNING: R, STOP_COPY: SC, RESUMING: RS, RUNNING_P2P: RP, PRE_COPY: PC, PRE_COPY_P2P: PCP } = M;
const EINVAL = 22;
const MiB = 1 << 20;
const MAGIC = Buffer.from('VFUMIGST');
const DEVICE_TYPE = 'data-probe';
const IDENTITY = { deviceType: DEVICE_TYPE, pciVendor: 0x1af4, pciDevice: 0x10f0, stateVersion: 1 };

interface DeviceOptions {
  /** BAR0 bytes (a power of two): the register file, pre-copied page by page. */
  bar0?: number;
  /** Extra state bytes, to make the stream large. */
  bulk?: number;
  p2p?: boolean;
}

interface Served {
  served: ServedDevice;
  client: VfioUserClient;
  /** The state `save` returns: BAR0's registers followed by the bulk bytes. */
  state: () => Uint8Array;
}

/** A migratable device: pre-copy sends the initial state, then the BAR0 pages written since. */
function dataDevice(options: DeviceOptions): { def: ReturnType<typeof testDeviceDefinition>; state: () => Uint8Array } {
  const regs = new Uint8Array(options.bar0 ?? 0x4000);
  let bulk = new Uint8Array(options.bulk ?? 0).map((_, i) => (i * 7 + 3) & 0xff);
  const dirty = new Set<number>();
  const state = (): Uint8Array => Buffer.concat([regs, bulk]);
  const def = testDeviceDefinition({
    regions: {
      bar0: registerFileBar(regs, dirty),
      bar4: { size: 0x2000 },
    },
    migration: {
      preCopy: true,
      p2p: options.p2p ?? false,
      deviceType: DEVICE_TYPE,
      stateVersion: 1,
      save: () => (dirty.clear(), state()),
      saveDelta: () => {
        if (dirty.size === 0) return undefined;
        const pages = [...dirty];
        dirty.clear();
        return Buffer.concat(pages.flatMap((p) => [Uint8Array.of(p), regs.subarray(p * 4096, p * 4096 + 4096)]));
      },
      load: (kind, payload) => {
        if (kind === 'full') {
          if (payload.length !== regs.length + bulk.length) throw new Error('wrong state size');
          regs.set(payload.subarray(0, regs.length));
          bulk = payload.slice(regs.length);
          return;
        }
        for (let at = 0; at < payload.length; at += 4097) regs.set(payload.subarray(at + 1, at + 4097), payload[at]! * 4096);
      },
    },
  });
  return { def, state };
}

async function withDevices(list: DeviceOptions[], fn: (...devices: Served[]) => Promise<void>, client: ClientOptions = {}): Promise<void> {
  const made: Served[] = [];
  try {
    for (const options of list) {
      const { def, state } = dataDevice(options);
      const served = serveTestDevice(def);
      made.push({ served, client: await VfioUserClient.connect(served.path, client), state });
    }
    await fn(...made);
  } finally {
    for (const d of made) {
      d.client.close();
      await d.served.close();
    }
  }
}

/** Offsets of the stream magic in `bytes`. */
function magicAt(bytes: Uint8Array): number[] {
  const out: number[] = [];
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  for (let at = b.indexOf(MAGIC); at >= 0; at = b.indexOf(MAGIC, at + 1)) out.push(at);
  return out;
}

/** The records of a complete stream, parsed by the library's reader (which also checks the CRC chain). */
function kinds(stream: Uint8Array): StreamRecordKind[] {
  const reader = new StreamReader({ expected: IDENTITY });
  const records = reader.push(stream).map((r) => r.kind);
  reader.finish();
  assert.ok(reader.complete);
  return records;
}

/** Writes `stream` in chunks of `size` bytes (cycled when an array). */
async function feed(client: VfioUserClient, stream: Uint8Array, sizes: number | readonly number[]): Promise<number> {
  const list = typeof sizes === 'number' ? [sizes] : sizes;
  let writes = 0;
  for (let at = 0; at < stream.length; writes++) {
    const n = list[writes % list.length]!;
    await client.migDataWrite(stream.subarray(at, at + n));
    at += n;
  }
  return writes;
}

const isRemote = (errno: number) => (e: unknown): boolean => e instanceof RemoteError && e.errno === errno;

describe('saving streams', () => {
  it('STOP → STOP_COPY opens one; it ends with an empty read (EOF, and stays ended); STOP_COPY → STOP closes it', () =>
    withDevices([{}], async ({ client }) => {
      await client.setMigrationState(S);
      await assert.rejects(client.migDataRead(16), isRemote(EINVAL), 'no stream in STOP');
      await client.setMigrationState(SC);
      const head = await client.migDataRead(8);
      assert.deepEqual(Buffer.from(head), MAGIC, 'a new stream starts with its header');
      const stream = Buffer.concat([head, await drain(client, 1000)]);
      assert.deepEqual(magicAt(stream), [0]);
      assert.deepEqual(kinds(stream), ['config', 'full']);
      for (let i = 0; i < 3; i++) assert.equal((await client.migDataRead(4096)).length, 0, 'EOF stays EOF');
      assert.equal(await client.migrationState(), SC);
      await client.setMigrationState(S);
      await assert.rejects(client.migDataRead(16), isRemote(EINVAL), 'closed');
      await client.setMigrationState(SC);
      assert.deepEqual(await drain(client), stream, 'a second STOP → STOP_COPY opens a fresh stream (same state, same bytes)');
    }));

  it('PRE_COPY: "no data right now" is an empty read that leaves the stream open; the stream goes on into STOP_COPY (one header)', () =>
    withDevices([{}, {}], async (src, dst) => {
      await src.client.setMigrationState(PC);
      const initial = await drain(src.client, 777);
      assert.deepEqual(magicAt(initial), [0]);
      for (let i = 0; i < 2; i++) assert.equal((await src.client.migDataRead(4096)).length, 0, 'nothing right now');
      assert.equal(await src.client.migrationState(), PC, 'still pre-copying');
      await src.client.regionWrite(RegionIndex.BAR0, 0x1000n, Uint8Array.of(1, 2, 3));
      const delta = await drain(src.client);
      assert.ok(delta.length > 4096, 'the device changed: more data');
      assert.equal((await src.client.migDataRead(4096)).length, 0);
      await src.client.regionWrite(RegionIndex.BAR0, 0x2000n, Uint8Array.of(9)); // left for the final state
      await src.client.setMigrationState(SC);
      const final = await drain(src.client);
      assert.equal((await src.client.migDataRead(4096)).length, 0, 'EOF');
      const stream = Buffer.concat([initial, delta, final]);
      assert.deepEqual(magicAt(stream), [0], 'PRE_COPY → STOP_COPY keeps the stream: one header');
      assert.deepEqual(kinds(stream), ['full', 'delta', 'config', 'full']);
      await dst.client.setMigrationState(RS);
      await feed(dst.client, stream, 65536);
      await dst.client.setMigrationState(S);
      assert.deepEqual(dst.state(), src.state());
    }));

  it('PRE_COPY ↔ PRE_COPY_P2P and PRE_COPY_P2P → STOP_COPY keep the stream', () =>
    withDevices([{ p2p: true }], async ({ client }) => {
      await client.setMigrationState(PC);
      const parts = [await client.migDataRead(50)];
      await client.setMigrationState(PCP);
      parts.push(await client.migDataRead(50));
      assert.equal(magicAt(parts[1]!).length, 0, 'a continuation, not a new header');
      await client.setMigrationState(PC);
      parts.push(await drain(client));
      await client.regionWrite(RegionIndex.BAR0, 0n, Uint8Array.of(5));
      await client.setMigrationState(PCP);
      parts.push(await drain(client));
      await client.setMigrationState(SC); // PRE_COPY_P2P → STOP_COPY: direct
      parts.push(await drain(client));
      const stream = Buffer.concat(parts);
      assert.deepEqual(magicAt(stream), [0]);
      assert.deepEqual(kinds(stream), ['full', 'delta', 'config', 'full']);
    }));

  it('PRE_COPY → RUNNING and PRE_COPY_P2P → RUNNING_P2P close the stream; the next PRE_COPY opens a new one', () =>
    withDevices([{ p2p: true }], async ({ client }) => {
      for (const [running, preCopy] of [[R, PC], [RP, PCP]] as const) {
        await client.setMigrationState(running);
        await client.setMigrationState(preCopy);
        assert.deepEqual(Buffer.from(await client.migDataRead(8)), MAGIC);
        await client.migDataRead(100); // part of the initial state, never read to the end
        await client.setMigrationState(running);
        await assert.rejects(client.migDataRead(16), isRemote(EINVAL), 'closed');
        await client.setMigrationState(preCopy);
        const fresh = await drain(client);
        assert.deepEqual(magicAt(fresh), [0], 'a new stream, from its header');
        assert.deepEqual(kinds(Buffer.concat([fresh, await finishFrom(client)])), ['full', 'config', 'full']);
        await client.setMigrationState(R);
      }
    }));
});

/** STOP_COPY from a pre-copy state, read to EOF. */
async function finishFrom(client: VfioUserClient): Promise<Uint8Array> {
  await client.setMigrationState(SC);
  return drain(client);
}

describe('resuming streams', () => {
  it('STOP → RESUMING opens one; RESUMING → STOP closes and checks it (incomplete → ERROR, then DEVICE_RESET → RUNNING)', () =>
    withDevices([{}, {}], async (src, dst) => {
      await src.client.regionWrite(RegionIndex.BAR0, 0x10n, Uint8Array.of(0xaa, 0xbb));
      await src.client.setMigrationState(SC);
      const stream = await drain(src.client);
      await assert.rejects(dst.client.migDataWrite(stream), isRemote(EINVAL), 'no resuming stream in RUNNING');
      await dst.client.setMigrationState(S);
      await assert.rejects(dst.client.migDataWrite(stream), isRemote(EINVAL), 'nor in STOP');
      await dst.client.setMigrationState(RS);
      await dst.client.migDataWrite(stream);
      await dst.client.setMigrationState(S);
      assert.equal(await dst.client.migrationState(), S);
      assert.deepEqual(dst.state(), src.state());
      await dst.client.setMigrationState(RS);
      await dst.client.migDataWrite(stream); // a second RESUMING: a new stream, the same bytes accepted again
      await dst.client.setMigrationState(R);

      for (const cut of [0, 10, stream.length >> 1, stream.length - 1]) {
        await dst.client.setMigrationState(RS);
        if (cut > 0) await dst.client.migDataWrite(stream.subarray(0, cut));
        await assert.rejects(dst.client.setMigrationState(S), isRemote(EINVAL), `${cut} of ${stream.length} bytes`);
        assert.equal(await dst.client.migrationState(), ERROR);
        await assert.rejects(dst.client.migDataWrite(stream.subarray(cut)), isRemote(EINVAL), 'no stream in ERROR');
        await dst.client.reset();
        assert.equal(await dst.client.migrationState(), R);
      }
    }));

  it('the destination takes the stream re-chunked at 1 byte, at 7, at 4093, and in odd mixed sizes', () =>
    withDevices([{ bar0: 0x1000 }, { bar0: 0x1000 }, { bar0: 0x8000, bulk: 50_000 }, { bar0: 0x8000, bulk: 50_000 }], async (small, smallDst, big, bigDst) => {
      await small.client.regionWrite(RegionIndex.BAR0, 0x20n, Uint8Array.of(1, 2, 3, 4));
      await small.client.setMigrationState(SC);
      const tiny = await drain(small.client, 7);
      await smallDst.client.setMigrationState(RS);
      assert.equal(await feed(smallDst.client, tiny, 1), tiny.length);
      await smallDst.client.setMigrationState(S);
      assert.deepEqual(smallDst.state(), small.state());

      await big.client.regionWrite(RegionIndex.BAR0, 0x7ff0n, new Uint8Array(16).fill(0xee));
      await big.client.setMigrationState(SC);
      const stream = await drain(big.client, 4093);
      for (const sizes of [7, 4093, [1, 4093, 7, 65537, 3]]) {
        await bigDst.client.setMigrationState(RS);
        await feed(bigDst.client, stream, sizes);
        await bigDst.client.setMigrationState(S);
        assert.deepEqual(bigDst.state(), big.state(), `chunks of ${String(sizes)}`);
        await bigDst.client.setMigrationState(R);
      }
    }));

  it('one write of max_data_xfer_size (1 MiB) is taken; a larger one is refused with EINVAL and consumes nothing', () =>
    withDevices([{ bulk: 1.5 * MiB }, { bulk: 1.5 * MiB }], async (src, dst) => {
      await src.client.setMigrationState(SC);
      await assert.rejects(src.client.migDataRead(MiB + 1), isRemote(EINVAL), 'a read beyond max_data_xfer_size');
      const first = await src.client.migDataRead(MiB);
      assert.equal(first.length, MiB);
      const stream = Buffer.concat([first, await drain(src.client, MiB)]);
      assert.ok(stream.length > MiB + 1);
      await dst.client.setMigrationState(RS);
      await assert.rejects(dst.client.migDataWrite(stream.subarray(0, MiB + 1)), isRemote(EINVAL), 'MIG_DATA_WRITE of 1 MiB + 1');
      assert.equal(await dst.client.migrationState(), RS, 'still resuming: the refused write was not fed to the stream');
      await dst.client.migDataWrite(stream.subarray(0, MiB));
      await dst.client.migDataWrite(stream.subarray(MiB));
      await dst.client.setMigrationState(S);
      assert.deepEqual(dst.state(), src.state());
    }));

  it("the client's own max_data_xfer_size bounds reads and writes (advertised 4096)", () =>
    withDevices(
      [{}, {}],
      async (src, dst) => {
        await src.client.setMigrationState(SC);
        await assert.rejects(src.client.migDataRead(4097), isRemote(EINVAL));
        const stream = await drain(src.client, 4096);
        await dst.client.setMigrationState(RS);
        await assert.rejects(dst.client.migDataWrite(stream.subarray(0, 4097)), isRemote(EINVAL));
        await feed(dst.client, stream, 4096);
        await dst.client.setMigrationState(S);
        assert.deepEqual(dst.state(), src.state());
      },
      { capabilities: { maxDataXferSize: 4096 } },
    ));
});

describe('command gating by state, through the server', () => {
  const MAPPED = 0x1000_0000n;
  const SPARE = 0x2000_0000n;
  const RW = DmaMapFlags.READ | DmaMapFlags.WRITE;
  type Probe = readonly [number, (c: VfioUserClient) => Promise<unknown>];
  const probes: Probe[] = [
    [Command.REGION_READ, (c) => c.regionRead(RegionIndex.BAR0, 0n, 4)],
    [Command.REGION_WRITE, (c) => c.regionWrite(RegionIndex.BAR0, 0x800n, Uint8Array.of(1, 2, 3, 4))],
    [Command.DEVICE_FEATURE, (c) => c.migrationState()],
    [Command.DEVICE_GET_INFO, (c) => c.deviceInfo()],
    [Command.DEVICE_GET_REGION_INFO, (c) => c.regionInfo(RegionIndex.BAR0)],
    [Command.DEVICE_GET_IRQ_INFO, (c) => c.irqInfo(IrqIndex.MSIX)],
    [Command.DEVICE_SET_IRQS, (c) => c.setIrqs({ flags: IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, index: IrqIndex.MSIX, start: 0, count: 0 })],
    [Command.DMA_MAP, async (c) => (await c.dmaMap({ addr: SPARE, size: 0x1000n, flags: RW }), await c.dmaUnmap(SPARE, 0x1000n))],
    [Command.DMA_UNMAP, async (c) => (await c.dmaUnmap(MAPPED, 0x1000n), await c.dmaMap({ addr: MAPPED, size: 0x1000n, flags: RW }))],
    [Command.MIG_DATA_READ, (c) => c.migDataRead(16)],
    [Command.MIG_DATA_WRITE, (c) => c.migDataWrite(new Uint8Array(0))],
    [Command.DEVICE_RESET, (c) => c.reset()],
  ];
  const C = Command;
  const ALL = probes.map(([cmd]) => cmd);
  const except = (...cmds: number[]): number[] => ALL.filter((c) => !cmds.includes(c));
  /** What passes, written out from protocol doc §11 (ERROR: gating.ts's documented choice). */
  const EXPECTED: ReadonlyArray<readonly [M, readonly number[]]> = [
    [R, except(C.MIG_DATA_READ, C.MIG_DATA_WRITE)],
    [RP, except(C.MIG_DATA_READ, C.MIG_DATA_WRITE)],
    [PC, except(C.MIG_DATA_WRITE)],
    [PCP, except(C.MIG_DATA_WRITE)],
    [RS, except(C.MIG_DATA_READ)],
    [S, [C.REGION_READ, C.REGION_WRITE, C.DEVICE_FEATURE]],
    [SC, [C.DEVICE_FEATURE, C.MIG_DATA_READ]],
    [ERROR, [C.REGION_READ, C.REGION_WRITE, C.DEVICE_FEATURE, C.DEVICE_RESET]],
  ];

  it('every command in every state: allowed ones work, the rest get EINVAL, as gating.ts says', () =>
    withDevices([{ p2p: true }], async ({ client }) => {
      await client.dmaMap({ addr: MAPPED, size: 0x1000n, flags: RW });
      for (const [state, allowed] of EXPECTED) {
        const lib = ALL.filter((cmd) => {
          if (!isCommandAllowed(state, cmd)) return false;
          if (cmd === C.MIG_DATA_READ) return MIG_DATA_READ_STATES.includes(state);
          if (cmd === C.MIG_DATA_WRITE) return MIG_DATA_WRITE_STATES.includes(state);
          return true;
        });
        assert.deepEqual(lib, allowed, `gating.ts agrees for state ${state} (${COMMAND_GATES[state].rule})`);
        await enter(client, state);
        for (const [cmd, probe] of probes) {
          const where = `command ${cmd} in state ${state}`;
          if (allowed.includes(cmd)) await probe(client);
          else await assert.rejects(probe(client), isRemote(EINVAL), where);
        }
        assert.equal(await client.migrationState(), state === ERROR ? R : state, 'DEVICE_RESET keeps the migration state, except out of ERROR');
        await leave(client);
      }
    }));
});

/** From RUNNING into `state` (ERROR: a foreign stream written while resuming). */
async function enter(client: VfioUserClient, state: number): Promise<void> {
  if (state === ERROR) {
    await client.setMigrationState(RS);
    await assert.rejects(client.migDataWrite(new Uint8Array(64).fill(0x58)), isRemote(EINVAL));
  } else if (state !== R) {
    await client.setMigrationState(state);
  }
  assert.equal(await client.migrationState(), state);
}

/** Back to RUNNING: a SET (an empty RESUMING fails into ERROR), DEVICE_RESET out of ERROR. */
async function leave(client: VfioUserClient): Promise<void> {
  for (let i = 0; i < 3 && (await client.migrationState()) !== R; i++) {
    if ((await client.migrationState()) === ERROR) await client.reset();
    else await client.setMigrationState(R).catch(() => undefined);
  }
  assert.equal(await client.migrationState(), R);
}
