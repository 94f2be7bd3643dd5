/**
 * Fault injection in front of a device that is not ours: libvfio-user's
 * `samples/gpio-pci-idio-16` behind a Mediator with the fault plugin, driven by
 * our VfioUserClient. Optional: runs when `LIBVFIO_USER_BUILD` names a
 * libvfio-user build (docs/interop.md), skips otherwise. The sample re-attaches
 * after every client, so one sample serves every test here.
 *
 * The sample's BAR2 byte 1 reads the inputs: bit i is 1 while output pin i's
 * toggle count is a multiple of 3 (0xff on a fresh device; a write of 0x01 to
 * byte 0 toggles pin 0 → 0xfe).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import type { ClientOptions } from '../../src/client/core.js';
import { ConnectionClosedError, RemoteError, TimeoutError } from '../../src/errors.js';
import { createFaultPlugin, parseFaultSpec, type FaultPlugin } from '../../src/mediator/fault.js';
import { Mediator } from '../../src/mediator/mediator.js';
import { libvfioUserBuild, startSampleServer, type SampleServer } from '../interop/libvfio-user.js';
import { waitFor } from './fault-support.js';

const build = libvfioUserBuild();
const BAR2 = 2;

describe('fault injection in front of libvfio-user samples/gpio-pci-idio-16', { skip: build.skip }, () => {
  let dir: string;
  let sample: SampleServer;
  let devicePath: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vfio-user-fault-interop-'));
    devicePath = join(dir, 'gpio.sock');
    sample = await startSampleServer(join(build.dir ?? '', 'samples', 'gpio-pci-idio-16'), ['-v', devicePath], devicePath);
  });

  after(async () => {
    const end = await sample?.stop();
    rmSync(dir, { recursive: true, force: true });
    assert.equal(end?.signal, 'SIGTERM', `gpio-pci-idio-16 ended unexpectedly: ${end?.stderr}`);
  });

  /** A mediator with `specs` in front of the sample for the duration of `fn`. */
  async function through(specs: string[], fn: (connect: (o?: ClientOptions) => Promise<VfioUserClient>, faults: FaultPlugin, mediator: Mediator) => Promise<void>): Promise<void> {
    const faults = createFaultPlugin(specs.map(parseFaultSpec), { seed: 5 });
    const mediator = await Mediator.listen({ upstream: devicePath, listen: join(dir, 'm.sock'), plugins: [faults] });
    const clients: VfioUserClient[] = [];
    try {
      await fn(
        async (o) => {
          const c = await VfioUserClient.connect(mediator.path, o);
          clients.push(c);
          return c;
        },
        faults,
        mediator,
      );
    } finally {
      for (const c of clients) c.close();
      await mediator.close();
    }
  }

  const inputs = async (c: VfioUserClient): Promise<number> => (await c.regionRead(BAR2, 1n, 1))[0]!;

  it('error on request and on reply: RemoteError with the errno; the sample did (on=reply) or did not (on=request) toggle the pin', () =>
    // The first write is failed on its way in, so its reply never exists: the second write's reply is the reply rule's first match.
    through(['REGION_WRITE:error=EIO:count=1', 'REGION_WRITE:error=EAGAIN:on=reply:count=1'], async (connect) => {
      const c = await connect();
      assert.equal(await inputs(c), 0xff);
      await assert.rejects(c.regionWrite(BAR2, 0n, Uint8Array.of(1)), (e: unknown) => e instanceof RemoteError && e.errno === 5);
      assert.equal(await inputs(c), 0xff, 'the sample never saw the write');
      await assert.rejects(c.regionWrite(BAR2, 0n, Uint8Array.of(1)), (e: unknown) => e instanceof RemoteError && e.errno === 11);
      assert.equal(await inputs(c), 0xfe, 'the sample toggled pin 0');
    }));

  it('drop: the client times out, then the session goes on', () =>
    through(['DEVICE_GET_INFO:drop:count=1'], async (connect) => {
      const c = await connect({ timeoutMs: 1000 });
      await assert.rejects(c.deviceInfo(), (e: unknown) => e instanceof TimeoutError);
      assert.equal((await c.deviceInfo()).numRegions, 9);
    }));

  it('disconnect: ConnectionClosedError; the sample re-attaches and serves the next client', () =>
    through(['REGION_READ:disconnect:count=1'], async (connect, _faults, mediator) => {
      const c = await connect();
      await assert.rejects(inputs(c), (e: unknown) => e instanceof ConnectionClosedError);
      await waitFor(() => mediator.sessionCount === 0, 'the session to end');
      // The sample takes its next client once it has seen the last one go: retry the connect for a while.
      let next: VfioUserClient | undefined;
      for (let i = 0; i < 100 && next === undefined; i++) {
        next = await connect({ timeoutMs: 2000 }).catch(() => undefined);
        if (next === undefined) await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(next, 'a new client got in');
      assert.equal((await next.deviceInfo()).numRegions, 9);
    }));
});
