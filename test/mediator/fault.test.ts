/**
 * Each fault kind as our VfioUserClient observes it, end to end: the client →
 * a real Mediator running the fault plugin → our GPIO card. Delay: the reply
 * comes no earlier than the delay, in order. Error: RemoteError with that errno,
 * and the session goes on (on=request the device never saw the command,
 * on=reply it did). Drop: the client's own timeout. Corrupt: flipped payload
 * bytes, either in the data (different bytes) or in the reply's own fields
 * (a ProtocolError EPROTO) — never the header. Disconnect: ConnectionClosedError,
 * and the device serves the next client.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ConnectionClosedError, ProtocolError, RemoteError, TimeoutError } from '../../src/errors.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { BAR2, OUTPUT, readOutput, waitFor, withFaults, writeOutput } from './fault-support.js';

const E = { EIO: 5, EAGAIN: 11, ENOTCONN: 107, ETIMEDOUT: 110, EPROTO: 71 } as const;
const REGION_READ = 9;
const REGION_WRITE = 10;

const remote = (errno: number, command: number) => (e: unknown): boolean => {
  assert.ok(e instanceof RemoteError, `expected RemoteError, got ${String(e)}`);
  assert.deepEqual([e.errno, e.command], [errno, command]);
  return true;
};
const timedOut = (e: unknown): boolean => e instanceof TimeoutError && e.errno === E.ETIMEDOUT;
const closed = (e: unknown): boolean => e instanceof ConnectionClosedError && e.errno === E.ENOTCONN;

describe('fault: delay', () => {
  it('on=request: the REGION_READ answers after at least the delay, and commands behind it are not overtaken', () =>
    withFaults(['REGION_READ:delay=150ms:count=1'], async ({ connect, faults }) => {
      const client = await connect();
      await writeOutput(client, 0xa5a5);
      const started = performance.now();
      const at = <T>(p: Promise<T>): Promise<[T, number]> => p.then((v) => [v, performance.now() - started]);
      const read = at(readOutput(client));
      const info = at(client.deviceInfo());
      const [value, readMs] = await read;
      const [deviceInfo, infoMs] = await info;
      assert.equal(value, 0xa5a5);
      assert.equal(deviceInfo.numRegions, 9);
      assert.ok(readMs >= 149, `answered after ${readMs.toFixed(1)} ms`);
      // Sent after the delayed read, the DEVICE_GET_INFO waited behind it (it is not delayed itself).
      assert.ok(infoMs >= 149, `the command behind it answered after ${infoMs.toFixed(1)} ms`);
      assert.deepEqual(faults.stats(), [{ rule: 'REGION_READ:delay=150ms:count=1', matched: 1, injected: 1 }]);
    }));

  it('on=reply: the device answered at once, the client sees the reply after the delay', () =>
    withFaults(['REGION_WRITE:delay=150ms:on=reply'], async ({ connect, gpio }) => {
      const client = await connect();
      const started = performance.now();
      const write = writeOutput(client, 0x0102);
      await waitFor(() => gpio.outputs === 0x0102, 'the device to take the write');
      await write;
      const elapsed = performance.now() - started;
      assert.ok(elapsed >= 149, `answered after ${elapsed.toFixed(1)} ms`);
    }));
});

describe('fault: delay and the end of a session', () => {
  it('a client going away while its command is held: the session ends at once, no timer left; the device serves the next client', { timeout: 30_000 }, () =>
    withFaults(['REGION_READ:delay=1h:count=1'], async ({ connect, idle, faults }) => {
      const client = await connect();
      const held = readOutput(client);
      await waitFor(() => faults.stats()[0]!.injected === 1, 'the command to be held');
      client.close();
      await assert.rejects(held, closed);
      await idle();
      assert.equal(await readOutput(await connect()), 0);
    }));

  it('mediator.close() while a reply is held: resolves promptly, the client sees the connection close', { timeout: 30_000 }, () =>
    withFaults(['REGION_READ:delay=1h:on=reply'], async ({ connect, mediator, faults }) => {
      const client = await connect();
      const held = readOutput(client);
      await waitFor(() => faults.stats()[0]!.injected === 1, 'the reply to be held');
      await mediator.close();
      await assert.rejects(held, closed);
    }));
});

describe('fault: error', () => {
  it('on=request: RemoteError with that errno, the device never saw the write; the session goes on', () =>
    withFaults(['REGION_WRITE:error=EIO:count=1'], async ({ connect, gpio, outputs }) => {
      const client = await connect();
      await assert.rejects(writeOutput(client, 0x1234), remote(E.EIO, REGION_WRITE));
      assert.equal(client.inFlight, 0);
      assert.equal(gpio.outputs, 0, 'the write did not reach the device');
      assert.deepEqual(outputs, []);
      await writeOutput(client, 0x1234);
      assert.equal(await readOutput(client), 0x1234);
    }));

  it('on=reply: the device did the write, the client gets the error instead of the reply', () =>
    withFaults(['REGION_WRITE:error=EAGAIN:on=reply:count=1'], async ({ connect, gpio }) => {
      const client = await connect();
      await assert.rejects(writeOutput(client, 0x4321), remote(E.EAGAIN, REGION_WRITE));
      assert.equal(gpio.outputs, 0x4321, 'the device took the write');
      assert.equal(await readOutput(client), 0x4321);
    }));

  it('errno by number, up to 4096, on a REGION_READ', () =>
    withFaults(['REGION_READ:error=4096:count=1'], async ({ connect }) => {
      const client = await connect();
      await assert.rejects(readOutput(client), remote(4096, REGION_READ));
      assert.equal(await readOutput(client), 0);
    }));
});

describe('fault: drop', () => {
  it('on=request: the client times out (ETIMEDOUT), the device never saw the write; the session goes on', () =>
    withFaults(['REGION_WRITE:drop:count=1'], async ({ connect, gpio }) => {
      const client = await connect({ timeoutMs: 1000 });
      await assert.rejects(writeOutput(client, 0x55), timedOut);
      assert.equal(client.inFlight, 0);
      assert.equal(gpio.outputs, 0);
      await writeOutput(client, 0x66);
      assert.equal(await readOutput(client), 0x66);
    }));

  it('on=reply: the device did the write, its reply is lost: the client times out', () =>
    withFaults(['REGION_WRITE:drop:on=reply:count=1'], async ({ connect, gpio }) => {
      const client = await connect({ timeoutMs: 1000 });
      await assert.rejects(writeOutput(client, 0x77), timedOut);
      assert.equal(gpio.outputs, 0x77);
      assert.equal(await readOutput(client), 0x77);
    }));
});

describe('fault: corrupt (payload bytes only)', () => {
  it('a corrupted REGION_READ reply: different bytes when a data byte flipped, else EPROTO; never the right value', () =>
    withFaults(['REGION_READ:corrupt:on=reply:count=60'], async ({ connect }) => {
      const client = await connect();
      await writeOutput(client, 0x5aa5);
      const right = [0xa5, 0x5a, 0, 0];
      let wrongBytes = 0;
      let refused = 0;
      for (let i = 0; i < 60; i++) {
        try {
          const data = [...(await client.regionRead(BAR2, OUTPUT, 4))];
          assert.equal(data.filter((b, j) => b !== right[j]).length, 1, `read ${i}: exactly one byte differs (${data.join(',')})`);
          wrongBytes++;
        } catch (e) {
          // The flipped byte was the reply's offset, region or count: the client refuses the reply.
          assert.ok(e instanceof ProtocolError && e.errno === E.EPROTO, `read ${i}: ${String(e)}`);
          refused++;
        }
      }
      // 4 of the reply's 20 payload bytes are data: with seed 1 both outcomes occur.
      assert.ok(wrongBytes > 0 && refused > 0, `${wrongBytes} wrong values, ${refused} refused`);
      assert.equal(client.inFlight, 0);
      assert.deepEqual([...(await client.regionRead(BAR2, OUTPUT, 4))], right, 'count=60 is spent: the 61st read is right');
    }));

  it('a command with an empty payload is left alone (the header is not corrupt’s business)', () =>
    withFaults(['DEVICE_RESET:corrupt=16'], async ({ connect, faults }) => {
      const client = await connect();
      await writeOutput(client, 0x11);
      await client.reset();
      assert.equal(await readOutput(client), 0, 'the reset reached the device intact');
      assert.deepEqual(faults.stats(), [{ rule: 'DEVICE_RESET:corrupt=16', matched: 1, injected: 0 }]);
    }));
});

describe('fault: disconnect', () => {
  it('on=request: ConnectionClosedError (ENOTCONN) for the pending command and later ones; the device serves a new client', () =>
    assertNoFdLeak(() =>
      withFaults(['REGION_READ:disconnect:count=1'], async ({ connect, idle }) => {
        const client = await connect();
        await writeOutput(client, 0x99);
        await assert.rejects(readOutput(client), closed);
        await client.closed;
        await assert.rejects(client.deviceInfo(), closed);
        await idle();
        const next = await connect();
        assert.equal(await readOutput(next), 0, 'the card was reset when its client went away');
        await writeOutput(next, 0x42);
        assert.equal(await readOutput(next), 0x42);
      }),
    ));

  it('on=reply: the device did the write, then the session is cut before its reply', () =>
    withFaults(['REGION_WRITE:disconnect:on=reply:count=1'], async ({ connect, outputs, idle }) => {
      const client = await connect();
      await assert.rejects(writeOutput(client, 0x3c), closed);
      assert.equal(outputs[0], 0x3c, 'the device took the write');
      await idle();
      const next = await connect();
      assert.equal((await next.deviceInfo()).numRegions, 9);
    }));
});
