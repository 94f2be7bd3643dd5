/**
 * Remote migration over the migration channel on loopback TCP, in one process:
 * a source DMA engine migrated while a batch runs to a {@link MigrationReceiver}
 * that applies it to its own engine; faults on the channel (link cut in
 * pre-copy, a corrupted frame, a device stream the destination refuses, the
 * receiver busy) — each leaves the source RUNNING with its state and memory
 * intact and the destination reset and released.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DESCRIPTOR_SIZE, DescriptorStatus, decodeResult } from '../../src/devices/dma-descriptor.js';
import { migrate } from '../../src/orchestrator/migrate.js';
import { once } from 'node:events';
import { connect } from 'node:net';
import { MigrationChannelError } from '../../src/orchestrator/channel-socket.js';
import { MigrationReceiver, type ReceiveOutcome } from '../../src/orchestrator/receiver.js';
import { RemoteDestination, parseChannelAddress } from '../../src/orchestrator/remote.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import { DST, GUEST, IOVA, LEN, SRC, assertSourceKeepsWorking, connectTo, corruptingProxy, post, prepareFaultRun, program, withSetup } from './remote-fixture.js';

describe('remote migration over TCP', () => {
  it('parses tcp://HOST:PORT and refuses anything else (EINVAL)', () => {
    assert.deepEqual(parseChannelAddress('tcp://127.0.0.1:7777'), { host: '127.0.0.1', port: 7777 });
    assert.deepEqual(parseChannelAddress('tcp://[::1]:9'), { host: '::1', port: 9 });
    for (const bad of ['127.0.0.1:7777', 'udp://h:1', 'tcp://h', 'tcp://h:0', 'tcp://h:70000', 'tcp://h:1/x', '']) {
      assert.throws(() => parseChannelAddress(bad), (e: unknown) => (e as { errno?: number }).errno === Errno.EINVAL, bad);
    }
  });

  it('migrates a working engine and its guest memory to the receiver; the destination finishes the batch', (t) =>
    withSetup(async (src, rx) => {
      await program(src);
      const data = await post(src, 0, 40);
      while (src.engine.engineState().completed < 2) await new Promise((resolve) => setImmediate(resolve));
      const destination = await connectTo(rx.url, src);
      const outcome = rx.nextOutcome();
      const vm = Uint8Array.of(1, 2, 3, 4);
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 2000, vmState: () => vm });
      t.diagnostic(`downtime ${report.downtimeMs.toFixed(2)} ms, total ${report.totalMs.toFixed(1)} ms, ${report.iterations} iterations`);
      assert.equal(report.outcome, 'migrated', report.reason);
      assert.equal(report.destination, rx.url);
      const o = await outcome;
      assert.equal(o.outcome, 'committed');
      assert.deepEqual(o.vmState, vm);
      assert.equal(o.memoryBytes, report.bytes.precopyMemory + report.bytes.stopCopyMemory);
      assert.equal(o.deviceBytes, report.bytes.precopyDevice + report.bytes.stopCopyDevice);
      const dst = rx.last;
      assert.ok(dst);
      assert.equal(await dst.client.migrationState(), S.RUNNING);
      assert.equal(await src.client.migrationState(), S.STOP);
      // The stopped source's memory is the switch-over snapshot; the destination finishes what was left.
      const k = src.engine.engineState().completed;
      const snapshot = src.memory.read(0n, GUEST);
      await rx.engine.idle();
      assert.equal(rx.engine.engineState().completed, 40);
      data.forEach((bytes, i) => {
        assert.equal(decodeResult(dst.memory.read(BigInt(i * DESCRIPTOR_SIZE), DESCRIPTOR_SIZE)).status, DescriptorStatus.DONE, `job ${i}`);
        assert.ok(Buffer.from(dst.memory.read(BigInt(DST + i * LEN), LEN)).equals(bytes), `job ${i} bytes`);
      });
      // Outside what the unfinished jobs wrote (their descriptors and destinations), memory is the snapshot.
      const after = dst.memory.read(0n, GUEST);
      assert.ok(Buffer.from(after.subarray(SRC, DST)).equals(snapshot.subarray(SRC, DST)), 'job sources');
      assert.ok(Buffer.from(after.subarray(DST + 40 * LEN)).equals(snapshot.subarray(DST + 40 * LEN)), 'memory above the jobs');
      assert.ok(Buffer.from(after.subarray(0, k * DESCRIPTOR_SIZE)).equals(snapshot.subarray(0, k * DESCRIPTOR_SIZE)), 'finished descriptors');
      destination.close();
    }));

  it('a link cut in pre-copy: the source keeps running intact, the receiver resets and releases its side', () =>
    withSetup(async (src, rx) => {
      const { before, destination, outcome } = await prepareFaultRun(src, rx);
      let cut = false;
      const report = await migrate({
        source: src,
        destination,
        downtimeBudgetMs: 0.001, // never converges: pre-copy goes on until the cut
        maxPrecopyIterations: 1000,
        onProgress: () => {
          if (cut) return;
          cut = true;
          destination.close(); // the link goes away in the middle of pre-copy
        },
      });
      assert.equal(report.outcome, 'failed');
      assert.equal(report.sourceRecovery, 'running');
      await assertSourceKeepsWorking(src, rx, await outcome, before);
    }));

  it('a corrupted frame is detected by the checksum: the receiver drops the channel and resets; the source keeps running', () =>
    withSetup(async (src, rx) => {
      // Data for the stream to carry past the flipped byte (zero pages cross as 16-byte markers).
      src.memory.write(BigInt(2 << 20), new Uint8Array(1 << 20).fill(0x33));
      // A proxy that flips one byte of the stream after the hello.
      const proxy = await corruptingProxy(rx.receiver.port, 200_000);
      try {
        const { before, destination, outcome } = await prepareFaultRun(src, rx, `tcp://127.0.0.1:${proxy.port}`);
        const report = await migrate({ source: src, destination, downtimeBudgetMs: 2000 });
        assert.equal(report.outcome, 'failed');
        assert.equal(report.sourceRecovery, 'running');
        const o = await outcome;
        assert.match(o.reason ?? '', /checksum/);
        await assertSourceKeepsWorking(src, rx, o, before);
      } finally {
        proxy.close();
      }
    }));

  it('a device stream the destination refuses comes back as a NOTICE and fails the migration; the source keeps running', () =>
    withSetup(async (src, rx) => {
      const { before, destination, outcome } = await prepareFaultRun(src, rx);
      // Corrupt the device stream before it is framed (the channel's checksum is then intact).
      const write = destination.writeDeviceData.bind(destination);
      destination.writeDeviceData = (data) => write(Uint8Array.from(data, (b, i) => (i === 20 ? b ^ 0xff : b)));
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 2000 });
      assert.equal(report.outcome, 'failed');
      assert.match(report.reason ?? '', /device stream frame/);
      assert.equal(report.sourceRecovery, 'running');
      await assertSourceKeepsWorking(src, rx, await outcome, before);
    }));

  it('a second sender while one migration is received gets EBUSY; guest memory out of range or oversized is refused', () =>
    withSetup(async (src, rx) => {
      const first = await connectTo(rx.url, src);
      await assert.rejects(connectTo(rx.url, src), (e: unknown) => (e as { errno?: number }).errno === Errno.EBUSY);
      const outcome = rx.nextOutcome();
      // A page outside the receiver's guest memory: EFAULT via NOTICE, then every request fails with it.
      await first.writeMemory(BigInt(GUEST), new Uint8Array(4096));
      await assert.rejects(first.flush(), (e: unknown) => (e as { errno?: number }).errno === Errno.EFAULT);
      await first.abandon();
      assert.equal((await outcome).outcome, 'abandoned');
      await assert.rejects(RemoteDestination.connect(rx.url, { memory: { size: 1n << 40n, iova: IOVA } }), (e: unknown) => (e as { errno?: number }).errno === Errno.ENOMEM);
      await assert.rejects(RemoteDestination.connect(rx.url, { memory: { size: 4097n, iova: IOVA } }), (e: unknown) => (e as { errno?: number }).errno === Errno.EINVAL);
    }));

  it('a silent or garbage-speaking peer is dropped (no hello in time / not a channel); the receiver takes the next sender', async () => {
    const outcomes: ReceiveOutcome[] = [];
    const offers: bigint[] = [];
    const receiver = await MigrationReceiver.listen({
      port: 0,
      helloTimeoutMs: 100,
      prepare: async (offer) => {
        offers.push(offer.memory.size);
        throw new MigrationChannelError('this test prepares nothing', Errno.ENOSPC);
      },
      onOutcome: (o) => outcomes.push(o),
    });
    try {
      const silent = connect({ host: '127.0.0.1', port: receiver.port });
      await once(silent, 'close');
      const garbage = connect({ host: '127.0.0.1', port: receiver.port });
      garbage.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
      await once(garbage, 'close');
      await assert.rejects(RemoteDestination.connect(`tcp://127.0.0.1:${receiver.port}`, { memory: { size: 1n << 20n, iova: 0n } }), (e: unknown) => (e as { errno?: number }).errno === Errno.ENOSPC);
      await new Promise((resolve) => setTimeout(resolve, 20));
      assert.deepEqual(offers, [1n << 20n], 'the third peer got to prepare');
      assert.deepEqual(outcomes.map((o) => o.outcome), ['refused', 'refused', 'refused']);
      assert.match(outcomes[0]?.reason ?? '', /no hello in 100 ms/);
      assert.match(outcomes[1]?.reason ?? '', /not a migration channel/);
    } finally {
      receiver.close();
    }
  });
});
