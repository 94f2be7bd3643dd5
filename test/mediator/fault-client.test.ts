/**
 * The client against a real device whose replies go missing or come late (the
 * fault injector in front of our GPIO card), instead of a scripted fake
 * server (these cases moved here from test/client/hostile-server.test.ts,
 * which keeps the malformed-bytes cases only a fake can produce): a request
 * that is never answered times out (ETIMEDOUT) and the client stays usable; a
 * reply that arrives after its request timed out is logged and dropped, the
 * client stays usable; no fd is left behind.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { VfioUserClient } from '../../src/client/client.js';
import { TimeoutError } from '../../src/errors.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { withFaults } from './fault-support.js';
import { warningsLogger } from '../support/recording-logger.js';

const ETIMEDOUT = 110;
/** The GPIO card's DEVICE_GET_INFO: PCI | RESET, 9 regions, 5 IRQ indexes. */
const GPIO_INFO = { argsz: 16, flags: 3, numRegions: 9, numIrqs: 5 };


async function staysUsable(client: VfioUserClient): Promise<void> {
  assert.deepEqual(await client.deviceInfo(), GPIO_INFO);
  assert.equal(client.inFlight, 0);
}

describe('client vs a device whose replies are lost or late (fault injection)', () => {
  it('no reply at all (DEVICE_GET_INFO dropped): TimeoutError ETIMEDOUT, then the client is still usable', () =>
    assertNoFdLeak(() =>
      withFaults(['DEVICE_GET_INFO:drop:count=1'], async ({ connect, faults }) => {
        const client = await connect({ timeoutMs: 1000 });
        await assert.rejects(client.deviceInfo(), (e: unknown) => e instanceof TimeoutError && e.errno === ETIMEDOUT);
        assert.equal(client.inFlight, 0);
        await staysUsable(client);
        assert.deepEqual(faults.stats()[0], { rule: 'DEVICE_GET_INFO:drop:count=1', matched: 2, injected: 1 });
      }),
    ));

  it('a late reply after a timeout is dropped without crashing (logged); the next request resolves', () =>
    assertNoFdLeak(() =>
      withFaults(['DEVICE_GET_INFO:delay=1500ms:on=reply:count=1'], async ({ connect }) => {
        const logger = warningsLogger();
        // The timeout also bounds the VERSION handshake: generous for a loaded machine, still below the delay.
        const client = await connect({ timeoutMs: 1000, logger });
        await assert.rejects(client.deviceInfo(), (e: unknown) => e instanceof TimeoutError && e.errno === ETIMEDOUT);
        assert.equal(client.inFlight, 0);
        // The next reply queues behind the late one (the mediator keeps order): the late one arrives first and is dropped.
        await staysUsable(client);
        assert.equal(logger.warnings.filter((w) => /no pending request/.test(w)).length, 1, 'the late reply was logged once');
      }),
    ));
});
