/**
 * The rule options end to end (client → Mediator with the fault plugin → a
 * device): after/count pick which matches are faulted, p with a seed gives the
 * same faults on every run, state= follows the device's migration state as
 * the mediator saw it change, and the upstream's own commands (DMA_READ /
 * DMA_WRITE) are faulted on their way to the client and on the client's reply.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import { createDevice } from '../../src/device/device.js';
import { RemoteError, TimeoutError } from '../../src/errors.js';
import { createFaultPlugin, parseFaultSpec } from '../../src/mediator/fault.js';
import { Mediator } from '../../src/mediator/mediator.js';
import { DmaMapFlags, MigrationState as S } from '../../src/protocol/constants.js';
import { testDeviceDefinition } from '../support/server-fixture.js';
import { readOutput, withFaults } from './fault-support.js';

const EIO = 5;
const EFAULT = 14;
const isEio = (e: unknown): boolean => e instanceof RemoteError && e.errno === EIO;

/** Reads OUTPUT `n` times; 'x' for an EIO, '.' for a success. */
async function pattern(client: VfioUserClient, n: number): Promise<string> {
  let out = '';
  for (let i = 0; i < n; i++) {
    out += await readOutput(client).then(
      () => '.',
      (e: unknown) => {
        assert.ok(isEio(e), String(e));
        return 'x';
      },
    );
  }
  return out;
}

describe('fault options through a mediator', () => {
  it('after=2:count=3: matches 3 to 5 are faulted, the rest pass; other commands are not matched', () =>
    withFaults(['REGION_READ:error=EIO:after=2:count=3'], async ({ connect, faults }) => {
      const client = await connect();
      await client.deviceInfo();
      assert.equal(await pattern(client, 8), '..xxx...');
      assert.deepEqual(faults.stats(), [{ rule: 'REGION_READ:error=EIO:after=2:count=3', matched: 8, injected: 3 }]);
    }));

  it('p=0.5 with a seed: the same faults on every run (and across sessions), another seed other faults', async () => {
    const run = (seed: number): Promise<string> => {
      let seen = '';
      return withFaults(
        ['REGION_READ:error=EIO:p=0.5'],
        async ({ connect, idle }) => {
          seen = await pattern(await connect(), 20);
          await idle();
          seen += '|' + (await pattern(await connect(), 20));
        },
        { seed },
      ).then(() => seen);
    };
    const first = await run(9);
    assert.match(first, /x/);
    assert.match(first, /\./);
    assert.equal(await run(9), first);
    assert.notEqual(await run(10), first);
  });

  it('state=STOP_COPY: only while the device is in STOP_COPY as the mediator saw it; a refused SET changes nothing', () =>
    withFaults(['REGION_READ:error=EIO:state=STOP_COPY'], async ({ connect, faults, idle }) => {
      const client = await connect();
      assert.equal(await pattern(client, 1), '.', 'RUNNING');
      await client.setMigrationState(S.STOP);
      assert.equal(await pattern(client, 1), '.', 'STOP');
      await client.setMigrationState(S.STOP_COPY);
      assert.equal(await pattern(client, 2), 'xx', 'STOP_COPY');
      await assert.rejects(client.setMigrationState(S.ERROR), (e: unknown) => e instanceof RemoteError);
      assert.equal(await client.migrationState(), S.STOP_COPY);
      assert.equal(await pattern(client, 1), 'x', 'still STOP_COPY after a refused SET');
      await client.setMigrationState(S.STOP);
      assert.equal(await pattern(client, 1), '.', 'STOP again');
      assert.deepEqual(faults.stats()[0], { rule: 'REGION_READ:error=EIO:state=STOP_COPY', matched: 3, injected: 3 });
      // A new session starts with the device RUNNING (the card resets when its client goes).
      await idle();
      assert.equal(await pattern(await connect(), 1), '.');
    }));

  it('state= also follows our x-deadline-state extension (a SET with a budget: the state its reply says was reached)', () =>
    withFaults(['REGION_READ:error=EIO:state=STOP_COPY'], async ({ connect }) => {
      const client = await connect();
      assert.notEqual(client.migrationExtensions.deadlineState, undefined, 'the card advertises x-deadline-state to our client');
      const reply = await client.setMigrationStateWithDeadline(S.STOP_COPY, 10_000_000_000n);
      assert.equal(reply.reachedState, S.STOP_COPY);
      assert.equal(await pattern(client, 1), 'x');
      await client.setMigrationStateWithDeadline(S.STOP, 10_000_000_000n);
      assert.equal(await pattern(client, 1), '.');
    }));

  it('VERSION named explicitly: the client is refused at connect with that errno; the next client gets in', () =>
    withFaults(['VERSION:error=EBUSY:count=1'], async ({ connect, idle }) => {
      await assert.rejects(connect(), (e: unknown) => e instanceof RemoteError && e.errno === 16 && e.command === 1);
      await idle();
      assert.equal(await pattern(await connect(), 1), '.');
    }));

  it('several rules: error on the first two reads, then a delay on the next (a later rule sees only what earlier ones let pass)', () =>
    withFaults(['REGION_READ:error=EIO:count=2', 'REGION_READ:delay=100ms:count=1'], async ({ connect, faults }) => {
      const client = await connect();
      assert.equal(await pattern(client, 2), 'xx');
      const started = performance.now();
      assert.equal(await readOutput(client), 0);
      assert.ok(performance.now() - started >= 99);
      assert.deepEqual(
        faults.stats().map((s) => [s.matched, s.injected]),
        [
          [3, 2],
          [1, 1],
        ],
        'the second rule saw only the read the first let pass',
      );
    }));
});

describe('fault: the upstream device’s DMA requests', () => {
  /** Serves the test device behind a mediator faulting with `specs`; the client serves DMA from a plain array (no fd). */
  async function withDma(specs: string[], fn: (x: { dma: { read(a: bigint, n: number): Promise<Uint8Array>; write(a: bigint, d: Uint8Array): Promise<void> }; guest: Uint8Array }) => Promise<void>, dmaTimeoutMs?: number): Promise<void> {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-user-fault-dma-'));
    const device = createDevice(testDeviceDefinition());
    const server = device.serve({ path: join(dir, 'dev.sock'), ...(dmaTimeoutMs === undefined ? {} : { dmaTimeoutMs }) });
    const mediator = await Mediator.listen({ upstream: join(dir, 'dev.sock'), listen: join(dir, 'm.sock'), plugins: [createFaultPlugin(specs.map(parseFaultSpec), { seed: 3 })] });
    let client: VfioUserClient | undefined;
    try {
      client = await VfioUserClient.connect(join(dir, 'm.sock'));
      const guest = new Uint8Array(0x1000);
      client.setDmaResponder({ read: (a, n) => guest.slice(Number(a - 0x10000n), Number(a - 0x10000n) + n), write: (a, d) => guest.set(d, Number(a - 0x10000n)) });
      await client.dmaMap({ addr: 0x10000n, size: 0x1000n, flags: DmaMapFlags.READ | DmaMapFlags.WRITE });
      await fn({ dma: device.dma, guest });
    } finally {
      client?.close();
      await mediator.close();
      await server.close();
      device.dispose();
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it('DMA_READ:error=EFAULT: the device’s read fails with EFAULT, the next one reads guest memory', () =>
    withDma(['DMA_READ:error=EFAULT:count=1'], async ({ dma, guest }) => {
      guest.set([1, 2, 3, 4], 0x20);
      await assert.rejects(dma.read(0x10020n, 4), (e: { errno?: number }) => e.errno === EFAULT);
      assert.deepEqual([...(await dma.read(0x10020n, 4))], [1, 2, 3, 4]);
    }));

  it('DMA_WRITE:error=EIO:on=reply: the client wrote its memory, the device is told EIO', () =>
    withDma(['DMA_WRITE:error=EIO:on=reply:count=1'], async ({ dma, guest }) => {
      await assert.rejects(dma.write(0x10040n, Uint8Array.of(9, 8, 7)), (e: { errno?: number }) => e.errno === EIO);
      assert.deepEqual([...guest.subarray(0x40, 0x43)], [9, 8, 7]);
    }));

  it('DMA_READ:delay=100ms: the device waits at least that long', () =>
    withDma(['DMA_READ:delay=100ms'], async ({ dma }) => {
      const started = performance.now();
      await dma.read(0x10000n, 8);
      assert.ok(performance.now() - started >= 99);
    }));

  it('DMA_READ:drop: the device’s own DMA timeout (ETIMEDOUT); DMA_WRITE:drop:on=reply: written, yet the device times out', async () => {
    const timedOut = (e: unknown): boolean => e instanceof TimeoutError && e.errno === 110;
    await withDma(
      ['DMA_READ:drop:count=1'],
      async ({ dma, guest }) => {
        guest.set([5, 6], 0x80);
        await assert.rejects(dma.read(0x10080n, 2), timedOut);
        assert.deepEqual([...(await dma.read(0x10080n, 2))], [5, 6]);
      },
      500,
    );
    await withDma(
      ['DMA_WRITE:drop:on=reply:count=1'],
      async ({ dma, guest }) => {
        await assert.rejects(dma.write(0x100a0n, Uint8Array.of(1, 2)), timedOut);
        assert.deepEqual([...guest.subarray(0xa0, 0xa2)], [1, 2]);
      },
      500,
    );
  });
});
