/**
 * onReleaseRequest: the client's REQ eventfd (IRQ index 4), signalled by the
 * server side's device.requestRelease(), against a sample device (the DMA
 * engine) served in-process. Counts, shared listeners, disposal (the server
 * then has no eventfd to signal), teardown on close, no fd left open.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import type { ReleaseRequest } from '../../src/client/release.js';
import { ProtocolError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { serveTestDevice, testDeviceDefinition } from '../support/server-fixture.js';
import { withDevices } from './container-fixture.js';

/** Collects requests; `next()` resolves with the next one (or one already queued). */
function recorder(): { listener: (r: ReleaseRequest) => void; seen: ReleaseRequest[]; next(): Promise<ReleaseRequest> } {
  const seen: ReleaseRequest[] = [];
  let taken = 0;
  let wake: (() => void) | undefined;
  return {
    seen,
    listener: (r) => {
      seen.push(r);
      wake?.();
    },
    async next() {
      while (seen.length <= taken) await new Promise<void>((resolve) => (wake = resolve));
      return seen[taken++] as ReleaseRequest;
    },
  };
}

describe('client: onReleaseRequest', () => {
  it('calls back with counts 1, 2 as the server requests release; dispose uninstalls the eventfd', () =>
    assertNoFdLeak(() =>
      withDevices(['dma-engine'], async ([client], [served]) => {
        const device = served?.device;
        assert.ok(client && device);
        assert.equal(device.requestRelease(), false, 'no REQ eventfd before the client registers one');
        const first = recorder();
        const second = recorder();
        const disposeFirst = await client.onReleaseRequest(first.listener);
        const disposeSecond = await client.onReleaseRequest(second.listener);
        assert.equal(device.requestRelease(), true);
        assert.deepEqual(await first.next(), { count: 1 });
        assert.deepEqual(await second.next(), { count: 1 });
        assert.equal(device.requestRelease(), true);
        assert.deepEqual(await first.next(), { count: 2 });
        assert.deepEqual(await second.next(), { count: 2 });
        await disposeFirst();
        await disposeFirst(); // idempotent
        assert.equal(device.requestRelease(), true, 'the second listener keeps the eventfd installed');
        assert.deepEqual(await second.next(), { count: 3 });
        assert.equal(first.seen.length, 2, 'a disposed listener hears nothing more');
        await disposeSecond();
        assert.equal(device.requestRelease(), false, 'the last disposer uninstalled the eventfd');
        // A new registration starts from the count the connection reached.
        const third = recorder();
        const disposeThird = await client.onReleaseRequest(third.listener);
        assert.equal(device.requestRelease(), true);
        assert.deepEqual(await third.next(), { count: 4 });
        await disposeThird();
      }),
    ));

  it('a listener that throws does not keep the others from hearing the request', () =>
    withDevices(['dma-engine'], async ([client], [served]) => {
      assert.ok(client && served);
      const ok = recorder();
      await client.onReleaseRequest(() => {
        throw new Error('listener bug');
      });
      await client.onReleaseRequest(ok.listener);
      assert.equal(served.device.requestRelease(), true);
      assert.deepEqual(await ok.next(), { count: 1 });
    }));

  it('closing the client closes the eventfd; registering on a closed client fails', () =>
    assertNoFdLeak(() =>
      withDevices(['dma-engine'], async ([client], [served]) => {
        assert.ok(client && served);
        await client.onReleaseRequest(() => undefined);
        client.close();
        await client.closed;
        await assert.rejects(client.onReleaseRequest(() => undefined), (e) => e instanceof Error && /closed/.test(e.message));
        // The session ends on the server side too: its copy is gone with it.
        await served.server.idle();
        assert.equal(served.device.requestRelease(), false);
      }),
    ));

  it('a device without a request IRQ is ENOTSUP, and nothing stays open', () =>
    assertNoFdLeak(async () => {
      const served = serveTestDevice(testDeviceDefinition({ irqs: { intx: true, msix: 2, req: false } }));
      const client = await VfioUserClient.connect(served.path, { logger: silentLogger() });
      try {
        await assert.rejects(client.onReleaseRequest(() => undefined), (e) => e instanceof ProtocolError && e.code === 'ENOTSUP');
      } finally {
        client.close();
        await served.close();
      }
    }));
});
