/**
 * Issue 11 finding 9: the migration channel over TLS with mutual
 * authentication. Certificates are made at test time with the `openssl` CLI
 * (skipped, with the reason, when it is absent): a CA, the receiver's
 * certificate (SAN 127.0.0.1), a sender's, and a sender's from another CA. A
 * migration over TLS commits, and so does a container of three devices on
 * one channel; a sender with no certificate, one from another
 * CA, or a plaintext sender is refused at the handshake and the receiver
 * takes the next; a receiver whose certificate the sender's CA did not sign is
 * refused by the sender. Plaintext beyond loopback is refused by the CLI.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isLoopback, loadTlsCredentials, type ChannelTlsCredentials } from '../../src/orchestrator/channel-tls.js';
import { migrate } from '../../src/orchestrator/migrate.js';
import { RemoteDestination } from '../../src/orchestrator/remote.js';
import { MigrationState as S } from '../../src/protocol/constants.js';
import { spawn } from 'node:child_process';
import { createDmaEngineDevice } from '../../src/devices/dma-engine.js';
import { MAIN, runCli, serve } from '../cli/support.js';
import { GUEST, IOVA, program, saveState, withSetup } from './remote-fixture.js';
import { migrateContainer } from '../../src/orchestrator/migrate.js';
import { RemoteContainerDestination } from '../../src/orchestrator/remote-container.js';
import { deviceStates, prepareSource } from './container-fixture.js';
import { statesOf, withRemote } from './remote-container-fixture.js';

const hasOpenssl = ((): boolean => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const skip = hasOpenssl ? false : 'the openssl CLI is not installed (it makes the test certificates)';

/** A CA and certificates signed by it, in QEMU's tls-creds-x509 layout under `dir`. */
function makeCreds(dir: string, cn: string): void {
  const ssl = (...args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  ssl('req', '-x509', ...ec, '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '1', '-subj', `/CN=${cn} CA`);
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  writeFileSync(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const side of ['server', 'client']) {
    ssl('req', ...ec, '-keyout', `${side}-key.pem`, '-out', `${side}.csr`, '-subj', `/CN=${cn} ${side}`);
    ssl('x509', '-req', '-in', `${side}.csr`, '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', `${side}-cert.pem`, '-days', '1', '-extfile', `${side}.ext`);
  }
}

describe('migration channel over TLS (mutual authentication)', { skip }, () => {
  let root = '';
  let good: { server: ChannelTlsCredentials; client: ChannelTlsCredentials; dir: string };
  let rogue: { server: ChannelTlsCredentials; client: ChannelTlsCredentials };

  before(() => {
    root = mkdtempSync(join(tmpdir(), 'vfio-user-tls-'));
    for (const name of ['good', 'rogue']) {
      execFileSync('mkdir', [join(root, name)]);
      makeCreds(join(root, name), name);
    }
    good = { server: loadTlsCredentials(join(root, 'good'), 'server'), client: loadTlsCredentials(join(root, 'good'), 'client'), dir: join(root, 'good') };
    rogue = { server: loadTlsCredentials(join(root, 'rogue'), 'server'), client: loadTlsCredentials(join(root, 'rogue'), 'client') };
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  it('a migration over TLS commits; the source stopped, the destination runs', () => {
    const refused: string[] = [];
    return withSetup(async (src, rx) => {
      await program(src);
      const state = await saveState(src.engine);
      const destination = await RemoteDestination.connect(rx.url, { memory: { size: src.memory.size, iova: IOVA }, tls: good.client });
      const outcome = rx.nextOutcome();
      const report = await migrate({ source: src, destination, downtimeBudgetMs: 5000 });
      assert.equal(report.outcome, 'migrated', report.reason);
      assert.equal((await outcome).outcome, 'committed');
      assert.equal(await rx.last?.client.migrationState(), S.RUNNING);
      assert.ok(Buffer.from(rx.last?.memory.read(0n, GUEST) ?? []).equals(Buffer.from(src.memory.read(0n, GUEST))), 'guest memory arrived intact');
      assert.deepEqual(await saveState(rx.engine), state, 'device state arrived intact');
      destination.close();
      assert.deepEqual(refused, []);
    }, { tls: good.server, onTlsRefused: (peer) => void refused.push(peer) });
  });

  it('a container of three devices over TLS: one authenticated channel carries them all; guest memory and every state arrive', () =>
    withRemote(async (src, rx) => {
      await prepareSource(src);
      const destination = await RemoteContainerDestination.connect(rx.url, { memory: { size: src.memory.size, iova: src.side.iova }, devices: src.side.devices.map((d) => d.name as string), tls: good.client });
      const outcome = rx.nextOutcome();
      try {
        const report = await migrateContainer({ source: src.side, destination, downtimeBudgetMs: 5000 });
        assert.equal(report.outcome, 'migrated', report.reason);
        assert.equal((await outcome).outcome, 'committed');
        const prepared = rx.prepared[0];
        assert.ok(prepared);
        assert.ok(Buffer.from(prepared.memory.read(0n, Number(src.memory.size))).equals(Buffer.from(src.memory.read(0n, Number(src.memory.size)))), 'guest memory arrived intact');
        const [sent, received] = [await deviceStates(src), await statesOf(rx.devices)];
        for (const [name, state] of sent) assert.ok(received.get(name)?.equals(state), `${name} state arrived intact`);
      } finally {
        destination.close();
      }
    }, { tls: good.server }));

  it('no client certificate, one from another CA, or plaintext: refused at the handshake; the receiver serves the next sender', () => {
    const refused: string[] = [];
    return withSetup(async (src, rx) => {
      const memory = { size: src.memory.size, iova: IOVA };
      const noCert = { ca: good.client.ca } as unknown as ChannelTlsCredentials; // a sender with no certificate of its own
      await assert.rejects(RemoteDestination.connect(rx.url, { memory, tls: noCert, timeoutMs: 3000 }));
      await assert.rejects(RemoteDestination.connect(rx.url, { memory, tls: { ...rogue.client, ca: good.client.ca }, timeoutMs: 3000 }));
      await assert.rejects(RemoteDestination.connect(rx.url, { memory, timeoutMs: 1000 }), 'a plaintext hello is not TLS');
      assert.equal(rx.last, undefined, 'nothing was prepared for them');
      const ok = await RemoteDestination.connect(rx.url, { memory, tls: good.client });
      assert.equal(rx.receiver.outcomeOf(ok.migrationId).outcome, 'in-progress');
      await ok.abandon();
      assert.ok(refused.length >= 2, `handshakes refused: ${refused.length}`);
    }, { tls: good.server, onTlsRefused: (peer) => void refused.push(peer) });
  });

  it('a receiver whose certificate another CA signed is refused by the sender (EACCES)', () =>
    withSetup(async (src, rx) => {
      await assert.rejects(
        RemoteDestination.connect(rx.url, { memory: { size: src.memory.size, iova: IOVA }, tls: good.client, timeoutMs: 3000 }),
        (e: Error & { errno?: number }) => e.errno === 13 && /certificate/i.test(e.message),
      );
    }, { tls: rogue.server }));

  it('the CLI end to end: migrate-listen --tls-creds and migrate --tls-creds migrate the demo', async () => {
    const engine = createDmaEngineDevice();
    const served = serve(engine.device);
    const listener = spawn(process.execPath, [MAIN, 'migrate-listen', '--port', '0', '--socket', served.path, '--tls-creds', good.dir, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let err = '';
      const url = await new Promise<string>((resolve, reject) => {
        listener.stderr?.on('data', (d: Buffer) => {
          err += d.toString();
          const m = /listening (tcp:\/\/\S+) \(TLS 1\.3, client certificates required/.exec(err);
          if (m?.[1]) resolve(m[1]);
        });
        listener.once('close', () => reject(new Error(err)));
      });
      const r = await runCli(['migrate', '--demo', '--to', url, '--jobs', '60', '--downtime', '5s', '--tls-creds', good.dir, '--json'], 60_000);
      assert.equal(r.code, 0, r.stderr);
      const summary = JSON.parse(r.stdout) as { outcome: string; memoryVerified: boolean };
      assert.equal(summary.outcome, 'migrated');
      assert.equal(summary.memoryVerified, true);
    } finally {
      listener.kill('SIGKILL');
      await served.close();
    }
  });

  it('the CLI: plaintext beyond loopback is refused unless --no-tls; unreadable credentials are named', async () => {
    const [wide, creds] = await Promise.all([
      runCli(['migrate-listen', '--host', '0.0.0.0', '--port', '0']),
      runCli(['migrate', '--demo', '--to', 'tcp://192.0.2.1:7777', '--tls-creds', join(root, 'nowhere')]),
    ]);
    assert.equal(wide.code, 1);
    assert.match(wide.stderr, /listening on 0\.0\.0\.0 \(beyond loopback\) needs --tls-creds DIR/);
    assert.equal(creds.code, 1);
    assert.match(creds.stderr, /cannot read .*nowhere\/ca-cert\.pem: ENOENT/);
    assert.ok(isLoopback('127.0.0.1') && isLoopback('localhost') && isLoopback('[::1]') && isLoopback('127.8.9.10'));
    assert.ok(!isLoopback('0.0.0.0') && !isLoopback('10.0.0.1') && !isLoopback('::') && !isLoopback('example.com'));
  });
});
