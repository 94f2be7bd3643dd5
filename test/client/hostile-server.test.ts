/**
 * The client against a hostile or broken server (the scriptable fake): every
 * malformed reply ends in a specific error, and the client either stays usable
 * (a following deviceInfo succeeds) or closes cleanly (`closed` resolves,
 * later requests fail ENOTCONN). Fds that arrive where none belong are closed.
 * A reply that never comes or comes after its timeout is tested against a real
 * device behind the fault injector (test/mediator/fault-client.test.ts).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import type { ClientOptions } from '../../src/client/core.js';
import { ConnectionClosedError, ProtocolError, RemoteError, TimeoutError } from '../../src/errors.js';
import { createEventFd, native } from '../../src/native/addon.js';
import { assertNoFdLeak } from '../support/fd-count.js';
import { FakeServer, Wire, answerDeviceInfo, deviceInfoPayload, versionPayload, type FakeConnection, type FakeServerOptions, type Responder } from '../support/fake-server.js';
import { buildMessage, pattern, wb } from '../support/wire-builder.js';
import { warningsLogger } from '../support/recording-logger.js';

const E = { EPERM: 1, EIO: 5, EFAULT: 14, EBUSY: 16, EINVAL: 22, EPROTO: 71, ENOTCONN: 107, ETIMEDOUT: 110 } as const;
const REGION_READ = 9;


interface Ctx {
  fake: FakeServer;
  client: VfioUserClient;
  conn: FakeConnection;
  logger: ReturnType<typeof warningsLogger>;
}

/** Runs `fn` with a fake server and a connected client; closes both even on failure. */
async function withFake(fn: (ctx: Ctx) => Promise<void>, options: { fake?: FakeServerOptions; client?: ClientOptions } = {}): Promise<void> {
  const fake = FakeServer.start(options.fake);
  const logger = warningsLogger();
  let client: VfioUserClient | undefined;
  try {
    client = await VfioUserClient.connect(fake.path, { logger, ...options.client });
    await fn({ fake, client, conn: await fake.connection(), logger });
    assert.deepEqual(fake.errors, [], 'the fake server responders did not fail');
  } finally {
    client?.close();
    await fake.close();
  }
}

/** The first request (after VERSION) gets `first`; later ones are answered properly. */
function once(first: Responder): Responder {
  let used = false;
  return (m, conn) => {
    if (used) return answerDeviceInfo(m, conn);
    used = true;
    return first(m, conn);
  };
}

const isClosed = (e: unknown): boolean => e instanceof ConnectionClosedError && e.errno === E.ENOTCONN;
const isProto = (e: unknown): boolean => e instanceof ProtocolError && e.errno === E.EPROTO;
const remote = (errno: number, payload?: Uint8Array) => (e: unknown) => {
  assert.ok(e instanceof RemoteError, `expected RemoteError, got ${String(e)}`);
  assert.equal(e.errno, errno);
  assert.equal(e.command, Wire.DEVICE_GET_INFO);
  assert.deepEqual(e.payload, payload);
  return true;
};

async function staysUsable(client: VfioUserClient): Promise<void> {
  assert.deepEqual(await client.deviceInfo(), { argsz: 16, flags: 3, numRegions: 9, numIrqs: 5 });
  assert.equal(client.inFlight, 0);
}

async function closedCleanly(client: VfioUserClient, conn: FakeConnection): Promise<Error | undefined> {
  const reason = await client.closed;
  await conn.closed;
  await assert.rejects(client.deviceInfo(), isClosed);
  assert.equal(client.inFlight, 0);
  return reason;
}

/** Sends `bytes` with one fresh eventfd attached (ours closed right after sending). */
function sendWithFd(conn: FakeConnection, bytes: Uint8Array): void {
  const fd = createEventFd();
  try {
    conn.sendRaw(bytes, [fd]);
  } finally {
    native.close(fd);
  }
}

describe('client vs a hostile server: replies to a request', () => {
  const rows: { name: string; respond: Responder; expect: (e: unknown) => boolean; client?: ClientOptions }[] = [
    {
      name: 'a reply for the wrong command',
      respond: (m, c) => c.reply(m, deviceInfoPayload(), { cmd: REGION_READ }),
      expect: isProto,
    },
    {
      name: 'a truncated payload (8 of 16 bytes)',
      respond: (m, c) => c.reply(m, wb().u32(16).u32(3).build()),
      expect: isProto,
    },
    {
      name: 'an empty payload',
      respond: (m, c) => c.reply(m),
      expect: isProto,
    },
    {
      name: 'an error reply with a payload',
      respond: (m, c) => c.errorReply(m, E.EIO, pattern(12)),
      expect: remote(E.EIO, pattern(12)),
    },
    { name: 'an error reply with errno 0', respond: (m, c) => c.errorReply(m, 0), expect: remote(E.EINVAL) },
    { name: 'an error reply with errno 99999', respond: (m, c) => c.errorReply(m, 99999), expect: remote(E.EINVAL) },
    { name: 'an error reply with errno 4097', respond: (m, c) => c.errorReply(m, 4097), expect: remote(E.EINVAL) },
    { name: 'an error reply with errno 0xffffffff', respond: (m, c) => c.errorReply(m, 0xffffffff), expect: remote(E.EINVAL) },
    { name: 'an error reply with errno 4096 (kept)', respond: (m, c) => c.errorReply(m, 4096), expect: remote(4096) },
    {
      name: 'only a reply with the wrong msg_id (short timeout)',
      respond: (m, c) => c.reply(m, deviceInfoPayload(), { msgId: (m.header.msgId + 100) & 0xffff }),
      expect: (e) => e instanceof TimeoutError && e.errno === E.ETIMEDOUT,
      client: { timeoutMs: 50 },
    },
    {
      name: 'an error reply carrying an fd',
      respond: (m, c) => sendWithFd(c, buildMessage({ msgId: m.header.msgId, cmd: m.header.cmd, flags: Wire.REPLY | Wire.ERROR, errorNo: E.EBUSY })),
      expect: remote(E.EBUSY),
    },
    {
      name: 'a reply for the wrong command carrying an fd',
      respond: (m, c) => sendWithFd(c, buildMessage({ msgId: m.header.msgId, cmd: REGION_READ, flags: Wire.REPLY }, deviceInfoPayload())),
      expect: isProto,
    },
  ];
  for (const row of rows) {
    it(`${row.name}: a clear error, then the client is still usable`, () =>
      assertNoFdLeak(() =>
        withFake(
          async ({ client }) => {
            await assert.rejects(client.deviceInfo(), row.expect);
            assert.equal(client.inFlight, 0);
            await staysUsable(client);
          },
          { fake: { responder: once(row.respond) }, ...(row.client ? { client: row.client } : {}) },
        ),
      ));
  }

  it('a reply with an unknown msg_id is logged and dropped; the real reply still resolves the request', () =>
    withFake(
      async ({ client, logger }) => {
        await staysUsable(client);
        assert.equal(logger.warnings.filter((w) => /no pending request/.test(w)).length, 1);
      },
      {
        fake: {
          responder: once((m, c) => {
            c.reply(m, wb().u32(16).u32(0).u32(0).u32(0).build(), { msgId: (m.header.msgId + 7) & 0xffff });
            c.reply(m, deviceInfoPayload());
          }),
        },
      },
    ));

  it('fds attached to replies that carry none are closed (success, and unknown msg_id)', () =>
    assertNoFdLeak(() =>
      withFake(
        async ({ client }) => {
          await staysUsable(client);
          await staysUsable(client);
        },
        {
          fake: {
            responder: once((m, c) => {
              sendWithFd(c, buildMessage({ msgId: (m.header.msgId + 3) & 0xffff, cmd: m.header.cmd, flags: Wire.REPLY }, deviceInfoPayload()));
              sendWithFd(c, buildMessage({ msgId: m.header.msgId, cmd: m.header.cmd, flags: Wire.REPLY }, deviceInfoPayload()));
            }),
          },
        },
      ),
    ));
});

describe('client vs a hostile server: broken streams', () => {
  const rows: { name: string; respond: Responder }[] = [
    { name: 'a reply whose msg_size is over the limit', respond: (m, c) => c.sendRaw(buildMessage({ msgId: m.header.msgId, cmd: m.header.cmd, flags: Wire.REPLY, msgSize: 0x7fff_ffff })) },
    { name: 'a reply whose msg_size is below the header size', respond: (m, c) => c.sendRaw(buildMessage({ msgId: m.header.msgId, cmd: m.header.cmd, flags: Wire.REPLY, msgSize: 8 })) },
    { name: 'garbage bytes', respond: (_m, c) => c.sendRaw(new TextEncoder().encode('this is not vfio-user at all!!!!')) },
  ];
  for (const row of rows) {
    it(`${row.name}: the stream closes, pending requests fail, closed resolves with the reason`, () =>
      assertNoFdLeak(() =>
        withFake(
          async ({ client, conn }) => {
            await assert.rejects(client.deviceInfo(), (e: unknown) => isClosed(e) && (e as Error).cause instanceof ProtocolError);
            const reason = await closedCleanly(client, conn);
            assert.ok(reason instanceof ProtocolError, `closed with ${String(reason)}`);
          },
          { fake: { responder: once(row.respond) } },
        ),
      ));
  }

  it('server EOF in the middle of a reply: pending fails ENOTCONN, closed resolves with an error', () =>
    withFake(
      async ({ client, conn }) => {
        await assert.rejects(client.deviceInfo(), isClosed);
        const reason = await closedCleanly(client, conn);
        assert.ok(reason instanceof Error);
      },
      {
        fake: {
          responder: once((m, c) => {
            c.sendRaw(buildMessage({ msgId: m.header.msgId, cmd: m.header.cmd, flags: Wire.REPLY }, deviceInfoPayload()).subarray(0, 20));
            c.close();
          }),
        },
      },
    ));

  it('server EOF between messages: closed resolves with undefined, later requests fail ENOTCONN', () =>
    withFake(async ({ client, conn }) => {
      await staysUsable(client);
      conn.close();
      assert.equal(await closedCleanly(client, conn), undefined);
    }));
});

describe('client vs a hostile server: commands from the server', () => {
  it('a command other than DMA_READ/DMA_WRITE gets an error reply; the client stays usable', () =>
    withFake(async ({ client, conn }) => {
      for (const cmd of [REGION_READ, Wire.VERSION, Wire.DEVICE_GET_INFO, 0, 99]) {
        const reply = await conn.command(cmd, pattern(16));
        assert.equal(reply.header.cmd, cmd);
        assert.equal(reply.header.flags & 0xff, Wire.REPLY | Wire.ERROR, `cmd ${cmd}`);
        assert.equal(reply.header.errorNo, E.EINVAL);
      }
      await staysUsable(client);
    }));

  it('DMA_READ / DMA_WRITE with no responder get EFAULT', () =>
    withFake(async ({ client, conn }) => {
      const read = await conn.command(Wire.DMA_READ, wb().u64(0x1000n).u64(8n).build());
      assert.deepEqual([read.header.flags, read.header.errorNo], [Wire.REPLY | Wire.ERROR, E.EFAULT]);
      const write = await conn.command(Wire.DMA_WRITE, wb().u64(0x1000n).u64(4n).bytes([1, 2, 3, 4]).build());
      assert.deepEqual([write.header.flags, write.header.errorNo], [Wire.REPLY | Wire.ERROR, E.EFAULT]);
      await staysUsable(client);
    }));

  it('DMA_READ / DMA_WRITE with malformed payloads get EINVAL; the responder is not called', () =>
    withFake(async ({ client, conn }) => {
      let calls = 0;
      client.setDmaResponder({ read: (_a, n) => (calls++, new Uint8Array(n)), write: () => void calls++ });
      const bad = [
        [Wire.DMA_READ, wb().u64(0x1000n).build()], // 8 of 16 bytes
        [Wire.DMA_READ, new Uint8Array(0)],
        [Wire.DMA_WRITE, wb().u64(0x1000n).u64(8n).bytes([1, 2, 3]).build()], // count 8, 3 data bytes
        [Wire.DMA_WRITE, wb().u64(0x1000n).build()],
      ] as const;
      for (const [cmd, payload] of bad) {
        const reply = await conn.command(cmd, payload);
        assert.deepEqual([reply.header.flags, reply.header.errorNo], [Wire.REPLY | Wire.ERROR, E.EINVAL], `cmd ${cmd} ${payload.length} bytes`);
      }
      assert.equal(calls, 0);
      const good = await conn.command(Wire.DMA_READ, wb().u64(0x1000n).u64(4n).build());
      assert.equal(good.header.flags, Wire.REPLY);
      assert.deepEqual([...good.payload], [...wb().u64(0x1000n).u64(4n).build(), 0, 0, 0, 0]);
      await staysUsable(client);
    }));

  it('DMA_READ / DMA_WRITE beyond the max_data_xfer_size the client advertised get EINVAL; the responder is not called', () =>
    withFake(
      async ({ client, conn }) => {
        const calls: number[] = [];
        client.setDmaResponder({ read: (_a, n) => (calls.push(n), new Uint8Array(n)), write: (_a, d) => void calls.push(d.length) });
        const requests = [
          [Wire.DMA_READ, wb().u64(0x1000n).u64(4097n).build()],
          [Wire.DMA_READ, wb().u64(0x1000n).u64(1n << 40n).build()],
          [Wire.DMA_WRITE, wb().u64(0x1000n).u64(8192n).bytes(new Uint8Array(8192)).build()],
        ] as const;
        for (const [cmd, payload] of requests) {
          const reply = await conn.command(cmd, payload);
          assert.deepEqual([reply.header.flags, reply.header.errorNo], [Wire.REPLY | Wire.ERROR, E.EINVAL], `cmd ${cmd}`);
        }
        assert.deepEqual(calls, []);
        await staysUsable(client);
      },
      { client: { capabilities: { maxDataXferSize: 4096 } } },
    ));
});

describe('client vs a hostile server: VERSION', () => {
  async function connectFails(onVersion: Responder, expect: (e: unknown) => boolean, client: ClientOptions = {}): Promise<void> {
    await assertNoFdLeak(async () => {
      const fake = FakeServer.start({ onVersion });
      try {
        await assert.rejects(VfioUserClient.connect(fake.path, client), expect);
        const conn = await fake.connection();
        await conn.closed; // the client closed its socket
        assert.deepEqual(fake.errors, []);
      } finally {
        await fake.close();
      }
    });
  }

  it('refused with an errno: RemoteError with that errno', () =>
    connectFails((m, c) => c.errorReply(m, E.EBUSY), (e) => e instanceof RemoteError && e.errno === E.EBUSY && e.command === Wire.VERSION));

  const malformed: [string, Responder][] = [
    ['major 1', (m, c) => c.reply(m, versionPayload(1, 0))],
    ['malformed JSON', (m, c) => c.reply(m, versionPayload(0, 2, '{"capabilities": {'))],
    ['JSON without its NUL', (m, c) => c.reply(m, wb().u16(0).u16(2).str('{}').build())],
    ['a badly typed capability', (m, c) => c.reply(m, versionPayload(0, 2, '{"capabilities":{"max_msg_fds":"eight"}}'))],
    ['a 2-byte payload', (m, c) => c.reply(m, wb().u16(0).build())],
    ['a reply for another command', (m, c) => c.reply(m, versionPayload(), { cmd: Wire.DEVICE_GET_INFO })],
  ];
  for (const [name, onVersion] of malformed) {
    it(`${name}: ProtocolError EPROTO`, () => connectFails(onVersion, isProto));
  }

  it('never answered: TimeoutError', () => connectFails(() => {}, (e) => e instanceof TimeoutError, { timeoutMs: 50 }));

  it('the server hangs up instead: ConnectionClosedError', () => connectFails((_m, c) => c.close(), isClosed));

  it('no JSON at all: the spec defaults apply', () =>
    withFake(
      async ({ client }) => {
        assert.equal(client.server.maxMsgFds, 1);
        assert.equal(client.server.maxDataXferSize, 1 << 20);
        assert.equal(client.server.writeMultiple, false);
        await staysUsable(client);
      },
      { fake: { onVersion: (m, c) => c.reply(m, versionPayload(0, 2, null)) } },
    ));

  it('a twin socket granted without its fd: no twin, the client works', () =>
    withFake(
      async ({ client }) => {
        assert.equal(client.hasTwinSocket, false);
        await staysUsable(client);
      },
      { fake: { onVersion: (m, c) => c.reply(m, versionPayload(0, 2, '{"capabilities":{"twin_socket":{"supported":true,"fd_index":3}}}')) }, client: { twinSocket: true } },
    ));

  it('fds the client did not ask for on the VERSION reply are closed', () =>
    assertNoFdLeak(() =>
      withFake(
        async ({ client }) => {
          assert.equal(client.hasTwinSocket, false);
          await staysUsable(client);
        },
        {
          fake: {
            onVersion: (m, c) => {
              const fds = [createEventFd(), createEventFd()];
              try {
                c.sendRaw(buildMessage({ msgId: m.header.msgId, cmd: m.header.cmd, flags: Wire.REPLY }, versionPayload()), fds);
              } finally {
                for (const fd of fds) native.close(fd);
              }
            },
          },
        },
      ),
    ));
});
