/**
 * ServeOptions.admit: the hook a device host uses to enforce its isolation groups (one owner, viability)
 * decides before the session starts; a refusal answers the client's VERSION with its errno.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { VfioUserClient } from '../../src/client/client.js';
import { RemoteError } from '../../src/errors.js';
import { Command } from '../../src/protocol/constants.js';
import { Errno } from '../../src/protocol/errno.js';
import type { AdmitVerdict, ServeOptions } from '../../src/server/server.js';
import type { PeerCredentials } from '../../src/transport/transport.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { createDevice } from '../../src/device/device.js';
import { serveTestDevice, testDeviceDefinition, type ServedDevice } from '../support/server-fixture.js';

const refusedWith =
  (errno: number) =>
  (e: unknown): boolean =>
    e instanceof RemoteError && e.errno === errno && e.command === Command.VERSION;

async function withServer(options: Omit<ServeOptions, 'path'>, fn: (served: ServedDevice) => Promise<void>): Promise<void> {
  const served = serveTestDevice(undefined, options);
  try {
    await fn(served);
  } finally {
    await served.close();
  }
}

describe('ServeOptions.admit', () => {
  it('is asked with the peer credentials before the session; ok serves, a refusal answers VERSION with its errno', async () => {
    const asked: PeerCredentials[] = [];
    let verdict: AdmitVerdict = { ok: true };
    const warnings: Record<string, unknown>[] = [];
    await withServer({ admit: async (client) => (asked.push(client), verdict) }, async (served) => {
      const logger = served.device.logger as { warn: (o: Record<string, unknown>, m?: string) => void };
      const warn = logger.warn.bind(logger);
      logger.warn = (o, m) => (warnings.push({ ...o, msg: m }), warn(o, m));
      const client = await VfioUserClient.connect(served.path);
      assert.equal(served.server.client?.pid, process.pid);
      client.close();
      await served.server.idle();
      verdict = { ok: false, errno: Errno.EBUSY, message: 'group p/g is owned by pid 1' };
      await assert.rejects(VfioUserClient.connect(served.path), refusedWith(Errno.EBUSY));
      verdict = { ok: false, errno: Errno.EPERM, message: 'group p/g is not viable' };
      await assert.rejects(VfioUserClient.connect(served.path), refusedWith(Errno.EPERM));
      assert.equal(served.server.sessionCount, 1, 'refused clients got no session');
      assert.deepEqual(asked, Array(3).fill({ pid: process.pid, uid: process.getuid?.(), gid: process.getgid?.() }));
      assert.deepEqual(
        warnings.filter((w) => w['msg'] === 'client refused by admission').map((w) => w['reason']),
        ['group p/g is owned by pid 1', 'group p/g is not viable'],
      );
    });
  });

  it('a hook that throws, rejects or answers garbage refuses with EPERM, and the server goes on', async () => {
    const hooks: ServeOptions['admit'][] = [
      () => {
        throw new Error('bug');
      },
      () => Promise.reject(new Error('bug')),
      () => Promise.resolve(null as never),
      () => Promise.resolve({ ok: false, errno: 0, message: 'no errno' } as never),
    ];
    let hook = hooks[0] as NonNullable<ServeOptions['admit']>;
    await withServer({ admit: (c, s) => hook(c, s) }, async (served) => {
      for (const h of hooks) {
        hook = h as NonNullable<ServeOptions['admit']>;
        await assert.rejects(VfioUserClient.connect(served.path), refusedWith(Errno.EPERM));
      }
      hook = async () => ({ ok: true });
      const client = await VfioUserClient.connect(served.path);
      client.close();
    });
  });

  it('a hook that does not answer in time refuses with EAGAIN and sees its signal aborted', async () => {
    const signals: AbortSignal[] = [];
    await withServer({ admitTimeoutMs: 150, admit: (_c, signal) => (signals.push(signal), new Promise<AdmitVerdict>(() => undefined)) }, async (served) => {
      await assert.rejects(VfioUserClient.connect(served.path), refusedWith(Errno.EAGAIN));
      assert.equal(signals.length, 1);
      assert.equal(signals[0]?.aborted, true);
    });
  });

  it('closing the server while a hook is pending aborts it and closes the waiting client; nothing leaks', async () => {
    await assertNoFdLeak(async () => {
      let started!: () => void;
      const asked = new Promise<void>((resolve) => (started = resolve));
      let signal: AbortSignal | undefined;
      const served = serveTestDevice(undefined, { admit: (_c, s) => ((signal = s), started(), new Promise<AdmitVerdict>(() => undefined)) });
      const connecting = VfioUserClient.connect(served.path, { timeoutMs: 5000 });
      await asked;
      await served.close();
      await assert.rejects(connecting);
      assert.equal(signal?.aborted, true);
    });
  });

  it('refuses an admitTimeoutMs that is not a positive integer (EINVAL), before listening', () => {
    for (const admitTimeoutMs of [0, -1, 1.5, Number.NaN]) {
      const device = createDevice(testDeviceDefinition());
      // The path's directory does not exist: the option is refused before any listening is tried.
      assert.throws(() => device.serve({ path: '/nonexistent-dir/x.sock', admitTimeoutMs }), (e: Error & { errno?: number }) => e.errno === Errno.EINVAL && /admitTimeoutMs/.test(e.message));
      device.dispose();
    }
  });

  it('an admitted verdict that is used leaves the signal alone', async () => {
    let signal: AbortSignal | undefined;
    await withServer({ admit: async (_c, s) => ((signal = s), { ok: true }) }, async (served) => {
      const client = await VfioUserClient.connect(served.path);
      client.close();
      assert.equal(signal?.aborted, false);
    });
  });
});
