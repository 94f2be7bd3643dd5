/**
 * Hostile clients that never read their replies (issue 11, findings 2 and 3),
 * against `vfio-user serve` in a child process: the server stops reading a
 * session whose replies pile up, so its memory and fds stay bounded, it stays
 * alive, and the next client is served once the hostile one leaves.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, RegionIndex } from '../../src/protocol/constants.js';
import { encodeVersion, VERSION_REQUEST_PAD } from '../../src/protocol/version.js';
import { encodeRegionAccess } from '../../src/protocol/region-access.js';
import { encodeRegionInfoRequest } from '../../src/protocol/region.js';
import { encodeDeviceInfo } from '../../src/protocol/device.js';
import { buildMessage } from '../support/wire-builder.js';
import { StepClient } from '../support/step-client.js';
import { startCliServer, type ChildServer } from '../support/qemu/servers.js';
import { alive, eventually, fdCount, rssBytes } from '../support/process-stats.js';

const MiB = 1024 * 1024;

/** A raw client: writes messages, never reads a byte. */
async function deafClient(path: string): Promise<Socket> {
  const socket = connect(path);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.pause(); // never read: replies stay in the socket, then in the server
  const caps = { maxMsgFds: 8, maxDataXferSize: MiB, maxDmaMaps: 65535, pgsizes: 4096n };
  socket.write(buildMessage({ msgId: 0, cmd: Command.VERSION, flags: 0 }, encodeVersion({ major: 0, minor: 2, capabilities: caps }, VERSION_REQUEST_PAD)));
  return socket;
}

/** Sends `count` copies of one request (ids wrap), in one write. */
function flood(socket: Socket, count: number, cmd: number, payload: Uint8Array): void {
  const messages = Array.from({ length: count }, (_, i) => buildMessage({ msgId: (i + 1) & 0xffff, cmd, flags: 0 }, payload));
  socket.write(Buffer.concat(messages));
}

/** Closes the hostile client, then checks the server serves a fresh one. */
async function servesNextClient(server: ChildServer, socket: Socket): Promise<void> {
  socket.destroy();
  const { client } = await StepClient.open(server.path);
  await client.ok(Command.DEVICE_GET_INFO, encodeDeviceInfo({ argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 }));
  client.close();
}

describe('hostile client: replies never read', { timeout: 60_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-user-security-'));
  let server: ChildServer;
  let pid: number;

  before(async () => {
    server = await startCliServer(dir, 'memory', ['--size', '64M']);
    pid = server.child.pid as number;
  });

  after(async () => {
    await server.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  it('1 MiB REGION_READs never read: the server\'s RSS stays bounded (it stops reading the session)', async (t) => {
    const before = rssBytes(pid);
    const socket = await deafClient(server.path);
    // 512 reads of 1 MiB = 512 MiB of replies asked for: without back-pressure the server queues them all.
    flood(socket, 512, Command.REGION_READ, encodeRegionAccess({ offset: 0n, region: RegionIndex.BAR0, count: MiB }));
    await new Promise((r) => setTimeout(r, 1500)); // let the server do what it will with the flood
    const grown = rssBytes(pid) - before;
    t.diagnostic(`server RSS ${(before / MiB).toFixed(1)} → ${((before + grown) / MiB).toFixed(1)} MiB under 512 MiB of unread replies`);
    assert.ok(alive(pid));
    assert.ok(grown < 96 * MiB, `server RSS grew by ${(grown / MiB).toFixed(1)} MiB`);
    await servesNextClient(server, socket);
    assert.ok(alive(pid));
  });

  it('GET_REGION_INFO replies carrying fds never read: the server\'s fds stay bounded, and it stays up', async (t) => {
    const fdsBefore = fdCount(pid);
    const socket = await deafClient(server.path);
    flood(socket, 30_000, Command.DEVICE_GET_REGION_INFO, encodeRegionInfoRequest({ argsz: 64, index: RegionIndex.BAR0 }));
    await new Promise((r) => setTimeout(r, 1500));
    assert.ok(alive(pid), `server died: ${server.output()}`);
    const held = fdCount(pid) - fdsBefore;
    t.diagnostic(`server fds ${fdsBefore} → ${fdsBefore + held} under 30000 unread fd-carrying replies`);
    assert.ok(held < 200, `server holds ${held} more fds`);
    await servesNextClient(server, socket);
    assert.ok(await eventually(() => fdCount(pid) <= fdsBefore + 2, 3000), `fds after: ${fdCount(pid)} vs ${fdsBefore}`);
  });
});
