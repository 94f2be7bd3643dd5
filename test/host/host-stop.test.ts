/**
 * Stopping an instance in use (in process, the `hostfix` fixture parent): the client is asked to release it
 * (REQ eventfd) and a cooperating one leaves (released), one that ignores the requests is forced off at the
 * timeout, one without a request channel is forced and reported so, `force` is immediate; the result and the
 * audit lines say which, after how many requests.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { VfioUserError } from '../../src/errors.js';
import type { DeviceHost } from '../../src/host/host.js';
import { hostDirs, recordingLogger, startHost, until, type HostDirs } from './host-support.js';

const U1 = 'b1000000-0000-4000-8000-000000000001';
const U2 = 'b1000000-0000-4000-8000-000000000002';
const U3 = 'b1000000-0000-4000-8000-000000000003';
const U4 = 'b1000000-0000-4000-8000-000000000004';

describe('DeviceHost stop with release', () => {
  let dirs: HostDirs;
  let host: DeviceHost;
  const logger = recordingLogger();
  const audit = (name: string, uuid: string): Record<string, unknown> | undefined => logger.events.find((e) => e.audit === name && e.uuid === uuid);
  const audits = (name: string, uuid: string): Record<string, unknown>[] => logger.events.filter((e) => e.audit === name && e.uuid === uuid);
  const stopping = (uuid: string): Record<string, unknown> | undefined => logger.events.find((e) => e.event === 'instance-stopping' && e.uuid === uuid);
  const echo = async (uuid: string): Promise<string> => (await host.start({ uuid, parent: 'hostfix', mdevType: 'hostfix-echo' })).socket;
  /** Connects and waits until the host lists the client (its session started). */
  const attach = async (uuid: string, socket: string): Promise<VfioUserClient> => {
    const client = await VfioUserClient.connect(socket);
    await until(async () => (await host.list({ uuid })).instances[0]?.client, 'the client to show');
    return client;
  };

  before(async () => {
    dirs = hostDirs();
    host = await startHost(dirs, { logger });
  });
  after(async () => {
    await host.close();
    dirs.dispose();
  });

  it('a client that releases the device when asked: stopped without force (released, after N requests)', async () => {
    const client = await attach(U1, await echo(U1));
    const counts: number[] = [];
    try {
      await client.onReleaseRequest((request) => {
        counts.push(request.count);
        client.close();
      });
      const result = await host.stop({ uuid: U1, timeoutMs: 60_000 });
      assert.equal(result.release, 'released');
      assert.ok(result.requests >= 1);
      assert.equal(result.delivered, true);
      assert.deepEqual(counts.slice(0, 1), [1]);
      assert.equal((stopping(U1)?.client as { pid: number }).pid, process.pid);
      assert.equal(stopping(U1)?.timeoutMs, 60_000);
      assert.deepEqual(audits('release-requested', U1).map((e) => [e.count, e.delivered]).slice(0, 1), [[1, true]]);
      assert.equal(audits('release-requested', U1).length, result.requests, 'one audit line per request');
      assert.equal(audits('released', U1).length, 1);
      assert.equal(audit('released', U1)?.requests, result.requests);
      assert.equal(audit('forced', U1), undefined);
      assert.deepEqual((await host.list({ uuid: U1 })).instances, []);
    } finally {
      client.close();
    }
  });

  it('a client that ignores the requests is forced off at the timeout (forced, audit line)', async () => {
    const client = await attach(U2, await echo(U2));
    try {
      let asked = 0;
      await client.onReleaseRequest(() => void asked++);
      const result = await host.stop({ uuid: U2, timeoutMs: 300 });
      assert.equal(result.release, 'forced');
      assert.ok(result.requests >= 1);
      assert.equal(result.delivered, true);
      await client.closed; // its session was closed
      assert.ok(asked >= 1, 'it was asked');
      assert.equal(audits('forced', U2).length, 1);
      const forced = audit('forced', U2);
      assert.equal(forced?.requests, result.requests);
      assert.match(String(forced?.reason), /did not release the device in time/);
    } finally {
      client.close();
    }
  });

  it('force while a stop waits for the client cuts the wait short: both stops report the client forced', async () => {
    const U5 = 'b1000000-0000-4000-8000-000000000005';
    const client = await attach(U5, await echo(U5));
    try {
      await client.onReleaseRequest(() => undefined); // asked, never leaves
      const waiting = host.stop({ uuid: U5, timeoutMs: 600_000 });
      await until(() => audit('release-requested', U5), 'the first release request');
      const forced = await host.stop({ uuid: U5, force: true });
      const first = await waiting;
      assert.deepEqual([forced.release, first.release], ['forced', 'forced']);
      assert.ok(first.waitedMs < 600_000, 'cut short');
      assert.match(String(audit('forced', U5)?.reason), /forced by request/);
      assert.deepEqual((await host.list({ uuid: U5 })).instances, []);
    } finally {
      client.close();
    }
  });

  it('a client without a request channel cannot be asked: forced at the timeout, reported undelivered', async () => {
    const client = await attach(U3, await echo(U3));
    try {
      const result = await host.stop({ uuid: U3, timeoutMs: 200 });
      assert.deepEqual([result.release, result.delivered], ['forced', false]);
      assert.ok(audits('release-requested', U3).some((e) => e.delivered === false && /no REQ channel registered by the client/.test(String(e.msg))));
      assert.equal(audit('forced', U3)?.delivered, false);
      assert.match(String(audit('forced', U3)?.reason), /no REQ channel registered by the client/);
    } finally {
      client.close();
    }
  });

  it('the host shutting down does not wait for a client a stop is asking: it is forced off', async () => {
    const dirs2 = hostDirs();
    const other = await startHost(dirs2);
    const U6 = 'b1000000-0000-4000-8000-000000000006';
    const client = await VfioUserClient.connect((await other.start({ uuid: U6, parent: 'hostfix', mdevType: 'hostfix-echo' })).socket);
    try {
      await client.onReleaseRequest(() => undefined);
      await until(async () => (await other.list({ uuid: U6 })).instances[0]?.client, 'the client to show');
      const waiting = other.stop({ uuid: U6, timeoutMs: 600_000 });
      await until(async () => (await other.list({ uuid: U6 })).instances[0]?.state === 'stopping', 'the stop to wait');
      await other.close();
      const result = await waiting;
      assert.equal(result.release, 'forced');
      assert.ok(result.waitedMs < 600_000, 'cut short');
      await client.closed;
    } finally {
      client.close();
      await other.close();
      dirs2.dispose();
    }
  });

  it('force is immediate; an idle instance stops idle; a bad timeout or force with a timeout is refused, nothing changed', async () => {
    const socket = await echo(U4);
    const client = await attach(U4, socket);
    try {
      for (const [request, pattern] of [
        [{ uuid: U4, force: true, timeoutMs: 5 }, /conflicts with timeoutMs/],
        [{ uuid: U4, timeoutMs: 0 }, /timeoutMs must be an integer from 1/],
        [{ uuid: U4, timeoutMs: 1.5 }, /timeoutMs must be an integer/],
        [{ uuid: U4, timeoutMs: '5s' }, /timeoutMs must be an integer/],
      ] as const) {
        await assert.rejects(host.stop(request as never), (e: unknown) => e instanceof VfioUserError && e.code === 'EINVAL' && pattern.test(e.message));
      }
      assert.equal((await host.list({ uuid: U4 })).instances[0]?.state, 'active');
      const result = await host.stop({ uuid: U4, force: true });
      assert.deepEqual([result.release, result.requests, result.delivered], ['forced', 0, undefined]);
      assert.match(String(audit('forced', U4)?.reason), /forced by request/);
      assert.equal(stopping(U4)?.force, true);
      assert.equal(audit('release-requested', U4), undefined);
    } finally {
      client.close();
    }
    await echo(U4);
    const idle = await host.stop({ uuid: U4 });
    assert.deepEqual([idle.release, idle.requests, idle.waitedMs], ['idle', 0, 0]);
  });
});
