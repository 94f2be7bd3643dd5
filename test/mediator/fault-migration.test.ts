/**
 * Fault injection at a migration phase, with our orchestrator as the VMM under
 * test: the source GPIO card sits behind a Mediator running the fault plugin,
 * and rules with `state=STOP_COPY` hit only the stop-copy phase. An error, or a
 * corrupted chunk of device state (caught by the stream's CRC, or by the client
 * when the reply's own fields were hit), fails the migration: the source runs
 * again with its state, the destination is reset. With the rule spent, the
 * same pair migrates.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import { GuestMemory } from '../../src/client/guest-memory.js';
import { createGpioDevice, type GpioDevice } from '../../src/devices/gpio.js';
import { createFaultPlugin, parseFaultSpec, type FaultPlugin } from '../../src/mediator/fault.js';
import { Mediator } from '../../src/mediator/mediator.js';
import { migrate, type MigrationSide } from '../../src/orchestrator/migrate.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import type { DeviceServer } from '../../src/server/server.js';
import { readOutput, writeOutput } from './fault-support.js';

const IOVA = 0x1_0000_0000n;
const GUEST = 1 << 20;

interface Pair {
  src: MigrationSide;
  dst: MigrationSide;
  cards: { src: GpioDevice; dst: GpioDevice };
  faults: FaultPlugin;
}

/** Two GPIO cards with guest memory; the source's client goes through a fault mediator, the destination's is direct. */
async function withPair(specs: string[], fn: (p: Pair) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-fault-mig-'));
  const cards = { src: createGpioDevice(), dst: createGpioDevice() };
  const servers: DeviceServer[] = [cards.src.device.serve(join(dir, 'src.sock')), cards.dst.device.serve(join(dir, 'dst.sock'))];
  const faults = createFaultPlugin(specs.map(parseFaultSpec), { seed: 11 });
  const mediator = await Mediator.listen({ upstream: join(dir, 'src.sock'), listen: join(dir, 'm.sock'), plugins: [faults] });
  const sides: MigrationSide[] = [];
  try {
    for (const path of [join(dir, 'm.sock'), join(dir, 'dst.sock')]) {
      const client = await VfioUserClient.connect(path);
      const memory = GuestMemory.create(GUEST);
      sides.push({ client, memory, iova: IOVA });
      await memory.attach(client, { iova: IOVA, mode: 'fd' });
    }
    await fn({ src: sides[0]!, dst: sides[1]!, cards, faults });
  } finally {
    for (const s of sides) {
      s.client.close();
      s.memory.dispose();
    }
    await mediator.close();
    for (const s of servers) await s.close();
    cards.src.device.dispose();
    cards.dst.device.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Fills guest memory and sets the source card's outputs; returns what must survive. */
async function prepare(p: Pair): Promise<Buffer> {
  p.src.memory.write(0n, Uint8Array.from({ length: GUEST }, (_, i) => (i * 7) & 0xff));
  await writeOutput(p.src.client, 0xbeef);
  return Buffer.from(p.src.memory.read(0n, GUEST));
}

async function assertFailedAndRecovered(p: Pair, report: Awaited<ReturnType<typeof migrate>>, memory: Buffer): Promise<void> {
  assert.equal(report.outcome, 'failed', report.reason);
  assert.equal(report.sourceRecovery, 'running');
  assert.equal(await p.src.client.migrationState(), S.RUNNING);
  assert.equal(await readOutput(p.src.client), 0xbeef, 'the source card kept its outputs');
  assert.equal(p.cards.src.outputs, 0xbeef);
  assert.ok(Buffer.from(p.src.memory.read(0n, GUEST)).equals(memory), 'source guest memory intact');
  assert.equal(await p.dst.client.migrationState(), S.RUNNING, 'the destination was reset');
  assert.equal(p.cards.dst.outputs, 0);
}

async function assertMigrates(p: Pair, memory: Buffer): Promise<void> {
  const report = await migrate({ source: p.src, destination: p.dst, downtimeBudgetMs: 5000 });
  assert.equal(report.outcome, 'migrated', report.reason);
  assert.equal(p.cards.dst.outputs, 0xbeef);
  assert.ok(Buffer.from(p.dst.memory.read(0n, GUEST)).equals(memory), 'destination guest memory');
}

describe('fault injection at a migration phase (our orchestrator as the VMM)', () => {
  it('MIG_DATA_READ:error=EIO in STOP_COPY: failed, the source runs with its state, the destination is reset; then it migrates', () =>
    withPair(['MIG_DATA_READ:error=EIO:state=STOP_COPY:count=1'], async (p) => {
      const memory = await prepare(p);
      const report = await migrate({ source: p.src, destination: p.dst, downtimeBudgetMs: 5000 });
      await assertFailedAndRecovered(p, report, memory);
      assert.deepEqual(p.faults.stats()[0]?.injected, 1);
      await assertMigrates(p, memory);
    }));

  it('a corrupted chunk of device state in STOP_COPY never loads: failed, recovered; then it migrates', () =>
    withPair(['MIG_DATA_READ:corrupt:on=reply:state=STOP_COPY:count=1'], async (p) => {
      const memory = await prepare(p);
      const report = await migrate({ source: p.src, destination: p.dst, downtimeBudgetMs: 5000 });
      await assertFailedAndRecovered(p, report, memory);
      assert.deepEqual(p.faults.stats()[0]?.injected, 1);
      await assertMigrates(p, memory);
    }));

  it('the state the rules see is the one the orchestrator drives: MIG_DATA_READ happens in STOP_COPY, never in RUNNING', () =>
    withPair(['MIG_DATA_READ:error=EIO:state=RUNNING', 'MIG_DATA_READ:delay=1ms:state=STOP_COPY'], async (p) => {
      const memory = await prepare(p);
      await assertMigrates(p, memory);
      const [running, stopCopy] = p.faults.stats();
      assert.deepEqual([running?.matched, running?.injected], [0, 0]);
      assert.ok(stopCopy && stopCopy.matched >= 1 && stopCopy.injected === stopCopy.matched, JSON.stringify(stopCopy));
    }));
});
