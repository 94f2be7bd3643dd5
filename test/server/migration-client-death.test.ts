/**
 * A client that dies mid-migration: for every state it can leave a device in,
 * the old client goes away abruptly (its socket closed with no further
 * message, or its process killed with SIGKILL in the middle of a SET), then a
 * new client connects, finds the documented state (docs/migration-faults.md),
 * recovers the device with recoverMigration, and checks that it runs with its
 * contents (a source) or its reset contents (a destination), that it works,
 * that a new migration runs from scratch, and that the lost session's dirty
 * logging ended with it.
 *
 * The device is a 64 KiB register file with pre-copy (and P2P on demand). Its
 * reset hook restores the power-on contents on DEVICE_RESET and keeps them
 * when a client is lost, so a source resumes where it was.
 */
import { drain } from '../support/migration-io.js';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { recoverMigration } from '../../src/client/migration-recovery.js';
import type { DeviceDefinition } from '../../src/device/types.js';
import { RemoteError } from '../../src/errors.js';
import { MigrationState as S, RegionIndex } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { applyPageDelta, registerFileBar, takePageDelta } from '../support/register-file.js';
import { serveTestDevice, testDeviceDefinition, type ServedDevice } from '../support/server-fixture.js';
import { pattern } from '../devices/driver.js';

const IOVA = 0x1_0000_0000n;
const GUEST = 1 << 20;
const PAGE = 4096n;

type Hook = (from: number, to: number) => void | Promise<void>;

interface Dev {
  served: ServedDevice;
  regs: Uint8Array;
  /** The power-on contents (what DEVICE_RESET restores). */
  powerOn: Uint8Array;
  arcs: string[];
  hook: { fn: Hook | undefined };
}

function definition(regs: Uint8Array, powerOn: Uint8Array, arcs: string[], hook: Dev['hook'], p2p: boolean): DeviceDefinition {
  const dirty = new Set<number>();
  return testDeviceDefinition({
    pci: { vendorId: 0x1af4, deviceId: 0x10f0, classCode: 0xff0000 },
    regions: { bar0: registerFileBar(regs, dirty), bar4: { size: 0x2000 } },
    reset: (reason) => {
      if (reason === 'client') regs.set(powerOn);
    },
    migration: {
      preCopy: true,
      p2p,
      deviceType: 'register-file',
      stateVersion: 1,
      save: () => (dirty.clear(), regs.slice()),
      saveDelta: () => takePageDelta(regs, dirty),
      load: (kind, payload) => {
        if (kind === 'delta') return applyPageDelta(regs, payload);
        if (payload.length !== regs.length) throw new Error('wrong state size');
        regs.set(payload);
      },
      transition: async (from, to) => {
        arcs.push(`${from}>${to}`);
        await hook.fn?.(from, to);
      },
    },
  });
}

function open(seed: number, p2p = false): Dev {
  const powerOn = pattern(0x10000, seed);
  const regs = powerOn.slice();
  const arcs: string[] = [];
  const hook: Dev['hook'] = { fn: undefined };
  return { served: serveTestDevice(definition(regs, powerOn, arcs, hook, p2p)), regs, powerOn, arcs, hook };
}

/** Serves devices for `fn` and closes them after, checking that no fd is left open. */
async function withDevices(count: number, fn: (devs: Dev[]) => Promise<void>, p2p = false): Promise<void> {
  await assertNoFdLeak(async () => {
    const devs = Array.from({ length: count }, (_, i) => open(i + 1, p2p));
    try {
      await fn(devs);
    } finally {
      for (const d of devs) await d.served.close();
    }
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const stateOf = (dev: Dev): number | undefined => dev.served.device.migration?.state;

/** A client with guest memory mapped and dirty logging on, as a migrating VMM has. */
async function migratingClient(dev: Dev): Promise<{ client: VfioUserClient; memory: GuestMemory }> {
  const client = await VfioUserClient.connect(dev.served.path);
  const memory = GuestMemory.create(GUEST);
  await memory.attach(client, { iova: IOVA, mode: 'fd' });
  await client.startDirtyLogging(PAGE);
  assert.equal(dev.served.device.dma.logging, true, 'the old session logs');
  return { client, memory };
}

/** The client dies: its socket is closed with no further message; waits until the server has cleaned up after it. */
async function die(dev: Dev, side: { client: VfioUserClient; memory: GuestMemory }): Promise<void> {
  side.client.close();
  await side.client.closed;
  await dev.served.server.idle();
  side.memory.dispose();
}

async function load(client: VfioUserClient, stream: Uint8Array): Promise<void> {
  const chunk = client.maxTransferSize;
  for (let at = 0; at < stream.length; at += chunk) await client.migDataWrite(stream.subarray(at, at + chunk));
}

/** A complete stop-copy stream of `dev` (its own client, closed after; the device RUNNING again). */
async function streamOf(dev: Dev): Promise<Uint8Array> {
  const client = await VfioUserClient.connect(dev.served.path);
  try {
    await client.setMigrationState(S.STOP_COPY);
    const stream = await drain(client);
    await client.setMigrationState(S.RUNNING);
    return stream;
  } finally {
    client.close();
    await dev.served.server.idle();
  }
}

/** Looks at what the lost session left, before the recovery. */
type Inspect = (client: VfioUserClient) => Promise<void>;

/** The saving stream the lost session opened is still there: the rest of it reads out (but its head died with the old client). */
const restOfStreamReads: Inspect = async (client) => {
  assert.ok((await client.migDataRead(65536)).length > 0, 'the saving stream is kept');
};

/** Connects a new client, which finds the device in `expected`, and recovers it. */
async function reconnectAndRecover(dev: Dev, expected: number, steps: string[], inspect?: Inspect): Promise<VfioUserClient> {
  const client = await VfioUserClient.connect(dev.served.path);
  try {
    assert.equal(dev.served.device.dma.logging, false, 'the new session does not log');
    assert.equal(await client.migrationState(), expected, 'the state the lost client left');
    await inspect?.(client);
    const result = await recoverMigration(client);
    assert.deepEqual(result, { from: expected, to: S.RUNNING, steps });
    assert.equal(await client.migrationState(), S.RUNNING);
    return client;
  } catch (error) {
    client.close();
    throw error;
  }
}

/**
 * The recovered device works: a register write reads back; dirty logging is
 * off (REPORT fails EINVAL, START succeeds); a new migration runs from scratch
 * (a source's full stream loads into `peer`, or `peer`'s into a destination).
 */
async function assertUsable(dev: Dev, client: VfioUserClient, peer: Dev, role: 'source' | 'destination'): Promise<void> {
  await client.regionWrite(RegionIndex.BAR0, 0x100n, Uint8Array.of(1, 2, 3, 4));
  assert.deepEqual(await client.regionRead(RegionIndex.BAR0, 0x100n, 4), Uint8Array.of(1, 2, 3, 4));

  const memory = GuestMemory.create(GUEST);
  try {
    await memory.attach(client, { iova: IOVA, mode: 'fd' });
    await assert.rejects(client.dirtyReport(IOVA, BigInt(GUEST), PAGE), (e: unknown) => e instanceof RemoteError && e.errno === Errno.EINVAL, 'not logging');
    assert.equal(await client.startDirtyLogging(PAGE), PAGE);
    await client.stopDirtyLogging();
  } finally {
    memory.dispose();
  }

  if (role === 'destination') {
    const stream = await streamOf(peer);
    await client.setMigrationState(S.RESUMING);
    await load(client, stream);
    await client.setMigrationState(S.RUNNING);
    assert.ok(Buffer.from(dev.regs).equals(peer.regs), 'the new migration loaded into the destination');
    return;
  }
  await client.setMigrationState(S.PRE_COPY);
  await client.setMigrationState(S.STOP_COPY);
  const stream = await drain(client);
  const other = await VfioUserClient.connect(peer.served.path);
  try {
    await other.setMigrationState(S.RESUMING);
    await load(other, stream);
    await other.setMigrationState(S.RUNNING);
  } finally {
    other.close();
  }
  assert.ok(Buffer.from(peer.regs).equals(dev.regs), 'the new migration moved the source state');
  await client.setMigrationState(S.RUNNING);
}

/** One source case: `leave` moves the old client's device mid-migration; the new client finds `found`. */
async function sourceCase(leave: (client: VfioUserClient) => Promise<void>, found: number, p2p = false, inspect?: Inspect): Promise<void> {
  await withDevices(2, async ([src, peer]) => {
    const dev = src as Dev;
    for (let i = 0; i < dev.regs.length; i += 509) dev.regs[i] = (i * 7) & 0xff; // the guest's work before the migration
    const before = Buffer.from(dev.regs);
    const old = await migratingClient(dev);
    await leave(old.client);
    await die(dev, old);
    const client = await reconnectAndRecover(dev, found, ['SET RUNNING'], inspect);
    try {
      assert.ok(Buffer.from(dev.regs).equals(before), 'the source state is intact');
      await assertUsable(dev, client, peer as Dev, 'source');
    } finally {
      client.close();
    }
  }, p2p);
}

describe('a client dying mid-migration', () => {
  it('source in PRE_COPY after part of the pre-copy stream: PRE_COPY; SET RUNNING keeps its state', () =>
    sourceCase(async (client) => {
      await client.setMigrationState(S.PRE_COPY);
      assert.equal((await client.migDataRead(1000)).length, 1000);
    }, S.PRE_COPY, false, restOfStreamReads));

  it('source in STOP_COPY after part of the stream: STOP_COPY; SET RUNNING resumes it where it stopped', () =>
    sourceCase(async (client) => {
      await client.setMigrationState(S.PRE_COPY);
      await drain(client);
      await client.setMigrationState(S.STOP_COPY);
      assert.equal((await client.migDataRead(3000)).length, 3000);
    }, S.STOP_COPY, false, restOfStreamReads));

  it('source in STOP: STOP; SET RUNNING', () => sourceCase((client) => client.setMigrationState(S.STOP), S.STOP));

  it('P2P device in PRE_COPY_P2P after part of the stream: PRE_COPY_P2P; SET RUNNING (via RUNNING_P2P)', () =>
    sourceCase(async (client) => {
      await client.setMigrationState(S.PRE_COPY_P2P);
      assert.equal((await client.migDataRead(1000)).length, 1000);
    }, S.PRE_COPY_P2P, true, restOfStreamReads));

  it('P2P device in RUNNING_P2P: RUNNING_P2P; SET RUNNING', () =>
    sourceCase((client) => client.setMigrationState(S.RUNNING_P2P), S.RUNNING_P2P, true));

  it('destination in RESUMING with a partial stream: RESUMING; DEVICE_RESET, SET RUNNING fails into ERROR, DEVICE_RESET; the device holds its reset state', () =>
    withDevices(2, async ([dst, donor]) => {
      const dev = dst as Dev;
      const stream = await (async () => {
        // A pre-copy stream: its initial full record loads as soon as it arrives, so the partial stream changes the device.
        const client = await VfioUserClient.connect((donor as Dev).served.path);
        try {
          await client.setMigrationState(S.PRE_COPY);
          const initial = await drain(client);
          await client.setMigrationState(S.STOP_COPY);
          return Buffer.concat([initial, await drain(client)]);
        } finally {
          await client.setMigrationState(S.RUNNING);
          client.close();
          await (donor as Dev).served.server.idle();
        }
      })();
      const old = await migratingClient(dev);
      await old.client.setMigrationState(S.RESUMING);
      await load(old.client, stream.subarray(0, stream.length - 1000));
      assert.ok(Buffer.from(dev.regs).equals((donor as Dev).regs), 'the partial stream was loaded as it arrived');
      await die(dev, old);
      const client = await reconnectAndRecover(dev, S.RESUMING, ['DEVICE_RESET', 'SET RUNNING', 'DEVICE_RESET']);
      try {
        assert.ok(Buffer.from(dev.regs).equals(dev.powerOn), 'the device holds its reset state, none of the stream');
        await assertUsable(dev, client, donor as Dev, 'destination');
      } finally {
        client.close();
      }
    }));

  it('destination in ERROR (a corrupted stream written in RESUMING): ERROR; DEVICE_RESET', () =>
    withDevices(2, async ([dst, donor]) => {
      const dev = dst as Dev;
      const stream = await streamOf(donor as Dev);
      stream[stream.length - 1] = (stream[stream.length - 1] as number) ^ 0xff;
      const old = await migratingClient(dev);
      await old.client.setMigrationState(S.RESUMING);
      await assert.rejects(load(old.client, stream), (e: unknown) => e instanceof RemoteError && e.errno === Errno.EINVAL);
      assert.equal(await old.client.migrationState(), S.ERROR);
      await die(dev, old);
      const client = await reconnectAndRecover(dev, S.ERROR, ['DEVICE_RESET']);
      try {
        assert.ok(Buffer.from(dev.regs).equals(dev.powerOn), 'the device holds its reset state');
        await assertUsable(dev, client, donor as Dev, 'destination');
      } finally {
        client.close();
      }
    }));

  it('source client process killed inside its SET STOP_COPY: the arc completes after the kill; STOP_COPY; SET RUNNING keeps the state', () =>
    withDevices(2, async ([src, peer]) => {
      const dev = src as Dev;
      const before = Buffer.from(dev.regs);
      let entered!: () => void;
      const inArc = new Promise<void>((resolve) => (entered = resolve));
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      dev.hook.fn = async (from, to) => {
        if (from === S.PRE_COPY && to === S.STOP_COPY) {
          entered();
          await gate;
        }
      };
      const child = spawn(process.execPath, ['--input-type=module', '-e', childScript(dev.served.path)], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_code, signal) => resolve(signal)));
      await Promise.race([inArc, exited.then(() => assert.fail(`the child ended before its SET: ${stderr}`))]);
      assert.equal(dev.served.device.dma.logging, true, 'the child logs');
      child.kill('SIGKILL');
      assert.equal(await exited, 'SIGKILL');
      // The server notices the kill and starts tearing the session down while the arc is still in its hook; the
      // hook is released then. (The teardown does not wait for the request in flight: see docs/migration-faults.md.)
      while (dev.served.device.connected) await sleep(5);
      release();
      await dev.served.server.idle();
      while (stateOf(dev) !== S.STOP_COPY) await sleep(5);
      dev.hook.fn = undefined;

      const client = await reconnectAndRecover(dev, S.STOP_COPY, ['SET RUNNING']);
      try {
        assert.ok(Buffer.from(dev.regs).equals(before), 'the source state is intact');
        await assertUsable(dev, client, peer as Dev, 'source');
      } finally {
        client.close();
      }
    }));

  it('a device already RUNNING needs nothing; a device without migration is refused with EINVAL', async () => {
    await withDevices(1, async ([dev]) => {
      const client = await VfioUserClient.connect((dev as Dev).served.path);
      try {
        assert.deepEqual(await recoverMigration(client), { from: S.RUNNING, to: S.RUNNING, steps: [] });
      } finally {
        client.close();
      }
    });
    await assertNoFdLeak(async () => {
      const served = serveTestDevice();
      const client = await VfioUserClient.connect(served.path);
      try {
        await assert.rejects(recoverMigration(client), (e: unknown) => e instanceof RemoteError && e.errno === Errno.EINVAL);
      } finally {
        client.close();
        await served.close();
      }
    });
  });
});

/** The killed child: a VMM that maps memory, logs, pre-copies part of the stream, then asks for STOP_COPY. */
function childScript(path: string): string {
  const url = (p: string): string => JSON.stringify(new URL(p, import.meta.url).href);
  return `
    const { VfioUserClient } = await import(${url('../../src/client/client.js')});
    const { GuestMemory } = await import(${url('../../src/client/guest-memory.js')});
    const client = await VfioUserClient.connect(${JSON.stringify(path)});
    const memory = GuestMemory.create(${GUEST});
    await memory.attach(client, { iova: ${IOVA}n, mode: 'fd' });
    await client.startDirtyLogging(${PAGE}n);
    await client.setMigrationState(${S.PRE_COPY});
    await client.migDataRead(1000);
    await client.setMigrationState(${S.STOP_COPY});
    process.stderr.write('the SET STOP_COPY returned: the parent did not kill this process\\n');
  `;
}
